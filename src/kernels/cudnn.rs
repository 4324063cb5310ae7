//! cuDNN's fused attention (forward and backward), through the C++ shim in `cudnn/sdpa.cpp`
//! (compiled by build.rs). cuDNN is loaded on first use, not linked: where it is missing,
//! [`enabled`] says so and the step runs our flash kernels instead.
//!
//! Why: on Hopper cuDNN's fused attention runs at 520-640 TFLOP/s (H200, bf16, causal, head
//! dim 128) against about 150 for our sm_80 flash kernels; see docs/BENCHMARKS.md.
//!
//! Tensors are token-major as the step keeps them: q/o (N, NH*D), k/v (N, NKV*D) bf16 and
//! the log-sum-exp `stats` (N, NH) f32 (its own layout, read only by [`sdpa_backward`]).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use candle_core::{bail, DType, Device, Result, Tensor};

use super::cuda::{cuda_device, empty, ptr};
use super::{AttentionChoice, AttnShape, Segments};

#[repr(C)]
struct LtSdpaShape {
    segments: i64,
    max_len: i64,
    tokens: i64,
    nh: i64,
    nkv: i64,
    d: i64,
    scale: f32,
}

#[repr(C)]
struct LtSdpaPtrs {
    q: *const c_void,
    k: *const c_void,
    v: *const c_void,
    o: *mut c_void,
    stats: *mut c_void,
    d_o: *const c_void,
    dq: *mut c_void,
    dk: *mut c_void,
    dv: *mut c_void,
    seq_len: *const c_void,
    off_q: *const c_void,
    off_kv: *const c_void,
    off_stats: *const c_void,
    workspace: *mut c_void,
}

extern "C" {
    fn lt_cudnn_last_error() -> *const c_char;
    fn lt_cudnn_load(lib: *const c_char) -> c_int;
    fn lt_cudnn_version() -> i64;
    fn lt_sdpa_workspace(backward: c_int, s: *const LtSdpaShape) -> i64;
    fn lt_sdpa_run(backward: c_int, s: *const LtSdpaShape, p: *const LtSdpaPtrs, stream: *mut c_void) -> c_int;
}

fn last_error() -> String {
    // SAFETY: the shim returns a NUL-terminated string it owns until its next call.
    unsafe { CStr::from_ptr(lt_cudnn_last_error()) }.to_string_lossy().into_owned()
}

/// The command line's choice and cuDNN library path (`LORATUNE_ATTENTION`, `LORATUNE_CUDNN_LIB`).
static CHOICE: Mutex<(AttentionChoice, Option<String>)> = Mutex::new((AttentionChoice::Auto, None));
/// Whether cuDNN attention runs, decided on first use: Ok(version) or why not.
static LOADED: OnceLock<std::result::Result<i64, String>> = OnceLock::new();

/// Sets which attention kernels CUDA steps run and where cuDNN is (None: `libcudnn.so.9`
/// from the loader's path). The command line calls this once at start.
pub fn set_choice(choice: AttentionChoice, lib: Option<String>) {
    *CHOICE.lock().expect("attention choice lock") = (choice, lib);
}

/// Whether attention on `dev` runs cuDNN: loads it on first call (binding `dev`'s context,
/// so the handle lives on that GPU). `Auto` falls back to the flash kernels with one note
/// on stderr; `Cudnn` makes a load failure an error.
pub fn enabled(dev: &Device) -> Result<bool> {
    let choice = CHOICE.lock().expect("attention choice lock").0;
    if choice == AttentionChoice::Flash {
        return Ok(false);
    }
    let loaded = LOADED.get_or_init(|| {
        let load = || -> std::result::Result<i64, String> {
            let Device::Cuda(cuda) = dev else { return Err("not a CUDA device".into()) };
            cuda.cuda_stream().context().bind_to_thread().map_err(|e| format!("binding the CUDA context: {e:?}"))?;
            let lib = CHOICE.lock().expect("attention choice lock").1.clone();
            let lib = lib.as_deref().map(CString::new).transpose().map_err(|_| "library path holds a NUL")?;
            // SAFETY: a C string or null; the shim copies nothing past the call.
            let rc = unsafe { lt_cudnn_load(lib.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())) };
            match rc {
                0 => Ok(unsafe { lt_cudnn_version() }),
                _ => Err(last_error()),
            }
        };
        let r = load();
        match (&r, choice) {
            (Ok(v), _) => eprintln!("attention: cuDNN {}.{}.{} fused attention", v / 10000, v / 100 % 100, v % 100),
            (Err(e), AttentionChoice::Auto) => eprintln!("attention: flash kernels (cuDNN unavailable: {e})"),
            _ => {}
        }
        r
    });
    match loaded {
        Ok(_) => Ok(true),
        Err(e) if choice == AttentionChoice::Cudnn => bail!("LORATUNE_ATTENTION=cudnn, but cuDNN did not load: {e}"),
        Err(_) => Ok(false),
    }
}

/// A batch's [`Segments`] on the device, as cuDNN's ragged batch for one attention shape:
/// seq_len (S,) and start offsets (S+1,) in elements of q/o, k/v and stats, i32 (stored as
/// u32, all below 2^31).
#[derive(Debug)]
pub struct SegmentTensors {
    count: usize,
    /// The longest segment, and the bound the graph is built for (see `graph_max_len`).
    longest: usize,
    max_len: usize,
    tokens: usize,
    seq_len: Tensor,
    off_q: Tensor,
    off_kv: Tensor,
    off_stats: Tensor,
}

impl SegmentTensors {
    pub fn new(seg: &Segments, s: AttnShape, dev: &Device) -> Result<SegmentTensors> {
        let tokens = *seg.starts.last().unwrap_or(&0) as usize;
        if tokens != s.b * s.t {
            bail!("segments cover {tokens} tokens, the batch has {}", s.b * s.t);
        }
        // Offsets past i32 are cut here and refused by `supported`.
        let scaled = |k: usize| -> Vec<u32> {
            seg.starts.iter().map(|&x| (x as usize * k).min(u32::MAX as usize) as u32).collect()
        };
        let lens: Vec<u32> = seg.starts.windows(2).map(|w| w[1] - w[0]).collect();
        let n = seg.count();
        Ok(SegmentTensors {
            count: n,
            longest: seg.max_len(),
            max_len: graph_max_len(seg.max_len(), s.t),
            tokens,
            seq_len: Tensor::from_vec(lens, n, dev)?,
            off_q: Tensor::from_vec(scaled(s.nh * s.d), n + 1, dev)?,
            off_kv: Tensor::from_vec(scaled(s.nkv * s.d), n + 1, dev)?,
            off_stats: Tensor::from_vec(scaled(s.nh), n + 1, dev)?,
        })
    }

    /// Whether cuDNN runs attention of shape `s` over these segments: its backward refuses
    /// sequences of one token (s_q = s_kv = 1), its offsets are i32, and head dims are
    /// multiples of 8 up to 256. Where not, the step runs the flash kernels.
    pub fn supported(&self, s: &AttnShape) -> bool {
        self.longest >= 2
            && self.tokens * s.nh.max(s.nkv) * s.d < 1 << 31
            && s.d % 8 == 0
            && s.d <= 256
            && s.nkv > 0
            && s.nh % s.nkv == 0
    }
}

/// The longest-sequence bound a graph is built for: the next power of two from 64, at most
/// the row length. cuDNN masks by each segment's own length, so a looser bound is exact;
/// with packing the longest example changes every batch, and each new bound would cost a
/// graph build (milliseconds or more) where a rounded one finds the cached graph.
fn graph_max_len(longest: usize, t: usize) -> usize {
    longest.max(64).next_power_of_two().min(t).max(longest)
}

fn shape(seg: &SegmentTensors, s: &AttnShape) -> LtSdpaShape {
    LtSdpaShape {
        segments: seg.count as i64,
        max_len: seg.max_len as i64,
        tokens: seg.tokens as i64,
        nh: s.nh as i64,
        nkv: s.nkv as i64,
        d: s.d as i64,
        scale: (1.0 / (s.d as f64).sqrt()) as f32,
    }
}

/// The error for a shape [`SegmentTensors::supported`] refuses (callers check it first).
fn check(seg: &SegmentTensors, s: &AttnShape) -> Result<()> {
    if !seg.supported(s) {
        bail!("cuDNN attention does not run {s:?} over {} segments of at most {} tokens", seg.count, seg.longest);
    }
    Ok(())
}

/// Runs the shim's forward or backward with a fresh workspace.
fn run(backward: bool, sh: &LtSdpaShape, p: &mut LtSdpaPtrs, like: &Tensor) -> Result<()> {
    let dev = cuda_device(like)?;
    // SAFETY: `sh` is a valid shape; the shim builds (or finds) the graph and reports its size.
    let bytes = unsafe { lt_sdpa_workspace(backward as c_int, sh) };
    if bytes < 0 {
        bail!("cuDNN attention ({}): {}", if backward { "backward" } else { "forward" }, last_error());
    }
    let ws = empty(&dev, &[(bytes as usize).max(1)], DType::U8)?;
    p.workspace = ptr(&ws, DType::U8, "workspace")? as *mut c_void;
    let stream = dev.cuda_stream().cu_stream() as *mut c_void;
    // SAFETY: every pointer is a live contiguous device tensor of the shape `sh` describes,
    // on the stream candle orders its own work on; `ws` outlives the enqueued work because
    // its free is stream-ordered after it.
    let rc = unsafe { lt_sdpa_run(backward as c_int, sh, p, stream) };
    if rc != 0 {
        bail!("cuDNN attention ({}): {}", if backward { "backward" } else { "forward" }, last_error());
    }
    drop(ws);
    Ok(())
}

fn null_ptrs() -> LtSdpaPtrs {
    LtSdpaPtrs {
        q: std::ptr::null(),
        k: std::ptr::null(),
        v: std::ptr::null(),
        o: std::ptr::null_mut(),
        stats: std::ptr::null_mut(),
        d_o: std::ptr::null(),
        dq: std::ptr::null_mut(),
        dk: std::ptr::null_mut(),
        dv: std::ptr::null_mut(),
        seq_len: std::ptr::null(),
        off_q: std::ptr::null(),
        off_kv: std::ptr::null(),
        off_stats: std::ptr::null(),
        workspace: std::ptr::null_mut(),
    }
}

fn segment_ptrs(p: &mut LtSdpaPtrs, seg: &SegmentTensors) -> Result<()> {
    p.seq_len = ptr(&seg.seq_len, DType::U32, "seq_len")? as *const c_void;
    p.off_q = ptr(&seg.off_q, DType::U32, "off_q")? as *const c_void;
    p.off_kv = ptr(&seg.off_kv, DType::U32, "off_kv")? as *const c_void;
    p.off_stats = ptr(&seg.off_stats, DType::U32, "off_stats")? as *const c_void;
    Ok(())
}

/// q: (N, NH*D), k/v: (N, NKV*D) bf16, causal within each segment
/// -> (o (N, NH*D) bf16, stats (N, NH) f32).
pub fn sdpa_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seg: &SegmentTensors,
    s: AttnShape,
) -> Result<(Tensor, Tensor)> {
    check(seg, &s)?;
    let dev = cuda_device(q)?;
    let n = s.b * s.t;
    let o = empty(&dev, &[n, s.nh * s.d], DType::BF16)?;
    let stats = empty(&dev, &[n, s.nh], DType::F32)?;
    let mut p = null_ptrs();
    p.q = ptr(q, DType::BF16, "q")? as *const c_void;
    p.k = ptr(k, DType::BF16, "k")? as *const c_void;
    p.v = ptr(v, DType::BF16, "v")? as *const c_void;
    p.o = ptr(&o, DType::BF16, "o")? as *mut c_void;
    p.stats = ptr(&stats, DType::F32, "stats")? as *mut c_void;
    segment_ptrs(&mut p, seg)?;
    run(false, &shape(seg, &s), &mut p, q)?;
    Ok((o, stats))
}

/// Gradients of [`sdpa_forward`]: dout and o (N, NH*D), stats (N, NH) from forward
/// -> (dq (N, NH*D), dk (N, NKV*D), dv (N, NKV*D)), bf16.
#[allow(clippy::too_many_arguments)]
pub fn sdpa_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    stats: &Tensor,
    seg: &SegmentTensors,
    s: AttnShape,
) -> Result<(Tensor, Tensor, Tensor)> {
    check(seg, &s)?;
    let dev = cuda_device(q)?;
    let n = s.b * s.t;
    let dq = empty(&dev, &[n, s.nh * s.d], DType::BF16)?;
    let dk = empty(&dev, &[n, s.nkv * s.d], DType::BF16)?;
    let dv = empty(&dev, &[n, s.nkv * s.d], DType::BF16)?;
    let mut p = null_ptrs();
    p.q = ptr(q, DType::BF16, "q")? as *const c_void;
    p.k = ptr(k, DType::BF16, "k")? as *const c_void;
    p.v = ptr(v, DType::BF16, "v")? as *const c_void;
    p.o = ptr(o, DType::BF16, "o")? as *mut c_void;
    p.stats = ptr(stats, DType::F32, "stats")? as *mut c_void;
    p.d_o = ptr(dout, DType::BF16, "dout")? as *const c_void;
    p.dq = ptr(&dq, DType::BF16, "dq")? as *mut c_void;
    p.dk = ptr(&dk, DType::BF16, "dk")? as *mut c_void;
    p.dv = ptr(&dv, DType::BF16, "dv")? as *mut c_void;
    segment_ptrs(&mut p, seg)?;
    run(true, &shape(seg, &s), &mut p, q)?;
    Ok((dq, dk, dv))
}
