//! The run configuration as typed structs, one per TOML section, with every
//! default in one place: the `Default` impls below.
//!
//! These structs are plain values: they are filled by the loader in
//! [`super`] (which checks keys, types and required keys first, then ranges
//! in `validate.rs`) and serialize back to TOML or JSON unchanged, so the
//! resolved configuration can be written into a run manifest.
//!
//! Paths (`model.path`, `data.train`, `data.eval`, `output.dir`) are kept
//! exactly as written; relative paths are relative to the current directory
//! of the process, not to the config file.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::data::{BadRecordPolicy, FormatChoice};
use crate::lora::Target;
use crate::model::quantized::Quantize;
use crate::model::FloatDtype;
use crate::train::schedule::Decay;

// The names each choice key takes, as messages list them (a test in `choices.rs` checks
// that each list is exactly what its enum reads and writes).

/// `model.dtype` values.
pub const DTYPES: &[&str] = &["f32", "bf16", "f16"];
/// `model.quantize` values (QLoRA): a GGUF file's own blocks, or a block format to
/// quantize the projections to at load.
pub const QUANTIZE: &[&str] = &Quantize::NAMES;
/// `lora.target_modules` entries: the linear layers of a Llama-family block.
pub const TARGET_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
/// `data.format` values (`prompt_completion` is accepted as a spelling of
/// `prompt-completion`, as `loratune eval --format` does).
pub const DATA_FORMATS: &[&str] = &["auto", "alpaca", "messages", "sharegpt", "prompt-completion", "text"];
/// `data.on_bad_record` values.
pub const BAD_RECORD_POLICIES: &[&str] = &["error", "skip"];
/// `data.lint` values: what lint errors in the data do to a training run.
pub const LINT_MODES: &[&str] = &["error", "warn", "off"];
/// `train.lr_scheduler` values.
pub const LR_SCHEDULERS: &[&str] = &["cosine", "linear", "constant"];
/// `device.name` values; `cuda:N` stands for any GPU ordinal (`cuda:0`, `cuda:1`, ...).
pub const DEVICE_NAMES: &[&str] = &["auto", "cpu", "cuda", "cuda:N"];

/// A whole training run: what `loratune train run.toml` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub lora: LoraSection,
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub eval: EvalSection,
    pub output: OutputSection,
    #[serde(default)]
    pub device: DeviceSection,
}

/// `[model]`: the base model to fine-tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face layout folder, hub id (`org/name`) or `.gguf` file. Required.
    pub path: String,
    /// Compute dtype, one of [`DTYPES`]; `None`: f32 on CPU, bf16 on CUDA.
    #[serde(default)]
    pub dtype: Option<FloatDtype>,
    /// QLoRA: keep the projection weights quantized, one of [`QUANTIZE`]; `None`: dense.
    #[serde(default)]
    pub quantize: Option<Quantize>,
}

/// `[lora]`: the adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    /// Rank of the low-rank update, 1..=1024.
    pub r: usize,
    /// Scaling numerator: the update is scaled by `alpha / r` (or `alpha / sqrt(r)`).
    pub alpha: f64,
    /// Dropout on the adapter's input, in [0, 1).
    pub dropout: f64,
    /// Which linear layers get an adapter; entries from [`TARGET_MODULES`].
    pub target_modules: Vec<Target>,
    /// rsLoRA: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// A PEFT adapter folder to start from instead of a fresh init (continue fine-tuning);
    /// its r, scaling and target modules must be the ones above.
    pub init_from: Option<String>,
}

/// `[data]`: the training and eval sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSONL training files. Required; one string or an array in TOML.
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<String>,
    /// Held-out JSONL eval file; when set, `eval_fraction` is not used.
    #[serde(default)]
    pub eval: Option<String>,
    /// Fraction of the training records held out for eval when `eval` is not set, in [0, 0.5]; 0: no eval set.
    #[serde(default = "defaults::eval_fraction")]
    pub eval_fraction: f64,
    /// Seed of the train/eval split.
    #[serde(default = "defaults::split_seed")]
    pub split_seed: u64,
    /// Record format, one of [`DATA_FORMATS`]; `auto` detects it per file.
    #[serde(default = "defaults::format")]
    pub format: FormatChoice,
    /// Examples longer than this many tokens are truncated (>= 8).
    #[serde(default = "defaults::max_seq_len")]
    pub max_seq_len: usize,
    /// Pack several short examples into one sequence of `max_seq_len`.
    #[serde(default)]
    pub packing: bool,
    /// What a malformed record does, one of [`BAD_RECORD_POLICIES`].
    #[serde(default = "defaults::on_bad_record")]
    pub on_bad_record: BadRecordPolicy,
    /// Mixing weights, one per `train` file (> 0, normalised): the share of each epoch's
    /// examples drawn from that file. `None`: every example of every file, once.
    #[serde(default)]
    pub weights: Option<Vec<f64>>,
    /// The data lint before training, one of [`LINT_MODES`]: errors stop the run
    /// (`error`), are printed (`warn`), or the lint is skipped (`off`).
    #[serde(default = "defaults::lint")]
    pub lint: LintMode,
}

/// `[train]`: the optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Passes over the training set (>= 1); ignored when `max_steps` is set.
    pub epochs: usize,
    /// Optimizer steps to run (>= 1); overrides `epochs` when set.
    pub max_steps: Option<usize>,
    /// Examples per forward/backward pass (>= 1).
    pub micro_batch_size: usize,
    /// Micro-batches accumulated per optimizer step (>= 1).
    pub grad_accum: usize,
    /// Peak learning rate (> 0).
    pub lr: f64,
    /// Learning-rate schedule after warmup, one of [`LR_SCHEDULERS`].
    pub lr_scheduler: Decay,
    /// Linear warmup length in optimizer steps.
    pub warmup_steps: usize,
    /// Linear warmup length as a fraction of the total steps, in [0, 1); exclusive with `warmup_steps`.
    pub warmup_ratio: f64,
    /// Final learning rate of cosine/linear as a fraction of `lr`, in [0, 1].
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay (>= 0).
    pub weight_decay: f64,
    /// AdamW beta1, in [0, 1).
    pub adam_beta1: f64,
    /// AdamW beta2, in [0, 1).
    pub adam_beta2: f64,
    /// AdamW epsilon (> 0).
    pub adam_eps: f64,
    /// Clip the global gradient norm to this (>= 0; 0 disables clipping).
    pub max_grad_norm: f64,
    /// Seed of adapter initialisation, dropout and data order.
    pub seed: u64,
    /// Recompute activations in the backward pass to save memory.
    pub gradient_checkpointing: bool,
    /// With checkpointing, recompute only the first this many layers (>= 1; `None`: all).
    #[serde(default)]
    pub checkpoint_layers: Option<usize>,
    /// With checkpointing on CUDA, keep the checkpointed layer inputs in pinned host memory
    /// instead of on the GPU, copied out and back while layers compute.
    pub offload_checkpoints: bool,
    /// Log the training loss every this many optimizer steps (>= 1).
    pub log_every: usize,
}

/// `[eval]`: evaluation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Evaluate every this many optimizer steps; 0: only before training and at the end.
    pub every: usize,
    /// Examples per eval batch (>= 1).
    pub batch_size: usize,
    /// Stop after this many evals without improvement; 0: never stop early.
    pub early_stopping_patience: usize,
    /// The least decrease of the eval loss that counts as an improvement (>= 0).
    pub early_stopping_min_delta: f64,
    /// A regression set (JSONL of general instructions the base model handles): its loss
    /// is measured on the base and the tuned model; `None`: no regression check.
    pub regression: Option<String>,
    /// Relative rise of the regression loss above which the run warns of forgetting (>= 0).
    pub regression_threshold: f64,
    /// Held-out eval prompts answered by the base and the tuned model (greedy), scored
    /// against their references and written side by side to samples.jsonl; 0: none.
    pub generate_examples: usize,
    /// Longest answer generated for those prompts, in tokens (>= 1).
    pub max_new_tokens: usize,
}

/// `[output]`: the run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// The run folder: manifest, logs, checkpoints, adapters. Required.
    pub dir: String,
    /// Save a checkpoint every this many optimizer steps; 0: only at the end.
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: usize,
    /// How many of the latest checkpoints to keep (>= 1).
    #[serde(default = "defaults::keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Also keep the adapter with the best eval loss in `DIR/best/`.
    #[serde(default = "defaults::save_best")]
    pub save_best: bool,
    /// Start a fresh run even if `dir` is not empty.
    #[serde(default)]
    pub overwrite: bool,
}

/// `[device]`: where to compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSection {
    /// `auto`, `cpu`, `cuda` or `cuda:N`; `auto` takes the first GPU when there is one.
    pub name: DeviceName,
    /// CPU threads (>= 1); `None`: all cores (shared out among the ranks of `gpus`).
    pub threads: Option<usize>,
    /// Data parallel: this many processes on this machine, one per GPU (`--gpus N`).
    pub gpus: Option<usize>,
}

impl TrainConfig {
    /// A configuration with the three required values and every default,
    /// for code that builds a run without a file (tests, other commands).
    pub fn new(model_path: impl Into<String>, train: Vec<String>, output_dir: impl Into<String>) -> TrainConfig {
        TrainConfig {
            model: ModelSection { path: model_path.into(), dtype: None, quantize: None },
            lora: LoraSection::default(),
            data: DataSection {
                train,
                eval: None,
                eval_fraction: defaults::eval_fraction(),
                split_seed: defaults::split_seed(),
                format: defaults::format(),
                max_seq_len: defaults::max_seq_len(),
                packing: false,
                on_bad_record: defaults::on_bad_record(),
                weights: None,
                lint: defaults::lint(),
            },
            train: TrainSection::default(),
            eval: EvalSection::default(),
            output: OutputSection {
                dir: output_dir.into(),
                checkpoint_every: defaults::checkpoint_every(),
                keep_checkpoints: defaults::keep_checkpoints(),
                save_best: defaults::save_best(),
                overwrite: false,
            },
            device: DeviceSection::default(),
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: vec![Target::QProj, Target::KProj, Target::VProj, Target::OProj],
            use_rslora: false,
            init_from: None,
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            epochs: 1,
            max_steps: None,
            micro_batch_size: 4,
            grad_accum: 1,
            lr: 2e-4,
            lr_scheduler: Decay::Cosine,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            min_lr_ratio: 0.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            max_grad_norm: 1.0,
            seed: 42,
            gradient_checkpointing: false,
            checkpoint_layers: None,
            offload_checkpoints: true,
            log_every: 1,
        }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            every: 50,
            batch_size: 8,
            early_stopping_patience: 0,
            early_stopping_min_delta: 0.0,
            regression: None,
            regression_threshold: 0.05,
            generate_examples: 4,
            max_new_tokens: 128,
        }
    }
}

impl Default for DeviceSection {
    fn default() -> Self {
        DeviceSection { name: DeviceName::Auto, threads: None, gpus: None }
    }
}

/// Defaults of the sections that also have a required key (and so no `Default`).
mod defaults {
    use super::{BadRecordPolicy, FormatChoice, LintMode};

    pub fn eval_fraction() -> f64 {
        0.1
    }
    pub fn split_seed() -> u64 {
        42
    }
    pub fn format() -> FormatChoice {
        FormatChoice::Auto
    }
    pub fn max_seq_len() -> usize {
        1024
    }
    pub fn on_bad_record() -> BadRecordPolicy {
        BadRecordPolicy::Error
    }
    pub fn lint() -> LintMode {
        LintMode::Error
    }
    pub fn checkpoint_every() -> usize {
        100
    }
    pub fn keep_checkpoints() -> usize {
        2
    }
    pub fn save_best() -> bool {
        true
    }
}

/// `data.train` may be one path or a list of paths.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    })
}

/// `data.lint`: what lint errors in the data do to a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LintMode {
    /// Lint errors stop the run before the model loads.
    Error,
    /// Lint errors are printed and the run goes on.
    Warn,
    /// No lint.
    Off,
}

/// `device.name` (and `--device`): where to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceName {
    /// The first GPU when there is one (in a group of ranks, this rank's), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The first GPU (in a group of ranks, this rank's: `cuda:LOCAL_RANK`).
    Cuda,
    /// This GPU (`cuda:N`).
    CudaOrdinal(usize),
}

/// Why a name is not a [`DeviceName`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadDeviceName {
    /// Not `auto`, `cpu`, `cuda` or `cuda:...`.
    Unknown,
    /// `cuda:` followed by this, which is not a GPU number.
    Ordinal(String),
}

impl DeviceName {
    /// `auto`, `cpu`, `cuda` or `cuda:N`, spelled exactly.
    pub fn parse(name: &str) -> Result<DeviceName, BadDeviceName> {
        match name.strip_prefix("cuda:") {
            Some(ordinal) => {
                ordinal.parse().map(DeviceName::CudaOrdinal).map_err(|_| BadDeviceName::Ordinal(ordinal.into()))
            }
            None => match name {
                "auto" => Ok(DeviceName::Auto),
                "cpu" => Ok(DeviceName::Cpu),
                "cuda" => Ok(DeviceName::Cuda),
                _ => Err(BadDeviceName::Unknown),
            },
        }
    }
}

impl BadDeviceName {
    /// Why `name` is not a device name, for a message that names the key or flag before it.
    pub fn reason(&self, name: &str) -> String {
        match self {
            BadDeviceName::Unknown => {
                format!("unknown value \"{name}\" (expected one of: {})", DEVICE_NAMES.join(", "))
            }
            BadDeviceName::Ordinal(ordinal) => format!(
                "\"{name}\": the GPU number after \"cuda:\" must be a non-negative integer, e.g. cuda:0 (got \"{ordinal}\")"
            ),
        }
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Auto => f.write_str("auto"),
            DeviceName::Cpu => f.write_str("cpu"),
            DeviceName::Cuda => f.write_str("cuda"),
            DeviceName::CudaOrdinal(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceName {
    type Err = String;

    /// As `--device` takes it, with the command line's messages.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceName::parse(s).map_err(|e| match e {
            BadDeviceName::Unknown => format!("unknown device \"{s}\" (expected auto, cpu, cuda or cuda:N)"),
            BadDeviceName::Ordinal(_) => format!("device {}", e.reason(s)),
        })
    }
}

impl Serialize for DeviceName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        DeviceName::parse(&name).map_err(|e| serde::de::Error::custom(e.reason(&name)))
    }
}
