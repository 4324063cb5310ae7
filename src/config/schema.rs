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

use serde::{Deserialize, Deserializer, Serialize};

/// `model.dtype` values.
pub const DTYPES: &[&str] = &["f32", "bf16", "f16"];
/// `model.quantize` values (QLoRA): a GGUF file's own blocks, or a block format to
/// quantize the projections to at load.
pub const QUANTIZE: &[&str] = &["gguf", "q4_0", "q4_1", "q4_k", "q8_0"];
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
    pub dtype: Option<String>,
    /// QLoRA: keep the projection weights quantized, one of [`QUANTIZE`]; `None`: dense.
    #[serde(default)]
    pub quantize: Option<String>,
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
    pub target_modules: Vec<String>,
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
    pub format: String,
    /// Examples longer than this many tokens are truncated (>= 8).
    #[serde(default = "defaults::max_seq_len")]
    pub max_seq_len: usize,
    /// Pack several short examples into one sequence of `max_seq_len`.
    #[serde(default)]
    pub packing: bool,
    /// What a malformed record does, one of [`BAD_RECORD_POLICIES`].
    #[serde(default = "defaults::on_bad_record")]
    pub on_bad_record: String,
    /// Mixing weights, one per `train` file (> 0, normalised): the share of each epoch's
    /// examples drawn from that file. `None`: every example of every file, once.
    #[serde(default)]
    pub weights: Option<Vec<f64>>,
    /// The data lint before training, one of [`LINT_MODES`]: errors stop the run
    /// (`error`), are printed (`warn`), or the lint is skipped (`off`).
    #[serde(default = "defaults::lint")]
    pub lint: String,
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
    pub lr_scheduler: String,
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
    pub name: String,
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
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
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
            lr_scheduler: "cosine".to_string(),
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
        DeviceSection { name: "auto".to_string(), threads: None, gpus: None }
    }
}

/// Defaults of the sections that also have a required key (and so no `Default`).
mod defaults {
    pub fn eval_fraction() -> f64 {
        0.1
    }
    pub fn split_seed() -> u64 {
        42
    }
    pub fn format() -> String {
        "auto".to_string()
    }
    pub fn max_seq_len() -> usize {
        1024
    }
    pub fn on_bad_record() -> String {
        "error".to_string()
    }
    pub fn lint() -> String {
        "error".to_string()
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
