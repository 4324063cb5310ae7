//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM2): RMSNorm, RoPE
//! (with llama3 scaling), grouped-query attention, SwiGLU, optional q/k/v bias, optional
//! per-head q/k RMSNorm before RoPE (Qwen3), tied embeddings.
//!
//! Written as plain functions over named weights so that the training step can see (and
//! later save or recompute) every activation. Shapes use B = batch, T = time,
//! H = hidden size, NH / NKV = query / key-value heads, D = head_dim, V = vocab.
//!
//! [`Llama::forward`] / [`Llama::forward_hidden`] is the **reference forward**: candle ops
//! only, no saved activations, no cache. Its loss (through `eval::evaluate`) is checked
//! against transformers on tiny Llama 2/3 and Qwen2 checkpoints and on SmolLM2
//! (tests/reference.rs). The two other forwards are checked against it: the training step
//! (`train::step`, in its tests) and the KV-cache forward of generation
//! (`generate::cached_forward`, tests/generate.rs).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use std::collections::HashMap;
use std::path::Path;

use super::config::ModelConfig;
use super::error::LoadError;
use super::quantized::{QuantizedWeight, Weight};

/// y = x W^T + b, with W stored (out, in) as in Hugging Face checkpoints (dense, or in
/// quantized blocks for QLoRA).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

impl Module for Linear {
    /// x: (..., in) -> (..., out)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, inp) = (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
        let y = x.reshape((rows, inp))?.matmul(&self.weight.dense()?.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dims2()?.0;
        y.reshape(out_dims)
    }
}

#[derive(Debug, Clone)]
pub struct AttentionWeights {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// (D,) RMSNorm weights over each head of q and of k, before RoPE (Qwen3).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct MlpWeights {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_layernorm: Tensor,
    pub self_attn: AttentionWeights,
    pub post_attention_layernorm: Tensor,
    pub mlp: MlpWeights,
}

impl LayerWeights {
    /// The seven projections: q, k, v, o, gate, up, down.
    pub fn projections(&self) -> [&Linear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
    }
}

/// All base weights, in the compute dtype, named after the checkpoint tensors.
#[derive(Debug, Clone)]
pub struct LlamaWeights {
    pub embed_tokens: Tensor,
    pub layers: Vec<LayerWeights>,
    pub norm: Tensor,
    /// The output projection; the same tensor as `embed_tokens` when embeddings are tied.
    pub lm_head: Tensor,
}

impl LlamaWeights {
    /// Builds the weights from a name -> tensor map (HF naming). The caller has already
    /// checked names and shapes against `ModelConfig::expected_tensors`.
    pub fn from_map(
        cfg: &ModelConfig,
        t: HashMap<String, Tensor>,
        path: &Path,
    ) -> std::result::Result<Self, LoadError> {
        Self::from_maps(cfg, t, HashMap::new(), path)
    }

    /// As [`Self::from_map`], projection weights found in `quantized` kept in blocks.
    pub fn from_maps(
        cfg: &ModelConfig,
        mut t: HashMap<String, Tensor>,
        mut quantized: HashMap<String, QuantizedWeight>,
        path: &Path,
    ) -> std::result::Result<Self, LoadError> {
        let mut take = |name: String| {
            t.remove(&name).ok_or_else(|| LoadError::MissingTensor { path: path.to_path_buf(), tensor: name })
        };
        let mut take_weight =
            |name: String, take: &mut dyn FnMut(String) -> std::result::Result<Tensor, LoadError>| match quantized
                .remove(&name)
            {
                Some(q) => Ok(Weight::Quantized(q)),
                None => take(name).map(Weight::Dense),
            };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut lin = |name: &str, bias: bool| -> std::result::Result<Linear, LoadError> {
                Ok(Linear {
                    weight: take_weight(format!("{p}.{name}.weight"), &mut take)?,
                    bias: if bias { Some(take(format!("{p}.{name}.bias"))?) } else { None },
                })
            };
            let (q_proj, k_proj) = (lin("self_attn.q_proj", cfg.qkv_bias)?, lin("self_attn.k_proj", cfg.qkv_bias)?);
            let (v_proj, o_proj) = (lin("self_attn.v_proj", cfg.qkv_bias)?, lin("self_attn.o_proj", cfg.o_bias)?);
            let mlp = MlpWeights {
                gate_proj: lin("mlp.gate_proj", false)?,
                up_proj: lin("mlp.up_proj", false)?,
                down_proj: lin("mlp.down_proj", false)?,
            };
            let mut norm = |name: &str| cfg.qk_norm.then(|| take(format!("{p}.self_attn.{name}.weight"))).transpose();
            let (q_norm, k_norm) = (norm("q_norm")?, norm("k_norm")?);
            let self_attn = AttentionWeights { q_proj, k_proj, v_proj, o_proj, q_norm, k_norm };
            layers.push(LayerWeights {
                input_layernorm: take(format!("{p}.input_layernorm.weight"))?,
                self_attn,
                post_attention_layernorm: take(format!("{p}.post_attention_layernorm.weight"))?,
                mlp,
            });
        }
        let embed_tokens = take("model.embed_tokens.weight".into())?;
        let lm_head = if cfg.tie_word_embeddings { embed_tokens.clone() } else { take("lm_head.weight".into())? };
        Ok(LlamaWeights { embed_tokens, layers, norm: take("model.norm.weight".into())?, lm_head })
    }

    /// Name -> tensor view of the weights (HF naming; `lm_head` omitted when tied);
    /// quantized projections are expanded.
    pub fn named_tensors(&self, cfg: &ModelConfig) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.clone())];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), layer.input_layernorm.clone()));
            let a = &layer.self_attn;
            for (n, lin) in [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("o_proj", &a.o_proj)]
            {
                out.push((format!("{p}.self_attn.{n}.weight"), lin.weight.dense()?));
                if let Some(b) = &lin.bias {
                    out.push((format!("{p}.self_attn.{n}.bias"), b.clone()));
                }
            }
            for (n, w) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                if let Some(w) = w {
                    out.push((format!("{p}.self_attn.{n}.weight"), w.clone()));
                }
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), layer.post_attention_layernorm.clone()));
            let m = &layer.mlp;
            for (n, lin) in [("gate_proj", &m.gate_proj), ("up_proj", &m.up_proj), ("down_proj", &m.down_proj)] {
                out.push((format!("{p}.mlp.{n}.weight"), lin.weight.dense()?));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !cfg.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        Ok(out)
    }
}

/// Rotary position embedding frequencies (HF's "rotate half" convention).
#[derive(Debug, Clone)]
pub struct Rope {
    /// (D/2,) f32
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let d = cfg.head_dim;
        let mut inv: Vec<f32> =
            (0..d / 2).map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)) as f32).collect();
        if let Some(s) = &cfg.rope_scaling {
            // Llama 3.1: keep high frequencies, divide low ones by `factor`, blend between.
            let old_ctx = s.original_max_position_embeddings as f64;
            let low_wavelen = old_ctx / s.low_freq_factor;
            let high_wavelen = old_ctx / s.high_freq_factor;
            for f in inv.iter_mut() {
                let freq = *f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let scaled = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / s.factor
                } else {
                    let smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * freq / s.factor + smooth * freq
                };
                *f = scaled as f32;
            }
        }
        let n = inv.len();
        Ok(Rope { inv_freq: Tensor::from_vec(inv, n, device)? })
    }

    /// positions: (B, T) f32 -> (cos, sin), each (B, 1, T, D) in `dtype`.
    pub fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let half = self.inv_freq.dim(0)?;
        let angles = positions.reshape((b, t, 1))?.broadcast_mul(&self.inv_freq.reshape((1, 1, half))?)?;
        let angles = Tensor::cat(&[&angles, &angles], D::Minus1)?.unsqueeze(1)?;
        Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
    }
}

/// x: (B, NH, T, D); cos/sin: (B, 1, T, D). Returns x*cos + rotate_half(x)*sin.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// x: (B, T, H), weight: (H,). Normalises in f32 and casts back before scaling, as HF does.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(weight)
}

/// (B, NKV, T, D) -> (B, NKV*n_rep, T, D); query head h reads key-value head h / n_rep.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, t, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, nkv, n_rep, t, d))?.contiguous()?.reshape((b, nkv * n_rep, t, d))
}

/// Additive attention bias (B, 1, T, T) in f32: 0 where query i may attend key j
/// (j <= i and key j is a real token), a large negative number elsewhere. A finite
/// minimum rather than -inf keeps fully masked rows (padding queries) free of NaN.
pub fn attention_bias(attention_mask: &Tensor) -> Result<Tensor> {
    let (b, t) = attention_mask.dims2()?;
    let device = attention_mask.device();
    let causal: Vec<u8> = (0..t).flat_map(|i| (0..t).map(move |j| u8::from(j <= i))).collect();
    let causal = Tensor::from_vec(causal, (1, 1, t, t), device)?;
    let keys = attention_mask.to_dtype(DType::U8)?.reshape((b, 1, 1, t))?;
    let allowed = causal.broadcast_mul(&keys)?;
    let zeros = Tensor::zeros((b, 1, t, t), DType::F32, device)?;
    let neg = Tensor::full(f32::MIN, (b, 1, t, t), device)?;
    allowed.where_cond(&zeros, &neg)
}

/// Position ids from the padding mask: real tokens count 0, 1, 2, ... from their first
/// position, so left- and right-padded batches get the same positions as unpadded ones.
/// attention_mask: (B, T) -> (B, T) f32
pub fn positions_from_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask.to_dtype(DType::F32)?;
    (m.cumsum(1)? - 1.0)?.relu()
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub config: ModelConfig,
    pub weights: LlamaWeights,
    pub rope: Rope,
}

impl Llama {
    pub fn new(config: ModelConfig, weights: LlamaWeights) -> Result<Self> {
        let rope = Rope::new(&config, weights.embed_tokens.device())?;
        Ok(Llama { config, weights, rope })
    }

    pub fn device(&self) -> &Device {
        self.weights.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.weights.embed_tokens.dtype()
    }

    /// input_ids: (B, T) u32, attention_mask: (B, T) with 1 for real tokens
    /// -> final-normed hidden states (B, T, H) in the compute dtype.
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let cfg = &self.config;
        let mut x =
            self.weights.embed_tokens.index_select(&input_ids.flatten_all()?, 0)?.reshape((b, t, cfg.hidden_size))?;
        let bias = attention_bias(attention_mask)?;
        let (cos, sin) = self.rope.cos_sin(&positions_from_mask(attention_mask)?, self.dtype())?;
        for layer in &self.weights.layers {
            x = decoder_layer(cfg, layer, &x, &bias, &cos, &sin)?;
        }
        rms_norm(&x, &self.weights.norm, cfg.rms_norm_eps)
    }

    /// hidden: (N, H) -> logits (N, V) in f32.
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        hidden.matmul(&self.weights.lm_head.t()?)?.to_dtype(DType::F32)
    }

    /// Full logits (B, T, V) in f32. For losses prefer `forward_hidden` + a chunked head.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask)?;
        let (b, t, hs) = h.dims3()?;
        self.lm_head(&h.reshape((b * t, hs))?)?.reshape((b, t, ()))
    }
}

/// One pre-norm decoder block. x: (B, T, H) -> (B, T, H).
pub fn decoder_layer(
    cfg: &ModelConfig,
    w: &LayerWeights,
    x: &Tensor,
    bias: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let h = rms_norm(x, &w.input_layernorm, cfg.rms_norm_eps)?;
    let x = (x + attention(cfg, &w.self_attn, &h, bias, cos, sin)?)?;
    let h = rms_norm(&x, &w.post_attention_layernorm, cfg.rms_norm_eps)?;
    &x + mlp(&w.mlp, &h)?
}

/// A projection's output as heads: y (B, T, N*D) -> (B, N, T, D), each head's D values
/// RMS-normalised first where `norm` (D,) is given (Qwen3's q_norm and k_norm).
pub fn heads(
    y: &Tensor,
    (b, t, n, d): (usize, usize, usize, usize),
    norm: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let y = y.reshape((b, t, n, d))?;
    let y = match norm {
        Some(w) => rms_norm(&y, w, eps)?,
        None => y,
    };
    y.transpose(1, 2)?.contiguous()
}

/// Causal grouped-query self-attention. h: (B, T, H) -> (B, T, H).
pub fn attention(
    cfg: &ModelConfig,
    w: &AttentionWeights,
    h: &Tensor,
    bias: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let (b, t, _) = h.dims3()?;
    let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let eps = cfg.rms_norm_eps;
    let q = apply_rope(&heads(&w.q_proj.forward(h)?, (b, t, nh, d), w.q_norm.as_ref(), eps)?, cos, sin)?;
    let k = apply_rope(&heads(&w.k_proj.forward(h)?, (b, t, nkv, d), w.k_norm.as_ref(), eps)?, cos, sin)?;
    let v = heads(&w.v_proj.forward(h)?, (b, t, nkv, d), None, eps)?;
    let k = repeat_kv(&k, cfg.num_kv_groups())?;
    let v = repeat_kv(&v, cfg.num_kv_groups())?;
    // Scores and softmax in f32 whatever the compute dtype: bf16 softmax loses the tail.
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?.broadcast_add(bias)?; // (B, NH, T, T)
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    let ctx = probs.matmul(&v)?; // (B, NH, T, D)
    let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((b, t, nh * d))?;
    w.o_proj.forward(&ctx)
}

/// SwiGLU: down(silu(gate(h)) * up(h)). h: (B, T, H) -> (B, T, H).
pub fn mlp(w: &MlpWeights, h: &Tensor) -> Result<Tensor> {
    let gate = candle_nn::ops::silu(&w.gate_proj.forward(h)?)?;
    w.down_proj.forward(&(gate * w.up_proj.forward(h)?)?)
}
