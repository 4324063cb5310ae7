//! `loratune merge`: fold an adapter into its base and write a full checkpoint.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

use crate::config::EnvKnobs;
use crate::merge::{self, MergeOptions};
use crate::model::{FloatDtype, ModelSource};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model: a Hugging Face layout folder, a hub id (org/name) or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// Adapter folder (adapter_model.safetensors + adapter_config.json, PEFT's layout),
    /// e.g. a training run's folder or its best/.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder (Hugging Face layout); must not exist unless --overwrite.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype: bf16, f16 or f32 (default: the base's; bf16 for a quantized GGUF).
    #[arg(long)]
    pub dtype: Option<FloatDtype>,
    /// Largest safetensors shard, e.g. 2GB or 500MB. Memory use is about one shard.
    #[arg(long, default_value = "2GB")]
    pub max_shard_size: String,
    /// Replace an existing output folder (once the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: MergeArgs, env: &EnvKnobs) -> Result<()> {
    let opts = MergeOptions {
        dtype: a.dtype.map(FloatDtype::dtype),
        max_shard_bytes: super::parse_size(&a.max_shard_size)?,
        overwrite: a.overwrite,
    };
    let source = ModelSource::parse(&a.model)?;
    let bar = super::progress::bar(0, "merge");
    let record = merge::merge(&source, &env.hub.options(), &a.adapter, &a.out, &opts, |done, total| {
        bar.set_length(total >> 20);
        bar.set_position(done >> 20);
    })
    .with_context(|| format!("merging {} into {}", a.adapter.display(), a.model))?;
    bar.finish_and_clear();
    println!("base         {}", record.base);
    println!(
        "adapter      {} (r={}, alpha={}, scaling {}, {})",
        record.adapter.display(),
        record.lora.r,
        record.lora.alpha,
        record.scaling,
        record.lora.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
    );
    println!(
        "merged       {} of {} tensors, {} MiB of {} weights",
        record.merged_tensors,
        record.tensors,
        record.bytes >> 20,
        record.dtype
    );
    match crate::bench::peak_rss_mib() {
        Some(peak) => println!("time         {:.1}s (peak memory {peak:.0} MiB)", record.seconds),
        None => println!("time         {:.1}s", record.seconds),
    }
    println!("wrote        {}", a.out.display());
    Ok(())
}
