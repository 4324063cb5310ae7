//! Checkpointed layer inputs kept in pinned host memory instead of on the GPU, copied out
//! and back on a side stream so the copies overlap the layers' compute.
//!
//! Why: with gradient checkpointing the inputs are all a long sequence keeps on the GPU
//! between forward and backward: 32 layers x (T, 4096) bf16 is 8 GiB at T = 32k, a third of
//! the peak. Host memory is plentiful and a layer's compute (tens of milliseconds at long T)
//! hides its copy (256 MiB at ~25-50 GB/s, 5-10 ms).
//!
//! Ordering, all by events between candle's stream ("main") and ours ("side"):
//! - [`HostStash::store`]: side waits for main's work so far (the input is written), copies
//!   device -> host. [`HostStash::fence`] then makes main wait for that copy, so that main's
//!   stream-ordered free of the input, enqueued later, cannot come before the copy.
//! - [`HostStash::prefetch`]: allocates the device tensor (on main), side waits for main,
//!   copies host -> device. [`HostStash::take`] makes main wait for that copy.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::{sys, CudaEvent, CudaStream};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, DType, Device, Result, Tensor};

use super::cuda::{empty, ptr};

/// Page-locked host memory from cuMemHostAlloc (the only kind async copies overlap with).
struct Pinned {
    ptr: *mut c_void,
    bytes: usize,
}

// SAFETY: plain host memory; every access goes through copies ordered by CUDA events.
unsafe impl Send for Pinned {}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc below; no copy is in flight once the stash that
        // used it is gone (its fences and takes made the main stream wait for every copy).
        if !self.ptr.is_null() {
            unsafe {
                let _ = sys::cuMemFreeHost(self.ptr);
            }
        }
    }
}

/// Pinning gigabytes takes seconds, so buffers given back by a step's stashes are kept for
/// the next step's (a step has a few: inputs, attention outputs, log-sum-exps), and one side
/// stream serves them all.
struct Resources {
    free: Vec<Pinned>,
    side: Option<Arc<CudaStream>>,
}

/// At most this many buffers wait in `Resources::free`; beyond it the smallest is freed.
const KEPT_BUFFERS: usize = 4;

static RESOURCES: Mutex<Resources> = Mutex::new(Resources { free: Vec::new(), side: None });

/// Host memory that offloaded checkpoints may pin now, in bytes: what the kernel reports
/// available (MemAvailable) plus the pinned buffers the pool keeps for reuse, less a margin
/// for the rest of the process and the system (a tenth of the total, at least 4 GiB). None
/// where /proc/meminfo cannot be read.
pub fn host_bytes_available() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<usize>().ok())
    };
    let (avail, total) = (field("MemAvailable:")? << 10, field("MemTotal:")? << 10);
    let pooled: usize = RESOURCES.lock().expect("offload resources lock").free.iter().map(|p| p.bytes).sum();
    Some((avail + pooled).saturating_sub((total / 10).max(4 << 30)))
}

/// One step's checkpointed inputs: `slots` tensors of `slot_shape` and `dtype`, in host memory.
pub struct HostStash {
    host: Pinned,
    side: Arc<CudaStream>,
    main: Arc<CudaStream>,
    cuda: CudaDevice,
    slot_shape: Vec<usize>,
    dtype: DType,
    slot_bytes: usize,
    /// Per slot: the event marking its device -> host copy's end.
    stored: Vec<Option<CudaEvent>>,
    /// Per slot: a device tensor being filled from the host, and the event ending that copy.
    loading: Vec<Option<(Tensor, CudaEvent)>>,
}

impl HostStash {
    pub fn new(dev: &Device, slots: usize, slot_shape: &[usize], dtype: DType) -> Result<HostStash> {
        let Device::Cuda(cuda) = dev else { bail!("offloading checkpoints needs a CUDA device") };
        let main = cuda.cuda_stream();
        let slot_bytes = slot_shape.iter().product::<usize>() * dtype.size_in_bytes();
        let bytes = slot_bytes * slots;
        let mut res = RESOURCES.lock().expect("offload resources lock");
        // The smallest kept buffer that fits, else a new one.
        let fit = (0..res.free.len()).filter(|&i| res.free[i].bytes >= bytes).min_by_key(|&i| res.free[i].bytes);
        let host = match fit {
            Some(i) => res.free.swap_remove(i),
            None => {
                let mut p: *mut c_void = std::ptr::null_mut();
                main.context().bind_to_thread().w()?;
                // SAFETY: writes the new allocation's address into `p`.
                unsafe { sys::cuMemHostAlloc(&mut p, bytes.max(1), 0).result() }.map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "pinning {:.2} GiB of host memory for offloaded checkpoints failed ({e:?}); \
                         set train.offload_checkpoints = false to keep them on the GPU",
                        bytes as f64 / (1u64 << 30) as f64
                    ))
                })?;
                Pinned { ptr: p, bytes: bytes.max(1) }
            }
        };
        let side = match &res.side {
            Some(s) => s.clone(),
            None => {
                let s = main.context().new_stream().w()?;
                res.side = Some(s.clone());
                s
            }
        };
        drop(res);
        Ok(HostStash {
            host,
            side,
            main,
            cuda: cuda.clone(),
            slot_shape: slot_shape.to_vec(),
            dtype,
            slot_bytes,
            stored: (0..slots).map(|_| None).collect(),
            loading: (0..slots).map(|_| None).collect(),
        })
    }

    fn slot_ptr(&self, slot: usize) -> *mut c_void {
        // SAFETY: slot < slots, so the offset stays inside the allocation.
        unsafe { (self.host.ptr as *mut u8).add(slot * self.slot_bytes) as *mut c_void }
    }

    fn check(&self, slot: usize, t: Option<&Tensor>) -> Result<()> {
        if slot >= self.stored.len() {
            bail!("checkpoint slot {slot} of {}", self.stored.len());
        }
        if let Some(t) = t {
            if t.dims() != self.slot_shape.as_slice() || t.dtype() != self.dtype {
                bail!("checkpoint {:?} {:?}, slots hold {:?} {:?}", t.dims(), t.dtype(), self.slot_shape, self.dtype);
            }
        }
        Ok(())
    }

    /// Starts copying `x` (written by main's work so far) into slot `slot`.
    pub fn store(&mut self, slot: usize, x: &Tensor) -> Result<()> {
        self.check(slot, Some(x))?;
        let src = ptr(x, self.dtype, "checkpoint")?;
        self.side.join(&self.main).w()?;
        // SAFETY: `src` is a live contiguous device tensor of slot_bytes, the destination a
        // slot of the pinned buffer; main will not free `x` before `fence` orders it after this copy.
        unsafe {
            sys::cuMemcpyDtoHAsync_v2(self.slot_ptr(slot), src, self.slot_bytes, self.side.cu_stream()).result().w()?
        };
        self.stored[slot] = Some(self.side.record_event(None).w()?);
        Ok(())
    }

    /// Makes main wait for slot `slot`'s copy out: after this, dropping the stored tensor
    /// is safe. Called once main has enqueued the layer's compute, so the copy overlaps it.
    pub fn fence(&self, slot: usize) -> Result<()> {
        match &self.stored[slot] {
            Some(ev) => self.main.wait(ev).w(),
            None => bail!("checkpoint slot {slot} was never stored"),
        }
    }

    /// Starts copying slot `slot` back into a fresh device tensor.
    pub fn prefetch(&mut self, slot: usize) -> Result<()> {
        self.check(slot, None)?;
        if self.loading[slot].is_some() {
            return Ok(());
        }
        let Some(stored) = &self.stored[slot] else { bail!("checkpoint slot {slot} was never stored") };
        let t = empty(&self.cuda, &self.slot_shape, self.dtype)?;
        let dst = ptr(&t, self.dtype, "checkpoint")?;
        self.side.wait(stored).w()?;
        self.side.join(&self.main).w()?; // the allocation is ordered on main
                                         // SAFETY: `dst` is a fresh device tensor of slot_bytes; main reads it only after `take`
                                         // makes it wait for this copy.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, self.slot_ptr(slot), self.slot_bytes, self.side.cu_stream()).result().w()?
        };
        self.loading[slot] = Some((t, self.side.record_event(None).w()?));
        Ok(())
    }

    /// Slot `slot` back on the device (prefetched earlier, or now), ordered for main.
    pub fn take(&mut self, slot: usize) -> Result<Tensor> {
        self.prefetch(slot)?;
        let (t, ev) = self.loading[slot].take().expect("prefetched above");
        self.main.wait(&ev).w()?;
        Ok(t)
    }
}

impl Drop for HostStash {
    fn drop(&mut self) {
        // Copies still in flight (a step that failed midway) must end before the buffer is
        // lent again; then the buffer goes back for the next step.
        let _ = self.side.synchronize();
        let host = std::mem::replace(&mut self.host, Pinned { ptr: std::ptr::null_mut(), bytes: 0 });
        let mut res = RESOURCES.lock().expect("offload resources lock");
        res.free.push(host);
        if res.free.len() > KEPT_BUFFERS {
            res.free.sort_by_key(|p| std::cmp::Reverse(p.bytes));
            res.free.truncate(KEPT_BUFFERS);
        }
    }
}
