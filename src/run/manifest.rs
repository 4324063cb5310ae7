//! The run's records as types: `run.json` ([`Manifest`]) and `eval.json` ([`EvalReport`]).
//! Training writes them, a resume reads the manifest back, and `report` reads both: one
//! definition each, so a field cannot mean one thing to the writer and another to a reader.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::base_vs_tuned::{GenerationReport, RegressionReport};
use super::batches::DataFileStats;
use super::checkpoint::EvalPoint;
use super::layout::{EVAL_FILE, MANIFEST_FILE};
use crate::config::{EnvKnobs, TrainConfig};
use crate::data::lint::LintSummary;
use crate::digest::sha256_file;
use crate::distributed::Backend;
use crate::model::ModelIdentity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    EarlyStopped,
    Interrupted,
    Failed,
}

impl RunStatus {
    /// The name run.json uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::EarlyStopped => "early_stopped",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
        }
    }
}

/// A file the run depends on, by content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

impl WeightFile {
    pub fn hash(path: &Path) -> anyhow::Result<WeightFile> {
        use anyhow::Context;
        let (sha256, bytes) = sha256_file(path).with_context(|| format!("hashing {}", path.display()))?;
        Ok(WeightFile { path: path.to_path_buf(), bytes, sha256 })
    }
}

/// One process's part of a run: the first, then each resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub started_at: String,
    pub from_step: usize,
}

/// run.json: what was run, on what, and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub loratune_version: String,
    pub git_commit: String,
    pub command_line: Vec<String>,
    pub config_source: String,
    pub config: TrainConfig,
    pub base_model: ModelIdentity,
    pub base_model_files: Vec<WeightFile>,
    /// The adapter file a fresh run started from (`lora.init_from`), hashed.
    pub init_adapter: Option<WeightFile>,
    pub data: Vec<DataFileStats>,
    /// Where the eval set came from: "file", "split" or "none".
    pub eval_set: String,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub lora_parameters: usize,
    pub total_steps: usize,
    pub seed: u64,
    pub device: String,
    pub dtype: String,
    pub threads: usize,
    /// Processes that trained together (data parallel), and how their gradients travelled.
    /// Manifests from before data parallelism lack both: one process.
    #[serde(default = "one")]
    pub ranks: usize,
    #[serde(default)]
    pub collectives: Backend,
    pub started_at: String,
    /// One entry per process that worked on the run (the first, then each resume).
    pub sessions: Vec<Session>,
    pub status: RunStatus,
    pub steps_completed: usize,
    pub ended_at: Option<String>,
    pub wall_seconds: f64,
    pub error: Option<String>,
    /// The data lint's counts (`None` with `[data] lint = "off"`); the findings are in lint.json.
    #[serde(default)]
    pub lint: Option<LintSummary>,
    /// The environment knobs this process ran with (configs/README.md, "Environment").
    /// Manifests from before they were recorded lack them: the defaults.
    #[serde(default)]
    pub environment: EnvKnobs,
}

fn one() -> usize {
    1
}

/// eval.json: the eval losses of the run and the base-vs-tuned comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub base: Option<EvalPoint>,
    pub best: Option<EvalPoint>,
    #[serde(rename = "final")]
    pub final_: Option<EvalPoint>,
    pub history: Vec<EvalPoint>,
    pub eval_examples: usize,
    pub eval_tokens: usize,
    pub eval_targets: usize,
    /// The regression set on the base and the tuned model (`eval.regression`).
    pub regression: Option<RegressionReport>,
    /// Greedy answers of both models to held-out prompts, scored (`eval.generate_examples`).
    pub generation: Option<GenerationReport>,
}

/// Why a run record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
}

/// `text` as `T`; the message names the field that is wrong (`history[2].loss: ...`).
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            e.into_inner().to_string()
        } else {
            format!("{field}: {}", e.into_inner())
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

fn read<T: serde::de::DeserializeOwned>(path: PathBuf) -> Result<T, RecordError> {
    let text = std::fs::read_to_string(&path).map_err(|source| RecordError::Io { path: path.clone(), source })?;
    from_json(&text).map_err(|message| RecordError::Malformed { path, message })
}

impl Manifest {
    /// `run_dir/run.json`.
    pub fn read(run_dir: &Path) -> Result<Manifest, RecordError> {
        read(run_dir.join(MANIFEST_FILE))
    }

    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        crate::atomic::write_json_file(&run_dir.join(MANIFEST_FILE), self)
    }
}

impl EvalReport {
    /// `run_dir/eval.json`.
    pub fn read(run_dir: &Path) -> Result<EvalReport, RecordError> {
        read(run_dir.join(EVAL_FILE))
    }

    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        crate::atomic::write_json_file(&run_dir.join(EVAL_FILE), self)
    }
}

/// The current time as run.json records it (RFC 3339, seconds).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
impl Manifest {
    /// A finished two-step run's manifest (3.5 s, no lint), for tests of its readers.
    pub(crate) fn example() -> Manifest {
        Manifest {
            loratune_version: "0.1.0".into(),
            git_commit: "unknown".into(),
            command_line: vec!["loratune".into(), "train".into(), "run.toml".into()],
            config_source: "run.toml".into(),
            config: TrainConfig::new("model.gguf", vec!["train.jsonl".into()], "runs/example"),
            base_model: ModelIdentity {
                source: "model.gguf".into(),
                kind: "gguf".into(),
                resolved: "model.gguf".into(),
                weight_files: vec!["model.gguf".into()],
                num_parameters: 1000,
            },
            base_model_files: vec![WeightFile { path: "model.gguf".into(), bytes: 10, sha256: "00".into() }],
            init_adapter: None,
            data: Vec::new(),
            eval_set: "split".into(),
            train_examples: 9,
            eval_examples: 3,
            lora_parameters: 64,
            total_steps: 2,
            seed: 0,
            device: "cpu".into(),
            dtype: "f32".into(),
            threads: 2,
            ranks: 1,
            collectives: Backend::Single,
            started_at: "2026-12-03T00:00:00Z".into(),
            sessions: vec![Session { started_at: "2026-12-03T00:00:00Z".into(), from_step: 0 }],
            status: RunStatus::Completed,
            steps_completed: 2,
            ended_at: Some("2026-12-03T00:00:04Z".into()),
            wall_seconds: 3.5,
            error: None,
            lint: None,
            environment: EnvKnobs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_and_eval_report_read_back_as_written() {
        let d = tempfile::tempdir().unwrap();
        let m = Manifest::example();
        m.write(d.path()).unwrap();
        assert_eq!(Manifest::read(d.path()).unwrap(), m);
        let e = EvalReport {
            base: Some(EvalPoint { step: 0, loss: 2.0 }),
            best: Some(EvalPoint { step: 2, loss: 1.5 }),
            final_: Some(EvalPoint { step: 2, loss: 1.5 }),
            history: vec![EvalPoint { step: 2, loss: 1.5 }],
            eval_examples: 3,
            eval_tokens: 30,
            eval_targets: 10,
            regression: None,
            generation: None,
        };
        e.write(d.path()).unwrap();
        assert_eq!(EvalReport::read(d.path()).unwrap(), e);
    }

    #[test]
    fn an_unreadable_manifest_is_an_error_that_names_the_field() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(Manifest::read(d.path()), Err(RecordError::Io { .. })));
        let text = serde_json::to_string(&Manifest::example()).unwrap().replace("\"base_model_files\"", "\"files\"");
        std::fs::write(d.path().join(MANIFEST_FILE), text).unwrap();
        let e = Manifest::read(d.path()).unwrap_err().to_string();
        assert!(e.contains("run.json") && e.contains("base_model_files"), "{e}");
    }
}
