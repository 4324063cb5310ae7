//! `--gpus N` for the commands that train (`train`, `bench`): this process either starts
//! the ranks and exits with their outcome, or is one rank (or the only process), which
//! opens its device and joins its group.

use anyhow::{Context, Result};
use candle_core::Device;

use crate::config::{DeviceName, EnvKnobs};
use crate::distributed::{self, launch, ProcessGroup};

/// The device and group this process computes with. With `gpus` > 1 (or NNODES > 1) and
/// no RANK in the environment, this process is the launcher instead: it starts the ranks,
/// waits for them and exits with their outcome (it does not return). `cpu_threads`: the
/// cores each CPU rank may use (default: the machine's cores shared out). `env`: the
/// process's place in a group, and how the group connects.
pub(crate) fn device_and_group(
    gpus: usize,
    device_name: DeviceName,
    cpu_threads: Option<usize>,
    env: &EnvKnobs,
) -> Result<(Device, ProcessGroup)> {
    let rank_env = &env.rank;
    if rank_env.is_none() {
        let node = &env.node;
        if gpus > 1 || node.nnodes > 1 {
            let cpu = device_name == DeviceName::Cpu
                || (device_name == DeviceName::Auto && !candle_core::utils::cuda_is_available());
            if !cpu {
                let have = crate::gpu::device_count()?;
                anyhow::ensure!(gpus <= have, "--gpus {gpus}: this machine has {have} GPU(s)");
            }
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = cpu.then(|| cpu_threads.unwrap_or((cores / gpus).max(1)));
            let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            std::process::exit(launch::launch(gpus, node, &args, threads)?);
        }
    }
    let name = match rank_env {
        Some(r) => distributed::rank_device(device_name, r)?,
        None => device_name,
    };
    let device = super::open_device(name)?;
    let timeout = std::time::Duration::from_secs(env.rendezvous_timeout_s);
    let group = match rank_env {
        Some(r) => ProcessGroup::join(r, &device, env.collectives, timeout).with_context(|| {
            format!("rank {} of {}: joining the group at {}:{}", r.rank, r.world_size, r.master_addr, r.master_port)
        })?,
        None => ProcessGroup::single(),
    };
    Ok((device, group))
}
