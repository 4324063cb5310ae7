//! The report of a finished (or stopped) training run: the run folder read into one typed
//! [`RunSummary`], then drawn as loss curves (`plot.rs`) and written as a self-contained
//! HTML page (`html.rs`) and a Markdown file (`markdown.rs`).
//!
//! Only run.json and metrics.jsonl are required; everything else (eval.json, the lint
//! summary, regression and generation metrics, samples.jsonl, config.toml) is shown when
//! present and noted as absent otherwise, so reports work on runs from older versions and
//! on interrupted runs.

pub mod html;
pub mod markdown;
pub mod plot;
pub mod tables;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::run::checkpoint::EvalPoint;
use crate::run::manifest::from_json;
use crate::run::metrics::MetricsLine;

pub use crate::run::layout::{
    CONFIG_FILE, EVAL_FILE, HTML_FILE, LINT_FILE, LOSS_PLOT_FILE, LR_PLOT_FILE, MANIFEST_FILE, MARKDOWN_FILE,
    METRICS_FILE, SAMPLES_FILE,
};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {what} is missing; RUN_DIR must be a `loratune train` output folder (it holds {MANIFEST_FILE}, {METRICS_FILE}, {CONFIG_FILE} and, once evaluated, {EVAL_FILE})", path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Malformed { path: PathBuf, line: Option<usize>, message: String },
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// eval.json's `regression`, as training writes it.
pub use crate::run::base_vs_tuned::RegressionReport as Regression;
pub use crate::run::manifest::{EvalReport, Manifest};

/// One line of samples.jsonl: an eval prompt answered by the base and the tuned model.
#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub line: usize,
    pub prompt: String,
    #[serde(default)]
    pub reference: Option<String>,
    pub base: String,
    pub tuned: String,
}

/// A run folder, read and checked.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// run.json as written, for the report's manifest section.
    pub manifest_json: serde_json::Value,
    /// config.toml verbatim.
    pub config_toml: Option<String>,
    /// One line per step (and the step-0 base eval line), by step; a step logged twice
    /// keeps its last line.
    pub metrics: Vec<MetricsLine>,
    pub eval: Option<EvalReport>,
    pub samples: Option<Vec<Sample>>,
    /// Whether the full lint report (lint.json) is in the run folder.
    pub has_lint_file: bool,
}

/// A loss with its perplexity and the change from the base model's loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalRow {
    pub step: usize,
    pub loss: f64,
    pub perplexity: f64,
    /// (loss - base) / base in percent; `None` without a base eval.
    pub change_pct: Option<f64>,
}

/// Totals over the training steps of metrics.jsonl.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingTotals {
    pub steps: usize,
    /// Epochs the data stream reached (the last step's epoch, counted from 1).
    pub epochs: usize,
    pub tokens: usize,
    /// Tokens over the time spent in training steps (evals and checkpoints excluded).
    pub tokens_per_s: Option<f64>,
    pub last_train_loss: Option<f64>,
}

fn read_text(path: &Path) -> Result<Option<String>, ReportError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReportError::Io { path: path.to_path_buf(), source }),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ReportError> {
    from_json(text).map_err(|message| ReportError::Malformed { path: path.to_path_buf(), line: None, message })
}

/// Each non-blank line of a JSONL file as `T`; errors name the line (counted from 1).
fn parse_jsonl<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<Vec<T>, ReportError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = from_json(line).map_err(|message| ReportError::Malformed {
            path: path.to_path_buf(),
            line: Some(i + 1),
            message,
        })?;
        out.push(v);
    }
    Ok(out)
}

impl RunSummary {
    pub fn load(dir: &Path) -> Result<RunSummary, ReportError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_text = read_text(&manifest_path)?
            .ok_or(ReportError::Missing { path: manifest_path.clone(), what: "the run manifest" })?;
        let manifest_json: serde_json::Value = parse_json(&manifest_path, &manifest_text)?;
        let manifest: Manifest = parse_json(&manifest_path, &manifest_text)?;

        let metrics_path = dir.join(METRICS_FILE);
        let metrics_text = read_text(&metrics_path)?
            .ok_or(ReportError::Missing { path: metrics_path.clone(), what: "the per-step metrics" })?;
        let lines: Vec<MetricsLine> = parse_jsonl(&metrics_path, &metrics_text)?;
        let mut by_step = BTreeMap::new();
        for m in lines {
            by_step.insert(m.step, m);
        }

        let eval_path = dir.join(EVAL_FILE);
        let eval = read_text(&eval_path)?.map(|t| parse_json::<EvalReport>(&eval_path, &t)).transpose()?;
        let samples_path = dir.join(SAMPLES_FILE);
        let samples = read_text(&samples_path)?.map(|t| parse_jsonl::<Sample>(&samples_path, &t)).transpose()?;
        let config_toml = read_text(&dir.join(CONFIG_FILE))?;

        Ok(RunSummary {
            dir: dir.to_path_buf(),
            manifest,
            manifest_json,
            config_toml,
            metrics: by_step.into_values().collect(),
            eval,
            samples,
            has_lint_file: dir.join(LINT_FILE).is_file(),
        })
    }

    /// The run folder's name, for titles.
    pub fn name(&self) -> String {
        let canonical = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    /// (step, loss) of every training step.
    pub fn train_losses(&self) -> Vec<(usize, f64)> {
        self.metrics.iter().filter_map(|m| m.loss.map(|l| (m.step, l))).collect()
    }

    /// (step, lr) of every training step.
    pub fn learning_rates(&self) -> Vec<(usize, f64)> {
        self.metrics.iter().filter_map(|m| m.lr.map(|l| (m.step, l))).collect()
    }

    /// Every eval by step: the step-0 base eval and the periodic ones from metrics.jsonl,
    /// plus those only eval.json records (the closing eval of a resumed run).
    pub fn eval_losses(&self) -> Vec<(usize, f64)> {
        let mut points: BTreeMap<usize, f64> =
            self.metrics.iter().filter_map(|m| m.eval_loss.map(|l| (m.step, l))).collect();
        if let Some(e) = &self.eval {
            for p in e.base.iter().chain(&e.history) {
                points.entry(p.step).or_insert(p.loss);
            }
        }
        points.into_iter().collect()
    }

    /// Base, best and final eval rows, each when known.
    pub fn eval_rows(&self) -> [(&'static str, Option<EvalRow>); 3] {
        let e = self.eval.as_ref();
        let base = e.and_then(|e| e.base).or_else(|| {
            self.metrics.iter().find(|m| m.step == 0).and_then(|m| m.eval_loss.map(|loss| EvalPoint { step: 0, loss }))
        });
        let row = |p: Option<EvalPoint>| {
            p.map(|p| EvalRow {
                step: p.step,
                loss: p.loss,
                perplexity: p.loss.exp(),
                change_pct: base.map(|b| 100.0 * (p.loss - b.loss) / b.loss),
            })
        };
        [("base", row(base)), ("best", row(e.and_then(|e| e.best))), ("final", row(e.and_then(|e| e.final_)))]
    }

    pub fn training_totals(&self) -> TrainingTotals {
        let steps: Vec<&MetricsLine> = self.metrics.iter().filter(|m| m.loss.is_some()).collect();
        let tokens: usize = steps.iter().filter_map(|m| m.tokens).sum();
        // Each step's time is its tokens over its tokens/s.
        let seconds: f64 = steps
            .iter()
            .filter_map(|m| match (m.tokens, m.tokens_per_s) {
                (Some(t), Some(tps)) if tps > 0.0 => Some(t as f64 / tps),
                _ => None,
            })
            .sum();
        TrainingTotals {
            steps: steps.len(),
            epochs: steps.iter().filter_map(|m| m.epoch).max().map_or(0, |e| e + 1),
            tokens,
            tokens_per_s: (seconds > 0.0).then(|| tokens as f64 / seconds),
            last_train_loss: steps.last().and_then(|m| m.loss),
        }
    }

    /// The lint summary as (key, value) rows, in run.json's order; a count that needs a
    /// tokenizer and had none reads "none".
    pub fn lint_rows(&self) -> Option<Vec<(String, String)>> {
        let lint = self.manifest.lint.as_ref()?;
        let serde_json::Value::Object(map) = serde_json::to_value(lint).ok()? else { return None };
        let cell = |v: serde_json::Value| if v.is_null() { "none".to_string() } else { v.to_string() };
        Some(map.into_iter().map(|(k, v)| (k, cell(v))).collect())
    }

    /// run.json pretty-printed.
    pub fn manifest_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.manifest_json).unwrap_or_default()
    }
}

/// Numbers as both reports print them, so the two always agree.
pub mod fmt {
    pub fn loss(x: f64) -> String {
        format!("{x:.4}")
    }

    pub fn perplexity(x: f64) -> String {
        format!("{x:.3}")
    }

    pub fn change_pct(x: f64) -> String {
        format!("{x:+.2}%")
    }

    /// A generation score in [0, 1].
    pub fn score(x: f64) -> String {
        format!("{x:.3}")
    }

    /// A fraction (0.05) as a percentage (5.00%).
    pub fn fraction_pct(x: f64, signed: bool) -> String {
        if signed {
            format!("{:+.2}%", 100.0 * x)
        } else {
            format!("{:.2}%", 100.0 * x)
        }
    }

    pub fn seconds(s: f64) -> String {
        let whole = s.round() as u64;
        let (h, m, sec) = (whole / 3600, whole / 60 % 60, whole % 60);
        let clock = if h > 0 {
            format!("{h}h {m:02}m {sec:02}s")
        } else if m > 0 {
            format!("{m}m {sec:02}s")
        } else {
            format!("{sec}s")
        };
        format!("{s:.1} s ({clock})")
    }

    pub fn rate(x: f64) -> String {
        format!("{x:.1}")
    }

    /// 1234567 -> "1,234,567".
    pub fn count(n: usize) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// A run.json as training writes it: 2 of 2 steps, 3.5 s.
    fn manifest() -> String {
        serde_json::to_string(&Manifest::example()).unwrap()
    }

    /// An eval.json as training writes it, with `evals` (the first is the base).
    fn eval_json(evals: &[(usize, f64)], best: usize) -> String {
        let point = |&(step, loss): &(usize, f64)| EvalPoint { step, loss };
        let report = EvalReport {
            base: evals.first().map(point),
            best: Some(point(&evals[best])),
            final_: evals.last().map(point),
            history: evals[1..].iter().map(point).collect(),
            eval_examples: 3,
            eval_tokens: 30,
            eval_targets: 10,
            regression: None,
            generation: None,
        };
        serde_json::to_string(&report).unwrap()
    }

    #[test]
    fn missing_manifest_or_metrics_says_what_a_run_folder_is() {
        let d = tempfile::tempdir().unwrap();
        let e = RunSummary::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("run.json") && e.contains("loratune train` output folder"), "{e}");
        write(d.path(), "run.json", &manifest());
        let e = RunSummary::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("is missing"), "{e}");
    }

    #[test]
    fn malformed_files_are_named_with_their_line() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "run.json", &manifest().replace("\"steps_completed\":2", "\"steps_completed\":\"two\""));
        write(d.path(), "metrics.jsonl", "");
        let e = RunSummary::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("run.json") && e.contains("steps_completed"), "{e}");

        write(d.path(), "run.json", &manifest());
        write(d.path(), "metrics.jsonl", "{\"step\": 0, \"eval_loss\": 2.0, \"elapsed_s\": 0.1}\n{\"step\": 1, \"loss\": \"high\", \"elapsed_s\": 1}\n");
        let e = RunSummary::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl line 2: loss: invalid type"), "{e}");

        write(d.path(), "metrics.jsonl", "{\"step\": 1, \"loss\": 2.0, \"elapsed_s\": 1}\n");
        write(
            d.path(),
            "samples.jsonl",
            "{\"line\": 3, \"prompt\": \"p\", \"base\": \"b\", \"tuned\": \"t\"}\n{\"line\": 4, \"prompt\": \"p\"}\n",
        );
        let e = RunSummary::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("samples.jsonl line 2") && e.contains("missing field `base`"), "{e}");

        std::fs::remove_file(d.path().join("samples.jsonl")).unwrap();
        write(d.path(), "eval.json", r#"{"base": {"step": 0}}"#);
        let e = RunSummary::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("eval.json") && e.contains("missing field `loss`"), "{e}");
    }

    #[test]
    fn totals_and_eval_rows_are_computed_from_the_files() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "run.json", &manifest());
        // Step 2 logged twice (a resumed run re-logs it): the last line counts.
        write(
            d.path(),
            "metrics.jsonl",
            concat!(
                "{\"step\": 0, \"eval_loss\": 2.0, \"elapsed_s\": 0.1}\n",
                "{\"step\": 1, \"epoch\": 0, \"loss\": 1.9, \"lr\": 0.001, \"tokens\": 100, \"tokens_per_s\": 50.0, \"elapsed_s\": 2}\n",
                "{\"step\": 2, \"epoch\": 1, \"loss\": 9.9, \"lr\": 0.002, \"tokens\": 999, \"tokens_per_s\": 1.0, \"elapsed_s\": 3}\n",
                "\n",
                "{\"step\": 2, \"epoch\": 1, \"loss\": 1.7, \"lr\": 0.002, \"tokens\": 300, \"tokens_per_s\": 100.0, \"eval_loss\": 1.5, \"elapsed_s\": 4}\n",
            ),
        );
        write(d.path(), "eval.json", &eval_json(&[(0, 2.0), (2, 1.5), (3, 1.6)], 1));
        let s = RunSummary::load(d.path()).unwrap();
        let t = s.training_totals();
        assert_eq!((t.steps, t.epochs, t.tokens), (2, 2, 400));
        // 100 tokens in 2 s, 300 in 3 s.
        assert!((t.tokens_per_s.unwrap() - 80.0).abs() < 1e-12);
        assert_eq!(s.train_losses(), vec![(1, 1.9), (2, 1.7)]);
        assert_eq!(s.eval_losses(), vec![(0, 2.0), (2, 1.5), (3, 1.6)]);
        let [(_, base), (_, best), (_, fin)] = s.eval_rows();
        assert_eq!(base.unwrap().change_pct, Some(0.0));
        assert_eq!(best.unwrap().step, 2);
        let fin = fin.unwrap();
        assert!((fin.perplexity - 1.6f64.exp()).abs() < 1e-12);
        assert!((fin.change_pct.unwrap() - -20.0).abs() < 1e-9);
        assert!(s.samples.is_none() && s.manifest.lint.is_none() && s.config_toml.is_none());
    }

    #[test]
    fn lint_summary_becomes_rows() {
        let d = tempfile::tempdir().unwrap();
        let lint = crate::data::lint::LintSummary { files: 2, warnings: 3, ..Default::default() };
        let manifest = Manifest { lint: Some(lint), ..Manifest::example() };
        write(d.path(), "run.json", &serde_json::to_string(&manifest).unwrap());
        write(d.path(), "metrics.jsonl", "");
        let rows = RunSummary::load(d.path()).unwrap().lint_rows().unwrap();
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("warnings"), Some("3"));
        assert_eq!(get("files"), Some("2"));
        assert_eq!(get("truncated"), Some("none"));
        assert_eq!(rows.len(), 18);
    }

    #[test]
    fn counts_and_durations_read_well() {
        assert_eq!(fmt::count(0), "0");
        assert_eq!(fmt::count(999), "999");
        assert_eq!(fmt::count(1234567), "1,234,567");
        assert_eq!(fmt::seconds(192.34), "192.3 s (3m 12s)");
        assert_eq!(fmt::seconds(3725.0), "3725.0 s (1h 02m 05s)");
        assert_eq!(fmt::fraction_pct(0.0512, true), "+5.12%");
    }
}
