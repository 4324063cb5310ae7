//! The decoder's hyper-parameters, read from a Hugging Face `config.json` or from GGUF
//! metadata, validated once at the edge so the model code can trust them.

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::error::LoadError;

/// Checkpoint families that share the Llama decoder. They differ only in details the
/// config carries (biases, GQA, rope, Qwen3's per-head q/k norm), so one forward pass
/// serves all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "LlamaForCausalLM")]
    Llama,
    #[serde(rename = "MistralForCausalLM")]
    Mistral,
    #[serde(rename = "Qwen2ForCausalLM")]
    Qwen2,
    #[serde(rename = "Qwen3ForCausalLM")]
    Qwen3,
}

impl Architecture {
    pub const SUPPORTED: &'static [&'static str] =
        &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" => Some(Architecture::Llama),
            "MistralForCausalLM" => Some(Architecture::Mistral),
            "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
            _ => None,
        }
    }
}

/// Llama 3.x frequency-dependent RoPE scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q, k and v projections (always on for Qwen2; `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama's `attention_bias` covers it; Qwen2 has none).
    pub o_bias: bool,
    /// RMSNorm over each head of q and of k before RoPE, weights (D,) per layer (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The subset of config.json we read. Every field is optional here so that a missing one
/// produces our own message (naming the file and key) instead of serde's.
#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        Self::from_hf_json(&text, path)
    }

    pub fn from_hf_json(text: &str, path: &Path) -> Result<Self, LoadError> {
        let bad = |msg: String| LoadError::Config { path: path.to_path_buf(), msg };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| {
                raw.model_type.as_deref().and_then(|t| match t {
                    "llama" => Some("LlamaForCausalLM".to_string()),
                    "mistral" => Some("MistralForCausalLM".to_string()),
                    "qwen2" => Some("Qwen2ForCausalLM".to_string()),
                    "qwen3" => Some("Qwen3ForCausalLM".to_string()),
                    _ => None,
                })
            })
            .ok_or_else(|| bad("no \"architectures\" (or known \"model_type\") entry".into()))?;
        let architecture = Architecture::from_hf_name(&arch_name).ok_or_else(|| {
            bad(format!(
                "architecture \"{arch_name}\" is not supported (supported: {})",
                Architecture::SUPPORTED.join(", ")
            ))
        })?;
        let need = |v: Option<usize>, key: &str| v.ok_or_else(|| bad(format!("missing \"{key}\"")));
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(bad(format!("hidden_act \"{act}\" is not supported (only silu)")));
            }
        }
        if raw.mlp_bias == Some(true) {
            return Err(bad("mlp_bias = true is not supported".into()));
        }
        if raw.use_sliding_window == Some(true) {
            return Err(bad("use_sliding_window = true is not supported (sliding-window attention)".into()));
        }
        // transformers 5 moved rope settings into `rope_parameters`; older files use
        // rope_theta + rope_scaling. Read both.
        let rope_params = raw.rope_parameters.as_ref();
        let rope_theta = raw
            .rope_theta
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64()))
            .unwrap_or(10000.0);
        let scaling_json = raw.rope_scaling.as_ref().or(rope_params);
        let rope_scaling = match scaling_json {
            None | Some(serde_json::Value::Null) => None,
            Some(s) => parse_rope_scaling(s).map_err(bad)?,
        };
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let eos_token_ids = token_ids(&raw.eos_token_id);
        let cfg = ModelConfig {
            architecture,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(hidden_size / num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Structural checks that every source must pass.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |v: usize, k: &str| if v == 0 { Err(format!("\"{k}\" must be positive")) } else { Ok(()) };
        pos(self.vocab_size, "vocab_size")?;
        pos(self.hidden_size, "hidden_size")?;
        pos(self.intermediate_size, "intermediate_size")?;
        pos(self.num_hidden_layers, "num_hidden_layers")?;
        pos(self.num_attention_heads, "num_attention_heads")?;
        pos(self.num_key_value_heads, "num_key_value_heads")?;
        pos(self.head_dim, "head_dim")?;
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even for rotary embeddings", self.head_dim));
        }
        // Written so that NaN fails too.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(self.rms_norm_eps > 0.0) || !(self.rope_theta > 0.0) {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    pub fn num_kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters of the base model (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        self.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Every tensor a checkpoint must provide, in Hugging Face naming, with its shape.
    /// Loading checks against this list so a mismatch names the tensor and both shapes.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if self.qkv_bias {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            if self.o_bias {
                out.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
            }
            if self.qk_norm {
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![self.head_dim]));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![self.head_dim]));
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }

    /// The config.json transformers expects for this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut j = serde_json::json!({
            "architectures": [self.architecture.hf_name()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
        });
        let m = j.as_object_mut().expect("object");
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                m.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                m.insert("eos_token_id".into(), many.to_vec().into());
            }
        }
        if self.architecture != Architecture::Qwen2 {
            m.insert("attention_bias".into(), self.qkv_bias.into());
            m.insert("mlp_bias".into(), false.into());
        }
        if let Some(s) = &self.rope_scaling {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({
                    "rope_type": "llama3",
                    "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings,
                }),
            );
        }
        j
    }
}

fn parse_rope_scaling(s: &serde_json::Value) -> Result<Option<Llama3RopeScaling>, String> {
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |k: &str| s.get(k).and_then(|v| v.as_f64()).ok_or_else(|| format!("rope_scaling: missing \"{k}\""));
            Ok(Some(Llama3RopeScaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
            }))
        }
        other => Err(format!("rope_scaling type \"{other}\" is not supported (supported: default, llama3)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: serde_json::Value) -> Result<ModelConfig, LoadError> {
        ModelConfig::from_hf_json(&j.to_string(), Path::new("m/config.json"))
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "eos_token_id": [3, 4], "bos_token_id": 1
        })
    }

    #[test]
    fn reads_llama_with_gqa_and_defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.num_kv_groups(), 2);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert!(!c.qkv_bias && !c.tie_word_embeddings);
        // round trip through our own writer
        let again = parse(c.to_hf_json()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_llama3_scaling_parses() {
        let mut j = base();
        j["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        j["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = parse(j).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
        assert!(c.expected_tensors().iter().any(|(n, s)| n == "model.layers.1.self_attn.k_proj.bias" && s == &vec![8]));
    }

    #[test]
    fn qwen3_has_qk_norms_and_explicit_head_dim() {
        let mut j = base();
        j["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
        j["head_dim"] = 8.into();
        let c = parse(j.clone()).unwrap();
        assert!(c.qk_norm && !c.qkv_bias && c.head_dim == 8);
        let names: Vec<_> = c.expected_tensors().into_iter().filter(|(n, _)| n.contains("_norm.weight")).collect();
        assert!(names.contains(&("model.layers.1.self_attn.q_norm.weight".to_string(), vec![8])), "{names:?}");
        assert!(names.contains(&("model.layers.1.self_attn.k_norm.weight".to_string(), vec![8])));
        assert_eq!(parse(c.to_hf_json()).unwrap(), c);
        j["use_sliding_window"] = true.into();
        assert!(parse(j).unwrap_err().to_string().contains("use_sliding_window"));
    }

    #[test]
    fn unsupported_architecture_names_file_and_arch() {
        let mut j = base();
        j["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        let e = parse(j).unwrap_err().to_string();
        assert!(e.contains("m/config.json") && e.contains("GPT2LMHeadModel"), "{e}");
    }

    #[test]
    fn missing_key_and_bad_gqa_are_named() {
        let mut j = base();
        j.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(j).unwrap_err().to_string().contains("\"hidden_size\""));
        let mut j = base();
        j["num_key_value_heads"] = 3.into();
        assert!(parse(j).unwrap_err().to_string().contains("num_key_value_heads"));
    }
}
