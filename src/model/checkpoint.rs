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
use super::quantized::{self, is_projection, Quantize, QuantizedWeight, Scratch, CUDA_FORMATS};
use super::tensor_reader::TensorReader;
use super::{gguf_source, safetensors_source};
use crate::tokenizer::Tokenizer;
use candle_core::quantized::QTensor;
use candle_core::Tensor;
use std::collections::HashMap;

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
    /// QLoRA: keep the projections in quantized blocks (None: all dense).
    pub quantize: Option<Quantize>,
}

impl LoadOptions {
    /// f32 on CPU, bf16 on CUDA: the compute dtypes the training step is built for.
    pub fn for_device(device: Device, hub: HubOptions) -> Self {
        let dtype = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        LoadOptions { device, dtype, hub, quantize: None }
    }
}

/// What was loaded and from where, for run manifests and reports.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ModelIdentity {
    pub source: String,
    pub kind: String,
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

fn load_hf_dir(
    dir: &Path,
    source: &ModelSource,
    kind: &'static str,
    opts: &LoadOptions,
) -> Result<LoadedModel, LoadError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(LoadError::Config { path: dir.to_path_buf(), msg: "no config.json in this folder".into() });
    }
    let cfg = ModelConfig::from_hf_file(&config_path)?;
    let files = safetensors_source::WeightFiles::discover(dir)?;
    let quantized = match opts.quantize {
        Some(mode) => quantized_projections(&cfg, &ModelSource::HfDir(dir.to_path_buf()), mode, opts)?,
        None => HashMap::new(),
    };
    let tensors =
        safetensors_source::load_tensors(&cfg, &files, opts.dtype, &opts.device, &|n| quantized.contains_key(n))?;
    let weights = LlamaWeights::from_maps(&cfg, tensors, quantized, dir)?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    check_vocab(&cfg, &tokenizer, &config_path)?;
    let identity = ModelIdentity {
        source: source.to_string(),
        kind: kind.to_string(),
        resolved: dir.to_path_buf(),
        weight_files: files.files.clone(),
        num_parameters: cfg.num_parameters(),
    };
    Ok(LoadedModel { model: Llama::new(cfg, weights)?, tokenizer, identity })
}

fn load_gguf(path: &Path, source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    let (content, _) = gguf_source::read_content(path)?;
    let cfg = gguf_source::config_from_gguf(&content, path)?;
    let quantized = match opts.quantize {
        Some(mode) => quantized_projections(&cfg, source, mode, opts)?,
        None => HashMap::new(),
    };
    let tensors =
        gguf_source::load_tensors(&cfg, &content, path, opts.dtype, &opts.device, &|n| quantized.contains_key(n))?;
    let weights = LlamaWeights::from_maps(&cfg, tensors, quantized, path)?;
    let tokenizer = Tokenizer::from_gguf(&content, path)?;
    check_vocab(&cfg, &tokenizer, path)?;
    let identity = ModelIdentity {
        source: source.to_string(),
        kind: "gguf".to_string(),
        resolved: path.to_path_buf(),
        weight_files: vec![path.to_path_buf()],
        num_parameters: cfg.num_parameters(),
    };
    Ok(LoadedModel { model: Llama::new(cfg, weights)?, tokenizer, identity })
}

/// The projection weights QLoRA keeps in blocks, on `opts.device`: a GGUF file's own
/// blocks where their format has a GPU kernel (`Quantize::Gguf`; others stay dense), or
/// every projection quantized at load, read one at a time and quantized on all cores.
fn quantized_projections(
    cfg: &ModelConfig,
    source: &ModelSource,
    mode: Quantize,
    opts: &LoadOptions,
) -> Result<HashMap<String, QuantizedWeight>, LoadError> {
    let names: Vec<(String, Vec<usize>)> =
        cfg.expected_tensors().into_iter().filter(|(n, _)| is_projection(n)).collect();
    let mut out = HashMap::new();
    let scratch = Scratch::default();
    let wrap = |path: &Path, name: &str| {
        let path = path.to_path_buf();
        let name = name.to_string();
        move |e: candle_core::Error| LoadError::Tensor { path, tensor: name, msg: e.to_string() }
    };
    match mode {
        Quantize::Gguf => {
            let ModelSource::Gguf(path) = source else {
                return Err(LoadError::Config { path: PathBuf::from(source.to_string()), msg: "quantize = \"gguf\" keeps a GGUF file's blocks; this model is not a GGUF file (use q4_k, q4_0, q4_1 or q8_0)".into() });
            };
            let (content, mut file) = gguf_source::read_content(path)?;
            for (name, _) in names {
                let g = gguf_source::gguf_name(&name).expect("projection names map to GGUF");
                let Some(info) = content.tensor_infos.get(&g) else { continue };
                if !CUDA_FORMATS.contains(&info.ggml_dtype) {
                    continue;
                }
                let q = gguf_source::read_blocks(cfg, &content, &mut file, path, &name, &g)?;
                out.insert(
                    name.clone(),
                    QuantizedWeight::with_scratch(q, &opts.device, opts.dtype, scratch.clone())
                        .map_err(wrap(path, &name))?,
                );
            }
        }
        Quantize::To(format) => {
            let mut reader = TensorReader::open(source, &opts.hub)?;
            let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            // Read a few tensors (f32, host), quantize them in parallel, upload, repeat:
            // host memory holds `workers` dense tensors at a time.
            // Rows must split into whole blocks; a projection whose width does not stays dense.
            let names: Vec<(String, Vec<usize>)> =
                names.into_iter().filter(|(_, s)| s[1] % format.block_size() == 0).collect();
            for chunk in names.chunks(workers) {
                let dense: Vec<Tensor> = chunk.iter().map(|(n, s)| reader.read_f32(n, s)).collect::<Result<_, _>>()?;
                let q = quantized::parallel_map(&dense, |w| QTensor::quantize(w, format))
                    .map_err(wrap(&reader.resolved, &chunk[0].0))?;
                for ((name, _), q) in chunk.iter().zip(q) {
                    out.insert(
                        name.clone(),
                        QuantizedWeight::with_scratch(q, &opts.device, opts.dtype, scratch.clone())
                            .map_err(wrap(&reader.resolved, name))?,
                    );
                }
            }
        }
    }
    Ok(out)
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
