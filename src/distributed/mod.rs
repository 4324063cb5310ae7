//! Data-parallel training over several processes: one per GPU (or CPU process), each with
//! the whole frozen base, each running its share of a step's micro-batches; the LoRA
//! gradients are summed over ranks before the optimizer, so every rank takes the same step.
//!
//! - `env.rs`: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, as torchrun's;
//! - `tcp.rs`: the rendezvous and the host collectives (star through rank 0);
//! - `nccl.rs`: the GPU gradient all-reduce (feature `nccl`);
//! - `launch.rs`: `--gpus N`, one process per GPU, and what happens when one fails.

pub mod env;
pub mod launch;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod tcp;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::time::Duration;

use crate::config::DeviceName;

pub use env::{NodeEnv, RankEnv};
use tcp::TcpGroup;

/// `LORATUNE_COLLECTIVES=host` sends GPU gradients through the host links instead of NCCL
/// (slow; for builds without NCCL and for checking NCCL's results).
pub const COLLECTIVES_VAR: &str = "LORATUNE_COLLECTIVES";
/// Seconds rank 0 waits for the others to connect, and they for it (default 600).
pub const TIMEOUT_VAR: &str = "LORATUNE_RENDEZVOUS_TIMEOUT";

/// How the GPU ranks of a group may sum their gradients (`LORATUNE_COLLECTIVES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Collectives {
    /// NCCL, where the build has it.
    #[default]
    Nccl,
    /// Through host memory (slow; for builds without NCCL and for checking NCCL's results).
    Host,
}

/// How gradients travel between ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// One process: nothing travels.
    #[default]
    Single,
    /// Through rank 0 over TCP, via host memory.
    Host,
    /// NCCL between GPUs.
    Nccl,
}

/// This process's membership of the training group.
pub struct ProcessGroup {
    pub rank: usize,
    pub world_size: usize,
    host: Option<TcpGroup>,
    #[cfg(feature = "nccl")]
    nccl: Option<nccl::NcclComm>,
    pub backend: Backend,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {} of {}, {:?})", self.rank, self.world_size, self.backend)
    }
}

impl ProcessGroup {
    /// A run of one process.
    pub fn single() -> ProcessGroup {
        ProcessGroup {
            rank: 0,
            world_size: 1,
            host: None,
            #[cfg(feature = "nccl")]
            nccl: None,
            backend: Backend::Single,
        }
    }

    /// Joins the group `env` describes, with this rank's compute `device`: host links
    /// always, NCCL too when the device is a GPU and the build has it (unless
    /// `collectives` is `Host`). `timeout`: how long to wait for the other ranks to connect.
    pub fn join(env: &RankEnv, device: &Device, collectives: Collectives, timeout: Duration) -> Result<ProcessGroup> {
        let host = TcpGroup::connect(env.rank, env.world_size, &env.master_addr, env.master_port, timeout)?;
        let want_host = collectives == Collectives::Host;
        // A group of one on a GPU still goes through NCCL where the build has it: the way
        // to check that path on one GPU.
        let backend = if device.is_cuda() && !want_host && (env.world_size > 1 || cfg!(feature = "nccl")) {
            if !cfg!(feature = "nccl") {
                anyhow::bail!(
                    "several GPU processes need NCCL, and this loratune was built without it (rebuild with --features cuda,nccl), \
                     or set {COLLECTIVES_VAR}=host to send the gradients through host memory (slow)"
                );
            }
            Backend::Nccl
        } else if env.world_size == 1 {
            Backend::Single
        } else {
            Backend::Host
        };
        #[cfg(feature = "nccl")]
        let nccl = match backend {
            Backend::Nccl => Some(nccl::NcclComm::new(device, &host)?),
            _ => None,
        };
        Ok(ProcessGroup {
            rank: env.rank,
            world_size: env.world_size,
            host: Some(host),
            #[cfg(feature = "nccl")]
            nccl,
            backend,
        })
    }

    /// Rank 0 writes the run's files and prints; the others only compute.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Element-wise sum over ranks of a few host values, in place (the same bits on every rank).
    pub fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        match &self.host {
            Some(h) => h.sum_f64(values),
            None => Ok(()),
        }
    }

    /// Rank 0's `bytes` on every rank.
    pub fn broadcast(&self, bytes: &mut Vec<u8>) -> Result<()> {
        match &self.host {
            Some(h) => h.broadcast(bytes),
            None => Ok(()),
        }
    }

    /// The element-wise sum over ranks of each tensor (shapes as given; f32 on the wire,
    /// all tensors in one buffer so a step makes one collective call).
    pub fn sum_tensors(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        // A group of one still calls NCCL (world size 1 checks the NCCL path on one GPU).
        if self.backend == Backend::Single || tensors.is_empty() {
            return Ok(tensors.to_vec());
        }
        let device = tensors[0].device().clone();
        let flat: Vec<Tensor> =
            tensors.iter().map(|t| t.to_dtype(DType::F32)?.flatten_all()).collect::<candle_core::Result<_>>()?;
        let flat = Tensor::cat(&flat, 0)?;
        let n = flat.elem_count();
        let summed = match self.backend {
            #[cfg(feature = "nccl")]
            Backend::Nccl => self.nccl.as_ref().expect("NCCL backend has a communicator").sum(&flat)?,
            _ => {
                let mut host = flat.to_vec1::<f32>()?;
                self.host.as_ref().expect("a group of several ranks has host links").sum_f32(&mut host)?;
                Tensor::from_vec(host, n, &device)?
            }
        };
        let mut out = Vec::with_capacity(tensors.len());
        let mut offset = 0;
        for t in tensors {
            let k = t.elem_count();
            out.push(summed.narrow(0, offset, k)?.reshape(t.shape())?.to_dtype(t.dtype())?);
            offset += k;
        }
        Ok(out)
    }

    /// Checks that every rank holds the same `tensors` (the adapter after a step): the
    /// ranks compare a checksum with rank 0's. A difference means the ranks diverged, which
    /// the summed gradients and a deterministic optimizer should make impossible.
    pub fn check_in_sync(&self, tensors: &[Tensor], what: &str) -> Result<()> {
        if self.world_size == 1 {
            return Ok(());
        }
        let (mut sum, mut sq) = (0f64, 0f64);
        for t in tensors {
            let t = t.to_dtype(DType::F32)?;
            sum += t.sum_all()?.to_scalar::<f32>()? as f64;
            sq += t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let mine: Vec<u8> = [sum, sq].iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut root = mine.clone();
        self.broadcast(&mut root)?;
        let mut differs = [f64::from(u8::from(root != mine))];
        self.sum_f64(&mut differs)?;
        anyhow::ensure!(
            differs[0] == 0.0,
            "{what}: {} rank(s) hold weights that differ from rank 0's: the ranks have diverged",
            differs[0]
        );
        Ok(())
    }
}

/// This rank's GPU: `device.name` `auto` or `cuda` becomes `cuda:LOCAL_RANK`. A name that
/// fixes one GPU (`cuda:1`) cannot serve several ranks of a machine.
pub fn rank_device(name: DeviceName, env: &RankEnv) -> Result<DeviceName> {
    Ok(match name {
        DeviceName::Cpu => DeviceName::Cpu,
        DeviceName::Auto if !candle_core::utils::cuda_is_available() => DeviceName::Cpu,
        DeviceName::Auto | DeviceName::Cuda => DeviceName::CudaOrdinal(env.local_rank),
        fixed if env.world_size == 1 => fixed,
        fixed => anyhow::bail!("device.name = \"{fixed}\" names one GPU, but this is rank {} of {}: use \"cuda\" or \"auto\" (each rank takes cuda:LOCAL_RANK)", env.rank, env.world_size),
    })
}

/// The share of `items` rank `rank` of `world` takes: contiguous, in order, sizes differing
/// by at most one (the first ranks take the extra ones).
pub fn shard<T>(items: &[T], rank: usize, world: usize) -> &[T] {
    &items[shard_range(items.len(), rank, world)]
}

/// The indices `shard` takes of `len` items.
pub fn shard_range(len: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let (base, extra) = (len / world, len % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_items_once_in_order() {
        let items: Vec<usize> = (0..10).collect();
        let parts: Vec<&[usize]> = (0..4).map(|r| shard(&items, r, 4)).collect();
        assert_eq!(parts, vec![&[0, 1, 2][..], &[3, 4, 5], &[6, 7], &[8, 9]]);
        assert_eq!(shard(&items[..1], 1, 2), &[] as &[usize]);
    }

    #[test]
    fn a_fixed_gpu_serves_one_rank_only() {
        let env = RankEnv { rank: 1, world_size: 2, local_rank: 1, master_addr: "127.0.0.1".into(), master_port: 1 };
        assert_eq!(rank_device(DeviceName::Cpu, &env).unwrap(), DeviceName::Cpu);
        assert_eq!(rank_device(DeviceName::Cuda, &env).unwrap(), DeviceName::CudaOrdinal(1));
        let e = rank_device(DeviceName::CudaOrdinal(0), &env).unwrap_err().to_string();
        assert!(e.starts_with("device.name = \"cuda:0\" names one GPU"), "{e}");
    }
}
