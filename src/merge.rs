//! `merge`: an adapter folded into its base, W' = W + s·B·A for every adapted projection,
//! written as a complete Hugging Face checkpoint (sharded safetensors + index, config.json,
//! tokenizer files with the chat template, generation_config.json) that transformers and
//! loratune load like any other model.
//!
//! Streaming: base tensors are read one at a time (mapped safetensors, or one GGUF tensor
//! dequantized), merged in f32 and written shard by shard, so memory holds one output shard
//! plus one f32 tensor, never the model. The folder appears only when complete: it is built
//! beside the destination and renamed into place.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::lora::{self, LoraSpec, LoraWeights, Target};
use crate::model::hub::HubOptions;
use crate::model::shard_writer::{self, write_json};
use crate::model::tensor_reader::TensorReader;
use crate::model::{checkpoint, LoadError, ModelSource};

/// Files of a Hugging Face folder that describe the tokenizer and generation, copied as they
/// are when the base is such a folder.
const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
];

/// The record `merge` leaves in the output folder.
pub const RECORD_FILE: &str = "loratune_merge.json";

#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Storage dtype of the merged weights; None keeps the base's (bf16 for a quantized GGUF).
    pub dtype: Option<DType>,
    pub max_shard_bytes: u64,
    /// Replace an existing output folder (only once the new one is complete).
    pub overwrite: bool,
}

/// What was merged into what: written to `RECORD_FILE` and returned.
#[derive(Debug, Clone, Serialize)]
pub struct MergeRecord {
    pub loratune_version: &'static str,
    pub git_commit: &'static str,
    pub base: String,
    pub base_files: Vec<PathBuf>,
    pub adapter: PathBuf,
    pub adapter_sha256: String,
    pub lora: LoraSpec,
    pub scaling: f64,
    pub dtype: String,
    pub tensors: usize,
    pub merged_tensors: usize,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Adapter(#[from] lora::AdapterError),
    #[error("{}: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
}

/// Merges the adapter in `adapter_dir` into `source` and writes the result to `out`.
/// `progress(done_bytes, total_bytes)` follows the written tensor data.
pub fn merge(
    source: &ModelSource,
    hub: &HubOptions,
    adapter_dir: &Path,
    out: &Path,
    opts: &MergeOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<MergeRecord, MergeError> {
    let start = std::time::Instant::now();
    let out_err = |msg: String| MergeError::Output { path: out.to_path_buf(), msg };
    if out.exists() && !opts.overwrite {
        return Err(out_err("already exists (pass --overwrite to replace it)".into()));
    }
    let mut reader = TensorReader::open(source, hub)?;
    let cfg = reader.config.clone();
    let adapter = lora::load_adapter(adapter_dir, &cfg, &Device::Cpu)?;
    let dtype = opts.dtype.or(reader.stored_dtype()).unwrap_or(DType::BF16);

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| LoadError::io(parent, e))?;
    let name = out.file_name().ok_or_else(|| out_err("not a folder name".into()))?.to_string_lossy();
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(parent)
        .map_err(|e| LoadError::io(parent, e))?;
    let dir = staging.path();

    write_metadata(&reader, source, hub, dir, dtype)?;
    let deltas = adapted_tensors(&adapter);
    let tensors = cfg.expected_tensors();
    let total: u64 = tensors.iter().map(|(_, s)| (s.iter().product::<usize>() * dtype.size_in_bytes()) as u64).sum();
    let mut done = 0u64;
    let mut merged = 0usize;
    let bytes = shard_writer::write_shards(
        dir,
        &tensors,
        dtype,
        opts.max_shard_bytes,
        |name, shape| {
            let w = reader.read_f32(name, shape)?;
            match deltas.get(name) {
                Some(&(layer, target)) => {
                    merged += 1;
                    let pair = adapter.layers[layer].get(target).expect("indexed from this adapter");
                    Ok(merge_weight(&w, &pair.a, &pair.b, adapter.scaling)?)
                }
                None => Ok(w),
            }
        },
        |b| {
            done += b;
            progress(done, total);
        },
    )?;

    let weights = adapter_dir.join(lora::ADAPTER_WEIGHTS_FILE);
    let (adapter_sha256, _) = crate::digest::sha256_file(&weights).map_err(|e| LoadError::io(&weights, e))?;
    let record = MergeRecord {
        loratune_version: env!("CARGO_PKG_VERSION"),
        git_commit: option_env!("LORATUNE_GIT_COMMIT").unwrap_or("unknown"),
        base: source.to_string(),
        base_files: reader.weight_files(),
        adapter: adapter_dir.to_path_buf(),
        adapter_sha256,
        lora: adapter.spec.clone(),
        scaling: adapter.scaling,
        dtype: dtype.as_str().to_string(),
        tensors: tensors.len(),
        merged_tensors: merged,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_json(&dir.join(RECORD_FILE), &serde_json::to_value(&record).expect("serialisable"))?;
    install(staging, out)?;
    Ok(record)
}

/// W' = W + s · B A, in f32. w: (out, in), a: (r, in), b: (out, r).
pub fn merge_weight(w: &Tensor, a: &Tensor, b: &Tensor, scaling: f64) -> candle_core::Result<Tensor> {
    w + (b.matmul(a)? * scaling)?
}

/// HF weight name -> (layer, target) for every projection the adapter touches.
fn adapted_tensors(adapter: &LoraWeights) -> HashMap<String, (usize, Target)> {
    let mut out = HashMap::new();
    for (l, layer) in adapter.layers.iter().enumerate() {
        for t in Target::ALL {
            if layer.get(t).is_some() {
                out.insert(format!("model.layers.{l}.{}.weight", t.module_path()), (l, t));
            }
        }
    }
    out
}

/// config.json (the base's own, with the new dtype), tokenizer files and
/// generation_config.json. A Hugging Face base's files are copied byte for byte; a GGUF
/// base's are rebuilt from its metadata.
fn write_metadata(
    reader: &TensorReader,
    source: &ModelSource,
    hub: &HubOptions,
    dir: &Path,
    dtype: DType,
) -> Result<(), LoadError> {
    let dtype_name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    if reader.is_hf_dir() {
        let src = &reader.resolved;
        let config_path = src.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| LoadError::io(&config_path, e))?;
        let mut config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LoadError::Config { path: config_path.clone(), msg: format!("invalid JSON: {e}") })?;
        let obj = config
            .as_object_mut()
            .ok_or_else(|| LoadError::Config { path: config_path.clone(), msg: "not a JSON object".into() })?;
        // transformers 4 reads torch_dtype, 5 reads dtype: keep whichever the base has.
        if obj.contains_key("dtype") {
            obj.insert("dtype".into(), dtype_name.into());
        }
        if obj.contains_key("torch_dtype") || !obj.contains_key("dtype") {
            obj.insert("torch_dtype".into(), dtype_name.into());
        }
        write_json(&dir.join("config.json"), &config)?;
        for f in COPIED_FILES {
            let from = src.join(f);
            if from.is_file() {
                std::fs::copy(&from, dir.join(f)).map_err(|e| LoadError::io(&from, e))?;
            }
        }
        if src.join("generation_config.json").is_file() {
            return Ok(());
        }
    } else {
        let mut config = reader.config.to_hf_json();
        config["torch_dtype"] = dtype_name.into();
        write_json(&dir.join("config.json"), &config)?;
        checkpoint::load_tokenizer(source, hub)?.save_hf(dir)?;
    }
    let cfg = &reader.config;
    let mut gen = serde_json::json!({});
    if let Some(b) = cfg.bos_token_id {
        gen["bos_token_id"] = b.into();
    }
    match cfg.eos_token_ids.as_slice() {
        [] => {}
        [one] => gen["eos_token_id"] = (*one).into(),
        many => gen["eos_token_id"] = many.to_vec().into(),
    }
    write_json(&dir.join("generation_config.json"), &gen)
}

/// Moves the finished staging folder to `out`, replacing an old `out` only after the new
/// folder is complete.
fn install(staging: tempfile::TempDir, out: &Path) -> Result<(), LoadError> {
    let built = staging.keep();
    if out.exists() {
        let old = out.with_file_name(format!(
            ".{}.old-{}",
            out.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(out, &old).map_err(|e| LoadError::io(out, e))?;
        std::fs::rename(&built, out).map_err(|e| LoadError::io(out, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| LoadError::io(&old, e))?;
    } else {
        std::fs::rename(&built, out).map_err(|e| LoadError::io(out, e))?;
    }
    Ok(())
}
