//! The data lint a training run starts with (`[data] lint`): the same checks as
//! `loratune data lint`, over the run's train and eval files, with the run's tokenizer and
//! `max_seq_len`, before the slow model load.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use crate::config::{LintMode, TrainConfig};
use crate::data::lint::{self, LintOptions, LintSummary};
use crate::data::{BadRecordPolicy, DataFormat};
use crate::tokenizer::Tokenizer;

use super::layout::LINT_FILE;

/// Findings of each kind printed before a run.
const SHOWN: usize = 3;

/// Lints the run's data and writes the full report to `run_dir/lint.json`. Prints the
/// summary when there is anything to report. With `lint = "error"`, errors end the run here
/// with the report's path; with `"warn"` the run goes on. `None` when `lint = "off"`.
///
/// Bad records follow `on_bad_record`: under `skip` they are warnings, as the run passes
/// over them.
pub fn check(
    cfg: &TrainConfig,
    format: Option<DataFormat>,
    policy: BadRecordPolicy,
    tok: &Tokenizer,
    run_dir: &Path,
) -> Result<Option<LintSummary>> {
    if cfg.data.lint == LintMode::Off {
        return Ok(None);
    }
    let opts = LintOptions { format, max_seq_len: cfg.data.max_seq_len, bad_records: policy, ..LintOptions::default() };
    let train: Vec<PathBuf> = cfg.data.train.iter().map(PathBuf::from).collect();
    let report = lint::lint(&train, cfg.data.eval.as_deref().map(Path::new), Some(tok), &opts)?;
    let path = run_dir.join(LINT_FILE);
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    crate::atomic::write_json_file(&path, &report)?;
    let s = &report.summary;
    if s.errors + s.warnings > 0 {
        print!("{}", report.human_summary(SHOWN));
        println!("lint    report in {}", path.display());
    }
    if report.has_errors() && cfg.data.lint == LintMode::Error {
        anyhow::bail!(
            "the data has {} lint error{} (listed above; all findings in {}): fix the data (`loratune data dedup` removes duplicates), or set [data] lint = \"warn\" to train anyway",
            s.errors,
            if s.errors == 1 { "" } else { "s" },
            path.display()
        );
    }
    Ok(Some(report.summary))
}
