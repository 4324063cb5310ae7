//! Copying checkpoint tensors from memory-mapped files to a CUDA device quickly.
//!
//! The plain path (bytes into a `Vec`, then candle's `to_device`) makes two copies on one
//! thread and sends pageable memory, which the driver stages through its own small pinned
//! buffer: about 1.4 GB/s for a 7B checkpoint. Here each tensor's bytes go in 64 MiB chunks
//! from the page cache into one of two pinned buffers (copied by all cores), and from there
//! to the device asynchronously, so filling one buffer overlaps the transfer of the other.

use candle_core::cuda_backend::cudarc::driver::{result, CudaEvent, DevicePtr, PinnedHostSlice};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, DType, Result, Storage, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 64 << 20;

/// Two pinned staging buffers and the events that say when each is free again.
pub struct Uploader {
    dev: CudaDevice,
    bufs: [PinnedHostSlice<u8>; 2],
    free: [CudaEvent; 2],
    next: usize,
}

impl Uploader {
    pub fn new(dev: &CudaDevice) -> Result<Self> {
        let ctx = dev.cuda_stream().context().clone();
        // SAFETY: the buffers are written before any copy reads them.
        let bufs = unsafe { [ctx.alloc_pinned::<u8>(CHUNK).w()?, ctx.alloc_pinned::<u8>(CHUNK).w()?] };
        let free = [ctx.new_event(None).w()?, ctx.new_event(None).w()?];
        let stream = dev.cuda_stream();
        for e in &free {
            e.record(&stream).w()?;
        }
        Ok(Uploader { dev: dev.clone(), bufs, free, next: 0 })
    }

    /// A device tensor of `dtype` and `shape` holding `bytes` (little-endian, as stored in
    /// safetensors). The copy is in flight when this returns; stream order makes any later
    /// use of the tensor wait for it.
    pub fn upload(&mut self, bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if bytes.len() != n * dtype.size_in_bytes() {
            bail!("upload: {} bytes for {n} elements of {dtype:?}", bytes.len());
        }
        let storage = match dtype {
            DType::BF16 => CudaStorage::wrap_cuda_slice(self.copy_typed::<half::bf16>(bytes, n)?, self.dev.clone()),
            DType::F16 => CudaStorage::wrap_cuda_slice(self.copy_typed::<half::f16>(bytes, n)?, self.dev.clone()),
            DType::F32 => CudaStorage::wrap_cuda_slice(self.copy_typed::<f32>(bytes, n)?, self.dev.clone()),
            other => bail!("upload: unsupported dtype {other:?}"),
        };
        Ok(Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false))
    }

    fn copy_typed<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
        &mut self,
        bytes: &[u8],
        n: usize,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
        let stream = self.dev.cuda_stream();
        // SAFETY: every byte is written by the copies below before the tensor is used.
        let dst = unsafe { self.dev.alloc::<T>(n)? };
        let base = dst.device_ptr(&stream).0;
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let slot = self.next;
            self.next ^= 1;
            self.free[slot].synchronize().w()?; // the transfer that last read this buffer is done
                                                // SAFETY: the buffer is CHUNK bytes of pinned host memory no copy is reading now.
            let staging = unsafe { std::slice::from_raw_parts_mut(self.bufs[slot].as_mut_ptr().w()?, chunk.len()) };
            staging.par_chunks_mut(1 << 20).zip(chunk.par_chunks(1 << 20)).for_each(|(d, s)| d.copy_from_slice(s));
            // SAFETY: destination range lies inside `dst`; the source is pinned, so the copy
            // is asynchronous, and the event recorded after it guards the buffer's reuse.
            unsafe { result::memcpy_htod_async(base + (i * CHUNK) as u64, &*staging, stream.cu_stream()).w()? };
            self.free[slot].record(&stream).w()?;
        }
        Ok(dst)
    }
}

impl Drop for Uploader {
    /// The last copies may still be reading the pinned buffers: wait for them before the
    /// buffers are freed.
    fn drop(&mut self) {
        for e in &self.free {
            let _ = e.synchronize();
        }
    }
}
