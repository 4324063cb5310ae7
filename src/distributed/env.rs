//! Where a rank learns its place: the environment variables torchrun's users know.
//!
//! `RANK` and `WORLD_SIZE` place the process in the group; `LOCAL_RANK` picks its GPU on
//! its machine; `MASTER_ADDR:MASTER_PORT` is where rank 0 listens. `loratune train --gpus N`
//! sets them for the processes it starts; any other launcher (a Slurm script, say) may
//! set them itself and start `loratune train CONFIG` once per GPU.
//!
//! The command line reads them once, with the other environment knobs
//! (`crate::config::EnvKnobs`).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Default MASTER_PORT, as torch.distributed's.
pub const DEFAULT_PORT: u16 = 29500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankEnv {
    pub rank: usize,
    pub world_size: usize,
    /// This process's GPU ordinal on its machine.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

fn var(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn number<T: std::str::FromStr>(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<T>> {
    match var(get, name) {
        None => Ok(None),
        Some(v) => v.parse::<T>().map(Some).map_err(|_| anyhow::anyhow!("{name}={v}: not a non-negative whole number")),
    }
}

impl RankEnv {
    /// This process's place in a group, from the variables `get` returns; `None` when
    /// `WORLD_SIZE` is not set (a run of one process).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<RankEnv>> {
        let Some(world_size) = number::<usize>(get, "WORLD_SIZE")? else {
            if var(get, "RANK").is_some() {
                bail!("RANK is set but WORLD_SIZE is not: set both (and MASTER_ADDR, MASTER_PORT) for a run of several processes");
            }
            return Ok(None);
        };
        if world_size == 0 {
            bail!("WORLD_SIZE=0: a group has at least one process");
        }
        let rank = number::<usize>(get, "RANK")?
            .context("WORLD_SIZE is set but RANK is not: each process needs its RANK, 0..WORLD_SIZE-1")?;
        if rank >= world_size {
            bail!("RANK={rank} is not below WORLD_SIZE={world_size}");
        }
        let local_rank = number::<usize>(get, "LOCAL_RANK")?.unwrap_or(rank);
        let master_addr = var(get, "MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".to_string());
        let master_port = number::<u16>(get, "MASTER_PORT")
            .map_err(|e| e.context("MASTER_PORT is a TCP port, 1..65535"))?
            .unwrap_or(DEFAULT_PORT);
        if master_port == 0 {
            bail!("MASTER_PORT=0: give the port rank 0 listens on");
        }
        Ok(Some(RankEnv { rank, world_size, local_rank, master_addr, master_port }))
    }
}

/// How the processes of one machine fit in a job of several machines (`--gpus N` with
/// `NNODES` and `NODE_RANK`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEnv {
    pub nnodes: usize,
    pub node_rank: usize,
    /// `None` on one machine: the launcher picks 127.0.0.1.
    pub master_addr: Option<String>,
    /// `None` on one machine: the launcher picks a free port.
    pub master_port: Option<u16>,
}

impl NodeEnv {
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<NodeEnv> {
        let nnodes = number::<usize>(get, "NNODES")?.unwrap_or(1);
        if nnodes == 0 {
            bail!("NNODES=0: a job has at least one machine");
        }
        let node_rank = number::<usize>(get, "NODE_RANK")?.unwrap_or(0);
        if node_rank >= nnodes {
            bail!("NODE_RANK={node_rank} is not below NNODES={nnodes}");
        }
        let master_addr = var(get, "MASTER_ADDR");
        let master_port = number::<u16>(get, "MASTER_PORT")?;
        if nnodes > 1 && (master_addr.is_none() || master_port.is_none()) {
            bail!("NNODES={nnodes}: set MASTER_ADDR and MASTER_PORT (the address and a free port of the machine with NODE_RANK=0) on every machine");
        }
        Ok(NodeEnv { nnodes, node_rank, master_addr, master_port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_world_size_is_a_single_process() {
        assert_eq!(RankEnv::from_vars(&vars(&[])).unwrap(), None);
        let e = RankEnv::from_vars(&vars(&[("RANK", "1")])).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE is not"), "{e}");
    }

    #[test]
    fn rank_variables_are_read_and_checked() {
        let e = RankEnv::from_vars(&vars(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29600"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            e,
            RankEnv { rank: 1, world_size: 4, local_rank: 1, master_addr: "10.0.0.2".into(), master_port: 29600 }
        );
        let e = RankEnv::from_vars(&vars(&[("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")])).unwrap().unwrap();
        assert_eq!((e.local_rank, e.master_addr.as_str(), e.master_port), (1, "127.0.0.1", DEFAULT_PORT));
        for (pairs, says) in [
            (vec![("RANK", "4"), ("WORLD_SIZE", "4")], "RANK=4 is not below WORLD_SIZE=4"),
            (vec![("WORLD_SIZE", "2")], "RANK is not"),
            (vec![("RANK", "0"), ("WORLD_SIZE", "two")], "WORLD_SIZE=two"),
            (vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")], "MASTER_PORT"),
        ] {
            let e = format!("{:#}", RankEnv::from_vars(&vars(&pairs)).unwrap_err());
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn several_machines_need_the_master_address() {
        assert_eq!(
            NodeEnv::from_vars(&vars(&[])).unwrap(),
            NodeEnv { nnodes: 1, node_rank: 0, master_addr: None, master_port: None }
        );
        let e = NodeEnv::from_vars(&vars(&[("NNODES", "2"), ("NODE_RANK", "1")])).unwrap_err();
        assert!(e.to_string().contains("set MASTER_ADDR and MASTER_PORT"), "{e}");
        let n = NodeEnv::from_vars(&vars(&[
            ("NNODES", "2"),
            ("NODE_RANK", "1"),
            ("MASTER_ADDR", "h0"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap();
        assert_eq!((n.nnodes, n.node_rank), (2, 1));
        assert!(NodeEnv::from_vars(&vars(&[("NNODES", "2"), ("NODE_RANK", "2")])).is_err());
    }
}
