//! `init-model`: checkpoints with random weights in Hugging Face layout, for tests (tiny
//! presets, with their own tokenizer) and for GPU benchmarks (full 7B/8B shapes).
//! Weights are a pure function of (seed, tensor name), so the same command always writes
//! the same checkpoint and tests can commit reference numbers computed on it.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::config::{Architecture, Llama3RopeScaling, ModelConfig};
use super::error::LoadError;
use super::gguf_source::{gguf_name, permute_rows};
use super::llama::{Llama, LlamaWeights};
use super::shard_writer::{self, write_json};
use crate::tokenizer::Tokenizer;

pub const PRESETS: &[&str] = &[
    "tiny",
    "tiny-qwen2",
    "tiny-llama3",
    "tiny-qwen3",
    "llama2-7b",
    "mistral-7b",
    "qwen2.5-7b",
    "llama3-8b",
    "qwen3-8b",
];

/// The shape of a preset. `vocab_size` is replaced by the tokenizer's size when a
/// tokenizer is taken from another model.
pub fn preset(name: &str) -> Option<ModelConfig> {
    let base = ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 320,
        hidden_size: 64,
        intermediate_size: 176,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: false,
        qkv_bias: false,
        o_bias: false,
        qk_norm: false,
        bos_token_id: None,
        eos_token_ids: vec![258],
    };
    let seven_b = ModelConfig {
        vocab_size: 32000,
        hidden_size: 4096,
        intermediate_size: 11008,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 32,
        head_dim: 128,
        max_position_embeddings: 4096,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        ..base.clone()
    };
    Some(match name {
        "tiny" => base,
        "tiny-qwen2" => ModelConfig {
            architecture: Architecture::Qwen2,
            qkv_bias: true,
            tie_word_embeddings: true,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            ..base
        },
        // Qwen3: q/k norms, head_dim set apart from hidden / heads, tied embeddings.
        "tiny-qwen3" => ModelConfig {
            architecture: Architecture::Qwen3,
            qk_norm: true,
            head_dim: 24,
            tie_word_embeddings: true,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            ..base
        },
        "tiny-llama3" => ModelConfig {
            num_key_value_heads: 1,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
            ..base
        },
        "llama2-7b" => seven_b,
        "mistral-7b" => ModelConfig {
            architecture: Architecture::Mistral,
            intermediate_size: 14336,
            num_key_value_heads: 8,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 32768,
            ..seven_b
        },
        "qwen2.5-7b" => ModelConfig {
            architecture: Architecture::Qwen2,
            vocab_size: 152064,
            hidden_size: 3584,
            intermediate_size: 18944,
            num_hidden_layers: 28,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 32768,
            qkv_bias: true,
            bos_token_id: Some(151643),
            eos_token_ids: vec![151645],
            ..seven_b
        },
        "qwen3-8b" => ModelConfig {
            architecture: Architecture::Qwen3,
            qk_norm: true,
            vocab_size: 151936,
            intermediate_size: 12288,
            num_hidden_layers: 36,
            num_key_value_heads: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 40960,
            bos_token_id: None,
            eos_token_ids: vec![151645],
            ..seven_b.clone()
        },
        "llama3-8b" => ModelConfig {
            vocab_size: 128256,
            intermediate_size: 14336,
            num_key_value_heads: 8,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            max_position_embeddings: 131072,
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001],
            ..seven_b
        },
        _ => return None,
    })
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub seed: u64,
    /// Storage dtype of the written weights.
    pub dtype: DType,
    /// Start a new shard when the current one would exceed this many bytes.
    pub max_shard_bytes: u64,
    /// Also write a GGUF file (F32 tensors) of the same weights.
    pub gguf: Option<PathBuf>,
    /// Standard deviation of the random weights.
    pub init_std: f32,
}

/// Tiny presets use large weights so that their logits are far from uniform: a test
/// comparing losses then notices a wrong RoPE, mask or norm. Full-size shapes use the
/// usual 0.02, which keeps 7B activations in range.
pub fn default_init_std(preset: &str) -> f32 {
    if preset.starts_with("tiny") {
        0.15
    } else {
        0.02
    }
}

/// Deterministic N(0, std) weights (norm weights 1 + the same noise, so a test notices a
/// norm weight that is ignored) for one tensor, filled in parallel chunks.
pub fn init_tensor(name: &str, shape: &[usize], seed: u64, std: f32) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let is_norm = name.ends_with("norm.weight");
    let mut data = vec![0f32; n];
    const CHUNK: usize = 1 << 20;
    let threads = std::thread::available_parallelism().map(|x| x.get()).unwrap_or(1);
    let chunks: Vec<(usize, &mut [f32])> = data.chunks_mut(CHUNK).enumerate().collect();
    let per_thread = chunks.len().div_ceil(threads).max(1);
    let mut chunks = chunks;
    std::thread::scope(|s| {
        while !chunks.is_empty() {
            let take = per_thread.min(chunks.len());
            let mine: Vec<(usize, &mut [f32])> = chunks.drain(..take).collect();
            s.spawn(move || {
                for (ci, chunk) in mine {
                    let mut h = Sha256::new();
                    h.update(seed.to_le_bytes());
                    h.update(name.as_bytes());
                    h.update((ci as u64).to_le_bytes());
                    let digest: [u8; 32] = h.finalize().into();
                    let mut rng = rand_chacha::ChaCha8Rng::from_seed(digest);
                    let normal = Normal::new(0f32, std).expect("valid std");
                    for x in chunk.iter_mut() {
                        *x = normal.sample(&mut rng);
                    }
                    if is_norm {
                        chunk.iter_mut().for_each(|x| *x += 1.0);
                    }
                }
            });
        }
    });
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Writes `dir` with config.json, generation_config.json, tokenizer files and safetensors
/// (sharded with an index when larger than `max_shard_bytes`). Returns the written config.
pub fn write_random_checkpoint(
    cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    dir: &Path,
    opts: &InitOptions,
) -> Result<ModelConfig, LoadError> {
    // The GGUF writer knows llama.cpp's names for Llama-layout tensors only (no q/k norms).
    if opts.gguf.is_some() && cfg.qk_norm {
        return Err(LoadError::Config {
            path: dir.to_path_buf(),
            msg: format!("a GGUF copy of a {} shape is not supported yet", cfg.architecture.hf_name()),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| LoadError::io(dir, e))?;
    let cfg = cfg.clone();
    write_json(&dir.join("config.json"), &cfg.to_hf_json())?;
    let mut gen = serde_json::json!({ "_from_model_config": true });
    if let Some(b) = cfg.bos_token_id {
        gen["bos_token_id"] = b.into();
    }
    if let Some(e) = cfg.eos_token_ids.first() {
        gen["eos_token_id"] = (*e).into();
    }
    write_json(&dir.join("generation_config.json"), &gen)?;
    tokenizer.save_hf(dir)?;

    let mut gguf_tensors: Vec<(String, QTensor)> = Vec::new();
    shard_writer::write_shards(
        dir,
        &cfg.expected_tensors(),
        opts.dtype,
        opts.max_shard_bytes,
        |name, shape| {
            let t = init_tensor(name, shape, opts.seed, opts.init_std)?;
            if opts.gguf.is_some() {
                gguf_tensors.push((gguf_name(name).expect("known name"), gguf_tensor(&cfg, name, &t)?));
            }
            Ok(t)
        },
        |_| {},
    )?;
    if let Some(gguf_path) = &opts.gguf {
        write_gguf(&cfg, tokenizer, &gguf_tensors, gguf_path)?;
    }
    Ok(cfg)
}

/// q/k rows go into llama.cpp's interleaved order, the inverse of what loading undoes.
fn gguf_tensor(cfg: &ModelConfig, name: &str, t: &Tensor) -> candle_core::Result<QTensor> {
    let t = if name.contains("self_attn.q_proj.") {
        permute_rows(t, cfg.num_attention_heads)?
    } else if name.contains("self_attn.k_proj.") {
        permute_rows(t, cfg.num_key_value_heads)?
    } else {
        t.clone()
    };
    QTensor::quantize(&t, GgmlDType::F32)
}

fn write_gguf(
    cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    tensors: &[(String, QTensor)],
    path: &Path,
) -> Result<(), LoadError> {
    use gguf_file::Value as V;
    let mut meta: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String("llama".into())),
        ("general.name".into(), V::String("loratune-random".into())),
        ("llama.vocab_size".into(), V::U32(cfg.vocab_size as u32)),
        ("llama.context_length".into(), V::U32(cfg.max_position_embeddings as u32)),
        ("llama.embedding_length".into(), V::U32(cfg.hidden_size as u32)),
        ("llama.feed_forward_length".into(), V::U32(cfg.intermediate_size as u32)),
        ("llama.block_count".into(), V::U32(cfg.num_hidden_layers as u32)),
        ("llama.attention.head_count".into(), V::U32(cfg.num_attention_heads as u32)),
        ("llama.attention.head_count_kv".into(), V::U32(cfg.num_key_value_heads as u32)),
        ("llama.attention.key_length".into(), V::U32(cfg.head_dim as u32)),
        ("llama.attention.value_length".into(), V::U32(cfg.head_dim as u32)),
        ("llama.rope.dimension_count".into(), V::U32(cfg.head_dim as u32)),
        ("llama.attention.layer_norm_rms_epsilon".into(), V::F32(cfg.rms_norm_eps as f32)),
        ("llama.rope.freq_base".into(), V::F32(cfg.rope_theta as f32)),
    ];
    if let Some(s) = &cfg.rope_scaling {
        meta.push(("llama.rope.scaling.type".into(), V::String("llama3".into())));
        meta.push(("llama.rope.scaling.factor".into(), V::F32(s.factor as f32)));
        meta.push(("llama.rope.scaling.low_freq_factor".into(), V::F32(s.low_freq_factor as f32)));
        meta.push(("llama.rope.scaling.high_freq_factor".into(), V::F32(s.high_freq_factor as f32)));
        meta.push((
            "llama.rope.scaling.original_context_length".into(),
            V::U32(s.original_max_position_embeddings as u32),
        ));
    }
    meta.extend(crate::tokenizer::gguf::gguf_tokenizer_metadata(tokenizer)?);
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    atomic_write(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        gguf_file::write(&mut f, &meta_refs, &tensor_refs).map_err(|e| std::io::Error::other(e.to_string()))?;
        f.flush()
    })
}

fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), LoadError> {
    crate::atomic::write_with(path, write).map_err(|e| LoadError::io(path, e))
}

/// The same deterministic random weights as `write_random_checkpoint`, built in memory
/// (f32, on `device`) for tests that need no files.
pub fn random_model(cfg: &ModelConfig, seed: u64, std: f32, device: &Device) -> Result<Llama, LoadError> {
    random_model_as(cfg, seed, std, device, DType::F32)
}

/// As [`random_model`], each tensor converted to `dtype` before it moves to `device`, so a
/// 7B shape needs one f32 tensor of host memory at a time (benchmarks: `bench --preset`).
pub fn random_model_as(
    cfg: &ModelConfig,
    seed: u64,
    std: f32,
    device: &Device,
    dtype: DType,
) -> Result<Llama, LoadError> {
    let mut map = std::collections::HashMap::new();
    for (name, shape) in cfg.expected_tensors() {
        let t = init_tensor(&name, &shape, seed, std)?.to_dtype(dtype)?.to_device(device)?;
        map.insert(name, t);
    }
    let weights = LlamaWeights::from_map(cfg, map, Path::new("<memory>"))?;
    Ok(Llama::new(cfg.clone(), weights)?)
}

/// Random weights drawn on `device` by its own generator (seeded with `seed`): the
/// distribution of [`random_model_as`] but not its values. For benchmarks on a GPU, where
/// drawing 7B values on the host would take half a minute of the GPU's time.
pub fn random_model_on_device(
    cfg: &ModelConfig,
    seed: u64,
    std: f32,
    device: &Device,
    dtype: DType,
) -> Result<Llama, LoadError> {
    device.set_seed(seed)?;
    let mut map = std::collections::HashMap::new();
    for (name, shape) in cfg.expected_tensors() {
        let is_norm = name.ends_with("norm.weight");
        let mut t = Tensor::randn(0f32, std, shape.as_slice(), device)?;
        if is_norm {
            t = (t + 1.0)?;
        }
        map.insert(name, t.to_dtype(dtype)?);
    }
    let weights = LlamaWeights::from_map(cfg, map, Path::new("<device>"))?;
    Ok(Llama::new(cfg.clone(), weights)?)
}
