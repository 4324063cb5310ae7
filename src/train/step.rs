//! The training step: forward with explicitly saved activations, the loss over target
//! rows, and a hand-written backward that produces LoRA gradients only.
//!
//! Why hand-written rather than candle autograd: autograd's matmul backward forms the
//! gradient of both operands, so every frozen base weight would get a full-size gradient,
//! and its tape keeps every intermediate alive until backward ends. Here the base weights
//! only ever appear in `dy W` (input gradients), what each layer keeps is the named
//! fields of [`LayerActs`], and with checkpointing a layer keeps only its input and is
//! recomputed during backward.

use candle_core::{Device, Result, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ops::{self, LoraGrad, LoraSaved};
use super::profile::{timed, Profiler};
use crate::encode::EncodedExample;
use crate::lora::{LayerLora, LoraWeights, Target};
use crate::model::llama::LayerWeights;
use crate::model::{Llama, ModelConfig};

/// A batch laid out for training: B rows of T tokens. A row holds one example, or several
/// when packing; tokens of different examples never attend to each other and each
/// example's positions restart at 0, so packing does not change any example's loss.
#[derive(Debug)]
pub struct TrainBatch {
    /// (B, T) u32
    pub input_ids: Tensor,
    /// (B, 1, T, T) f32 additive attention bias: 0 where allowed, f32::MIN elsewhere.
    pub bias: Tensor,
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
        let mut bias = vec![f32::MIN; b * t * t];
        for bi in 0..b {
            for i in 0..t {
                let si = segment[bi * t + i];
                // Padding queries attend to themselves only, so their rows stay finite.
                if si == 0 {
                    bias[(bi * t + i) * t + i] = 0.0;
                    continue;
                }
                for j in (0..=i).rev() {
                    if segment[bi * t + j] != si {
                        break;
                    }
                    bias[(bi * t + i) * t + j] = 0.0;
                }
            }
        }
        let n = pred_rows.len();
        Ok(TrainBatch {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            bias: Tensor::from_vec(bias, (b, 1, t, t), device)?,
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
    /// (N, 1) f32 and (N, H): input_layernorm's 1/rms and output (input of q, k, v).
    pub rstd_attn: Tensor,
    pub h_attn: Tensor,
    /// Post-RoPE queries (B, NH, T, D) and keys (B, NKV, T, D); values (B, NKV, T, D).
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// (B, NH, T, T) f32 attention probabilities.
    pub probs: Tensor,
    /// (N, NH*D) attention output before o_proj.
    pub ctx: Tensor,
    /// (N, H) residual stream after attention.
    pub x_mid: Tensor,
    /// (N, 1) f32 and (N, H): post_attention_layernorm's 1/rms and output.
    pub rstd_mlp: Tensor,
    pub h_mlp: Tensor,
    /// (N, I) gate pre-activation and up projection; silu(gate)*up is recomputed.
    pub gate: Tensor,
    pub up: Tensor,
    /// Per target (Target::index): u = x A^T and the dropped-out input, and dropout masks.
    pub lora: [Option<LoraSaved>; 7],
    pub masks: [Option<Tensor>; 7],
}

/// What the step needs besides weights: the batch's attention bias and rotary tables.
pub struct StepContext<'a> {
    pub cfg: &'a ModelConfig,
    pub bias: &'a Tensor,
    /// (B, 1, T, D) each.
    pub cos: Tensor,
    pub sin: Tensor,
    pub shape: (usize, usize),
    pub scaling: f64,
    pub dropout: f64,
    /// Times each operation when set (`bench --profile`).
    pub profiler: Option<&'a Profiler>,
}

/// Profile region names of the projections, in `Target::index` order.
const LINEAR_FWD: [&str; 7] = ["q_proj fwd", "k_proj fwd", "v_proj fwd", "o_proj fwd", "gate_proj fwd", "up_proj fwd", "down_proj fwd"];
const LINEAR_BWD: [&str; 7] = ["q_proj bwd", "k_proj bwd", "v_proj bwd", "o_proj bwd", "gate_proj bwd", "up_proj bwd", "down_proj bwd"];

/// Per-layer adapter gradients, indexed like `LayerLora::pairs`.
#[derive(Debug, Clone, Default)]
pub struct LayerGrads {
    pub pairs: [Option<LoraGrad>; 7],
}

/// Gradients for a whole adapter, accumulated over micro-batches.
#[derive(Debug, Clone)]
pub struct LoraGrads {
    pub layers: Vec<LayerGrads>,
}

impl LoraGrads {
    pub fn zeros(lora: &LoraWeights) -> Result<Self> {
        let layers = lora
            .layers
            .iter()
            .map(|l| {
                let mut g = LayerGrads::default();
                for (slot, p) in g.pairs.iter_mut().zip(&l.pairs) {
                    if let Some(p) = p {
                        *slot = Some(LoraGrad { a: p.a.zeros_like()?, b: p.b.zeros_like()? });
                    }
                }
                Ok(g)
            })
            .collect::<Result<_>>()?;
        Ok(LoraGrads { layers })
    }

    fn accumulate(&mut self, layer: usize, g: [Option<LoraGrad>; 7]) -> Result<()> {
        for (acc, new) in self.layers[layer].pairs.iter_mut().zip(g) {
            if let (Some(acc), Some(new)) = (acc.as_mut(), new) {
                acc.a = (&acc.a + new.a)?;
                acc.b = (&acc.b + new.b)?;
            }
        }
        Ok(())
    }

    /// In `LoraWeights::named_tensors` order (layer, target, A then B).
    pub fn tensors(&self) -> Vec<Tensor> {
        self.layers.iter().flat_map(|l| l.pairs.iter().flatten().flat_map(|g| [g.a.clone(), g.b.clone()])).collect()
    }
}

/// Dropout masks for one layer, drawn from `seed` so a recomputed layer gets the same ones.
fn dropout_masks(lora: &LayerLora, cfg: &ModelConfig, rows: usize, p: f64, seed: u64, device: &Device) -> Result<[Option<Tensor>; 7]> {
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

/// One decoder layer forward. x: (N, H) -> (N, H), and the activations when `save`.
pub fn layer_forward(
    ctx: &StepContext,
    w: &LayerWeights,
    lora: &LayerLora,
    x: &Tensor,
    dropout_seed: u64,
    save: bool,
) -> Result<(Tensor, Option<LayerActs>)> {
    let cfg = ctx.cfg;
    let (b, t) = ctx.shape;
    let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let masks = dropout_masks(lora, cfg, b * t, ctx.dropout, dropout_seed, x.device())?;
    let mut saved: [Option<LoraSaved>; 7] = Default::default();
    let mut proj = |target: Target, w: &crate::model::llama::Linear, input: &Tensor| -> Result<Tensor> {
        let i = target.index();
        let (y, s) = timed(ctx.profiler, LINEAR_FWD[i], || ops::lora_linear_forward(input, w, lora.get(target), ctx.scaling, masks[i].as_ref()))?;
        saved[i] = s;
        Ok(y)
    };

    let p = ctx.profiler;
    let (h_attn, rstd_attn) = timed(p, "rms_norm fwd", || ops::rms_norm_forward(x, &w.input_layernorm, cfg.rms_norm_eps))?;
    let heads = |y: Tensor, n: usize| timed(p, "head layout", || y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous());
    let rope = |y: Tensor| timed(p, "rope fwd", || ops::rope_forward(&y, &ctx.cos, &ctx.sin));
    let q = rope(heads(proj(Target::QProj, &w.self_attn.q_proj, &h_attn)?, nh)?)?;
    let k = rope(heads(proj(Target::KProj, &w.self_attn.k_proj, &h_attn)?, nkv)?)?;
    let v = heads(proj(Target::VProj, &w.self_attn.v_proj, &h_attn)?, nkv)?;
    let (attn, probs) = timed(p, "attention fwd", || ops::attention_forward(&q, &k, &v, ctx.bias))?;
    let attn = timed(p, "head layout", || attn.transpose(1, 2)?.contiguous()?.reshape((b * t, nh * d)))?;
    let o = proj(Target::OProj, &w.self_attn.o_proj, &attn)?;
    let x_mid = timed(p, "residual add", || x + o)?;

    let (h_mlp, rstd_mlp) = timed(p, "rms_norm fwd", || ops::rms_norm_forward(&x_mid, &w.post_attention_layernorm, cfg.rms_norm_eps))?;
    let gate = proj(Target::GateProj, &w.mlp.gate_proj, &h_mlp)?;
    let up = proj(Target::UpProj, &w.mlp.up_proj, &h_mlp)?;
    let act = timed(p, "swiglu fwd", || ops::swiglu_forward(&gate, &up))?;
    let down = proj(Target::DownProj, &w.mlp.down_proj, &act)?;
    let out = timed(p, "residual add", || &x_mid + down)?;
    let acts = save.then(|| LayerActs {
        x: x.clone(),
        rstd_attn,
        h_attn,
        q,
        k,
        v,
        probs,
        ctx: attn,
        x_mid,
        rstd_mlp,
        h_mlp,
        gate,
        up,
        lora: saved,
        masks,
    });
    Ok((out, acts))
}

/// One decoder layer backward. dout: (N, H) -> (dx (N, H), adapter gradients).
pub fn layer_backward(ctx: &StepContext, w: &LayerWeights, lora: &LayerLora, a: &LayerActs, dout: &Tensor) -> Result<(Tensor, [Option<LoraGrad>; 7])> {
    let cfg = ctx.cfg;
    let (b, t) = ctx.shape;
    let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let mut grads: [Option<LoraGrad>; 7] = Default::default();
    let mut proj_back = |target: Target, w: &crate::model::llama::Linear, dy: &Tensor, input: &Tensor| -> Result<Tensor> {
        let i = target.index();
        let pair = lora.get(target).zip(a.lora[i].as_ref());
        let (dx, g) = timed(ctx.profiler, LINEAR_BWD[i], || ops::lora_linear_backward(dy, input, w, pair, ctx.scaling, a.masks[i].as_ref()))?;
        grads[i] = g;
        Ok(dx)
    };

    let p = ctx.profiler;
    // MLP half: out = x_mid + down(swiglu(gate(h), up(h))), h = norm(x_mid)
    let act = timed(p, "swiglu fwd (recompute)", || ops::swiglu_forward(&a.gate, &a.up))?;
    let dact = proj_back(Target::DownProj, &w.mlp.down_proj, dout, &act)?;
    let (dgate, dup) = timed(p, "swiglu bwd", || ops::swiglu_backward(&dact, &a.gate, &a.up))?;
    let dh_gate = proj_back(Target::GateProj, &w.mlp.gate_proj, &dgate, &a.h_mlp)?;
    let dh_up = proj_back(Target::UpProj, &w.mlp.up_proj, &dup, &a.h_mlp)?;
    let dh_mlp = timed(p, "residual add", || dh_gate + dh_up)?;
    let dnorm = timed(p, "rms_norm bwd", || ops::rms_norm_backward(&dh_mlp, &a.x_mid, &w.post_attention_layernorm, &a.rstd_mlp))?;
    let dx_mid = timed(p, "residual add", || dout + dnorm)?;

    // Attention half: x_mid = x + o(attn(rope(q(h)), rope(k(h)), v(h))), h = norm(x)
    let dattn = proj_back(Target::OProj, &w.self_attn.o_proj, &dx_mid, &a.ctx)?;
    let dattn = timed(p, "head layout", || dattn.reshape((b, t, nh, d))?.transpose(1, 2)?.contiguous())?;
    let (dq, dk, dv) = timed(p, "attention bwd", || ops::attention_backward(&dattn, &a.q, &a.k, &a.v, &a.probs))?;
    let rows = |y: Tensor, n: usize| timed(p, "head layout", || y.transpose(1, 2)?.contiguous()?.reshape((b * t, n * d)));
    let rope_back = |y: &Tensor| timed(p, "rope bwd", || ops::rope_backward(y, &ctx.cos, &ctx.sin));
    let dq = rows(rope_back(&dq)?, nh)?;
    let dk = rows(rope_back(&dk)?, nkv)?;
    let dv = rows(dv, nkv)?;
    let dh_q = proj_back(Target::QProj, &w.self_attn.q_proj, &dq, &a.h_attn)?;
    let dh_k = proj_back(Target::KProj, &w.self_attn.k_proj, &dk, &a.h_attn)?;
    let dh_v = proj_back(Target::VProj, &w.self_attn.v_proj, &dv, &a.h_attn)?;
    let dh_attn = timed(p, "residual add", || (dh_q + dh_k)? + dh_v)?;
    let dnorm = timed(p, "rms_norm bwd", || ops::rms_norm_backward(&dh_attn, &a.x, &w.input_layernorm, &a.rstd_attn))?;
    let dx = timed(p, "residual add", || dx_mid + dnorm)?;
    Ok((dx, grads))
}

/// How the step runs.
#[derive(Debug, Clone, Copy)]
pub struct StepOptions<'a> {
    /// Keep only each layer's input and recompute the layer during backward.
    pub gradient_checkpointing: bool,
    /// LoRA dropout probability (0 disables it).
    pub dropout: f64,
    /// Times each operation when set (`bench --profile`); recomputed layers count under
    /// the forward regions.
    pub profiler: Option<&'a Profiler>,
}

/// Result of one forward/backward over a micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Sum of -log p over the batch's targets.
    pub nll_sum: f64,
    pub num_targets: usize,
    pub num_tokens: usize,
}

fn step_context<'a>(model: &'a Llama, lora: &LoraWeights, batch: &'a TrainBatch, dropout: f64, profiler: Option<&'a Profiler>) -> Result<StepContext<'a>> {
    let (cos, sin) = model.rope.cos_sin(&batch.positions, model.dtype())?;
    Ok(StepContext { cfg: &model.config, bias: &batch.bias, cos, sin, shape: batch.shape, scaling: lora.scaling, dropout, profiler })
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
    let ctx = step_context(model, lora, batch, opts.dropout, profiler)?;
    let n_layers = model.weights.layers.len();
    let seeds: Vec<u64> = (0..n_layers).map(|_| rng.next_u64()).collect();

    // Forward, keeping per layer either the activations or (checkpointing) the input.
    let mut x = timed(profiler, "embed", || embed(model, batch))?;
    let mut inputs = Vec::with_capacity(n_layers);
    let mut saved = Vec::with_capacity(n_layers);
    for (l, w) in model.weights.layers.iter().enumerate() {
        let (out, acts) = layer_forward(&ctx, w, &lora.layers[l], &x, seeds[l], !opts.gradient_checkpointing)?;
        if opts.gradient_checkpointing {
            inputs.push(x);
        }
        saved.push(acts);
        x = out;
    }

    // Loss over target rows only: final norm and LM head never see the other rows.
    let stats = StepStats { nll_sum: 0.0, num_targets: batch.num_targets, num_tokens: batch.num_tokens };
    if batch.num_targets == 0 {
        return Ok(stats);
    }
    let (nll_sum, mut dx) = timed(profiler, "final norm + lm head + loss", || {
        let rows = x.index_select(&batch.predictor_rows, 0)?; // (n, H)
        let (hn, rstd) = ops::rms_norm_forward(&rows, &model.weights.norm, model.config.rms_norm_eps)?;
        let (nll_sum, dhn) = ops::cross_entropy_forward_backward(&hn, &model.weights.lm_head, &batch.labels, loss_scale)?;
        let drows = ops::rms_norm_backward(&dhn, &rows, &model.weights.norm, &rstd)?;
        Ok((nll_sum, x.zeros_like()?.index_add(&batch.predictor_rows, &drows, 0)?)) // dx: (N, H)
    })?;
    drop(x);

    for l in (0..n_layers).rev() {
        let w = &model.weights.layers[l];
        let acts = match saved[l].take() {
            Some(a) => a,
            None => layer_forward(&ctx, w, &lora.layers[l], &inputs[l], seeds[l], true)?.1.expect("saved when asked"),
        };
        let (dprev, g) = layer_backward(&ctx, w, &lora.layers[l], &acts, &dx)?;
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
    let ctx = step_context(model, lora, batch, 0.0, None)?;
    let mut x = embed(model, batch)?;
    for (l, w) in model.weights.layers.iter().enumerate() {
        x = layer_forward(&ctx, w, &lora.layers[l], &x, 0, false)?.0;
    }
    let rows = x.index_select(&batch.predictor_rows, 0)?;
    let (hn, _) = ops::rms_norm_forward(&rows, &model.weights.norm, model.config.rms_norm_eps)?;
    ops::cross_entropy_sum(&hn, &model.weights.lm_head, &batch.labels)
}

/// Bytes held by one layer's saved activations (for reports and memory checks).
pub fn layer_acts_bytes(a: &LayerActs) -> usize {
    let mut ts = vec![&a.x, &a.rstd_attn, &a.h_attn, &a.q, &a.k, &a.v, &a.probs, &a.ctx, &a.x_mid, &a.rstd_mlp, &a.h_mlp, &a.gate, &a.up];
    for s in a.lora.iter().flatten() {
        ts.push(&s.u);
        if let Some(x) = &s.dropped_input {
            ts.push(x);
        }
    }
    ts.extend(a.masks.iter().flatten());
    ts.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
}

