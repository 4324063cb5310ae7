//! Low-rank adapters: which projections carry one, their A/B matrices (always f32,
//! whatever the base dtype) and how they are initialised.
//!
//! A projection y = x W^T becomes y = x W^T + s * (x A^T) B^T with A: (r, in),
//! B: (out, r) and s = alpha / r (or alpha / sqrt(r) with rsLoRA). A starts as PEFT's
//! kaiming-uniform, B as zeros, so step 0 is exactly the base model.
//!
//! - `peft_format.rs`: reading and writing PEFT's `adapter_model.safetensors` +
//!   `adapter_config.json`.

mod peft_format;

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;

pub use peft_format::{load_adapter, save_adapter, AdapterError, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

/// A projection of the decoder layer that can carry an adapter, in checkpoint naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::QProj,
        Target::KProj,
        Target::VProj,
        Target::OProj,
        Target::GateProj,
        Target::UpProj,
        Target::DownProj,
    ];

    /// "q_proj", ...
    pub fn name(self) -> &'static str {
        match self {
            Target::QProj => "q_proj",
            Target::KProj => "k_proj",
            Target::VProj => "v_proj",
            Target::OProj => "o_proj",
            Target::GateProj => "gate_proj",
            Target::UpProj => "up_proj",
            Target::DownProj => "down_proj",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The submodule path under `model.layers.{i}`: "self_attn.q_proj", "mlp.up_proj", ...
    pub fn module_path(self) -> String {
        match self {
            Target::QProj | Target::KProj | Target::VProj | Target::OProj => format!("self_attn.{}", self.name()),
            _ => format!("mlp.{}", self.name()),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// (in_features, out_features) of the projection.
    pub fn shape(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        match self {
            Target::QProj => (h, q),
            Target::KProj | Target::VProj => (h, kv),
            Target::OProj => (q, h),
            Target::GateProj | Target::UpProj => (h, i),
            Target::DownProj => (i, h),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the adapter is: the hyper-parameters that PEFT's adapter_config.json records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Sorted, no duplicates.
    pub targets: Vec<Target>,
    pub use_rslora: bool,
}

impl LoraSpec {
    /// The factor s in y = x W^T + s * x A^T B^T.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// One adapter: A (r, in) and B (out, r), both f32.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// The adapters of one decoder layer, indexed by `Target::index()`.
#[derive(Debug, Clone, Default)]
pub struct LayerLora {
    pub pairs: [Option<LoraPair>; 7],
}

impl LayerLora {
    pub fn get(&self, t: Target) -> Option<&LoraPair> {
        self.pairs[t.index()].as_ref()
    }
}

/// The adapter of a whole model.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    pub spec: LoraSpec,
    pub scaling: f64,
    pub layers: Vec<LayerLora>,
}

impl LoraWeights {
    /// A initialised as PEFT does (`kaiming_uniform_(a=sqrt(5))`, i.e. U(-1/sqrt(in),
    /// 1/sqrt(in))), B zero. The draw order (layer, target, row-major) and the seed fix
    /// every value, so a run is reproducible from its config.
    pub fn init(spec: &LoraSpec, cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            let mut layer = LayerLora::default();
            for &t in &spec.targets {
                let (inp, out) = t.shape(cfg);
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..spec.r * inp).map(|_| rng.gen_range(-bound..bound) as f32).collect();
                layer.pairs[t.index()] = Some(LoraPair {
                    a: Tensor::from_vec(a, (spec.r, inp), device)?,
                    b: Tensor::zeros((out, spec.r), DType::F32, device)?,
                });
            }
            layers.push(layer);
        }
        Ok(LoraWeights { spec: spec.clone(), scaling: spec.scaling(), layers })
    }

    /// Every tensor in a fixed order (layer, target, A then B) with its PEFT name. The
    /// optimizer state and gradients use the same order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = layer.get(t) {
                    out.push((peft_tensor_name(l, t, 'A'), p.a.clone()));
                    out.push((peft_tensor_name(l, t, 'B'), p.b.clone()));
                }
            }
        }
        out
    }

    /// The same tensors as `named_tensors`, without names.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.named_tensors().into_iter().map(|(_, t)| t).collect()
    }

    /// Replaces every tensor, in `named_tensors` order.
    pub fn set_tensors(&mut self, mut tensors: impl Iterator<Item = Tensor>) {
        for layer in &mut self.layers {
            for p in layer.pairs.iter_mut().flatten() {
                p.a = tensors.next().expect("one tensor per A");
                p.b = tensors.next().expect("one tensor per B");
            }
        }
    }

    pub fn num_parameters(&self) -> usize {
        self.tensors().iter().map(|t| t.elem_count()).sum()
    }

    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let mut out = self.clone();
        out.set_tensors(self.tensors().iter().map(|t| t.to_device(device)).collect::<Result<Vec<_>>>()?.into_iter());
        Ok(out)
    }
}

/// `base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight`: PEFT's name for a
/// saved adapter tensor of a causal LM.
pub fn peft_tensor_name(layer: usize, t: Target, which: char) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{which}.weight", t.module_path())
}

/// y (N, out) += s * (x A^T) B^T for x: (N, in). Computed in f32 and cast back to y's
/// dtype, so bf16 bases keep f32 adapters.
pub fn add_lora_delta(y: &Tensor, x: &Tensor, pair: &LoraPair, scaling: f64) -> Result<Tensor> {
    let u = x.to_dtype(DType::F32)?.matmul(&pair.a.t()?)?; // (N, r)
    let delta = (u.matmul(&pair.b.t()?)? * scaling)?; // (N, out)
    y + delta.to_dtype(y.dtype())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::preset;

    fn spec() -> LoraSpec {
        LoraSpec {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec![Target::QProj, Target::VProj, Target::DownProj],
            use_rslora: false,
        }
    }

    #[test]
    fn init_matches_peft_distribution_and_is_seeded() {
        let cfg = preset("tiny").unwrap();
        let w = LoraWeights::init(&spec(), &cfg, 7, &Device::Cpu).unwrap();
        let again = LoraWeights::init(&spec(), &cfg, 7, &Device::Cpu).unwrap();
        let other = LoraWeights::init(&spec(), &cfg, 8, &Device::Cpu).unwrap();
        let p = w.layers[0].get(Target::DownProj).unwrap();
        let (inp, out) = Target::DownProj.shape(&cfg);
        assert_eq!(p.a.dims(), &[4, inp]);
        assert_eq!(p.b.dims(), &[out, 4]);
        let a: Vec<f32> = p.a.flatten_all().unwrap().to_vec1().unwrap();
        let bound = 1.0 / (inp as f32).sqrt();
        assert!(a.iter().all(|v| v.abs() < bound));
        // Uniform on (-bound, bound): variance bound^2 / 3.
        let var = a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.15, "variance {var}");
        assert_eq!(p.b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let flat = |w: &LoraWeights| -> Vec<f32> {
            w.tensors().iter().flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
        };
        assert_eq!(flat(&w), flat(&again));
        assert_ne!(flat(&w), flat(&other));
        assert!(w.layers[0].get(Target::KProj).is_none());
        assert_eq!(w.named_tensors()[0].0, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    }

    #[test]
    fn rslora_scaling() {
        let mut s = spec();
        assert_eq!(s.scaling(), 2.0);
        s.use_rslora = true;
        assert_eq!(s.scaling(), 4.0);
    }
}
