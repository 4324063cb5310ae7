//! Opening a CUDA device the way the training step wants it, and reading its peak memory.
//!
//! candle allocates with cuMemAllocAsync from the device's default memory pool. Two
//! settings matter for a training loop: the pool keeps freed memory instead of returning
//! it to the driver at every synchronization (release threshold = max, as PyTorch's
//! caching allocator does), and per-tensor event tracking is off (everything runs on one
//! stream, so the events only cost two driver calls per kernel argument). The pool's
//! high-water marks give exact peak figures for `bench`.

use candle_core::{Device, Result};

/// Peak device memory since the last `reset_peak_memory`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PeakMemory {
    /// Most bytes in live tensors at once.
    pub tensors: u64,
    /// Most bytes the pool held from the driver (tensors plus cached free blocks).
    pub reserved: u64,
    /// Device memory in use when the device was opened, before the pool took any (the
    /// CUDA context and cuBLAS handle). What the driver takes later outside the pool
    /// (kernel modules as they load, cuBLAS workspaces) is not in it: nvidia-smi reads
    /// about 0.1 GiB more than `reserved + baseline` on the H100.
    pub baseline: u64,
}

impl PeakMemory {
    /// The pool's peak plus what the device held at open: nearly nvidia-smi's figure.
    pub fn device_total(&self) -> u64 {
        self.reserved + self.baseline
    }
}

/// `Device::new_cuda(ordinal)` set up for training (see the module doc).
pub fn open_cuda(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    imp::configure(&device)?;
    Ok(device)
}

/// GPUs the driver shows this process (0 in a build without CUDA).
pub fn device_count() -> Result<usize> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::WrapErr;
        let n = candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().w()?;
        return Ok(n.max(0) as usize);
    }
    #[allow(unreachable_code)]
    Ok(0)
}

/// Starts a new peak window (on CUDA, after returning the pool's free blocks).
pub fn reset_peak_memory(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return imp::reset_peak(d);
    }
    let _ = device;
    Ok(())
}

/// Peak memory since `reset_peak_memory`; None on the CPU.
pub fn peak_memory(device: &Device) -> Result<Option<PeakMemory>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return imp::peak(d).map(Some);
    }
    let _ = device;
    Ok(None)
}

#[cfg(feature = "cuda")]
mod imp {
    use super::PeakMemory;
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::{Device, Result};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Device bytes in use when the first device was configured (before any tensor).
    static BASELINE: AtomicU64 = AtomicU64::new(0);

    fn pool(d: &CudaDevice) -> Result<sys::CUmemoryPool> {
        let ctx = d.cuda_stream().context().clone();
        ctx.bind_to_thread().w()?;
        let mut pool = std::mem::MaybeUninit::uninit();
        // SAFETY: cu_device() is this context's device; the pool pointer is written on success.
        unsafe {
            sys::cuDeviceGetMemPool(pool.as_mut_ptr(), ctx.cu_device()).result().w()?;
            Ok(pool.assume_init())
        }
    }

    fn set(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, value: u64) -> Result<()> {
        let mut v = value;
        // SAFETY: these attributes take a cuuint64_t.
        unsafe { sys::cuMemPoolSetAttribute(pool, attr, &mut v as *mut u64 as *mut _).result().w() }
    }

    fn get(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: these attributes return a cuuint64_t.
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut _).result().w()? };
        Ok(v)
    }

    pub fn configure(device: &Device) -> Result<()> {
        let Device::Cuda(d) = device else { return Ok(()) };
        // SAFETY: loratune runs every kernel on the device's single stream.
        unsafe { d.disable_event_tracking() };
        let p = pool(d)?;
        set(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX)?;
        let (free, total) = d.cuda_stream().context().mem_get_info().w()?;
        BASELINE.store((total - free) as u64, Ordering::Relaxed);
        reset_peak(d)
    }

    pub fn reset_peak(d: &CudaDevice) -> Result<()> {
        let p = pool(d)?;
        // Hand the pool's cached free blocks back first: memory freed before the window
        // (a dense copy replaced by blocks, say) is not part of what the window needs.
        d.cuda_stream().synchronize().w()?;
        // SAFETY: trims a pool this context owns; nothing is in flight after the sync.
        unsafe { sys::cuMemPoolTrimTo(p, 0).result().w()? };
        set(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
        set(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)
    }

    pub fn peak(d: &CudaDevice) -> Result<PeakMemory> {
        d.cuda_stream().synchronize().w()?;
        let p = pool(d)?;
        Ok(PeakMemory {
            tensors: get(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            reserved: get(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
            baseline: BASELINE.load(Ordering::Relaxed),
        })
    }
}
