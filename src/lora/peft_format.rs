//! PEFT's on-disk adapter: `adapter_model.safetensors` (tensors named
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight`) and
//! `adapter_config.json`. Written so `PeftModel.from_pretrained` loads it; read so adapters
//! PEFT trained load here.

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::{peft_tensor_name, LayerLora, LoraPair, LoraSpec, LoraWeights, Target};
use crate::model::ModelConfig;

pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: tensor {tensor}: {message}")]
    Tensor { path: PathBuf, tensor: String, message: String },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
}

/// Writes the adapter into `dir` (created if needed), each file atomically.
/// `base_model` is recorded as `base_model_name_or_path`.
pub fn save_adapter(dir: &Path, weights: &LoraWeights, base_model: &str) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterError::Io { path: dir.to_path_buf(), source })?;
    let spec = &weights.spec;
    let targets: Vec<&str> = spec.targets.iter().map(|t| t.name()).collect();
    // The fields PEFT's LoraConfig writes itself, with its defaults where we have no say.
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": targets,
        "use_rslora": spec.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
        "auto_mapping": null,
    });
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).expect("json value serialises");
    crate::atomic::write_bytes(&config_path, text.as_bytes())
        .map_err(|source| AdapterError::Io { path: config_path, source })?;

    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let tensors: Vec<(String, Tensor)> = weights
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| AdapterError::Weights { path: weights_path.clone(), message: e.to_string() })?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    crate::atomic::write_with(&weights_path, |tmp| {
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), tmp)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(|source| AdapterError::Io { path: weights_path, source })?;
    Ok(())
}

/// Reads a PEFT LoRA adapter for a model with config `cfg`. Tensors become f32 on `device`.
/// Every expected tensor must be present with the right shape, and nothing else may be.
pub fn load_adapter(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<LoraWeights, AdapterError> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .map_err(|source| AdapterError::Io { path: config_path.clone(), source })?;
    let spec = parse_config(&text).map_err(|message| AdapterError::Config { path: config_path.clone(), message })?;

    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&weights_path, device)
        .map_err(|e| AdapterError::Weights { path: weights_path.clone(), message: e.to_string() })?;
    // Some PEFT versions keep the adapter name in saved keys.
    tensors = tensors.into_iter().map(|(k, v)| (k.replace(".default.weight", ".weight"), v)).collect();

    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let mut layer = LayerLora::default();
        for &t in &spec.targets {
            let (inp, out) = t.shape(cfg);
            let mut take = |which: char, shape: (usize, usize)| -> Result<Tensor, AdapterError> {
                let name = peft_tensor_name(l, t, which);
                let tensor = tensors.remove(&name).ok_or_else(|| AdapterError::Tensor {
                    path: weights_path.clone(),
                    tensor: name.clone(),
                    message: format!("missing (the config targets {} with r={})", t.name(), spec.r),
                })?;
                if tensor.dims() != [shape.0, shape.1] {
                    return Err(AdapterError::Tensor {
                        path: weights_path.clone(),
                        tensor: name,
                        message: format!(
                            "shape {:?}, expected [{}, {}] for this base model",
                            tensor.dims(),
                            shape.0,
                            shape.1
                        ),
                    });
                }
                tensor.to_dtype(DType::F32).map_err(|e| AdapterError::Tensor {
                    path: weights_path.clone(),
                    tensor: name,
                    message: e.to_string(),
                })
            };
            let a = take('A', (spec.r, inp))?;
            let b = take('B', (out, spec.r))?;
            layer.pairs[t.index()] = Some(LoraPair { a, b });
        }
        layers.push(layer);
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(AdapterError::Tensor {
            path: weights_path,
            tensor: extra.clone(),
            message: format!(
                "unexpected tensor (the base model has {} layers; supported adapters hold only lora_A/lora_B of {})",
                cfg.num_hidden_layers,
                Target::ALL.map(|t| t.name()).join(", ")
            ),
        });
    }
    Ok(LoraWeights { scaling: spec.scaling(), spec, layers })
}

/// The LoRA hyper-parameters of an adapter_config.json, refusing the PEFT features whose
/// weights would not mean what plain LoRA means.
fn parse_config(text: &str) -> Result<LoraSpec, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => return Err(format!("peft_type is {other:?}; only LORA adapters are supported")),
    }
    let r = field("r").and_then(Value::as_u64).filter(|&r| r > 0).ok_or("r must be a positive integer")? as usize;
    let alpha = field("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let dropout = field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let use_rslora = field("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let unsupported = |k: &str, ok: &dyn Fn(&Value) -> bool| -> Result<(), String> {
        match field(k) {
            Some(x) if !ok(x) => Err(format!("{k} = {x} is not supported")),
            _ => Ok(()),
        }
    };
    unsupported("use_dora", &|x| x == &Value::Bool(false))?;
    unsupported("fan_in_fan_out", &|x| x == &Value::Bool(false))?;
    unsupported("bias", &|x| x == "none")?;
    unsupported("rank_pattern", &|x| x.as_object().is_some_and(|o| o.is_empty()))?;
    unsupported("alpha_pattern", &|x| x.as_object().is_some_and(|o| o.is_empty()))?;
    unsupported("layers_to_transform", &|_| false)?;
    unsupported("modules_to_save", &|x| x.as_array().is_some_and(|a| a.is_empty()))?;
    let names: Vec<String> = match field("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or("target_modules must hold strings"))
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => {
            return Err(format!(
                "target_modules is the pattern {s:?}; give the module names as a list (e.g. [\"q_proj\", \"v_proj\"])"
            ))
        }
        _ => return Err("target_modules is missing".into()),
    };
    let mut targets = BTreeSet::new();
    for n in &names {
        let t = Target::from_name(n).ok_or_else(|| {
            format!(
                "target module {n:?} is not a Llama-family projection ({})",
                Target::ALL.map(|t| t.name()).join(", ")
            )
        })?;
        targets.insert(t);
    }
    Ok(LoraSpec { r, alpha, dropout, targets: targets.into_iter().collect(), use_rslora })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::preset;

    #[test]
    fn save_then_load_round_trips_every_value() {
        let cfg = preset("tiny").unwrap();
        let spec = LoraSpec {
            r: 3,
            alpha: 6.0,
            dropout: 0.05,
            targets: vec![Target::KProj, Target::OProj, Target::UpProj],
            use_rslora: true,
        };
        let mut w = LoraWeights::init(&spec, &cfg, 1, &Device::Cpu).unwrap();
        // Non-zero B so the round trip checks both matrices.
        let bs: Vec<Tensor> = w.tensors().iter().map(|t| (t.ones_like().unwrap() * 0.5).unwrap()).collect();
        w.set_tensors(bs.into_iter());
        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), &w, "models/tiny").unwrap();
        let back = load_adapter(dir.path(), &cfg, &Device::Cpu).unwrap();
        assert_eq!(back.spec, spec);
        assert_eq!(back.scaling, spec.scaling());
        let names: Vec<String> = back.named_tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, w.named_tensors().into_iter().map(|(n, _)| n).collect::<Vec<_>>());
        for (x, y) in w.tensors().iter().zip(back.tensors()) {
            assert_eq!(
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!(config["target_modules"], json!(["k_proj", "o_proj", "up_proj"]));
        assert_eq!(config["lora_alpha"], 6.0);
    }

    #[test]
    fn wrong_shapes_missing_and_extra_tensors_are_named() {
        let cfg = preset("tiny").unwrap();
        let spec = LoraSpec { r: 2, alpha: 4.0, dropout: 0.0, targets: vec![Target::QProj], use_rslora: false };
        let w = LoraWeights::init(&spec, &cfg, 1, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), &w, "x").unwrap();
        // A model with another hidden size: shapes disagree.
        let mut wide = cfg.clone();
        wide.hidden_size *= 2;
        wide.head_dim *= 2;
        let err = load_adapter(dir.path(), &wide, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("layers.0.self_attn.q_proj.lora_A.weight") && err.contains("shape"), "{err}");
        // Fewer layers in the model than in the file: the extra tensor is named.
        let mut short = cfg.clone();
        short.num_hidden_layers -= 1;
        let err = load_adapter(dir.path(), &short, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("unexpected tensor") && err.contains(&format!("layers.{}", short.num_hidden_layers)),
            "{err}"
        );
        // The config asks for a module the file lacks.
        let cfg_path = dir.path().join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).unwrap().replace("\"q_proj\"", "\"q_proj\", \"v_proj\"");
        std::fs::write(&cfg_path, text).unwrap();
        let err = load_adapter(dir.path(), &cfg, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("v_proj.lora_A.weight") && err.contains("missing"), "{err}");
        std::fs::write(&cfg_path, r#"{"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"], "use_dora": true}"#)
            .unwrap();
        let err = load_adapter(dir.path(), &cfg, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("adapter_config.json") && err.contains("use_dora"), "{err}");
    }
}
