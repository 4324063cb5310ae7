//! Gradient all-reduce between GPUs with NCCL (cudarc's bindings, as candle's `nccl`
//! feature builds them), on the device's own stream so it is ordered with the step's
//! kernels and needs no synchronization.

use anyhow::{Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::tcp::TcpGroup;

/// One rank's NCCL communicator.
pub struct NcclComm {
    comm: Comm,
}

impl NcclComm {
    /// Rank 0 draws NCCL's unique id and sends it over the host links; every rank then
    /// joins the communicator on its own GPU (`device`).
    pub fn new(device: &Device, host: &TcpGroup) -> Result<NcclComm> {
        let cuda = device.as_cuda_device().context("NCCL needs a CUDA device")?;
        let mut id = if host.rank() == 0 {
            let id = Id::new().map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        host.broadcast(&mut id).context("handing out NCCL's unique id")?;
        anyhow::ensure!(id.len() == 128, "NCCL's unique id arrived with {} bytes, not 128", id.len());
        let internal: [std::ffi::c_char; 128] = std::array::from_fn(|i| id[i] as std::ffi::c_char);
        let comm = Comm::from_rank(cuda.cuda_stream(), host.rank(), host.world_size(), Id::uninit(internal))
            .map_err(|e| anyhow::anyhow!("ncclCommInitRank (rank {} of {}): {e:?}", host.rank(), host.world_size()))?;
        Ok(NcclComm { comm })
    }

    /// The element-wise sum over ranks of a contiguous f32 tensor on this rank's GPU.
    pub fn sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.apply_op1_no_bwd(&AllReduceSum { comm: &self.comm })?)
    }
}

struct AllReduceSum<'a> {
    comm: &'a Comm,
}

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL all-reduce of a tensor on the CPU: the host collectives carry CPU gradients")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let src = s.as_cuda_slice::<f32>()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL all-reduce needs a contiguous tensor")
        };
        let src = src.slice(start..end);
        let dev = s.device().clone();
        // SAFETY: NCCL writes every element of `dst` before anything reads it.
        let mut dst = unsafe { dev.alloc::<f32>(end - start)? };
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}
