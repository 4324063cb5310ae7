//! `loratune train`: a LoRA training run from a TOML config, or `--resume` of one.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::{EnvKnobs, TrainConfig};
use crate::distributed::launch;
use crate::run::layout::CONFIG_FILE;
use crate::run::{self, RunOptions, RunStatus};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The run's TOML config (see configs/README.md).
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Continue the run in this folder from its newest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Override a config key: --set train.lr=1e-4 (repeatable). When resuming only
    /// train.max_steps and train.epochs may change (to extend a run).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Data parallel over N GPUs of this machine: one process per GPU, the gradients
    /// summed with NCCL, a step of micro_batch_size x grad_accum x N examples
    /// (`[device] gpus`). With `device.name = "cpu"`: N CPU processes. Several machines:
    /// NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT (docs/distributed.md).
    #[arg(long, value_name = "N")]
    pub gpus: Option<usize>,
}

pub fn run(a: TrainArgs, env: &EnvKnobs) -> Result<()> {
    let (config, source, resume) = match (&a.config, &a.resume) {
        (_, Some(dir)) => {
            for o in &a.overrides {
                let key = o.split('=').next().unwrap_or("").trim();
                if key != "train.max_steps" && key != "train.epochs" {
                    bail!("--set {o}: a resumed run keeps its config (only train.max_steps and train.epochs may change, to extend it)");
                }
            }
            let path = dir.join(CONFIG_FILE);
            anyhow::ensure!(
                path.is_file(),
                "{}: no {CONFIG_FILE} here, so this is not a loratune run folder",
                dir.display()
            );
            let mut cfg = TrainConfig::from_file(&path, &a.overrides)?;
            // The run folder is where it is now, even if it was moved.
            cfg.output.dir = dir.display().to_string();
            (cfg, path.display().to_string(), true)
        }
        (Some(path), None) => (TrainConfig::from_file(path, &a.overrides)?, path.display().to_string(), false),
        (None, None) => unreachable!("clap requires one"),
    };
    if let Some(n) = config.device.threads {
        // Read by candle's CPU kernels and rayon's pool, which start later.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let gpus = a.gpus.or(config.device.gpus).unwrap_or(1);
    let (device, group) = super::ranks::device_and_group(gpus, config.device.name, config.device.threads, env)?;
    let rank = group.rank;
    let several = group.world_size > 1;

    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint (the previous one is intact)");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step, writing a checkpoint, then stopping (Ctrl-C again to quit at once)"
        );
    })
    .context("installing the Ctrl-C handler")?;

    let outcome = run::run(RunOptions {
        config,
        config_source: source,
        resume,
        device,
        interrupt,
        command_line: std::env::args().collect(),
        group,
        environment: env.clone(),
    })
    .with_context(|| if several { format!("rank {rank}") } else { "training".to_string() })?;
    if rank == 0 {
        println!("wrote   {}", outcome.run_dir.display());
    }
    if outcome.status == RunStatus::Interrupted {
        if rank == 0 {
            println!(
                "resume  loratune train --resume {}{}",
                outcome.run_dir.display(),
                if several { " (with the same number of ranks)" } else { "" }
            );
        }
        std::process::exit(launch::INTERRUPTED);
    }
    Ok(())
}
