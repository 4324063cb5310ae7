//! `--gpus N`: runs this same command as N processes, one per GPU of this machine, each
//! told its place by RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.
//!
//! With NNODES and NODE_RANK (and MASTER_ADDR / MASTER_PORT of the machine with
//! NODE_RANK=0) the same command on each machine makes one group of NNODES × N ranks.
//!
//! The launcher owns its processes: Ctrl-C reaches them once, through it (they run in a
//! process group of their own, away from the terminal's signal); a rank that fails takes
//! the others down, since they would wait for it forever; exit 130 (interrupted, after
//! its checkpoint) is not a failure; a launcher killed outright takes its ranks with it.

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::env::NodeEnv;

/// The exit code of a run stopped by Ctrl-C after writing its checkpoint.
pub const INTERRUPTED: i32 = 130;

/// Environment of rank `local` of this machine.
pub fn rank_vars(local: usize, per_node: usize, node: &NodeEnv, addr: &str, port: u16) -> Vec<(String, String)> {
    let world = node.nnodes * per_node;
    let rank = node.node_rank * per_node + local;
    let mut vars = vec![
        ("RANK".to_string(), rank.to_string()),
        ("WORLD_SIZE".to_string(), world.to_string()),
        ("LOCAL_RANK".to_string(), local.to_string()),
        ("LOCAL_WORLD_SIZE".to_string(), per_node.to_string()),
        ("MASTER_ADDR".to_string(), addr.to_string()),
        ("MASTER_PORT".to_string(), port.to_string()),
    ];
    // NVLink multicast (NVLS) can put a shared host's GPUs out of service; an all-reduce of
    // LoRA gradients gains nothing from it.
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        vars.push(("NCCL_NVLS_ENABLE".to_string(), "0".to_string()));
    }
    vars
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for rank 0")?.local_addr()?.port())
}

/// Starts `per_node` ranks of `args` (this executable's arguments) and waits for them.
/// `cpu_threads`: for CPU ranks, the cores each may use (they share the machine). Returns
/// the exit code for the launcher to end with.
pub fn launch(per_node: usize, node: &NodeEnv, args: &[OsString], cpu_threads: Option<usize>) -> Result<i32> {
    anyhow::ensure!(per_node >= 1, "--gpus must be at least 1");
    let exe = std::env::current_exe().context("finding the loratune executable to start the ranks")?;
    let addr = node.master_addr.clone().unwrap_or_else(|| "127.0.0.1".to_string());
    let port = match node.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    let world = node.nnodes * per_node;
    eprintln!(
        "launch  {per_node} rank(s) on this machine{}, {world} in all; rank 0 listens on {addr}:{port}",
        if node.nnodes > 1 { format!(" (node {} of {})", node.node_rank, node.nnodes) } else { String::new() }
    );

    let signals = Arc::new(AtomicUsize::new(0));
    let seen = signals.clone();
    // Ctrl-C is passed on to the ranks, which checkpoint and stop together; without the
    // handler the launcher would die and its ranks end with no checkpoint.
    ctrlc::set_handler(move || {
        seen.fetch_add(1, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;

    let mut children: Vec<(usize, Child)> = Vec::with_capacity(per_node);
    for local in 0..per_node {
        let mut cmd = Command::new(&exe);
        cmd.args(args).envs(rank_vars(local, per_node, node, &addr, port)).process_group(0);
        // SAFETY: prctl is async-signal-safe, as pre_exec requires. A launcher that is
        // killed outright (SIGKILL, SIGTERM) takes its ranks with it instead of leaving
        // them running in their own process group.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        if let Some(t) = cpu_threads {
            cmd.env("RAYON_NUM_THREADS", t.to_string());
        }
        let global = node.node_rank * per_node + local;
        // Rank 0 speaks for the run; the others' output would repeat it. Errors still show.
        if global != 0 {
            cmd.stdout(Stdio::null());
        }
        match cmd.spawn() {
            Ok(child) => children.push((global, child)),
            Err(e) => {
                stop_all(&mut children);
                return Err(e).with_context(|| format!("starting rank {global} ({})", exe.display()));
            }
        }
    }

    let mut forwarded = 0;
    let mut code: Option<i32> = None;
    let mut interrupted = false;
    let mut running: Vec<(usize, Child)> = children;
    while !running.is_empty() {
        let n = signals.load(Ordering::SeqCst);
        while forwarded < n {
            for (_, c) in &running {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            }
            forwarded += 1;
        }
        let mut still = Vec::with_capacity(running.len());
        for (rank, mut c) in running {
            match c.try_wait()? {
                None => still.push((rank, c)),
                Some(status) if status.success() => {}
                Some(status) if status.code() == Some(INTERRUPTED) => interrupted = true,
                Some(status) => {
                    eprintln!("launch  rank {rank} failed ({status}): stopping the other ranks");
                    code.get_or_insert(status.code().unwrap_or(1));
                }
            }
        }
        running = still;
        if code.is_some() {
            stop_all(&mut running);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(code.unwrap_or(if interrupted { INTERRUPTED } else { 0 }))
}

/// Ends the ranks still running: SIGTERM, then SIGKILL after 10 s.
fn stop_all(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (_, c) in children.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_numbered_across_machines() {
        let node = NodeEnv { nnodes: 2, node_rank: 1, master_addr: Some("h0".into()), master_port: Some(29500) };
        let vars = rank_vars(2, 4, &node, "h0", 29500);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            (get("RANK"), get("WORLD_SIZE"), get("LOCAL_RANK"), get("LOCAL_WORLD_SIZE")),
            (Some("6"), Some("8"), Some("2"), Some("4"))
        );
        assert_eq!((get("MASTER_ADDR"), get("MASTER_PORT")), (Some("h0"), Some("29500")));
    }
}
