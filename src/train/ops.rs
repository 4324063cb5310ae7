//! The operations of the decoder as forward/backward pairs, side by side (the llm.c way).
//!
//! Only activation gradients flow through frozen weights: no function here ever forms
//! a gradient for a base weight. LoRA's A and B are the only parameters, and their
//! gradients come out of `lora_linear_backward`.
//!
//! Shapes: N = rows (B*T), H = hidden, I = MLP width, NH/NKV = query/kv heads, D = head
//! dim, V = vocab, r = LoRA rank. Norm statistics, softmax and the loss are f32.

use candle_core::{DType, Result, Tensor, D};

use crate::kernels::cpu::{
    AttentionSoftmax, AttentionSoftmaxGrad, SoftmaxCrossEntropyGrad, SWIGLU, SWIGLU_GRAD_GATE, SWIGLU_GRAD_UP,
};
use crate::lora::LoraPair;
use crate::model::llama::Linear;

/// Whether the fused CPU kernels of `kernels::cpu` apply (f32 on the CPU); other devices
/// and dtypes take the candle-op formulation of the same math.
fn cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Whether the CUDA kernels of `kernels::cuda` apply (bf16 on a CUDA device, in a build
/// with the `cuda` feature).
pub fn cuda_bf16(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && x.dtype() == DType::BF16
}

use crate::kernels::cuda;
use crate::kernels::cudnn::{self, SegmentTensors};

// ---------------------------------------------------------------------------------------
// RMSNorm: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps)
// ---------------------------------------------------------------------------------------

/// x: (N, H), w: (H,) -> (y (N, H), rstd (N, 1) f32)
pub fn rms_norm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    if cuda_bf16(x) {
        return cuda::rms_norm_forward(x, w, eps);
    }
    let xf = x.to_dtype(DType::F32)?;
    let rstd = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let y = xf.broadcast_mul(&rstd)?.to_dtype(x.dtype())?.broadcast_mul(w)?;
    Ok((y, rstd))
}

/// dy: (N, H), x: (N, H) the forward input, rstd: (N, 1) -> dx (N, H).
/// With xhat = x * rstd: dx = rstd * (dy*w - xhat * mean(dy*w * xhat)).
pub fn rms_norm_backward(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    let g = dy.broadcast_mul(w)?.to_dtype(DType::F32)?;
    let xhat = x.to_dtype(DType::F32)?.broadcast_mul(rstd)?;
    let proj = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
    (g - xhat.broadcast_mul(&proj)?)?.broadcast_mul(rstd)?.to_dtype(dy.dtype())
}

/// Per-head RMSNorm (Qwen3's q_norm and k_norm, before RoPE): x (N, heads*D), w (D,) ->
/// (y (N, heads*D), rstd (N*heads, 1) f32). Each head's D values are one row of
/// `rms_norm_forward`.
pub fn head_rms_norm_forward(x: &Tensor, w: &Tensor, heads: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    let (n, hd) = x.dims2()?;
    let (y, rstd) = rms_norm_forward(&x.contiguous()?.reshape((n * heads, hd / heads))?, w, eps)?;
    Ok((y.reshape((n, hd))?, rstd))
}

/// dy, x: (N, heads*D), rstd: (N*heads, 1) -> dx (N, heads*D).
pub fn head_rms_norm_backward(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, hd) = x.dims2()?;
    let rows = |t: &Tensor| t.contiguous()?.reshape((n * heads, hd / heads));
    rms_norm_backward(&rows(dy)?, &rows(x)?, w, rstd)?.reshape((n, hd))
}

/// a + b (the residual stream); one vectorized kernel on CUDA.
pub fn residual_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cuda_bf16(a)
        && a.dims() == b.dims()
        && a.elem_count().is_multiple_of(8)
        && a.is_contiguous()
        && b.is_contiguous()
    {
        return cuda::add(a, b);
    }
    a + b
}

/// (s = a + b, rms_norm(s), rstd): the residual add and the norm that reads it, one pass
/// on CUDA.
pub fn add_rms_norm_forward(a: &Tensor, b: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    if cuda_bf16(a) && a.is_contiguous() && b.is_contiguous() {
        return cuda::add_rms_norm_forward(a, b, w, eps);
    }
    let s = (a + b)?;
    let (y, rstd) = rms_norm_forward(&s, w, eps)?;
    Ok((s, y, rstd))
}

/// `dres + rms_norm_backward(dy, ..)`: the norm's input gradient joined with the residual
/// stream's, one kernel on CUDA.
pub fn rms_norm_backward_add(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor, dres: &Tensor) -> Result<Tensor> {
    if cuda_bf16(x) {
        return cuda::rms_norm_backward(dy, x, w, rstd, Some(dres));
    }
    dres + rms_norm_backward(dy, x, w, rstd)?
}

// ---------------------------------------------------------------------------------------
// RoPE (rotate-half): y = x*cos + rot(x)*sin, rot([x1, x2]) = [-x2, x1]
// ---------------------------------------------------------------------------------------

/// x: (B, NH, T, D), cos/sin: (B, 1, T, D) -> (B, NH, T, D)
pub fn rope_forward(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    crate::model::llama::apply_rope(x, cos, sin)
}

/// dy: (B, NH, T, D) -> dx. rot is orthogonal with rot^T([y1, y2]) = [y2, -y1], so
/// dx = dy*cos + rot^T(dy*sin).
pub fn rope_backward(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = dy.dim(D::Minus1)?;
    let ds = dy.broadcast_mul(sin)?;
    let s1 = ds.narrow(D::Minus1, 0, d / 2)?;
    let s2 = ds.narrow(D::Minus1, d / 2, d / 2)?;
    dy.broadcast_mul(cos)? + Tensor::cat(&[&s2, &s1.neg()?], D::Minus1)?
}

// ---------------------------------------------------------------------------------------
// Attention core: P = softmax(scale * Q K^T + bias), ctx = P V (GQA: K, V shared by groups)
// ---------------------------------------------------------------------------------------

/// q: (B, NH, T, D), k/v: (B, NKV, T, D), bias: (B, 1, T, T) f32
/// -> (ctx (B, NH, T, D), probs (B, NH, T, T) f32). `probs` is what backward needs.
pub fn attention_forward(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, nh, t, d) = q.dims4()?;
    let nkv = k.dim(1)?;
    let rep = nh / nkv;
    let scale = 1.0 / (d as f64).sqrt();
    // Grouped heads as one batched matmul: (B, NKV, rep*T, D) x (B, NKV, D, T).
    let qg = q.reshape((b, nkv, rep * t, d))?;
    let scores = qg.matmul(&k.t()?)?.to_dtype(DType::F32)?.reshape((b, nh, t, t))?;
    let probs = if cpu_f32(q) {
        scores.apply_op2_no_bwd(bias, &AttentionSoftmax { scale: scale as f32 })?
    } else {
        candle_nn::ops::softmax_last_dim(&(scores * scale)?.broadcast_add(bias)?)?
    };
    let ctx = probs.to_dtype(v.dtype())?.reshape((b, nkv, rep * t, t))?.matmul(v)?.reshape((b, nh, t, d))?;
    Ok((ctx, probs))
}

/// dctx: (B, NH, T, D) -> (dq (B, NH, T, D), dk (B, NKV, T, D), dv (B, NKV, T, D)).
/// dS = P * (dP - rowsum(dP * P)); dQ = scale dS K; dK = scale dS^T Q; dV = P^T dctx,
/// with dK, dV summed over the query heads that share a kv head.
pub fn attention_backward(
    dctx: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, nh, t, d) = q.dims4()?;
    let nkv = k.dim(1)?;
    let rep = nh / nkv;
    let scale = 1.0 / (d as f64).sqrt();
    let dt = q.dtype();
    let pg = probs.to_dtype(dt)?.reshape((b, nkv, rep * t, t))?; // rows: (group member, query)
    let dctx_g = dctx.reshape((b, nkv, rep * t, d))?;
    // dV[j] = sum over group members and queries i of P[i, j] dctx[i].
    let dv = pg.t()?.matmul(&dctx_g)?; // (B, NKV, T, D)
    let dp = dctx_g.matmul(&v.t()?)?.to_dtype(DType::F32)?.reshape((b, nh, t, t))?;
    let ds = if cpu_f32(q) {
        dp.apply_op2_no_bwd(probs, &AttentionSoftmaxGrad { scale: scale as f32 })?
    } else {
        ((probs * dp.broadcast_sub(&(&dp * probs)?.sum_keepdim(D::Minus1)?)?)? * scale)?
    };
    let ds = ds.to_dtype(dt)?.reshape((b, nkv, rep * t, t))?;
    let dq = ds.matmul(k)?.reshape((b, nh, t, d))?;
    let dk = ds.t()?.matmul(&q.reshape((b, nkv, rep * t, d))?)?; // (B, NKV, T, D)
    Ok((dq, dk, dv))
}

// ---------------------------------------------------------------------------------------
// The attention block between the projections: RoPE on q and k, the attention core, on
// token rows (N, heads*D). On CUDA in bf16 it is the flash kernels (no (T, T) tensor, no
// head transposes); elsewhere the head-layout candle path above.
// ---------------------------------------------------------------------------------------

pub use crate::kernels::AttnShape;

/// Which keys each query sees: `kstart` (B*T,) u32 (query i sees `kstart[i]..=i`) for the
/// flash kernels, the same as causal segments for cuDNN, and as a (B, 1, T, T) additive
/// bias for the unfused path.
pub struct AttnMask<'a> {
    pub kstart: &'a Tensor,
    pub bias: &'a dyn Fn() -> Result<Tensor>,
    pub segments: &'a dyn Fn(AttnShape) -> Result<&'a SegmentTensors>,
}

/// What attention keeps for backward.
#[derive(Debug)]
pub enum AttnSaved {
    /// Unfused: post-RoPE q (B, NH, T, D), k and v (B, NKV, T, D), probs (B, NH, T, T) f32.
    Probs { q: Tensor, k: Tensor, v: Tensor, probs: Tensor },
    /// Flash: post-RoPE q (N, NH*D), k and v (N, NKV*D), the output o (N, NH*D) and the
    /// softmax log-normaliser lse, (B, NH, T) f32 from our kernels or (N, NH) f32 from
    /// cuDNN (`cudnn`), read back by the same engine's backward.
    Flash { q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, cudnn: bool },
}

impl AttnSaved {
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            AttnSaved::Probs { q, k, v, probs } => vec![q, k, v, probs],
            AttnSaved::Flash { q, k, v, o: _, lse, .. } => vec![q, k, v, lse], // o is the saved ctx
        }
    }

    /// The core result, on the fused paths.
    pub fn core(&self) -> Option<AttnCore> {
        match self {
            AttnSaved::Flash { o, lse, cudnn, .. } => Some(AttnCore { o: o.clone(), lse: lse.clone(), cudnn: *cudnn }),
            AttnSaved::Probs { .. } => None,
        }
    }
}

/// The attention core's result on the fused paths: output o (N, NH*D), log-normaliser lse
/// and which engine made it. Checkpointing keeps it with a layer's input (offloaded) so that
/// the recompute in backward need not run attention forward again.
#[derive(Debug, Clone)]
pub struct AttnCore {
    pub o: Tensor,
    pub lse: Tensor,
    pub cudnn: bool,
}

/// Whether attention on `x`'s device and dtype runs the flash kernels.
pub fn uses_flash(x: &Tensor, head_dim: usize) -> bool {
    cuda_bf16(x) && cuda::flash_supported(head_dim)
}

/// qp: (N, NH*D), kp/vp: (N, NKV*D) projections; cos/sin: (B, 1, T, D)
/// -> (ctx (N, NH*D), saved). With `known` (a recompute on the fused paths) the attention
/// core is not run again: q, k and v are rebuilt for backward and `known` is the result.
#[allow(clippy::too_many_arguments)]
pub fn attention_block_forward(
    qp: &Tensor,
    kp: &Tensor,
    vp: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: &AttnMask,
    s: AttnShape,
    known: Option<AttnCore>,
) -> Result<(Tensor, AttnSaved)> {
    let n = s.b * s.t;
    if uses_flash(qp, s.d) {
        let (cos, sin) = (cos.reshape((n, s.d))?, sin.reshape((n, s.d))?);
        let q = cuda::rope(&qp.contiguous()?, &cos, &sin, s.d, false)?;
        let k = cuda::rope(&kp.contiguous()?, &cos, &sin, s.d, false)?;
        let v = vp.contiguous()?;
        if let Some(AttnCore { o, lse, cudnn }) = known {
            return Ok((o.clone(), AttnSaved::Flash { q, k, v, o, lse, cudnn }));
        }
        let cudnn_segments = match cudnn::enabled(qp.device())? {
            true => Some((mask.segments)(s)?).filter(|seg| seg.supported(&s)),
            false => None,
        };
        let (o, lse) = match cudnn_segments {
            Some(seg) => cudnn::sdpa_forward(&q, &k, &v, seg, s)?,
            None => cuda::flash_attention_forward(&q, &k, &v, mask.kstart, s)?,
        };
        return Ok((o.clone(), AttnSaved::Flash { q, k, v, o, lse, cudnn: cudnn_segments.is_some() }));
    }
    let heads = |y: &Tensor, h: usize| y.reshape((s.b, s.t, h, s.d))?.transpose(1, 2)?.contiguous();
    let q = rope_forward(&heads(qp, s.nh)?, cos, sin)?;
    let k = rope_forward(&heads(kp, s.nkv)?, cos, sin)?;
    let v = heads(vp, s.nkv)?;
    let (ctx, probs) = attention_forward(&q, &k, &v, &(mask.bias)()?)?;
    let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((n, s.nh * s.d))?;
    Ok((ctx, AttnSaved::Probs { q, k, v, probs }))
}

/// dctx: (N, NH*D) -> (dqp (N, NH*D), dkp (N, NKV*D), dvp (N, NKV*D)), gradients of the
/// projections' outputs.
pub fn attention_block_backward(
    dctx: &Tensor,
    saved: &AttnSaved,
    cos: &Tensor,
    sin: &Tensor,
    mask: &AttnMask,
    s: AttnShape,
) -> Result<(Tensor, Tensor, Tensor)> {
    let n = s.b * s.t;
    match saved {
        AttnSaved::Flash { q, k, v, o, lse, cudnn } => {
            let dctx = dctx.contiguous()?;
            let (dq, dk, dv) = match cudnn {
                true => cudnn::sdpa_backward(&dctx, q, k, v, o, lse, (mask.segments)(s)?, s)?,
                false => cuda::flash_attention_backward(&dctx, q, k, v, o, lse, mask.kstart, s)?,
            };
            let (cos, sin) = (cos.reshape((n, s.d))?, sin.reshape((n, s.d))?);
            Ok((cuda::rope(&dq, &cos, &sin, s.d, true)?, cuda::rope(&dk, &cos, &sin, s.d, true)?, dv))
        }
        AttnSaved::Probs { q, k, v, probs } => {
            let dctx = dctx.reshape((s.b, s.t, s.nh, s.d))?.transpose(1, 2)?.contiguous()?;
            let (dq, dk, dv) = attention_backward(&dctx, q, k, v, probs)?;
            let rows = |y: Tensor, h: usize| y.transpose(1, 2)?.contiguous()?.reshape((n, h * s.d));
            Ok((
                rows(rope_backward(&dq, cos, sin)?, s.nh)?,
                rows(rope_backward(&dk, cos, sin)?, s.nkv)?,
                rows(dv, s.nkv)?,
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// SwiGLU: a = silu(g) * u
// ---------------------------------------------------------------------------------------

/// g, u: (N, I) -> a (N, I)
pub fn swiglu_forward(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if cpu_f32(g) {
        return g.contiguous()?.apply_op2_no_bwd(&u.contiguous()?, &SWIGLU);
    }
    if cuda_bf16(g) {
        return cuda::swiglu_forward(&g.contiguous()?, &u.contiguous()?);
    }
    candle_nn::ops::silu(g)? * u
}

/// da: (N, I) -> (dg, du). silu'(g) = sig(g) * (1 + g * (1 - sig(g))). Takes `da` and
/// `u` by value: the CUDA kernel writes dg over da and du over u.
pub fn swiglu_backward(da: Tensor, g: &Tensor, u: Tensor) -> Result<(Tensor, Tensor)> {
    if cpu_f32(g) {
        let (da, g, u) = (da.contiguous()?, g.contiguous()?, u.contiguous()?);
        return Ok((da.apply_op3_no_bwd(&g, &u, &SWIGLU_GRAD_GATE)?, da.apply_op2_no_bwd(&g, &SWIGLU_GRAD_UP)?));
    }
    if cuda_bf16(g) {
        return cuda::swiglu_backward(da, &g.contiguous()?, u);
    }
    let (da, u) = (&da, &u);
    let sig = candle_nn::ops::sigmoid(g)?;
    let silu = (g * &sig)?;
    let du = (da * &silu)?;
    let dsilu = (&sig * ((g * (1.0 - &sig)?)? + 1.0)?)?;
    let dg = ((da * u)? * dsilu)?;
    Ok((dg, du))
}

// ---------------------------------------------------------------------------------------
// Linear with an optional adapter: y = x W^T + b + s * (x' A^T) B^T, x' = dropout(x)
// ---------------------------------------------------------------------------------------

/// What a LoRA projection saves for backward: u = x' A^T (N, r) f32, and x' itself when
/// dropout made it differ from the shared input x.
#[derive(Debug, Clone)]
pub struct LoraSaved {
    pub u: Tensor,
    pub dropped_input: Option<Tensor>,
}

/// x: (N, in) -> (y (N, out), saved). `dropout_mask`, when given, is (N, in) holding 0 or
/// 1/(1-p) (inverted dropout, as torch does).
pub fn lora_linear_forward(
    x: &Tensor,
    w: &Linear,
    lora: Option<&LoraPair>,
    scaling: f64,
    dropout_mask: Option<&Tensor>,
) -> Result<(Tensor, Option<LoraSaved>)> {
    // A quantized base is expanded here and dropped on return (QLoRA).
    let mut y = x.matmul(&w.weight.dense_transient()?.t()?)?;
    if let Some(b) = &w.bias {
        y = y.broadcast_add(b)?;
    }
    let Some(p) = lora else { return Ok((y, None)) };
    let saved = lora_saved(x, p, dropout_mask)?;
    if cuda_bf16(x) && dropout_mask.is_none() {
        // The scaling is folded into the bf16 copy of B, so u is saved unscaled as on the
        // f32 path.
        let b_scaled = (&p.b * scaling)?.to_dtype(DType::BF16)?;
        cuda::matmul_accumulate(&y, &saved.u, &b_scaled, true)?; // y += u (sB)^T
        return Ok((y, Some(saved)));
    }
    let delta = (saved.u.matmul(&p.b.t()?)? * scaling)?; // (N, out)
    let y = (y + delta.to_dtype(x.dtype())?)?;
    Ok((y, Some(saved)))
}

/// An adapter's half of the forward that backward reads: x: (N, in) -> u = x' A^T (N, r)
/// and x' = dropout(x) where it differs from x. Alone (without the base projection) where
/// only backward needs it: the recompute of an adapted down projection.
pub fn lora_saved(x: &Tensor, p: &LoraPair, dropout_mask: Option<&Tensor>) -> Result<LoraSaved> {
    if cuda_bf16(x) && dropout_mask.is_none() {
        // bf16 compute on f32 master weights, as PEFT under autocast.
        let a = p.a.to_dtype(DType::BF16)?;
        return Ok(LoraSaved { u: x.matmul(&a.t()?)?, dropped_input: None });
    }
    let xf = x.to_dtype(DType::F32)?;
    let dropped = dropout_mask.map(|m| &xf * m).transpose()?;
    let u = dropped.as_ref().unwrap_or(&xf).matmul(&p.a.t()?)?; // (N, r)
    Ok(LoraSaved { u, dropped_input: dropped })
}

/// Gradients of one adapter: dA (r, in), dB (out, r), f32.
#[derive(Debug, Clone)]
pub struct LoraGrad {
    pub a: Tensor,
    pub b: Tensor,
}

/// dy: (N, out), x: (N, in) the forward input (needed only with an adapter, for dA; None
/// saves recomputing it) -> (dx (N, in), adapter gradients).
/// dx = dy W + s * ((dy B) A) * mask; dB = s * dy^T u; dA = s * (dy B)^T x'.
/// With `acc` (the input gradient of other projections of the same input x), dx is added
/// to it: on CUDA inside the GEMMs (beta = 1), so no separate sum pass.
pub fn lora_linear_backward(
    dy: &Tensor,
    x: Option<&Tensor>,
    w: &Linear,
    lora: Option<(&LoraPair, &LoraSaved)>,
    scaling: f64,
    dropout_mask: Option<&Tensor>,
    acc: Option<Tensor>,
) -> Result<(Tensor, Option<LoraGrad>)> {
    let fused = cuda_bf16(dy) && dropout_mask.is_none() && lora.is_none_or(|(_, s)| s.u.dtype() == DType::BF16);
    let weight = w.weight.dense_transient()?;
    if fused {
        let dx = match acc {
            Some(acc) => {
                cuda::matmul_accumulate(&acc, &dy.contiguous()?, &weight, false)?;
                acc
            }
            None => dy.matmul(&weight)?, // frozen W: input gradient only
        };
        drop(weight);
        let Some((p, saved)) = lora else { return Ok((dx, None)) };
        let x = x.ok_or_else(|| {
            candle_core::Error::Msg("lora_linear_backward: an adapted projection needs its input".into())
        })?;
        let a = p.a.to_dtype(DType::BF16)?;
        let b_scaled = (&p.b * scaling)?.to_dtype(DType::BF16)?;
        let du = dy.matmul(&b_scaled)?; // (N, r) = s * dy B
        let grad_b = (dy.t()?.matmul(&saved.u)?.to_dtype(DType::F32)? * scaling)?; // (out, r)
        let grad_a = du.t()?.matmul(x)?.to_dtype(DType::F32)?; // (r, in)
        cuda::matmul_accumulate(&dx, &du, &a, false)?;
        return Ok((dx, Some(LoraGrad { a: grad_a, b: grad_b })));
    }
    let dx = dy.matmul(&weight)?; // frozen W: input gradient only
    drop(weight);
    let dx = match acc {
        Some(acc) => (acc + dx)?,
        None => dx,
    };
    let Some((p, saved)) = lora else { return Ok((dx, None)) };
    let x =
        x.ok_or_else(|| candle_core::Error::Msg("lora_linear_backward: an adapted projection needs its input".into()))?;
    let dyf = dy.to_dtype(DType::F32)?;
    let du = (dyf.matmul(&p.b)? * scaling)?; // (N, r)
    let grad_b = (dyf.t()?.matmul(&saved.u)? * scaling)?; // (out, r)
    let xin = match &saved.dropped_input {
        Some(xd) => xd.clone(),
        None => x.to_dtype(DType::F32)?,
    };
    let grad_a = du.t()?.matmul(&xin)?; // (r, in)
    let mut dx_lora = du.matmul(&p.a)?; // (N, in)
    if let Some(m) = dropout_mask {
        dx_lora = (dx_lora * m)?;
    }
    let dt = dx.dtype();
    let dx = (dx + dx_lora.to_dtype(dt)?)?;
    Ok((dx, Some(LoraGrad { a: grad_a, b: grad_b })))
}

// ---------------------------------------------------------------------------------------
// Cross-entropy through the LM head, over target rows only, in chunks
// ---------------------------------------------------------------------------------------

/// Rows of logits materialised at once: bounds the f32 buffer to CHUNK * V floats (25 MiB
/// for a 49k vocabulary, 64 MiB for 128k). Below 32 MiB the allocator reuses the buffer
/// from chunk to chunk instead of asking the kernel for fresh zeroed pages each time.
pub const HEAD_CHUNK: usize = 128;

/// h: (N, H) final-normed hidden rows that predict `labels` (N,) u32; lm_head: (V, H).
/// Returns (sum of -log p(label) as f64, dh (N, H)) where dh is the gradient of
/// `loss_scale * sum(nll)`: callers pass 1 / (targets in the optimizer step).
/// On the CPU in f32 the softmax, loss and logit gradient are one fused in-place pass
/// (`kernels::cpu::SoftmaxCrossEntropyGrad`); elsewhere they are candle ops.
pub fn cross_entropy_forward_backward(
    h: &Tensor,
    lm_head: &Tensor,
    labels: &Tensor,
    loss_scale: f64,
) -> Result<(f64, Tensor)> {
    if cuda_bf16(h) {
        return cross_entropy_cuda(h, lm_head, labels, loss_scale);
    }
    let n = h.dim(0)?;
    let v = lm_head.dim(0)?;
    let fused = cpu_f32(h);
    let mut nll = 0f64;
    let mut dh_chunks = Vec::new();
    let mut start = 0;
    while start < n {
        let len = HEAD_CHUNK.min(n - start);
        let hc = h.narrow(0, start, len)?;
        let lab = labels.narrow(0, start, len)?;
        let logits = hc.matmul(&lm_head.t()?)?; // (len, V)
        let dlogits = if fused {
            let op = SoftmaxCrossEntropyGrad::new(lab.to_vec1::<u32>()?, loss_scale as f32);
            logits.inplace_op1(&op)?;
            nll += op.nll_sum();
            logits
        } else {
            let logits = logits.to_dtype(DType::F32)?;
            let max = logits.max_keepdim(D::Minus1)?;
            let shifted = logits.broadcast_sub(&max)?;
            let exp = shifted.exp()?;
            let sum = exp.sum_keepdim(D::Minus1)?;
            let picked = shifted.gather(&lab.unsqueeze(1)?, 1)?; // (len, 1)
            nll += (sum.log()? - picked)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
            // d nll / d logits = softmax - onehot(label)
            let onehot = lab
                .unsqueeze(1)?
                .broadcast_eq(&Tensor::arange(0u32, v as u32, h.device())?.unsqueeze(0)?)?
                .to_dtype(DType::F32)?;
            ((exp.broadcast_div(&sum)? - onehot)? * loss_scale)?.to_dtype(h.dtype())?
        };
        dh_chunks.push(dlogits.matmul(lm_head)?); // (len, H)
        start += len;
    }
    let dh = if dh_chunks.is_empty() { h.zeros_like()? } else { Tensor::cat(&dh_chunks, 0)? };
    Ok((nll, dh))
}

/// Rows per logits chunk on CUDA: 1024 x 32k-vocab bf16 logits are 64 MiB (plus as much
/// for their gradient), large enough to keep the LM-head matmuls efficient.
pub const CUDA_HEAD_CHUNK: usize = 1024;

/// The CUDA form of `cross_entropy_forward_backward`: bf16 logits per chunk, one fused
/// kernel for loss and logit gradient, and one host synchronization for the loss sum.
fn cross_entropy_cuda(h: &Tensor, lm_head: &Tensor, labels: &Tensor, loss_scale: f64) -> Result<(f64, Tensor)> {
    let n = h.dim(0)?;
    let mut nll_rows = Vec::new();
    let mut dh_chunks = Vec::new();
    let mut start = 0;
    while start < n {
        let len = CUDA_HEAD_CHUNK.min(n - start);
        let logits = h.narrow(0, start, len)?.matmul(&lm_head.t()?)?; // (len, V)
        let (nll, dlogits) = cuda::cross_entropy(&logits, &labels.narrow(0, start, len)?.contiguous()?, loss_scale)?;
        nll_rows.push(nll);
        dh_chunks.push(dlogits.matmul(lm_head)?); // (len, H)
        start += len;
    }
    if dh_chunks.is_empty() {
        return Ok((0.0, h.zeros_like()?));
    }
    let nll = Tensor::cat(&nll_rows, 0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok((nll, Tensor::cat(&dh_chunks, 0)?))
}

/// Sum of -log p(label) without gradients (evaluation). Same chunking.
pub fn cross_entropy_sum(h: &Tensor, lm_head: &Tensor, labels: &Tensor) -> Result<f64> {
    let n = h.dim(0)?;
    let mut nll = 0f64;
    let mut start = 0;
    while start < n {
        let len = HEAD_CHUNK.min(n - start);
        let logits = h.narrow(0, start, len)?.matmul(&lm_head.t()?)?.to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp.gather(&labels.narrow(0, start, len)?.unsqueeze(1)?, 1)?;
        nll -= picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        start += len;
    }
    Ok(nll)
}
