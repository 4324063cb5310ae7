//! `loratune compare A B`: two models, or a model with and without an adapter, answering
//! the same prompts; metrics and answers side by side.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

use crate::config::{DeviceName, EnvKnobs};
use crate::eval::compare::{self, CompareOptions, Side};
use crate::model::{FloatDtype, LoadOptions};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Side A: `base` (the --model alone), an adapter folder (applied to --model, or to the
    /// base its adapter_config.json names), or a model (HF folder, GGUF file, hub id).
    pub a: String,
    /// Side B, as side A.
    pub b: String,
    /// JSONL prompts: training records (their answers are the references) or prompt-only
    /// records, as `generate --data` reads them.
    #[arg(long)]
    pub data: PathBuf,
    /// The base model for `base` and for adapters.
    #[arg(long)]
    pub model: Option<String>,
    /// Folder for compare.json, compare.jsonl and compare.md.
    #[arg(long, default_value = "compare")]
    pub out: PathBuf,
    /// Only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Longest reference encoding for the loss (tokens).
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceName::Auto)]
    pub device: DeviceName,
    /// Compute dtype (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<FloatDtype>,
}

pub fn run(a: CompareArgs, env: &EnvKnobs) -> Result<()> {
    let side_a = Side::parse(&a.a, a.model.as_deref()).context("side A")?;
    let side_b = Side::parse(&a.b, a.model.as_deref()).context("side B")?;
    let mut load = LoadOptions::for_device(super::open_device(a.device)?, env.hub.options());
    if let Some(d) = a.dtype {
        load.dtype = d.dtype();
    }
    let opts =
        CompareOptions { load, max_new_tokens: a.max_new_tokens, max_seq_len: a.max_seq_len, batch_size: a.batch_size };
    let c = compare::compare(&side_a, &side_b, &a.data, a.limit, &opts, |msg| eprintln!("{msg}"))?;
    let rows = compare::metric_rows(&c);
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let wa = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(1);
    println!("{:w$}  {:wa$}  B", "", "A");
    for (name, va, vb) in &rows {
        println!("{name:w$}  {va:wa$}  {vb}");
    }
    println!("{} prompts; identical answers {:.1}%", c.prompts.len(), 100.0 * c.identical);
    for p in compare::write(&c, &a.out)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}
