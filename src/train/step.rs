//! The training step: forward with explicitly saved activations, the loss over target
//! rows, and a hand-written backward that produces LoRA gradients only.
//!
//! Why hand-written rather than candle autograd: autograd's matmul backward forms the
//! gradient of both operands, so every frozen base weight would get a full-size gradient,
//! and its tape keeps every intermediate alive until backward ends. Here the base weights
//! only ever appear in `dy W` (input gradients), what each layer keeps is the named
//! fields of [`LayerActs`], and with checkpointing a layer keeps only its input and is
//! recomputed during backward.
//!
//! Checked against: the reference forward of `model::llama` (the same loss on the same
//! batch, `step_tests.rs`), candle autograd over an independently written forward and
//! finite differences (the LoRA gradients, `step_tests.rs`), and PEFT's gradients on
//! SmolLM2 (tests/peft_gradients.rs).

use candle_core::{Device, Result, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::mlp::{self, GateUp};
use super::ops::{self, LoraGrad, LoraSaved};
use crate::encode::EncodedExample;
use crate::kernels::cudnn::SegmentTensors;
use crate::kernels::offload::{self, HostStash};
use crate::kernels::{AttnShape, Segments};
use crate::lora::{LayerLora, LoraWeights, Target};
use crate::model::llama::LayerWeights;
use crate::model::{Llama, ModelConfig};
use crate::profile::{timed, Profiler};

/// A batch laid out for training: B rows of T tokens. A row holds one example, or several
/// when packing; tokens of different examples never attend to each other and each
/// example's positions restart at 0, so packing does not change any example's loss.
#[derive(Debug)]
pub struct TrainBatch {
    /// (B, T) u32
    pub input_ids: Tensor,
    /// (B*T,) u32 for each query the first key it may attend to (the start of its example);
    /// it attends to keys `kstart[i] ..= i`. The flash kernels read this instead of a mask.
    pub kstart: Tensor,
    kstart_host: Vec<u32>,
    /// The same mask as a (B, 1, T, T) f32 additive bias (0 allowed, f32::MIN not), built
    /// on first use: only the unfused attention path needs it, and it is O(T^2).
    bias: std::sync::OnceLock<Tensor>,
    /// The tokens as causal runs (examples, padding tails) for cuDNN's ragged attention,
    /// and their device tensors, built on first use.
    segments: Segments,
    segment_tensors: std::sync::OnceLock<SegmentTensors>,
    /// (B, T) f32 position of each token within its own example.
    pub positions: Tensor,
    /// (n,) u32 flat indices b*T + j of rows whose next token is a target.
    pub predictor_rows: Tensor,
    /// (n,) u32 the target token for each predictor row.
    pub labels: Tensor,
    pub num_targets: usize,
    /// Real (non-padding) tokens.
    pub num_tokens: usize,
    pub shape: (usize, usize),
}

impl TrainBatch {
    /// (B, 1, T, T) f32 additive attention bias, built from `kstart` on first use.
    pub fn bias(&self) -> Result<&Tensor> {
        if let Some(b) = self.bias.get() {
            return Ok(b);
        }
        let (b, t) = self.shape;
        let mut bias = vec![f32::MIN; b * t * t];
        for (at, &ks) in self.kstart_host.iter().enumerate() {
            let i = at % t;
            bias[at * t + ks as usize..=at * t + i].fill(0.0);
        }
        let tensor = Tensor::from_vec(bias, (b, 1, t, t), self.kstart.device())?;
        Ok(self.bias.get_or_init(|| tensor))
    }

    /// The batch's segments on the device for attention of shape `s`, built on first use
    /// (every layer of a model has the same shape).
    pub fn segment_tensors(&self, s: AttnShape) -> Result<&SegmentTensors> {
        if let Some(t) = self.segment_tensors.get() {
            return Ok(t);
        }
        let t = SegmentTensors::new(&self.segments, s, self.kstart.device())?;
        Ok(self.segment_tensors.get_or_init(|| t))
    }

    /// `rows[b]` lists the examples packed into row b (one each without packing).
    pub fn new(rows: &[Vec<&EncodedExample>], pad_id: u32, device: &Device) -> Result<Self> {
        let b = rows.len();
        let t = rows.iter().map(|r| r.iter().map(|e| e.len()).sum::<usize>()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; b * t];
        let mut segment = vec![0u32; b * t]; // 0 = padding, k = k-th example of the row
        let mut pos = vec![0f32; b * t];
        let (mut pred_rows, mut labels) = (Vec::new(), Vec::new());
        let mut num_tokens = 0;
        for (bi, row) in rows.iter().enumerate() {
            let mut j0 = 0;
            for (si, e) in row.iter().enumerate() {
                for (j, (&id, &m)) in e.input_ids.iter().zip(&e.target_mask).enumerate() {
                    let at = bi * t + j0 + j;
                    ids[at] = id;
                    segment[at] = si as u32 + 1;
                    pos[at] = j as f32;
                    if m == 1 && j > 0 {
                        pred_rows.push((at - 1) as u32);
                        labels.push(id);
                    }
                }
                j0 += e.len();
                num_tokens += e.len();
            }
        }
        // Query i sees keys kstart[i] <= j <= i: its own example's prefix. Padding queries
        // see only themselves, so their softmax rows stay finite.
        let mut kstart = vec![0u32; b * t];
        for bi in 0..b {
            for i in 0..t {
                let at = bi * t + i;
                kstart[at] = if segment[at] == 0 || i == 0 || segment[at - 1] != segment[at] {
                    i as u32
                } else {
                    kstart[at - 1]
                };
            }
        }
        let n = pred_rows.len();
        Ok(TrainBatch {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            kstart: Tensor::from_vec(kstart.clone(), b * t, device)?,
            kstart_host: kstart,
            bias: std::sync::OnceLock::new(),
            segments: Segments::from_example_ids(&segment, t),
            segment_tensors: std::sync::OnceLock::new(),
            positions: Tensor::from_vec(pos, (b, t), device)?,
            predictor_rows: Tensor::from_vec(pred_rows, n, device)?,
            labels: Tensor::from_vec(labels, n, device)?,
            num_targets: n,
            num_tokens,
            shape: (b, t),
        })
    }
}

/// Everything one decoder layer keeps from forward for backward. N = B*T rows.
#[derive(Debug)]
pub struct LayerActs {
    /// (N, H) the layer input (residual stream).
    pub x: Tensor,
    /// (N, 1) f32 and (N, H): input_layernorm's 1/rms and output (input of q, k, v). On
    /// CUDA the output is not kept but recomputed in backward (one cheap fused pass), which
    /// saves 2 of each layer's ~15 activation bytes per hidden unit.
    pub rstd_attn: Tensor,
    pub h_attn: Option<Tensor>,
    /// Qwen3's per-head q/k norms: their inputs and 1/rms.
    pub qk_norm: Option<QkNormSaved>,
    /// Post-RoPE q and k, v, and what the attention core needs (probabilities, or the
    /// flash kernels' log-normaliser).
    pub attn: ops::AttnSaved,
    /// (N, NH*D) attention output before o_proj.
    pub ctx: Tensor,
    /// (N, H) residual stream after attention.
    pub x_mid: Tensor,
    /// (N, 1) f32 and (N, H): post_attention_layernorm's 1/rms and output (recomputed on
    /// CUDA, as above).
    pub rstd_mlp: Tensor,
    pub h_mlp: Option<Tensor>,
    /// The MLP's gate and up when forward kept them; with checkpointing, backward
    /// recomputes them by row chunks instead (`mlp.rs`).
    pub mlp: Option<GateUp>,
    /// Per target (Target::index): u = x A^T and the dropped-out input, and dropout masks.
    pub lora: [Option<LoraSaved>; 7],
    pub masks: [Option<Tensor>; 7],
}

/// What per-head q/k norms keep for backward: q (N, NH*D) and k (N, NKV*D) as projected,
/// and their 1/rms, (N*NH, 1) and (N*NKV, 1) f32.
#[derive(Debug)]
pub struct QkNormSaved {
    pub q: Tensor,
    pub rstd_q: Tensor,
    pub k: Tensor,
    pub rstd_k: Tensor,
}

/// What the step needs besides weights: the batch's attention mask and rotary tables.
pub struct StepContext<'a> {
    pub cfg: &'a ModelConfig,
    pub batch: &'a TrainBatch,
    /// (B, 1, T, D) each.
    pub cos: Tensor,
    pub sin: Tensor,
    pub shape: (usize, usize),
    pub scaling: f64,
    pub dropout: f64,
    /// Rows per chunk of the MLP where it runs by chunks (`mlp.rs`).
    pub mlp_chunk_rows: usize,
    /// Times each operation when set (`bench --profile`).
    pub profiler: Option<&'a Profiler>,
}

impl StepContext<'_> {
    fn attn_shape(&self) -> ops::AttnShape {
        let (b, t) = self.shape;
        let c = self.cfg;
        ops::AttnShape { b, t, nh: c.num_attention_heads, nkv: c.num_key_value_heads, d: c.head_dim }
    }
}

/// Profile region names of the projections, in `Target::index` order.
const LINEAR_FWD: [&str; 7] =
    ["q_proj fwd", "k_proj fwd", "v_proj fwd", "o_proj fwd", "gate_proj fwd", "up_proj fwd", "down_proj fwd"];
const LINEAR_BWD: [&str; 7] =
    ["q_proj bwd", "k_proj bwd", "v_proj bwd", "o_proj bwd", "gate_proj bwd", "up_proj bwd", "down_proj bwd"];

/// One projection forward with its adapter, timed under the projection's name: input (N, in)
/// -> (N, out); the adapter's saved input goes into `saved`.
pub(super) fn project(
    ctx: &StepContext,
    lora: &LayerLora,
    target: Target,
    w: &crate::model::llama::Linear,
    input: &Tensor,
    masks: &[Option<Tensor>; 7],
    saved: &mut [Option<LoraSaved>; 7],
) -> Result<Tensor> {
    let i = target.index();
    let (y, s) = timed(ctx.profiler, LINEAR_FWD[i], || {
        ops::lora_linear_forward(input, w, lora.get(target), ctx.scaling, masks[i].as_ref())
    })?;
    saved[i] = s;
    Ok(y)
}

/// One projection backward with its adapter, timed under the projection's name: dy (N, out)
/// -> dx (N, in), added into `acc` (the input gradient so far of projections sharing this
/// input) when given; the adapter's gradients go into `grads`.
#[allow(clippy::too_many_arguments)]
pub(super) fn project_back(
    ctx: &StepContext,
    lora: &LayerLora,
    target: Target,
    w: &crate::model::llama::Linear,
    dy: &Tensor,
    input: Option<&Tensor>,
    saved: &[Option<LoraSaved>; 7],
    masks: &[Option<Tensor>; 7],
    acc: Option<Tensor>,
    grads: &mut [Option<LoraGrad>; 7],
) -> Result<Tensor> {
    let i = target.index();
    let pair = lora.get(target).zip(saved[i].as_ref());
    let (dx, g) = timed(ctx.profiler, LINEAR_BWD[i], || {
        ops::lora_linear_backward(dy, input, w, pair, ctx.scaling, masks[i].as_ref(), acc)
    })?;
    grads[i] = g;
    Ok(dx)
}

/// Per-layer adapter gradients, indexed like `LayerLora::pairs`.
#[derive(Debug, Clone, Default)]
pub struct LayerGrads {
    pub pairs: [Option<LoraGrad>; 7],
}

/// Gradients for a whole adapter, accumulated over micro-batches.
#[derive(Debug, Clone)]
pub struct LoraGrads {
    pub layers: Vec<LayerGrads>,
    /// Whether a layer has received gradients yet (until then it holds zeros).
    touched: Vec<bool>,
}

impl LoraGrads {
    pub fn zeros(lora: &LoraWeights) -> Result<Self> {
        let layers: Vec<LayerGrads> = lora
            .layers
            .iter()
            .map(|l| {
                let mut g = LayerGrads::default();
                for (slot, p) in g.pairs.iter_mut().zip(&l.pairs) {
                    if let Some(p) = p {
                        // Zeros as stride-0 views of one scalar: no memory until the first
                        // micro-batch's gradients replace them (7B: 64 MiB at r16 qkvo).
                        let zero = Tensor::zeros((), p.a.dtype(), p.a.device())?;
                        *slot =
                            Some(LoraGrad { a: zero.broadcast_as(p.a.shape())?, b: zero.broadcast_as(p.b.shape())? });
                    }
                }
                Ok(g)
            })
            .collect::<Result<_>>()?;
        let touched = vec![false; layers.len()];
        Ok(LoraGrads { layers, touched })
    }

    fn accumulate(&mut self, layer: usize, g: [Option<LoraGrad>; 7]) -> Result<()> {
        let fresh = !self.touched[layer];
        for (acc, new) in self.layers[layer].pairs.iter_mut().zip(g) {
            if let (Some(acc), Some(new)) = (acc.as_mut(), new) {
                // The first micro-batch's gradients replace the zeros (no add pass).
                if fresh {
                    *acc = new;
                } else {
                    acc.a = (&acc.a + new.a)?;
                    acc.b = (&acc.b + new.b)?;
                }
            }
        }
        self.touched[layer] = true;
        Ok(())
    }

    /// In `LoraWeights::named_tensors` order (layer, target, A then B).
    pub fn tensors(&self) -> Vec<Tensor> {
        self.layers.iter().flat_map(|l| l.pairs.iter().flatten().flat_map(|g| [g.a.clone(), g.b.clone()])).collect()
    }
}

/// Dropout masks for one layer, drawn from `seed` so a recomputed layer gets the same ones.
fn dropout_masks(
    lora: &LayerLora,
    cfg: &ModelConfig,
    rows: usize,
    p: f64,
    seed: u64,
    device: &Device,
) -> Result<[Option<Tensor>; 7]> {
    let mut masks: [Option<Tensor>; 7] = Default::default();
    if p <= 0.0 {
        return Ok(masks);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keep = (1.0 / (1.0 - p)) as f32;
    for t in Target::ALL {
        if lora.get(t).is_some() {
            let (inp, _) = t.shape(cfg);
            let m: Vec<f32> = (0..rows * inp).map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep }).collect();
            masks[t.index()] = Some(Tensor::from_vec(m, (rows, inp), device)?);
        }
    }
    Ok(masks)
}

/// What a layer forward is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerMode {
    /// The output only (evaluation).
    Output,
    /// The output and the attention core's result (checkpointing's first pass, which keeps
    /// that result with the layer's input when they are offloaded).
    Checkpoint,
    /// The output and the activations backward needs.
    Train,
    /// The activations only (checkpointing's recomputation in backward), up to the MLP's
    /// input: the MLP backward recomputes its own by row chunks (`mlp.rs`).
    Recompute,
}

/// What one decoder layer forward gives back.
pub struct LayerOut {
    /// (N, H), unless `Recompute`.
    pub out: Option<Tensor>,
    /// Unless `Output` or `Checkpoint`.
    pub acts: Option<LayerActs>,
    /// With `Checkpoint`, on the fused attention paths.
    pub core: Option<ops::AttnCore>,
}

/// One decoder layer forward. x: (N, H) -> see [`LayerOut`]. `known`: with `Recompute`,
/// the attention core's result kept from the first pass (it is then not run again).
pub fn layer_forward(
    ctx: &StepContext,
    w: &LayerWeights,
    lora: &LayerLora,
    x: &Tensor,
    dropout_seed: u64,
    mode: LayerMode,
    known: Option<ops::AttnCore>,
) -> Result<LayerOut> {
    let save = matches!(mode, LayerMode::Train | LayerMode::Recompute);
    let cfg = ctx.cfg;
    let (b, t) = ctx.shape;
    let masks = dropout_masks(lora, cfg, b * t, ctx.dropout, dropout_seed, x.device())?;
    let mut saved: [Option<LoraSaved>; 7] = Default::default();
    let mut proj = |target: Target, w: &crate::model::llama::Linear, input: &Tensor| -> Result<Tensor> {
        project(ctx, lora, target, w, input, &masks, &mut saved)
    };

    let p = ctx.profiler;
    let (h_attn, rstd_attn) =
        timed(p, "rms_norm fwd", || ops::rms_norm_forward(x, &w.input_layernorm, cfg.rms_norm_eps))?;
    let qp = proj(Target::QProj, &w.self_attn.q_proj, &h_attn)?;
    let kp = proj(Target::KProj, &w.self_attn.k_proj, &h_attn)?;
    let vp = proj(Target::VProj, &w.self_attn.v_proj, &h_attn)?;
    let (qp, kp, qk_norm) = match (&w.self_attn.q_norm, &w.self_attn.k_norm) {
        (Some(qw), Some(kw)) => {
            let s = ctx.attn_shape();
            let eps = cfg.rms_norm_eps;
            let (qn, rstd_q) = timed(p, "q/k norm fwd", || ops::head_rms_norm_forward(&qp, qw, s.nh, eps))?;
            let (kn, rstd_k) = timed(p, "q/k norm fwd", || ops::head_rms_norm_forward(&kp, kw, s.nkv, eps))?;
            (qn, kn, save.then_some(QkNormSaved { q: qp, rstd_q, k: kp, rstd_k }))
        }
        _ => (qp, kp, None),
    };
    let (attn, attn_saved) = timed(p, "attention fwd", || {
        let mask = ops::AttnMask {
            kstart: &ctx.batch.kstart,
            bias: &|| ctx.batch.bias().cloned(),
            segments: &|s| ctx.batch.segment_tensors(s),
        };
        ops::attention_block_forward(&qp, &kp, &vp, &ctx.cos, &ctx.sin, &mask, ctx.attn_shape(), known)
    })?;
    let core = match mode {
        LayerMode::Checkpoint => attn_saved.core(),
        _ => None,
    };
    // Temporaries go as soon as they are used (at 4096 tokens each is 32-90 MB), and without
    // `save` so do the tensors that only backward would read. Norm outputs are kept only off
    // CUDA: there backward recomputes them in one fused pass.
    drop((qp, kp, vp));
    let keep_norm_outputs = save && !ops::cuda_bf16(x);
    let h_attn = keep_norm_outputs.then_some(h_attn);
    let attn_saved = save.then_some(attn_saved);
    let o = proj(Target::OProj, &w.self_attn.o_proj, &attn)?;
    let attn = save.then_some(attn);
    let (x_mid, h_mlp, rstd_mlp) = timed(p, "residual add + rms_norm fwd", || {
        ops::add_rms_norm_forward(x, &o, &w.post_attention_layernorm, cfg.rms_norm_eps)
    })?;
    drop(o);
    let kept_h_mlp = keep_norm_outputs.then(|| h_mlp.clone());
    let (out, gate_up) = mlp::forward(ctx, w, lora, &x_mid, h_mlp, &masks, &mut saved, mode)?;
    let acts = match (attn_saved, attn) {
        (Some(attn_saved), Some(attn)) => Some(LayerActs {
            x: x.clone(),
            rstd_attn,
            h_attn,
            qk_norm,
            attn: attn_saved,
            ctx: attn,
            x_mid,
            rstd_mlp,
            h_mlp: kept_h_mlp,
            mlp: gate_up,
            lora: saved,
            masks,
        }),
        _ => None,
    };
    Ok(LayerOut { out, acts, core })
}

/// One decoder layer backward. dout: (N, H) -> (dx (N, H), adapter gradients).
/// Takes the activations by value: each is dropped, or written over, once used.
pub fn layer_backward(
    ctx: &StepContext,
    w: &LayerWeights,
    lora: &LayerLora,
    a: LayerActs,
    dout: &Tensor,
) -> Result<(Tensor, [Option<LoraGrad>; 7])> {
    let mut grads: [Option<LoraGrad>; 7] = Default::default();
    let p = ctx.profiler;
    // MLP half: out = x_mid + down(swiglu(gate(h), up(h))), h = norm(x_mid)
    let dh_mlp = mlp::backward(ctx, w, lora, dout, &a.x_mid, a.h_mlp.as_ref(), a.mlp, &a.lora, &a.masks, &mut grads)?;
    let dx_mid = timed(p, "rms_norm bwd", || {
        ops::rms_norm_backward_add(&dh_mlp, &a.x_mid, &w.post_attention_layernorm, &a.rstd_mlp, dout)
    })?;
    drop(dh_mlp);
    // `acc`: the input gradient so far of projections sharing this input (summed into).
    let mut proj_back = |target: Target,
                         w: &crate::model::llama::Linear,
                         dy: &Tensor,
                         input: Option<&Tensor>,
                         acc: Option<Tensor>|
     -> Result<Tensor> {
        project_back(ctx, lora, target, w, dy, input, &a.lora, &a.masks, acc, &mut grads)
    };

    // Attention half: x_mid = x + o(attn(rope(q(h)), rope(k(h)), v(h))), h = norm(x)
    let dattn = proj_back(Target::OProj, &w.self_attn.o_proj, &dx_mid, Some(&a.ctx), None)?;
    let (dq, dk, dv) = timed(p, "attention bwd", || {
        let mask = ops::AttnMask {
            kstart: &ctx.batch.kstart,
            bias: &|| ctx.batch.bias().cloned(),
            segments: &|s| ctx.batch.segment_tensors(s),
        };
        ops::attention_block_backward(&dattn, &a.attn, &ctx.cos, &ctx.sin, &mask, ctx.attn_shape())
    })?;
    drop(dattn);
    let (dq, dk) = match (&a.qk_norm, &w.self_attn.q_norm, &w.self_attn.k_norm) {
        (Some(n), Some(qw), Some(kw)) => {
            let s = ctx.attn_shape();
            timed(p, "q/k norm bwd", || {
                Ok((
                    ops::head_rms_norm_backward(&dq, &n.q, qw, &n.rstd_q, s.nh)?,
                    ops::head_rms_norm_backward(&dk, &n.k, kw, &n.rstd_k, s.nkv)?,
                ))
            })?
        }
        _ => (dq, dk),
    };
    let adapted = |t: Target| lora.get(t).is_some();
    let eps = ctx.cfg.rms_norm_eps;
    let h_attn = match (&a.h_attn, adapted(Target::QProj) || adapted(Target::KProj) || adapted(Target::VProj)) {
        (Some(h), _) => Some(h.clone()),
        (None, true) => {
            Some(timed(p, "rms_norm fwd (recompute)", || ops::rms_norm_forward(&a.x, &w.input_layernorm, eps))?.0)
        }
        (None, false) => None,
    };
    let dh_attn = proj_back(Target::QProj, &w.self_attn.q_proj, &dq, h_attn.as_ref(), None)?;
    let dh_attn = proj_back(Target::KProj, &w.self_attn.k_proj, &dk, h_attn.as_ref(), Some(dh_attn))?;
    let dh_attn = proj_back(Target::VProj, &w.self_attn.v_proj, &dv, h_attn.as_ref(), Some(dh_attn))?;
    drop((dq, dk, dv, h_attn));
    let dx = timed(p, "rms_norm bwd", || {
        ops::rms_norm_backward_add(&dh_attn, &a.x, &w.input_layernorm, &a.rstd_attn, &dx_mid)
    })?;
    Ok((dx, grads))
}

/// How the step runs.
#[derive(Debug, Clone, Copy)]
pub struct StepOptions<'a> {
    /// Keep only each layer's input and recompute the layer during backward.
    pub gradient_checkpointing: bool,
    /// With checkpointing, only the first this many layers are checkpointed (None: all);
    /// the others keep their activations. Memory falls linearly with it, and so does the
    /// recompute's cost.
    pub checkpoint_layers: Option<usize>,
    /// With checkpointing on CUDA, keep the inputs in pinned host memory instead of on the
    /// GPU (copies overlap compute on a side stream); ignored elsewhere.
    pub offload_checkpoints: bool,
    /// LoRA dropout probability (0 disables it).
    pub dropout: f64,
    /// Rows per chunk where the MLP runs by chunks (None: `mlp::MLP_CHUNK_ROWS`).
    pub mlp_chunk_rows: Option<usize>,
    /// Times each operation when set (`bench --profile`); recomputed layers count under
    /// the forward regions.
    pub profiler: Option<&'a Profiler>,
}

/// No checkpointing, no dropout, the MLP in chunks of the default size, no profiler;
/// checkpoints offloaded where checkpointing is turned on (as `train.offload_checkpoints`).
impl Default for StepOptions<'_> {
    fn default() -> Self {
        StepOptions {
            gradient_checkpointing: false,
            checkpoint_layers: None,
            offload_checkpoints: true,
            dropout: 0.0,
            mlp_chunk_rows: None,
            profiler: None,
        }
    }
}

/// Where checkpointed layer inputs wait for backward.
enum Checkpoints {
    /// One (L, N, H) device buffer allocated up front: kept among the layers' transients one
    /// by one, the inputs left the memory pool with blocks it could not reuse.
    Device(Tensor),
    /// Pinned host memory, copied out and back on a side stream (`train.offload_checkpoints`),
    /// with each layer's attention core result beside its input.
    Host(HostCheckpoints),
}

/// Where checkpoints go, by the host memory they would pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Inputs and attention cores on the host.
    HostWithCore,
    /// Inputs only on the host (the cores would not fit): the recompute runs attention again.
    Host,
    /// On the GPU (not even the inputs fit on the host).
    Device,
}

impl Placement {
    /// `x_bytes` the inputs need, `core_bytes` the attention cores, `available` the host bytes
    /// that may be pinned (None: unknown, taken as enough).
    fn choose(x_bytes: usize, core_bytes: usize, available: Option<usize>) -> Placement {
        let fits = |b: usize| available.is_none_or(|a| b <= a);
        match () {
            _ if fits(x_bytes + core_bytes) => Placement::HostWithCore,
            _ if fits(x_bytes) => Placement::Host,
            _ => Placement::Device,
        }
    }
}

/// Says once per process why checkpoints did not all go to host memory (the first step
/// whose checkpoints did not).
fn note_placement(p: Placement, x_bytes: usize, core_bytes: usize, available: usize) {
    static SAID: std::sync::Once = std::sync::Once::new();
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    if p == Placement::HostWithCore {
        return;
    }
    SAID.call_once(|| match p {
        Placement::HostWithCore => {}
        Placement::Host => eprintln!(
            "checkpoints: {:.1} GiB of host memory may be pinned, too little for the layer inputs \
             and attention outputs ({:.1} + {:.1} GiB): keeping the inputs only, so the recompute \
             runs attention forward again",
            gib(available),
            gib(x_bytes),
            gib(core_bytes)
        ),
        Placement::Device => eprintln!(
            "checkpoints: {:.1} GiB of host memory may be pinned, too little for the layer inputs \
             ({:.1} GiB): keeping them on the GPU",
            gib(available),
            gib(x_bytes)
        ),
    });
}

/// The offloaded inputs, and per layer the attention output o and lse (stashes made at the
/// first layer that has them; lse is kept flat as its layout differs by engine).
struct HostCheckpoints {
    x: HostStash,
    /// Whether attention cores are kept (host memory allowing).
    keep_core: bool,
    o: Option<HostStash>,
    lse: Option<HostStash>,
    /// Per layer: lse's shape and the engine, where the core was kept.
    core: Vec<Option<(Vec<usize>, bool)>>,
}

impl Checkpoints {
    /// Room for `layers` inputs shaped like `x` (N, H); on the host when `offload`, `x` is on
    /// a CUDA device and host memory allows, with each layer's attention output and
    /// log-sum-exp (attention shape `s`) where it allows that too.
    fn new(layers: usize, x: &Tensor, offload: bool, s: ops::AttnShape) -> Result<Checkpoints> {
        let (n, h) = x.dims2()?;
        let mut placement = Placement::Device;
        if offload && x.device().is_cuda() {
            let x_bytes = layers * n * h * x.dtype().size_in_bytes();
            // o (N, NH*D) in x's dtype, lse (N, NH) f32.
            let core_bytes = layers * n * s.nh * (s.d * x.dtype().size_in_bytes() + 4);
            let available = offload::host_bytes_available();
            placement = Placement::choose(x_bytes, core_bytes, available);
            if let Some(a) = available {
                note_placement(placement, x_bytes, core_bytes, a);
            }
        }
        Ok(match placement {
            Placement::HostWithCore | Placement::Host => Checkpoints::Host(HostCheckpoints {
                x: HostStash::new(x.device(), layers, &[n, h], x.dtype())?,
                keep_core: placement == Placement::HostWithCore,
                o: None,
                lse: None,
                core: vec![None; layers],
            }),
            // SAFETY: slab l is written (slice_set) before anything reads it.
            Placement::Device => Checkpoints::Device(unsafe { Tensor::empty((layers, n, h), x.dtype(), x.device())? }),
        })
    }

    /// The forward pass mode of a checkpointed layer: only offloaded checkpoints keep the
    /// attention core (on the GPU it would cost as much memory as the inputs themselves).
    fn mode(&self) -> LayerMode {
        match self {
            Checkpoints::Host(HostCheckpoints { keep_core: true, .. }) => LayerMode::Checkpoint,
            _ => LayerMode::Output,
        }
    }

    /// Keeps layer l's input; returns the tensor the layer should read (a view of the slab,
    /// or `x` itself while its copy to the host runs).
    fn store(&mut self, l: usize, x: Tensor) -> Result<Tensor> {
        match self {
            Checkpoints::Device(slab) => {
                slab.slice_set(&x.unsqueeze(0)?, 0, l)?;
                slab.get(l)
            }
            Checkpoints::Host(h) => {
                h.x.store(l, &x)?;
                Ok(x)
            }
        }
    }

    /// Keeps layer l's attention core result (offloaded checkpoints only).
    fn store_core(&mut self, l: usize, core: &ops::AttnCore) -> Result<()> {
        let Checkpoints::Host(h) = self else { return Ok(()) };
        let layers = h.core.len();
        let (o, lse) = (&core.o, core.lse.flatten_all()?);
        if h.o.is_none() {
            h.o = Some(HostStash::new(o.device(), layers, o.dims(), o.dtype())?);
            h.lse = Some(HostStash::new(lse.device(), layers, lse.dims(), lse.dtype())?);
        }
        h.o.as_mut().expect("made above").store(l, o)?;
        h.lse.as_mut().expect("made above").store(l, &lse)?;
        h.core[l] = Some((core.lse.dims().to_vec(), core.cudnn));
        Ok(())
    }

    /// Once layer l's forward is enqueued: its input may be dropped after this.
    fn fence_input(&self, l: usize) -> Result<()> {
        match self {
            Checkpoints::Device(_) => Ok(()),
            Checkpoints::Host(h) => h.x.fence(l),
        }
    }

    /// Once the next layer's forward is enqueued: layer l's core may be dropped after this.
    fn fence_core(&self, l: usize) -> Result<()> {
        match self {
            Checkpoints::Host(HostCheckpoints { o: Some(o), lse: Some(lse), .. }) => {
                o.fence(l)?;
                lse.fence(l)
            }
            _ => Ok(()),
        }
    }

    fn prefetch(&mut self, l: usize) -> Result<()> {
        let Checkpoints::Host(h) = self else { return Ok(()) };
        h.x.prefetch(l)?;
        if let (Some(_), Some(o), Some(lse)) = (&h.core[l], h.o.as_mut(), h.lse.as_mut()) {
            o.prefetch(l)?;
            lse.prefetch(l)?;
        }
        Ok(())
    }

    /// Layer l's input (N, H), and its attention core result where it was kept.
    fn load(&mut self, l: usize) -> Result<(Tensor, Option<ops::AttnCore>)> {
        match self {
            Checkpoints::Device(slab) => Ok((slab.get(l)?, None)),
            Checkpoints::Host(h) => {
                let x = h.x.take(l)?;
                let core = match (h.core[l].take(), h.o.as_mut(), h.lse.as_mut()) {
                    (Some((dims, cudnn)), Some(o), Some(lse)) => {
                        Some(ops::AttnCore { o: o.take(l)?, lse: lse.take(l)?.reshape(dims)?, cudnn })
                    }
                    _ => None,
                };
                Ok((x, core))
            }
        }
    }
}

/// Result of one forward/backward over a micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Sum of -log p over the batch's targets.
    pub nll_sum: f64,
    pub num_targets: usize,
    pub num_tokens: usize,
}

fn step_context<'a>(
    model: &'a Llama,
    lora: &LoraWeights,
    batch: &'a TrainBatch,
    dropout: f64,
    mlp_chunk_rows: Option<usize>,
    profiler: Option<&'a Profiler>,
) -> Result<StepContext<'a>> {
    let (cos, sin) = model.rope.cos_sin(&batch.positions, model.dtype())?;
    Ok(StepContext {
        cfg: &model.config,
        batch,
        cos,
        sin,
        shape: batch.shape,
        scaling: lora.scaling,
        dropout,
        mlp_chunk_rows: mlp_chunk_rows.unwrap_or(mlp::MLP_CHUNK_ROWS),
        profiler,
    })
}

fn embed(model: &Llama, batch: &TrainBatch) -> Result<Tensor> {
    model.weights.embed_tokens.index_select(&batch.input_ids.flatten_all()?, 0) // (N, H)
}

/// Forward and backward over one micro-batch; adds `loss_scale * d(sum nll)/d(A, B)` into
/// `grads`. Pass loss_scale = 1 / (targets in the whole optimizer step) so accumulated
/// micro-batches give the gradient of the step's mean loss. `rng` draws dropout seeds.
pub fn forward_backward(
    model: &Llama,
    lora: &LoraWeights,
    batch: &TrainBatch,
    loss_scale: f64,
    opts: StepOptions,
    rng: &mut ChaCha8Rng,
    grads: &mut LoraGrads,
) -> Result<StepStats> {
    let profiler = opts.profiler;
    let ctx = step_context(model, lora, batch, opts.dropout, opts.mlp_chunk_rows, profiler)?;
    let n_layers = model.weights.layers.len();
    let seeds: Vec<u64> = (0..n_layers).map(|_| rng.next_u64()).collect();

    // Forward, keeping per layer either the activations or (checkpointing) the input.
    let mut x = timed(profiler, "embed", || embed(model, batch))?;
    let checkpointed = match opts.gradient_checkpointing {
        true => opts.checkpoint_layers.unwrap_or(n_layers).min(n_layers),
        false => 0,
    };
    let mut inputs = match checkpointed {
        0 => None,
        k => Some(Checkpoints::new(k, &x, opts.offload_checkpoints, ctx.attn_shape())?),
    };
    let mut saved = Vec::with_capacity(n_layers);
    // A kept attention core stays alive until the next layer is enqueued, so its copy to
    // the host overlaps that layer instead of stalling the stream.
    let mut copying: Option<(usize, ops::AttnCore)> = None;
    for (l, w) in model.weights.layers.iter().enumerate() {
        let recompute = l < checkpointed;
        let mut mode = LayerMode::Train;
        if let Some(inputs) = inputs.as_mut().filter(|_| recompute) {
            x = timed(profiler, "checkpoint store", || inputs.store(l, x))?;
            mode = inputs.mode();
        }
        let LayerOut { out, acts, core } = layer_forward(&ctx, w, &lora.layers[l], &x, seeds[l], mode, None)?;
        if let Some(inputs) = inputs.as_mut() {
            if recompute {
                inputs.fence_input(l)?; // before x, the layer's input, is dropped below
            }
            if let Some((k, _)) = copying.take() {
                inputs.fence_core(k)?;
            }
            if let Some(core) = core {
                timed(profiler, "checkpoint store", || inputs.store_core(l, &core))?;
                copying = Some((l, core));
            }
        }
        saved.push(acts);
        x = out.expect("output when asked");
    }
    if let (Some(inputs), Some((k, _))) = (inputs.as_ref(), copying.take()) {
        inputs.fence_core(k)?;
    }

    // Loss over target rows only: final norm and LM head never see the other rows.
    let stats = StepStats { nll_sum: 0.0, num_targets: batch.num_targets, num_tokens: batch.num_tokens };
    if batch.num_targets == 0 {
        return Ok(stats);
    }
    let (nll_sum, mut dx) = timed(profiler, "final norm + lm head + loss", || {
        let rows = x.index_select(&batch.predictor_rows, 0)?; // (n, H)
        let (hn, rstd) = ops::rms_norm_forward(&rows, &model.weights.norm, model.config.rms_norm_eps)?;
        let (nll_sum, dhn) =
            ops::cross_entropy_forward_backward(&hn, &model.weights.lm_head, &batch.labels, loss_scale)?;
        let drows = ops::rms_norm_backward(&dhn, &rows, &model.weights.norm, &rstd)?;
        Ok((nll_sum, x.zeros_like()?.index_add(&batch.predictor_rows, &drows, 0)?))
        // dx: (N, H)
    })?;
    drop(x);

    for l in (0..n_layers).rev() {
        let w = &model.weights.layers[l];
        let acts = match (saved[l].take(), inputs.as_mut()) {
            (Some(a), _) => a,
            (None, Some(inputs)) => {
                let (x, core) = timed(profiler, "checkpoint load", || inputs.load(l))?;
                // The next layer down's input comes back while this layer computes.
                if l > 0 {
                    inputs.prefetch(l - 1)?;
                }
                layer_forward(&ctx, w, &lora.layers[l], &x, seeds[l], LayerMode::Recompute, core)?
                    .acts
                    .expect("saved when asked")
            }
            (None, None) => unreachable!("a layer keeps its activations or its input"),
        };
        let (dprev, g) = layer_backward(&ctx, w, &lora.layers[l], acts, &dx)?;
        timed(profiler, "lora grad accumulate", || grads.accumulate(l, g))?;
        dx = dprev;
    }
    Ok(StepStats { nll_sum, ..stats })
}

/// Sum of -log p over the batch's targets with the adapter applied; no activations kept.
pub fn forward_nll(model: &Llama, lora: &LoraWeights, batch: &TrainBatch) -> Result<f64> {
    if batch.num_targets == 0 {
        return Ok(0.0);
    }
    let ctx = step_context(model, lora, batch, 0.0, None, None)?;
    let mut x = embed(model, batch)?;
    for (l, w) in model.weights.layers.iter().enumerate() {
        x = layer_forward(&ctx, w, &lora.layers[l], &x, 0, LayerMode::Output, None)?.out.expect("output when asked");
    }
    let rows = x.index_select(&batch.predictor_rows, 0)?;
    let (hn, _) = ops::rms_norm_forward(&rows, &model.weights.norm, model.config.rms_norm_eps)?;
    ops::cross_entropy_sum(&hn, &model.weights.lm_head, &batch.labels)
}

/// Bytes held by one layer's saved activations (for reports and memory checks).
pub fn layer_acts_bytes(a: &LayerActs) -> usize {
    let mut ts = vec![&a.x, &a.rstd_attn, &a.ctx, &a.x_mid, &a.rstd_mlp];
    ts.extend(a.mlp.iter().flat_map(|m| [&m.gate, &m.up]));
    ts.extend(a.h_attn.iter().chain(&a.h_mlp));
    ts.extend(a.qk_norm.iter().flat_map(|n| [&n.q, &n.rstd_q, &n.k, &n.rstd_k]));
    ts.extend(a.attn.tensors());
    for s in a.lora.iter().flatten() {
        ts.push(&s.u);
        if let Some(x) = &s.dropped_input {
            ts.push(x);
        }
    }
    ts.extend(a.masks.iter().flatten());
    ts.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
}

#[cfg(test)]
mod placement_tests {
    use super::Placement;

    #[test]
    fn checkpoints_go_where_host_memory_allows() {
        const G: usize = 1 << 30;
        assert_eq!(Placement::choose(8 * G, 8 * G, Some(100 * G)), Placement::HostWithCore);
        assert_eq!(Placement::choose(8 * G, 8 * G, None), Placement::HostWithCore);
        // 8B at 256k tokens on a 128 GiB host: the inputs fit, inputs and cores do not.
        assert_eq!(Placement::choose(64 * G, 65 * G, Some(107 * G)), Placement::Host);
        assert_eq!(Placement::choose(64 * G, 65 * G, Some(60 * G)), Placement::Device);
    }
}
