//! Launchers for the CUDA kernels in `cuda/*.cu` beside this file, one op per file
//! (compiled to PTX by build.rs, one module each): flash attention forward/backward, the
//! fused element-wise ops of the bf16 training step, AdamW and GGUF block expansion.
//!
//! Every input must be a contiguous CUDA tensor of the dtype named; outputs are fresh
//! tensors. Kernels run on the device's one stream, so stream order keeps them safe with
//! respect to candle's own ops and to frees (cuMemFreeAsync is stream-ordered too).

use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, DType, Device, Result, Storage, Tensor};
use half::bf16;

use super::AttnShape;

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/cuda_ptx.rs"));
}

const ATTENTION: (&str, &str) = ("loratune_attention", ptx::ATTENTION);
const RMS_NORM: (&str, &str) = ("loratune_rms_norm", ptx::RMS_NORM);
const ROPE: (&str, &str) = ("loratune_rope", ptx::ROPE);
const ADD: (&str, &str) = ("loratune_add", ptx::ADD);
const SWIGLU: (&str, &str) = ("loratune_swiglu", ptx::SWIGLU);
const CROSS_ENTROPY: (&str, &str) = ("loratune_cross_entropy", ptx::CROSS_ENTROPY);
const ADAMW: (&str, &str) = ("loratune_adamw", ptx::ADAMW);
const DEQUANTIZE: (&str, &str) = ("loratune_dequantize", ptx::DEQUANTIZE);

pub(super) fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        other => bail!("CUDA kernel given a tensor on {other:?}"),
    }
}

/// Device address of a contiguous tensor's first element, checked against `dtype`. The
/// address stays valid while the tensor lives; frees are stream-ordered after our launch.
pub(super) fn ptr(t: &Tensor, dtype: DType, what: &str) -> Result<u64> {
    if t.dtype() != dtype {
        bail!("CUDA kernel: {what} is {:?}, expected {dtype:?}", t.dtype());
    }
    let (storage, layout) = t.storage_and_layout();
    let Some((start, _)) = layout.contiguous_offsets() else { bail!("CUDA kernel: {what} is not contiguous") };
    let Storage::Cuda(cs) = &*storage else { bail!("CUDA kernel: {what} is not on a CUDA device") };
    let stream = cs.device.cuda_stream();
    let base = match dtype {
        DType::BF16 => cs.as_cuda_slice::<bf16>()?.device_ptr(&stream).0,
        DType::F32 => cs.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
        DType::U32 => cs.as_cuda_slice::<u32>()?.device_ptr(&stream).0,
        DType::U8 => cs.as_cuda_slice::<u8>()?.device_ptr(&stream).0,
        other => bail!("CUDA kernel: unsupported dtype {other:?}"),
    };
    Ok(base + (start * dtype.size_in_bytes()) as u64)
}

pub(super) fn empty(dev: &CudaDevice, shape: &[usize], dtype: DType) -> Result<Tensor> {
    // SAFETY: every element is written by the kernel that receives it.
    unsafe { Tensor::empty(shape, dtype, &Device::Cuda(dev.clone())) }
}

fn grid(blocks: (u32, u32), threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks.0, blocks.1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem }
}

fn blocks_for(n: usize, threads: usize) -> u32 {
    n.div_ceil(threads) as u32
}

/// Threads per row for the row-wise kernels, which read rows of `h` bf16 as pairs: enough
/// for h/2 pairs, a multiple of 32.
fn row_threads(h: usize) -> Result<u32> {
    if h % 2 != 0 {
        bail!("row kernels read bf16 pairs: the row width {h} must be even");
    }
    Ok(((h / 2).div_ceil(32) * 32).clamp(32, 1024) as u32)
}

/// Raises a kernel's dynamic shared-memory limit to `smem` bytes (the default cap is 48 KB;
/// Hopper allows 227 KB per block).
fn allow_smem(func: &CudaFunction, smem: usize) -> Result<()> {
    // SAFETY: sets an attribute of a kernel handle that `func` keeps loaded.
    unsafe {
        sys::cuFuncSetAttribute(
            func.cu_function(),
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .result()
        .w()
    }
}

/// An attention kernel, loaded, with room for `smem` bytes of dynamic shared memory.
macro_rules! attention_kernel {
    ($dev:expr, $name:expr, $smem:expr) => {{
        let func = $dev.get_or_load_custom_func(&$name, ATTENTION.0, ATTENTION.1)?;
        allow_smem(&func, $smem)?;
        func
    }};
}

macro_rules! launch {
    ($dev:expr, $module:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let func = $dev.get_or_load_custom_func($name, $module.0, $module.1)?;
        launch!(@with func, $cfg, $($arg),+)
    }};
    (@with $func:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let mut builder = $func.builder();
        $( builder.arg($arg); )+
        // SAFETY: argument order and types follow the kernel's signature in src/kernels/cuda.
        unsafe { builder.launch($cfg) }.w()?;
    }};
}

/// GGUF blocks (u8, rows * cols / block values of `dtype`, rows one after another) ->
/// (rows, cols) bf16, written into `into` when given (a contiguous (rows, cols) bf16 view)
/// or a fresh tensor. Q4_0, Q4_1, Q8_0 and Q4_K.
pub fn dequantize_bf16(
    blocks: &Tensor,
    dtype: candle_core::quantized::GgmlDType,
    rows: usize,
    cols: usize,
    into: Option<&Tensor>,
) -> Result<Tensor> {
    use candle_core::quantized::GgmlDType as G;
    let kernel = match dtype {
        G::Q4_0 => "dequant_q4_0_bf16",
        G::Q4_1 => "dequant_q4_1_bf16",
        G::Q8_0 => "dequant_q8_0_bf16",
        G::Q4K => "dequant_q4_k_bf16",
        other => bail!("no bf16 dequantize kernel for {other:?}"),
    };
    let n = rows * cols;
    if blocks.elem_count() < n / dtype.block_size() * dtype.type_size() {
        bail!("dequantize: {} bytes of {dtype:?} blocks for a ({rows}, {cols}) matrix", blocks.elem_count());
    }
    if n % 8 != 0 || n >= 1 << 32 {
        bail!("dequantize: ({rows}, {cols}) must hold a multiple of 8 values, fewer than 2^32");
    }
    let dev = cuda_device(blocks)?;
    let out = match into {
        Some(t) if t.dims() == [rows, cols] => t.clone(),
        Some(t) => bail!("dequantize: output view is {:?}, expected ({rows}, {cols})", t.dims()),
        None => empty(&dev, &[rows, cols], DType::BF16)?,
    };
    let (pb, po) = (ptr(blocks, DType::U8, "blocks")?, ptr(&out, DType::BF16, "out")?);
    let n8 = (n / 8) as u32;
    launch!(dev, DEQUANTIZE, kernel, grid((blocks_for(n / 8, 256), 1), 256, 0), &pb, &po, &n8);
    Ok(out)
}

/// x: (N, H) bf16, w: (H,) bf16 -> (y (N, H) bf16, rstd (N, 1) f32).
pub fn rms_norm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (n, h) = x.dims2()?;
    let dev = cuda_device(x)?;
    let y = empty(&dev, &[n, h], DType::BF16)?;
    let rstd = empty(&dev, &[n, 1], DType::F32)?;
    let (px, pw, py, pr) = (
        ptr(x, DType::BF16, "x")?,
        ptr(w, DType::BF16, "w")?,
        ptr(&y, DType::BF16, "y")?,
        ptr(&rstd, DType::F32, "rstd")?,
    );
    let (h32, eps32) = (h as i32, eps as f32);
    launch!(
        dev,
        RMS_NORM,
        "rms_norm_fwd_bf16",
        grid((n as u32, 1), row_threads(h)?, 0),
        &px,
        &pw,
        &py,
        &pr,
        &h32,
        &eps32
    );
    Ok((y, rstd))
}

/// dy, x: (N, H), w: (H,), rstd: (N, 1) f32, dres: optional (N, H) residual gradient
/// -> dres + d(norm)/dx . dy, (N, H) bf16.
pub fn rms_norm_backward(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor, dres: Option<&Tensor>) -> Result<Tensor> {
    let (n, h) = x.dims2()?;
    let dev = cuda_device(x)?;
    let dx = empty(&dev, &[n, h], DType::BF16)?;
    let pd = ptr(dy, DType::BF16, "dy")?;
    let (px, pw, pr, po) = (
        ptr(x, DType::BF16, "x")?,
        ptr(w, DType::BF16, "w")?,
        ptr(rstd, DType::F32, "rstd")?,
        ptr(&dx, DType::BF16, "dx")?,
    );
    let pres = match dres {
        Some(r) => ptr(r, DType::BF16, "dres")?,
        None => pd, // not read
    };
    let (h32, has_res) = (h as i32, dres.is_some() as i32);
    launch!(
        dev,
        RMS_NORM,
        "rms_norm_bwd_bf16",
        grid((n as u32, 1), row_threads(h)?, 0),
        &pd,
        &px,
        &pw,
        &pr,
        &pres,
        &po,
        &h32,
        &has_res
    );
    Ok(dx)
}

/// x: (N, heads*D) bf16, cos/sin: (N, D) bf16 -> rotated (N, heads*D); `backward` applies
/// the transpose rotation (the gradient).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, head_dim: usize, backward: bool) -> Result<Tensor> {
    let (n, width) = x.dims2()?;
    let heads = width / head_dim;
    let dev = cuda_device(x)?;
    let y = empty(&dev, &[n, width], DType::BF16)?;
    let (px, pc, ps, py) = (
        ptr(x, DType::BF16, "x")?,
        ptr(cos, DType::BF16, "cos")?,
        ptr(sin, DType::BF16, "sin")?,
        ptr(&y, DType::BF16, "y")?,
    );
    let (n32, h32, d32, bw) = (n as i32, heads as i32, head_dim as i32, backward as i32);
    if head_dim % 4 != 0 {
        bail!("rope kernel needs a head dim divisible by 4, got {head_dim}");
    }
    let total = n * heads * head_dim / 4;
    launch!(
        dev,
        ROPE,
        "rope_bf16",
        grid((blocks_for(total, 256), 1), 256, 0),
        &px,
        &pc,
        &ps,
        &py,
        &n32,
        &h32,
        &d32,
        &bw
    );
    Ok(y)
}

/// a + b for same-shape contiguous bf16 tensors whose size is a multiple of 8.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = a.elem_count();
    if a.dims() != b.dims() || n % 8 != 0 {
        bail!("add kernel: shapes {:?} and {:?} (need equal shapes, size a multiple of 8)", a.dims(), b.dims());
    }
    let dev = cuda_device(a)?;
    let out = empty(&dev, a.dims(), DType::BF16)?;
    let (pa, pb, po, n8) =
        (ptr(a, DType::BF16, "a")?, ptr(b, DType::BF16, "b")?, ptr(&out, DType::BF16, "out")?, (n / 8) as i32);
    launch!(dev, ADD, "add_bf16", grid((blocks_for(n / 8, 256), 1), 256, 0), &pa, &pb, &po, &n8);
    Ok(out)
}

/// a, b: (N, H) bf16, w: (H,) -> (a + b, rms_norm(a + b) (N, H), rstd (N, 1) f32).
pub fn add_rms_norm_forward(a: &Tensor, b: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, h) = a.dims2()?;
    if b.dims() != a.dims() {
        bail!("add_rms_norm: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    let dev = cuda_device(a)?;
    let sum = empty(&dev, &[n, h], DType::BF16)?;
    let y = empty(&dev, &[n, h], DType::BF16)?;
    let rstd = empty(&dev, &[n, 1], DType::F32)?;
    let (pa, pb, pw) = (ptr(a, DType::BF16, "a")?, ptr(b, DType::BF16, "b")?, ptr(w, DType::BF16, "w")?);
    let (ps, py, pr) = (ptr(&sum, DType::BF16, "sum")?, ptr(&y, DType::BF16, "y")?, ptr(&rstd, DType::F32, "rstd")?);
    let (h32, eps32) = (h as i32, eps as f32);
    launch!(
        dev,
        RMS_NORM,
        "add_rms_norm_fwd_bf16",
        grid((n as u32, 1), row_threads(h)?, 0),
        &pa,
        &pb,
        &pw,
        &ps,
        &py,
        &pr,
        &h32,
        &eps32
    );
    Ok((sum, y, rstd))
}

/// g, u: (N, I) bf16 -> silu(g) * u.
pub fn swiglu_forward(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let dev = cuda_device(g)?;
    let a = empty(&dev, g.dims(), DType::BF16)?;
    let pairs = g.elem_count() / 2;
    if g.elem_count() % 2 != 0 {
        bail!("swiglu kernel needs an even element count, got {:?}", g.dims());
    }
    let (pg, pu, pa, n2) =
        (ptr(g, DType::BF16, "gate")?, ptr(u, DType::BF16, "up")?, ptr(&a, DType::BF16, "out")?, pairs as i32);
    launch!(dev, SWIGLU, "swiglu_fwd_bf16", grid((blocks_for(pairs, 256), 1), 256, 0), &pg, &pu, &pa, &n2);
    Ok(a)
}

/// da, g, u: (N, I) bf16 -> (dg, du). dg is written over `da`'s memory and du over `u`'s
/// (saving two (N, I) buffers), so each must be the only handle to its storage.
pub fn swiglu_backward(da: Tensor, g: &Tensor, u: Tensor) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(g)?;
    let (da, u) = (da.contiguous()?, u.contiguous()?);
    let (dg, du) = (da.clone(), u.clone());
    let pairs = g.elem_count() / 2;
    let (pd, pg, pu) = (ptr(&da, DType::BF16, "da")?, ptr(g, DType::BF16, "gate")?, ptr(&u, DType::BF16, "up")?);
    let (pdg, pdu, n2) = (ptr(&dg, DType::BF16, "dg")?, ptr(&du, DType::BF16, "du")?, pairs as i32);
    launch!(dev, SWIGLU, "swiglu_bwd_bf16", grid((blocks_for(pairs, 256), 1), 256, 0), &pd, &pg, &pu, &pdg, &pdu, &n2);
    Ok((dg, du))
}

/// logits: (len, V) bf16, labels: (len,) u32 -> (nll (len,) f32, dlogits (len, V) bf16)
/// with dlogits = (softmax - onehot) * scale.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let (len, v) = logits.dims2()?;
    let dev = cuda_device(logits)?;
    let nll = empty(&dev, &[len], DType::F32)?;
    let dlogits = empty(&dev, &[len, v], DType::BF16)?;
    let (pl, pt) = (ptr(logits, DType::BF16, "logits")?, ptr(labels, DType::U32, "labels")?);
    let (pd, pn, v32, s32) =
        (ptr(&dlogits, DType::BF16, "dlogits")?, ptr(&nll, DType::F32, "nll")?, v as i32, scale as f32);
    launch!(dev, CROSS_ENTROPY, "cross_entropy_bf16", grid((len as u32, 1), 1024, 0), &pl, &pt, &pd, &pn, &v32, &s32);
    Ok((nll, dlogits))
}

/// AdamW hyper-parameters of one update, bias corrections included.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bc1: f32,
    pub bc2_sqrt: f32,
}

/// p, g, m, v: same-shape f32 -> (p', m', v').
pub fn adamw(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: AdamWStep) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = cuda_device(p)?;
    let n = p.elem_count();
    let outs =
        [empty(&dev, p.dims(), DType::F32)?, empty(&dev, p.dims(), DType::F32)?, empty(&dev, p.dims(), DType::F32)?];
    let ins = [
        ptr(p, DType::F32, "param")?,
        ptr(g, DType::F32, "grad")?,
        ptr(m, DType::F32, "exp_avg")?,
        ptr(v, DType::F32, "exp_avg_sq")?,
    ];
    let po = [ptr(&outs[0], DType::F32, "p")?, ptr(&outs[1], DType::F32, "m")?, ptr(&outs[2], DType::F32, "v")?];
    let n32 = n as i32;
    launch!(
        dev,
        ADAMW,
        "adamw_f32",
        grid((blocks_for(n, 256), 1), 256, 0),
        &ins[0],
        &ins[1],
        &ins[2],
        &ins[3],
        &po[0],
        &po[1],
        &po[2],
        &n32,
        &s.lr,
        &s.beta1,
        &s.beta2,
        &s.eps,
        &s.weight_decay,
        &s.bc1,
        &s.bc2_sqrt
    );
    let [p2, m2, v2] = outs;
    Ok((p2, m2, v2))
}

fn check_attn(s: &AttnShape) -> Result<()> {
    if !flash_supported(s.d) {
        bail!("flash attention kernel supports head_dim 64 or 128, got {}", s.d);
    }
    if s.nkv == 0 || s.nh % s.nkv != 0 {
        bail!("query heads {} are not a multiple of kv heads {}", s.nh, s.nkv);
    }
    Ok(())
}

/// (softmax scale * log2(e), softmax scale): the kernels work in base 2.
fn attn_scales(s: &AttnShape) -> (f32, f32) {
    let scale = 1.0 / (s.d as f64).sqrt();
    ((scale * std::f64::consts::LOG2_E) as f32, scale as f32)
}

/// Shared memory of the forward and dQ kernels: K and V tiles of 64 rows (stride D + 8),
/// two pipeline stages.
fn kv_stages_smem(d: usize) -> usize {
    2 * 2 * 64 * (d + 8) * 2
}

/// Warps per attention block (each owns 16 query rows, or 16 keys in dK/dV): 4 or 8. More
/// rows per block share each K/V (Q/dO) tile loaded into shared memory; fewer give more
/// blocks per multiprocessor. 4 until [`set_flash_warps`] says otherwise.
static FLASH_WARPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(4);

/// Sets the warps per attention block for the kernels launched from now on: the command
/// line does, once at start, from `LORATUNE_FLASH_WARPS` (`EnvKnobs::flash_warps`).
pub fn set_flash_warps(warps: usize) {
    assert!(warps == 4 || warps == 8, "flash attention runs 4 or 8 warps per block, not {warps}");
    FLASH_WARPS.store(warps, std::sync::atomic::Ordering::Relaxed);
}

/// The warps per attention block (see [`set_flash_warps`]).
pub fn flash_warps() -> usize {
    FLASH_WARPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the flash kernels handle this head dim.
pub fn flash_supported(head_dim: usize) -> bool {
    head_dim == 64 || head_dim == 128
}

/// q: (N, NH*D), k/v: (N, NKV*D) bf16, kstart: (N,) u32 first visible key of each query
/// -> (o (N, NH*D) bf16, lse (B, NH, T) f32 in the kernels' base-2 scaled units).
pub fn flash_attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kstart: &Tensor,
    s: AttnShape,
) -> Result<(Tensor, Tensor)> {
    check_attn(&s)?;
    let dev = cuda_device(q)?;
    let o = empty(&dev, &[s.b * s.t, s.nh * s.d], DType::BF16)?;
    let lse = empty(&dev, &[s.b, s.nh, s.t], DType::F32)?;
    let (pq, pk, pv, pks) = (
        ptr(q, DType::BF16, "q")?,
        ptr(k, DType::BF16, "k")?,
        ptr(v, DType::BF16, "v")?,
        ptr(kstart, DType::U32, "kstart")?,
    );
    let (po, pl) = (ptr(&o, DType::BF16, "o")?, ptr(&lse, DType::F32, "lse")?);
    let (t32, nh32, nkv32) = (s.t as i32, s.nh as i32, s.nkv as i32);
    let (scale_log2, _) = attn_scales(&s);
    let smem = kv_stages_smem(s.d);
    let w = flash_warps();
    let func = attention_kernel!(dev, format!("flash_fwd_d{}_w{w}", s.d), smem);
    let cfg = grid((blocks_for(s.t, 16 * w), (s.b * s.nh) as u32), 32 * w as u32, smem as u32);
    launch!(@with func, cfg, &pq, &pk, &pv, &pks, &po, &pl, &t32, &nh32, &nkv32, &scale_log2);
    Ok((o, lse))
}

/// Gradients of `flash_attention_forward`: dout and o (N, NH*D), lse from forward
/// -> (dq (N, NH*D), dk (N, NKV*D), dv (N, NKV*D)), bf16.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    kstart: &Tensor,
    s: AttnShape,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_attn(&s)?;
    let dev = cuda_device(q)?;
    let n = s.b * s.t;
    let dsum = empty(&dev, &[s.b, s.nh, s.t], DType::F32)?;
    let dq = empty(&dev, &[n, s.nh * s.d], DType::BF16)?;
    let dk = empty(&dev, &[n, s.nkv * s.d], DType::BF16)?;
    let dv = empty(&dev, &[n, s.nkv * s.d], DType::BF16)?;
    let (pdo, po, pds) = (ptr(dout, DType::BF16, "dout")?, ptr(o, DType::BF16, "o")?, ptr(&dsum, DType::F32, "dsum")?);
    let (n32, t32, nh32, nkv32, d32) = (n as i32, s.t as i32, s.nh as i32, s.nkv as i32, s.d as i32);
    launch!(
        dev,
        ATTENTION,
        "flash_bwd_dsum",
        grid((blocks_for(n * s.nh, 4), 1), 128, 0),
        &po,
        &pdo,
        &pds,
        &n32,
        &t32,
        &nh32,
        &d32
    );

    let (pq, pk, pv) = (ptr(q, DType::BF16, "q")?, ptr(k, DType::BF16, "k")?, ptr(v, DType::BF16, "v")?);
    let (pl, pks) = (ptr(lse, DType::F32, "lse")?, ptr(kstart, DType::U32, "kstart")?);
    let (pdq, pdk, pdv) = (ptr(&dq, DType::BF16, "dq")?, ptr(&dk, DType::BF16, "dk")?, ptr(&dv, DType::BF16, "dv")?);
    let (scale_log2, scale) = attn_scales(&s);
    let w = flash_warps();
    let (tiles, threads) = (blocks_for(s.t, 16 * w), 32 * w as u32);
    let smem = kv_stages_smem(s.d);
    let func = attention_kernel!(dev, format!("flash_bwd_dq_d{}_w{w}", s.d), smem);
    launch!(
        @with func, grid((tiles, (s.b * s.nh) as u32), threads, smem as u32),
        &pq, &pk, &pv, &pdo, &pl, &pds, &pks, &pdq, &t32, &nh32, &nkv32, &scale_log2, &scale
    );
    // K and V tiles of 16*w keys, two stages of 64-row Q and dO tiles (row stride D + 8) and
    // of 64 lse, dsum and kstart values.
    let smem = 2 * 16 * w * (s.d + 8) * 2 + 2 * (2 * 64 * (s.d + 8) * 2 + 3 * 64 * 4);
    let func = attention_kernel!(dev, format!("flash_bwd_dkdv_d{}_w{w}", s.d), smem);
    launch!(
        @with func, grid((tiles, (s.b * s.nkv) as u32), threads, smem as u32),
        &pq, &pk, &pv, &pdo, &pl, &pds, &pks, &pdk, &pdv, &t32, &nh32, &nkv32, &scale_log2, &scale
    );
    Ok((dq, dk, dv))
}

/// `c += a · b^T` (`b_transposed`: b is (N, K), as a weight (out, in) in `x W^T`) or
/// `c += a · b` (b is (K, N), as W in `dy W`), all row-major bf16 with f32 accumulation,
/// in place on `c` (M, N) through cuBLAS with beta = 1. This folds LoRA's low-rank term and
/// the sum of several projections' input gradients into the GEMM that writes `c`, instead
/// of a separate tensor and an add pass over (M, N).
///
/// `c` must be a tensor no one else reads meanwhile (a fresh matmul output of the caller).
pub fn matmul_accumulate(c: &Tensor, a: &Tensor, b: &Tensor, b_transposed: bool) -> Result<()> {
    use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, sys as blas};
    let (m, k) = a.dims2()?;
    let (bn, bk) = if b_transposed {
        b.dims2()?
    } else {
        let (r, c) = b.dims2()?;
        (c, r)
    };
    let (cm, n) = c.dims2()?;
    if bk != k || bn != n || cm != m {
        bail!(
            "matmul_accumulate: c {:?} += a {:?} x b {:?} (transposed {b_transposed}) do not fit",
            c.dims(),
            a.dims(),
            b.dims()
        );
    }
    let dev = cuda_device(c)?;
    let (pc, pa, pb) = (ptr(c, DType::BF16, "c")?, ptr(a, DType::BF16, "a")?, ptr(b, DType::BF16, "b")?);
    // Row-major C = A B' is column-major C^T = B'^T A^T: cuBLAS's first operand is b.
    let (op_b, ldb) = if b_transposed {
        (blas::cublasOperation_t::CUBLAS_OP_T, k)
    } else {
        (blas::cublasOperation_t::CUBLAS_OP_N, n)
    };
    let (alpha, beta) = (1f32, 1f32);
    let handle = dev.cublas_handle();
    // SAFETY: pointers come from live contiguous tensors of the checked shapes, on the
    // stream the handle is bound to.
    unsafe {
        gemm_ex(
            *handle.handle(),
            op_b,
            blas::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            pb as *const _,
            blas::cudaDataType::CUDA_R_16BF,
            ldb as i32,
            pa as *const _,
            blas::cudaDataType::CUDA_R_16BF,
            k as i32,
            &beta as *const f32 as *const _,
            pc as *mut _,
            blas::cudaDataType::CUDA_R_16BF,
            n as i32,
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(|e| candle_core::Error::Msg(format!("cuBLAS accumulate: {e:?}")))?;
    }
    Ok(())
}

/// Milliseconds of device time between the start and end of the work `f` enqueues on
/// `dev`'s stream, measured with CUDA events (host overhead that overlaps the device's
/// queue does not count, as with torch.cuda.Event).
pub fn elapsed_ms<T>(dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<f64> {
    let Device::Cuda(cuda) = dev else { bail!("elapsed_ms needs a CUDA device") };
    let stream = cuda.cuda_stream();
    let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(timing).w()?;
    let out = f()?;
    let end = stream.record_event(timing).w()?;
    let ms = start.elapsed_ms(&end).w()?;
    drop(out);
    Ok(ms as f64)
}
