//! What a run tells the user while it trains: a progress bar with loss, lr, tokens/s and
//! ETA on a terminal; plain log lines otherwise (CI logs, `| tee`). Also the
//! append-only `metrics.jsonl`.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// One line of metrics.jsonl. Training fields are absent on the base-model eval line.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct MetricsLine {
    pub step: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    pub elapsed_s: f64,
}

/// metrics.jsonl, appended one flushed line at a time.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log, keeping only lines up to `keep_through_step` (a resumed run drops
    /// what was logged after its checkpoint; it will be logged again). `None` starts empty.
    pub fn open(path: &Path, keep_through_step: Option<usize>) -> anyhow::Result<Self> {
        let kept = match (keep_through_step, std::fs::read_to_string(path)) {
            (Some(step), Ok(text)) => text
                .lines()
                .filter(|l| serde_json::from_str::<MetricsLine>(l).map(|m| m.step <= step).unwrap_or(false))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            _ => String::new(),
        };
        crate::atomic::write_bytes(path, kept.as_bytes())?;
        Ok(MetricsLog { path: path.to_path_buf() })
    }

    pub fn append(&self, line: &MetricsLine) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        writeln!(f, "{}", serde_json::to_string(line)?)?;
        f.flush()?;
        Ok(())
    }
}

pub struct Reporter {
    bar: Option<ProgressBar>,
    log_every: usize,
    /// False on the ranks of a data-parallel run other than rank 0, which speaks for them.
    show: bool,
}

impl Reporter {
    pub fn new(total_steps: usize, start_step: usize, log_every: usize, show: bool) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_steps as u64);
            bar.set_style(
                ProgressStyle::with_template("train [{bar:28}] {pos}/{len} {msg} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_position(start_step as u64);
            bar.reset_eta();
            bar
        });
        Reporter { bar, log_every: log_every.max(1), show }
    }

    /// A message that must not be lost in the bar (evals, checkpoints, warnings).
    pub fn println(&self, msg: &str) {
        if !self.show {
            return;
        }
        match &self.bar {
            Some(b) => b.println(msg),
            None => println!("{msg}"),
        }
    }

    pub fn step(&self, m: &MetricsLine, total: usize) {
        if !self.show {
            return;
        }
        let (loss, lr, gn, tps) = (
            m.loss.unwrap_or(f64::NAN),
            m.lr.unwrap_or(0.0),
            m.grad_norm.unwrap_or(0.0),
            m.tokens_per_s.unwrap_or(0.0),
        );
        match &self.bar {
            Some(b) => {
                b.set_position(m.step as u64);
                b.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
            }
            None if m.step.is_multiple_of(self.log_every) || m.step == total => {
                println!(
                    "step {:>5}/{total}  loss {loss:.4}  lr {lr:.3e}  grad_norm {gn:.3}  {tps:.0} tok/s  {:.0}s",
                    m.step, m.elapsed_s
                );
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
