//! `loratune init-model`: random-weight checkpoints of a named shape.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

use crate::config::EnvKnobs;
use crate::model::init::{self, InitOptions, PRESETS};
use crate::model::{checkpoint, FloatDtype, ModelSource};
use crate::tokenizer::tiny;

#[derive(Args, Debug)]
pub struct InitModelArgs {
    /// Shape to build: tiny, tiny-qwen2, tiny-llama3, tiny-qwen3, llama2-7b, mistral-7b, qwen2.5-7b,
    /// llama3-8b, qwen3-8b.
    #[arg(long)]
    pub preset: String,
    /// Output folder (Hugging Face layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Take the tokenizer (and chat template) from this model: an HF folder, hub id or
    /// GGUF file. The vocabulary size is set to match it. Default: the tiny byte-level tokenizer.
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Storage dtype; default f32 for tiny presets, bf16 for full-size ones.
    #[arg(long)]
    pub dtype: Option<FloatDtype>,
    /// Largest safetensors shard, e.g. 5GB or 64KiB.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
    /// Standard deviation of the random weights (default: 0.15 for tiny presets, 0.02 otherwise).
    #[arg(long)]
    pub init_std: Option<f32>,
    /// Also write the same weights as a GGUF file (F32, llama architecture).
    #[arg(long)]
    pub gguf: Option<PathBuf>,
}

pub fn run(a: InitModelArgs, env: &EnvKnobs) -> Result<()> {
    let Some(mut cfg) = init::preset(&a.preset) else {
        bail!("unknown preset \"{}\" (expected one of: {})", a.preset, PRESETS.join(", "));
    };
    let tiny_shape = a.preset.starts_with("tiny");
    let tokenizer = match &a.tokenizer {
        Some(spec) => {
            let source = ModelSource::parse(spec)?;
            let tok = checkpoint::load_tokenizer(&source, &env.hub.options())
                .with_context(|| format!("reading the tokenizer of {spec}"))?;
            cfg.vocab_size = tok.vocab_size();
            cfg.bos_token_id = tok.bos_id;
            cfg.eos_token_ids = tok.eos_id.into_iter().collect();
            tok
        }
        None => tiny::tiny_chat_tokenizer()?,
    };
    if a.gguf.is_some() && cfg.architecture != crate::model::Architecture::Llama {
        bail!("--gguf writes llama-architecture GGUF files; preset \"{}\" is {}", a.preset, cfg.architecture.hf_name());
    }
    let dtype = match &a.dtype {
        Some(d) => d.dtype(),
        None if tiny_shape => candle_core::DType::F32,
        None => candle_core::DType::BF16,
    };
    let opts = InitOptions {
        seed: a.seed,
        dtype,
        max_shard_bytes: super::parse_size(&a.max_shard_size)?,
        gguf: a.gguf.clone(),
        init_std: a.init_std.unwrap_or_else(|| init::default_init_std(&a.preset)),
    };
    let start = std::time::Instant::now();
    let cfg = init::write_random_checkpoint(&cfg, &tokenizer, &a.out, &opts)?;
    println!(
        "wrote {} ({} parameters, {:?}, {} layers, vocab {}) to {} in {:.1}s",
        a.preset,
        cfg.num_parameters(),
        dtype,
        cfg.num_hidden_layers,
        cfg.vocab_size,
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    if let Some(g) = &a.gguf {
        println!("wrote {}", g.display());
    }
    Ok(())
}
