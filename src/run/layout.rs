//! The run folder's layout: every file and folder name that `train` writes and that
//! `report`, `compare` and a resume read. One place, so that writers and readers cannot
//! drift apart.
//!
//! ```text
//! RUN_DIR/
//!   config.toml          the resolved config (CONFIG_FILE)
//!   run.json             the manifest (MANIFEST_FILE, `manifest::Manifest`)
//!   metrics.jsonl        one line per step and eval (METRICS_FILE, `metrics::MetricsLine`)
//!   eval.json            base / best / final eval, regression set, scores (EVAL_FILE, `manifest::EvalReport`)
//!   samples.jsonl        base and tuned answers side by side (SAMPLES_FILE)
//!   lint.json            the data lint's findings (LINT_FILE)
//!   adapter_config.json  adapter_model.safetensors   the final adapter (PEFT format)
//!   best/                the adapter of the best eval (BEST_DIR)
//!   checkpoints/step-N/  adapter, optimizer.safetensors, trainer_state.json (CHECKPOINTS_DIR)
//!   report.html report.md loss.svg lr.svg   written by `loratune report`
//! ```

use std::path::{Path, PathBuf};

use crate::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

pub const CONFIG_FILE: &str = "config.toml";
pub const MANIFEST_FILE: &str = "run.json";
pub const EVAL_FILE: &str = "eval.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SAMPLES_FILE: &str = "samples.jsonl";
pub const LINT_FILE: &str = "lint.json";
pub const BEST_DIR: &str = "best";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Inside each `checkpoints/step-N/`, beside the adapter.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";

/// What `loratune report` writes into the run folder.
pub const HTML_FILE: &str = "report.html";
pub const MARKDOWN_FILE: &str = "report.md";
pub const LOSS_PLOT_FILE: &str = "loss.svg";
pub const LR_PLOT_FILE: &str = "lr.svg";

/// Files and folders a fresh run writes; `output.overwrite` removes exactly these.
pub const RUN_OUTPUTS: &[&str] = &[
    CONFIG_FILE,
    MANIFEST_FILE,
    EVAL_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    CHECKPOINTS_DIR,
    BEST_DIR,
    LINT_FILE,
];

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(CHECKPOINTS_DIR)
}

pub fn step_dir(run_dir: &Path, step: usize) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("step-{step}"))
}

pub fn best_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(BEST_DIR)
}
