//! The MLP half of a decoder layer, out = x_mid + down(silu(gate(h)) * up(h)) with
//! h = norm(x_mid), forward and backward over row chunks.
//!
//! Why chunks: the MLP acts on each row alone, so running it a few thousand rows at a time
//! gives the same rows, while its (N, I) tensors (gate, up, their product and their
//! gradients) are the largest a layer makes: 0.7 GiB each for a 7B model at 32k tokens,
//! 7 GiB each for an 8B model at 256k. With checkpointing, the recompute in backward leaves
//! the MLP out, and its backward recomputes gate and up chunk by chunk just before it needs
//! them; so does a forward that keeps nothing (evaluation, checkpointing's first pass).
//! Without checkpointing, gate and up are kept whole for backward, as before.
//!
//! Shapes: n rows of a chunk, H hidden, I the MLP width.

use candle_core::{Result, Tensor};

use super::ops::{self, LoraGrad, LoraSaved};
use super::step::{project, project_back, LayerMode, StepContext};
use crate::lora::{LayerLora, Target};
use crate::model::llama::LayerWeights;
use crate::profile::timed;

/// Rows per MLP chunk when none is asked for: at 8192 rows a 7B/8B model's (n, I) tensors are
/// 172-224 MiB and its projections still run at full matmul speed; sequences up to this
/// long run in one chunk, exactly as before chunking existed.
pub const MLP_CHUNK_ROWS: usize = 8192;

/// [start, start + len) ranges of at most `chunk` rows covering 0..n.
fn row_chunks(n: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..n).step_by(chunk).map(move |s| (s, chunk.min(n - s)))
}

/// Rows [s, s + len) of each mask that exists (all rows: the masks themselves).
fn mask_rows(masks: &[Option<Tensor>; 7], s: usize, len: usize) -> Result<[Option<Tensor>; 7]> {
    let mut out: [Option<Tensor>; 7] = Default::default();
    for (o, m) in out.iter_mut().zip(masks) {
        *o = m.as_ref().map(|m| m.narrow(0, s, len)).transpose()?;
    }
    Ok(out)
}

/// What the MLP keeps for backward when it ran whole in forward (no checkpointing).
#[derive(Debug)]
pub struct GateUp {
    /// (N, I) gate pre-activation and up projection; silu(gate)*up is recomputed.
    pub gate: Tensor,
    pub up: Tensor,
}

/// h: (n, H) -> (gate, up) (n, I), their adapters' saved inputs written into `saved`.
fn gate_up_forward(
    ctx: &StepContext,
    w: &LayerWeights,
    lora: &LayerLora,
    h: &Tensor,
    masks: &[Option<Tensor>; 7],
    saved: &mut [Option<LoraSaved>; 7],
) -> Result<(Tensor, Tensor)> {
    let gate = project(ctx, lora, Target::GateProj, &w.mlp.gate_proj, h, masks, saved)?;
    let up = project(ctx, lora, Target::UpProj, &w.mlp.up_proj, h, masks, saved)?;
    Ok((gate, up))
}

/// The MLP forward of one layer, from h_mlp = norm(x_mid). x_mid, h: (N, H).
/// - `Train`: the whole rows at once; returns the layer output (N, H) and gate/up for
///   backward (the adapters' saved inputs go into `saved`).
/// - `Output`, `Checkpoint`: the layer output only, by row chunks.
/// - `Recompute`: nothing (backward recomputes the MLP by chunks).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &StepContext,
    w: &LayerWeights,
    lora: &LayerLora,
    x_mid: &Tensor,
    h: Tensor,
    masks: &[Option<Tensor>; 7],
    saved: &mut [Option<LoraSaved>; 7],
    mode: LayerMode,
) -> Result<(Option<Tensor>, Option<GateUp>)> {
    let p = ctx.profiler;
    match mode {
        LayerMode::Recompute => Ok((None, None)),
        LayerMode::Train => {
            let (gate, up) = gate_up_forward(ctx, w, lora, &h, masks, saved)?;
            drop(h);
            let act = timed(p, "swiglu fwd", || ops::swiglu_forward(&gate, &up))?;
            let down = project(ctx, lora, Target::DownProj, &w.mlp.down_proj, &act, masks, saved)?;
            drop(act);
            let out = timed(p, "residual add", || ops::residual_add(x_mid, &down))?;
            Ok((Some(out), Some(GateUp { gate, up })))
        }
        LayerMode::Output | LayerMode::Checkpoint => {
            let n = h.dim(0)?;
            let mut outs = Vec::new();
            for (s, len) in row_chunks(n, ctx.mlp_chunk_rows) {
                let (hc, xc) = (h.narrow(0, s, len)?, x_mid.narrow(0, s, len)?);
                let mc = mask_rows(masks, s, len)?;
                // Nothing is saved: the adapters' inputs only matter to backward.
                let mut unused: [Option<LoraSaved>; 7] = Default::default();
                let (gate, up) = gate_up_forward(ctx, w, lora, &hc, &mc, &mut unused)?;
                drop(hc);
                let act = timed(p, "swiglu fwd", || ops::swiglu_forward(&gate, &up))?;
                drop((gate, up));
                let down = project(ctx, lora, Target::DownProj, &w.mlp.down_proj, &act, &mc, &mut unused)?;
                drop(act);
                outs.push(timed(p, "residual add", || ops::residual_add(&xc, &down))?);
            }
            let out = match outs.len() {
                1 => outs.pop().expect("one chunk"),
                _ => Tensor::cat(&outs, 0)?,
            };
            Ok((Some(out), None))
        }
    }
}

/// Backward of the MLP on some rows, from its forward values on those rows: dout (n, H),
/// gate and up (n, I), h (n, H) the MLP's input where gate or up has an adapter, and act
/// (n, I) = silu(gate)*up where the caller has it (it is recomputed where the down
/// projection's adapter needs it for dA). Returns dh (n, H), the gradient at the MLP's
/// input; the adapters' gradients go into `grads`.
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    ctx: &StepContext,
    w: &LayerWeights,
    lora: &LayerLora,
    dout: &Tensor,
    h: Option<&Tensor>,
    (gate, up, act): (Tensor, Tensor, Option<Tensor>),
    saved: &[Option<LoraSaved>; 7],
    masks: &[Option<Tensor>; 7],
    grads: &mut [Option<LoraGrad>; 7],
) -> Result<Tensor> {
    let p = ctx.profiler;
    let act = match (act, lora.get(Target::DownProj).is_some()) {
        (Some(act), _) => Some(act),
        (None, true) => Some(timed(p, "swiglu fwd (recompute)", || ops::swiglu_forward(&gate, &up))?),
        (None, false) => None,
    };
    let dact =
        project_back(ctx, lora, Target::DownProj, &w.mlp.down_proj, dout, act.as_ref(), saved, masks, None, grads)?;
    drop(act);
    let (dgate, dup) = timed(p, "swiglu bwd", || ops::swiglu_backward(dact, &gate, up))?;
    drop(gate);
    let dh = project_back(ctx, lora, Target::GateProj, &w.mlp.gate_proj, &dgate, h, saved, masks, None, grads)?;
    project_back(ctx, lora, Target::UpProj, &w.mlp.up_proj, &dup, h, saved, masks, Some(dh), grads)
}

/// Where the down projection has an adapter: act = silu(gate)*up (n, I), and the adapter's
/// saved input written into `saved` (the base projection itself is not run: backward never
/// reads its output).
fn down_adapter_forward(
    ctx: &StepContext,
    lora: &LayerLora,
    gate: &Tensor,
    up: &Tensor,
    masks: &[Option<Tensor>; 7],
    saved: &mut [Option<LoraSaved>; 7],
) -> Result<Option<Tensor>> {
    let i = Target::DownProj.index();
    let Some(pair) = lora.get(Target::DownProj) else { return Ok(None) };
    let act = timed(ctx.profiler, "swiglu fwd (recompute)", || ops::swiglu_forward(gate, up))?;
    saved[i] = Some(timed(ctx.profiler, "down_proj fwd", || ops::lora_saved(&act, pair, masks[i].as_ref()))?);
    Ok(Some(act))
}

/// The MLP backward of one layer. dout: (N, H) the gradient at the layer output; x_mid
/// (N, H) the MLP's residual input; `h_kept` its normed input where forward kept it (off
/// CUDA); `gate_up` the forward's gate and up when it kept them, else they are recomputed
/// by row chunks. Returns dh (N, H), the gradient at the MLP's input h.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    ctx: &StepContext,
    w: &LayerWeights,
    lora: &LayerLora,
    dout: &Tensor,
    x_mid: &Tensor,
    h_kept: Option<&Tensor>,
    gate_up: Option<GateUp>,
    saved: &[Option<LoraSaved>; 7],
    masks: &[Option<Tensor>; 7],
    grads: &mut [Option<LoraGrad>; 7],
) -> Result<Tensor> {
    let p = ctx.profiler;
    let eps = ctx.cfg.rms_norm_eps;
    let norm = |x: &Tensor| -> Result<Tensor> {
        Ok(timed(p, "rms_norm fwd (recompute)", || ops::rms_norm_forward(x, &w.post_attention_layernorm, eps))?.0)
    };
    if let Some(GateUp { gate, up }) = gate_up {
        // Kept whole: the MLP's input is needed only for its adapters' dA.
        let adapted = lora.get(Target::GateProj).is_some() || lora.get(Target::UpProj).is_some();
        let h = match (h_kept, adapted) {
            (Some(h), _) => Some(h.clone()),
            (None, true) => Some(norm(x_mid)?),
            (None, false) => None,
        };
        return backward_rows(ctx, w, lora, dout, h.as_ref(), (gate, up, None), saved, masks, grads);
    }
    let n = x_mid.dim(0)?;
    let mut dhs = Vec::new();
    for (s, len) in row_chunks(n, ctx.mlp_chunk_rows) {
        let h = match h_kept {
            Some(h) => h.narrow(0, s, len)?,
            None => norm(&x_mid.narrow(0, s, len)?)?,
        };
        let mc = mask_rows(masks, s, len)?;
        let mut sc: [Option<LoraSaved>; 7] = Default::default();
        let (gate, up) = gate_up_forward(ctx, w, lora, &h, &mc, &mut sc)?;
        let act = down_adapter_forward(ctx, lora, &gate, &up, &mc, &mut sc)?;
        let dout_c = dout.narrow(0, s, len)?;
        let mut gc: [Option<LoraGrad>; 7] = Default::default();
        dhs.push(backward_rows(ctx, w, lora, &dout_c, Some(&h), (gate, up, act), &sc, &mc, &mut gc)?);
        for (acc, g) in grads.iter_mut().zip(gc) {
            *acc = match (acc.take(), g) {
                (Some(a), Some(g)) => Some(LoraGrad { a: (a.a + g.a)?, b: (a.b + g.b)? }),
                (a, g) => a.or(g),
            };
        }
    }
    match dhs.len() {
        1 => Ok(dhs.pop().expect("one chunk")),
        _ => Tensor::cat(&dhs, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::row_chunks;

    #[test]
    fn row_chunks_cover_every_row_once() {
        assert_eq!(row_chunks(10, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(row_chunks(8, 8).collect::<Vec<_>>(), vec![(0, 8)]);
        assert_eq!(row_chunks(3, 8).collect::<Vec<_>>(), vec![(0, 3)]);
        assert_eq!(row_chunks(0, 8).count(), 0);
    }
}
