//! The decoder forward for generation: one sequence (batch 1), keys and values of past
//! positions kept per layer, so each new token costs one row of work, not the whole prefix.
//! An adapter is applied unmerged (y = x W^T + s (x A^T) B^T, the LoRA term in f32), so
//! generating with `--adapter` needs no merged copy of the base.
//!
//! Shapes: T = new tokens this call, P = positions already cached, H = hidden size,
//! NH / NKV = query / key-value heads, R = NH / NKV, D = head_dim, V = vocab.
//!
//! Checked against the reference forward of `model::llama`: the logits of a prefix fed
//! token by token equal the full forward's (tests/generate.rs), and greedy generation
//! equals transformers' token for token.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::kv_cache::KvCache;

use crate::lora::{add_lora_delta, LayerLora, LoraWeights, Target};
use crate::model::llama::{apply_rope, heads, rms_norm, AttentionWeights, LayerWeights, Linear, MlpWeights};
use crate::model::{Llama, ModelConfig};

/// Past keys and values of every layer, each (1, NKV, P, D), grown in blocks.
pub struct Cache {
    layers: Vec<KvCache>,
}

impl Cache {
    /// `capacity`: positions reserved up front (the cache grows by as much when full).
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Self {
        Cache { layers: (0..cfg.num_hidden_layers).map(|_| KvCache::new(2, capacity.max(1))).collect() }
    }

    /// Positions cached so far (P).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |c| c.current_seq_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Feeds `ids` (T new tokens at positions P..P+T) through the model, appending their keys
/// and values to `cache`. Returns the logits of the last position, (V,) f32.
pub fn forward(model: &Llama, lora: Option<&LoraWeights>, ids: &[u32], cache: &mut Cache) -> Result<Tensor> {
    let cfg = &model.config;
    let device = model.device();
    let (t, past) = (ids.len(), cache.len());
    let ids = Tensor::from_slice(ids, t, device)?;
    let mut x = model.weights.embed_tokens.index_select(&ids, 0)?.unsqueeze(0)?; // (1, T, H)
    let positions = Tensor::arange(past as u32, (past + t) as u32, device)?.to_dtype(DType::F32)?.unsqueeze(0)?;
    let (cos, sin) = model.rope.cos_sin(&positions, model.dtype())?; // (1, 1, T, D)
    let mask = causal_mask(t, past, device)?;
    let empty = LayerLora::default();
    for (l, w) in model.weights.layers.iter().enumerate() {
        let (layer_lora, scaling) = match lora {
            Some(a) => (&a.layers[l], a.scaling),
            None => (&empty, 0.0),
        };
        let proj = Projector { lora: layer_lora, scaling };
        x = layer(cfg, w, &proj, &x, &cos, &sin, mask.as_ref(), &mut cache.layers[l])?;
    }
    let last = x.narrow(1, t - 1, 1)?;
    let h = rms_norm(&last, &model.weights.norm, cfg.rms_norm_eps)?.reshape((1, cfg.hidden_size))?;
    model.lm_head(&h)?.reshape(cfg.vocab_size)
}

/// Additive (T, P+T) f32 mask: new token i (position P+i) sees keys 0..=P+i. None for a
/// single token, which sees everything cached.
fn causal_mask(t: usize, past: usize, device: &Device) -> Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let total = past + t;
    let m: Vec<f32> =
        (0..t).flat_map(|i| (0..total).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Some(Tensor::from_vec(m, (t, total), device)?))
}

/// Base projections plus this layer's adapter, if it has one for a target.
struct Projector<'a> {
    lora: &'a LayerLora,
    scaling: f64,
}

impl Projector<'_> {
    /// x: (1, T, in) -> (1, T, out).
    fn apply(&self, lin: &Linear, target: Target, x: &Tensor) -> Result<Tensor> {
        let y = lin.forward(x)?;
        match self.lora.get(target) {
            None => Ok(y),
            Some(pair) => {
                let (b, t, inp) = x.dims3()?;
                let out = y.dim(2)?;
                add_lora_delta(&y.reshape((b * t, out))?, &x.reshape((b * t, inp))?, pair, self.scaling)?
                    .reshape((b, t, out))
            }
        }
    }
}

/// One pre-norm decoder block. x: (1, T, H) -> (1, T, H).
#[allow(clippy::too_many_arguments)]
fn layer(
    cfg: &ModelConfig,
    w: &LayerWeights,
    p: &Projector,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    kv: &mut KvCache,
) -> Result<Tensor> {
    let h = rms_norm(x, &w.input_layernorm, cfg.rms_norm_eps)?;
    let x = (x + attention(cfg, &w.self_attn, p, &h, cos, sin, mask, kv)?)?;
    let h = rms_norm(&x, &w.post_attention_layernorm, cfg.rms_norm_eps)?;
    &x + mlp(&w.mlp, p, &h)?
}

/// Grouped-query attention over cached and new keys. h: (1, T, H) -> (1, T, H).
///
/// The R query heads that share a key-value head are folded into its rows, (1, NKV, R*T, D),
/// so keys and values are never repeated R times.
#[allow(clippy::too_many_arguments)]
fn attention(
    cfg: &ModelConfig,
    w: &AttentionWeights,
    p: &Projector,
    h: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    kv: &mut KvCache,
) -> Result<Tensor> {
    let t = h.dim(1)?;
    let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let r = nh / nkv;
    let eps = cfg.rms_norm_eps;
    let q =
        apply_rope(&heads(&p.apply(&w.q_proj, Target::QProj, h)?, (1, t, nh, d), w.q_norm.as_ref(), eps)?, cos, sin)?;
    let k =
        apply_rope(&heads(&p.apply(&w.k_proj, Target::KProj, h)?, (1, t, nkv, d), w.k_norm.as_ref(), eps)?, cos, sin)?;
    let v = heads(&p.apply(&w.v_proj, Target::VProj, h)?, (1, t, nkv, d), None, eps)?;
    let (k, v) = kv.append(&k.contiguous()?, &v.contiguous()?)?; // (1, NKV, P+T, D)
    let total = k.dim(2)?;
    let q = q.reshape((1, nkv, r * t, d))?;
    let scale = 1.0 / (d as f64).sqrt();
    // Scores and softmax in f32, as in the model's own forward.
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?; // (1, NKV, R*T, P+T)
    let scores = match mask {
        Some(m) => scores.reshape((1, nkv, r, t, total))?.broadcast_add(m)?.reshape((1, nkv, r * t, total))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    let ctx = probs.matmul(&v)?.reshape((1, nh, t, d))?; // (1, NH, T, D)
    let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((1, t, nh * d))?;
    p.apply(&w.o_proj, Target::OProj, &ctx)
}

/// SwiGLU: down(silu(gate(h)) * up(h)). h: (1, T, H) -> (1, T, H).
fn mlp(w: &MlpWeights, p: &Projector, h: &Tensor) -> Result<Tensor> {
    let gate = candle_nn::ops::silu(&p.apply(&w.gate_proj, Target::GateProj, h)?)?;
    let up = p.apply(&w.up_proj, Target::UpProj, h)?;
    p.apply(&w.down_proj, Target::DownProj, &(gate * up)?)
}

/// Logits (1, T, V) f32 of every position of `ids`, with the adapter unmerged: for tests
/// that compare a merged checkpoint with its base + adapter.
pub fn all_logits(model: &Llama, lora: Option<&LoraWeights>, ids: &[u32]) -> Result<Tensor> {
    let mut out = Vec::with_capacity(ids.len());
    let mut cache = Cache::new(&model.config, ids.len());
    for &id in ids {
        out.push(forward(model, lora, &[id], &mut cache)?);
    }
    Tensor::stack(&out, 0)?.unsqueeze(0)
}
