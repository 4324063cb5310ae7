//! The command line: argument definitions and dispatch. Each subcommand lives in its own
//! file and turns arguments into calls on the library.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};

use crate::config::{DeviceName, EnvKnobs, NUM_THREADS_VAR};

mod bench_cmd;
mod compare_cmd;
mod data_cmd;
mod eval_cmd;
mod generate_cmd;
mod init_model_cmd;
mod merge_cmd;
mod progress;
mod ranks;
mod report_cmd;
mod train_cmd;

#[derive(Parser, Debug)]
#[command(name = "loratune", version, about = "LoRA fine-tuning runner: load, evaluate and adapt Llama-family models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Training throughput on a fixed job, optionally beside transformers + PEFT's.
    Bench(bench_cmd::BenchArgs),
    /// Two models or adapters (or base vs adapter) answering the same prompts, side by side.
    Compare(compare_cmd::CompareArgs),
    /// Data quality: `data lint` (duplicates, leakage, conflicts, ...) and `data dedup`.
    Data(data_cmd::DataArgs),
    /// Mean loss over the target tokens of a JSONL data set, and perplexity.
    Eval(eval_cmd::EvalArgs),
    /// Generate text for a prompt (streamed) or a JSONL file of prompts, with an optional adapter.
    Generate(generate_cmd::GenerateArgs),
    /// Write a checkpoint with random weights (tiny test models or full-size shapes).
    InitModel(init_model_cmd::InitModelArgs),
    /// Fold an adapter into its base model and write a full Hugging Face checkpoint.
    Merge(merge_cmd::MergeArgs),
    /// Train a LoRA adapter from a TOML config (or --resume a run folder).
    Train(train_cmd::TrainArgs),
    /// Write report.html and report.md (loss plots, metrics, samples) for a run folder.
    Report(report_cmd::ReportArgs),
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let env = environment()?;
    match cli.command {
        Command::Bench(a) => bench_cmd::run(a, &env),
        Command::Compare(a) => compare_cmd::run(a, &env),
        Command::Data(a) => data_cmd::run(a, &env),
        Command::Eval(a) => eval_cmd::run(a, &env),
        Command::Generate(a) => generate_cmd::run(a, &env),
        Command::InitModel(a) => init_model_cmd::run(a, &env),
        Command::Merge(a) => merge_cmd::run(a, &env),
        Command::Train(a) => train_cmd::run(a, &env),
        Command::Report(a) => report_cmd::run(a),
    }
}

/// The environment knobs, read once for the whole process; the process-wide settings
/// they stand for are made here, before any work starts.
fn environment() -> Result<EnvKnobs> {
    let mut env = EnvKnobs::from_env()?;
    if env.candle_num_threads.is_none() {
        // candle runs element-wise CPU ops on its own spinning thread pool while its matmuls
        // use rayon's; with few cores the two pools fight and a step takes twice as long
        // (SmolLM2 on 2 cores: 84 -> 187 tokens/s). Matmuls keep all cores either way.
        std::env::set_var(NUM_THREADS_VAR, "1");
        env.candle_num_threads = Some(1);
    }
    #[cfg(feature = "cuda")]
    crate::kernels::cuda::set_flash_warps(env.flash_warps);
    crate::kernels::cudnn::set_choice(env.attention, env.cudnn_lib.clone());
    Ok(env)
}

/// Opens the device `name` stands for; `auto` picks the first CUDA device when built with
/// CUDA and one is present.
pub(crate) fn open_device(name: DeviceName) -> Result<Device> {
    let ordinal = match name {
        DeviceName::Cpu => return Ok(Device::Cpu),
        DeviceName::Auto if !candle_core::utils::cuda_is_available() => return Ok(Device::Cpu),
        DeviceName::Auto | DeviceName::Cuda => 0,
        DeviceName::CudaOrdinal(n) => n,
    };
    if !candle_core::utils::cuda_is_available() {
        bail!("device \"{name}\" requested but this loratune was built without CUDA (rebuild with --features cuda)");
    }
    Ok(crate::gpu::open_cuda(ordinal)?)
}

/// "5GB", "500MB", "2MiB", "1000" (bytes).
pub(crate) fn parse_size(spec: &str) -> Result<u64> {
    let s = spec.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("size \"{spec}\": expected a number with an optional unit"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("size \"{spec}\": unknown unit \"{u}\" (B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    Ok((num * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2MiB").unwrap(), 2 * 1024 * 1024);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("5 parsecs").is_err());
    }
}
