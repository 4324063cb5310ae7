//! Where a base model comes from, and turning it into a ready `Llama` plus tokenizer.
//! Three sources: a Hugging Face layout folder, a hub id (resolved to a cached snapshot
//! folder), or a GGUF file. All end in the same HF-named tensors.

use candle_core::{DType, Device};
use serde::Serialize;
use std::path::{Path, PathBuf};

use super::config::ModelConfig;
use super::error::LoadError;
use super::hub::{self, HubOptions};
use super::llama::{Llama, LlamaWeights};
use super::{gguf_source, safetensors_source};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    HfDir(PathBuf),
    Hub(String),
    Gguf(PathBuf),
}

impl ModelSource {
    /// An existing folder is an HF layout folder, an existing file a GGUF; otherwise a
    /// string shaped like `org/name` is a hub id.
    pub fn parse(spec: &str) -> Result<Self, LoadError> {
        let p = Path::new(spec);
        if p.is_dir() {
            Ok(ModelSource::HfDir(p.to_path_buf()))
        } else if p.is_file() {
            Ok(ModelSource::Gguf(p.to_path_buf()))
        } else if hub::looks_like_hub_id(spec) {
            Ok(ModelSource::Hub(spec.to_string()))
        } else {
            Err(LoadError::NotFound(spec.to_string()))
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::HfDir(p) | ModelSource::Gguf(p) => write!(f, "{}", p.display()),
            ModelSource::Hub(id) => write!(f, "{id}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    pub hub: HubOptions,
}

impl LoadOptions {
    /// f32 on CPU, bf16 on CUDA: the compute dtypes the training step is built for.
    pub fn for_device(device: Device, hub: HubOptions) -> Self {
        let dtype = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        LoadOptions { device, dtype, hub }
    }
}

/// What was loaded and from where, for run manifests and reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelIdentity {
    pub source: String,
    pub kind: &'static str,
    /// Local folder or file everything was read from (a hub id resolves to its snapshot).
    pub resolved: PathBuf,
    pub weight_files: Vec<PathBuf>,
    pub num_parameters: usize,
}

pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub identity: ModelIdentity,
}

pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    match source {
        ModelSource::HfDir(dir) => load_hf_dir(dir, source, "hf-folder", opts),
        ModelSource::Hub(id) => {
            let dir = hub::resolve(id, &opts.hub)?;
            load_hf_dir(&dir, source, "hub", opts)
        }
        ModelSource::Gguf(path) => load_gguf(path, source, opts),
    }
}

fn load_hf_dir(dir: &Path, source: &ModelSource, kind: &'static str, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(LoadError::Config { path: dir.to_path_buf(), msg: "no config.json in this folder".into() });
    }
    let cfg = ModelConfig::from_hf_file(&config_path)?;
    let files = safetensors_source::WeightFiles::discover(dir)?;
    let tensors = safetensors_source::load_tensors(&cfg, &files, opts.dtype, &opts.device)?;
    let weights = LlamaWeights::from_map(&cfg, tensors, dir)?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    check_vocab(&cfg, &tokenizer, &config_path)?;
    let identity = ModelIdentity {
        source: source.to_string(),
        kind,
        resolved: dir.to_path_buf(),
        weight_files: files.files.clone(),
        num_parameters: cfg.num_parameters(),
    };
    Ok(LoadedModel { model: Llama::new(cfg, weights)?, tokenizer, identity })
}

fn load_gguf(path: &Path, source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    let (content, _) = gguf_source::read_content(path)?;
    let cfg = gguf_source::config_from_gguf(&content, path)?;
    let tensors = gguf_source::load_tensors(&cfg, &content, path, opts.dtype, &opts.device)?;
    let weights = LlamaWeights::from_map(&cfg, tensors, path)?;
    let tokenizer = Tokenizer::from_gguf(&content, path)?;
    check_vocab(&cfg, &tokenizer, path)?;
    let identity = ModelIdentity {
        source: source.to_string(),
        kind: "gguf",
        resolved: path.to_path_buf(),
        weight_files: vec![path.to_path_buf()],
        num_parameters: cfg.num_parameters(),
    };
    Ok(LoadedModel { model: Llama::new(cfg, weights)?, tokenizer, identity })
}

/// A tokenizer producing ids past the embedding table would index out of bounds.
fn check_vocab(cfg: &ModelConfig, tok: &Tokenizer, path: &Path) -> Result<(), LoadError> {
    if tok.vocab_size() > cfg.vocab_size {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            msg: format!(
                "the tokenizer has {} tokens but the model's vocab_size is {}",
                tok.vocab_size(),
                cfg.vocab_size
            ),
        });
    }
    Ok(())
}

/// Only the tokenizer of a model source (used by `init-model --tokenizer`).
pub fn load_tokenizer(source: &ModelSource, hub_opts: &HubOptions) -> Result<Tokenizer, LoadError> {
    match source {
        ModelSource::HfDir(dir) => Ok(Tokenizer::from_hf_dir(dir)?),
        ModelSource::Hub(id) => Ok(Tokenizer::from_hf_dir(&hub::resolve(id, hub_opts)?)?),
        ModelSource::Gguf(path) => {
            let (content, _) = gguf_source::read_content(path)?;
            Ok(Tokenizer::from_gguf(&content, path)?)
        }
    }
}
