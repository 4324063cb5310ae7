//! Reading a llama-architecture GGUF file (llama.cpp's format): hyper-parameters from its
//! metadata, tensors dequantized and renamed to Hugging Face names, and the q/k row
//! permutation that llama.cpp's converter applies undone, so that the weights (and our
//! rotate-half RoPE) match the HF checkpoint the GGUF was made from.

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

use super::config::{Architecture, Llama3RopeScaling, ModelConfig};
use super::error::LoadError;

pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Opens and parses the GGUF header (metadata and tensor directory; no tensor data).
pub fn read_content(path: &Path) -> Result<(Content, std::fs::File), LoadError> {
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let content = Content::read(&mut file)
        .map_err(|e| LoadError::Gguf { path: path.to_path_buf(), msg: format!("not a readable GGUF file: {e}") })?;
    Ok((content, file))
}

fn meta<'a>(c: &'a Content, key: &str) -> Option<&'a Value> {
    c.metadata.get(key)
}

fn meta_usize(c: &Content, key: &str) -> Option<usize> {
    meta(c, key)
        .and_then(|v| {
            v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)).or_else(|| v.to_i32().ok().map(|x| x as u64))
        })
        .map(|x| x as usize)
}

fn meta_f64(c: &Content, key: &str) -> Option<f64> {
    meta(c, key).and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
}

/// The model's hyper-parameters from `llama.*` metadata keys.
pub fn config_from_gguf(c: &Content, path: &Path) -> Result<ModelConfig, LoadError> {
    let bad = |msg: String| LoadError::Gguf { path: path.to_path_buf(), msg };
    let arch = meta(c, "general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .ok_or_else(|| bad("metadata key general.architecture is missing".into()))?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(bad(format!(
            "GGUF architecture \"{arch}\" is not supported (supported: {})",
            SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    let need = |key: &str| meta_usize(c, key).ok_or_else(|| bad(format!("metadata key {key} is missing")));
    let hidden_size = need("llama.embedding_length")?;
    let num_attention_heads = need("llama.attention.head_count")?;
    let num_key_value_heads = meta_usize(c, "llama.attention.head_count_kv").unwrap_or(num_attention_heads);
    let head_dim = meta_usize(c, "llama.attention.key_length")
        .or_else(|| meta_usize(c, "llama.rope.dimension_count"))
        .unwrap_or(hidden_size / num_attention_heads.max(1));
    let embd =
        c.tensor_infos.get("token_embd.weight").ok_or_else(|| bad("tensor \"token_embd.weight\" is missing".into()))?;
    let vocab_size = meta_usize(c, "llama.vocab_size").unwrap_or(embd.shape.dims()[0]);
    let rope_scaling = match meta(c, "llama.rope.scaling.type").and_then(|v| v.to_string().ok()).map(|s| s.as_str()) {
        Some("llama3") => Some(Llama3RopeScaling {
            factor: meta_f64(c, "llama.rope.scaling.factor").unwrap_or(8.0),
            low_freq_factor: meta_f64(c, "llama.rope.scaling.low_freq_factor").unwrap_or(1.0),
            high_freq_factor: meta_f64(c, "llama.rope.scaling.high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: meta_usize(c, "llama.rope.scaling.original_context_length")
                .unwrap_or(8192),
        }),
        Some("none") | None => None,
        Some(other) => return Err(bad(format!("llama.rope.scaling.type \"{other}\" is not supported"))),
    };
    let has_bias = c.tensor_infos.contains_key("blk.0.attn_q.bias");
    let cfg = ModelConfig {
        architecture: Architecture::Llama,
        vocab_size,
        hidden_size,
        intermediate_size: need("llama.feed_forward_length")?,
        num_hidden_layers: need("llama.block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: meta_f64(c, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: meta_f64(c, "llama.rope.freq_base").unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: meta_usize(c, "llama.context_length").unwrap_or(4096),
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        qkv_bias: has_bias,
        o_bias: c.tensor_infos.contains_key("blk.0.attn_output.bias"),
        qk_norm: false,
        bos_token_id: meta_usize(c, "tokenizer.ggml.bos_token_id").map(|x| x as u32),
        eos_token_ids: meta_usize(c, "tokenizer.ggml.eos_token_id").map(|x| vec![x as u32]).unwrap_or_default(),
    };
    cfg.validate().map_err(bad)?;
    Ok(cfg)
}

/// HF tensor name -> GGUF tensor name (llama.cpp naming).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (module, kind) = tail.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// llama.cpp stores q/k rows interleaved per head ((n, D/2, 2) row order) for its
/// interleaved RoPE; HF uses (n, 2, D/2). This maps GGUF order back to HF order.
/// w: (n_head * D, ...) -> same shape.
pub fn unpermute_rows(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    swap_row_groups(w, n_head, false)
}

/// The inverse of [`unpermute_rows`]: HF order -> llama.cpp order (used when writing GGUF).
pub fn permute_rows(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    swap_row_groups(w, n_head, true)
}

/// Views each head's D rows as a (D/2, 2) grid (`to_interleaved` false) or a (2, D/2) grid
/// (true) and transposes it.
fn swap_row_groups(w: &Tensor, n_head: usize, to_interleaved: bool) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let half = dims[0] / n_head / 2;
    let grid = if to_interleaved { (n_head, 2, half, rest) } else { (n_head, half, 2, rest) };
    w.reshape(grid)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// One tensor, dequantized to f32 on the CPU with llama.cpp's q/k row order undone: `name`
/// is its HF name, `g` its GGUF name (names and shapes already checked by the caller).
pub fn read_tensor_f32(
    cfg: &ModelConfig,
    content: &Content,
    file: &mut std::fs::File,
    path: &Path,
    name: &str,
    g: &str,
) -> Result<Tensor, LoadError> {
    let terr = |e: candle_core::Error| LoadError::Tensor {
        path: path.to_path_buf(),
        tensor: g.to_string(),
        msg: e.to_string(),
    };
    let t = content.tensor(file, g, &Device::Cpu).map_err(terr)?.dequantize(&Device::Cpu).map_err(terr)?;
    if name.contains("self_attn.q_proj.") {
        unpermute_rows(&t, cfg.num_attention_heads).map_err(terr)
    } else if name.contains("self_attn.k_proj.") {
        unpermute_rows(&t, cfg.num_key_value_heads).map_err(terr)
    } else {
        Ok(t)
    }
}

/// One tensor's own blocks, as a (rows, cols) QTensor on the CPU, with llama.cpp's q/k row
/// order undone by moving whole rows of blocks (no dequantization).
pub fn read_blocks(
    cfg: &ModelConfig,
    content: &Content,
    file: &mut std::fs::File,
    path: &Path,
    name: &str,
    g: &str,
) -> Result<QTensor, LoadError> {
    let terr = |e: candle_core::Error| LoadError::Tensor {
        path: path.to_path_buf(),
        tensor: g.to_string(),
        msg: e.to_string(),
    };
    let q = content.tensor(file, g, &Device::Cpu).map_err(terr)?;
    let heads = if name.contains("self_attn.q_proj.") {
        cfg.num_attention_heads
    } else if name.contains("self_attn.k_proj.") {
        cfg.num_key_value_heads
    } else {
        return Ok(q);
    };
    let (rows, _) = q.shape().dims2().map_err(terr)?;
    let bytes = q.data().map_err(terr)?;
    let row_bytes = bytes.len() / rows;
    let grid = Tensor::from_slice(&bytes[..rows * row_bytes], (rows, row_bytes), &Device::Cpu).map_err(terr)?;
    let reordered: Vec<u8> = unpermute_rows(&grid, heads).and_then(|t| t.flatten_all()?.to_vec1()).map_err(terr)?;
    let storage = QStorage::from_data(std::borrow::Cow::Owned(reordered), &Device::Cpu, q.dtype()).map_err(terr)?;
    QTensor::new(storage, q.shape().clone()).map_err(terr)
}

/// HF name -> GGUF name of every tensor `cfg` expects, checked against the file's
/// directory (presence and shape) before any data is read.
pub fn checked_names(cfg: &ModelConfig, content: &Content, path: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let mut jobs = Vec::new();
    for (name, shape) in cfg.expected_tensors() {
        let g = gguf_name(&name).expect("every expected tensor has a GGUF name");
        let info = content
            .tensor_infos
            .get(&g)
            .ok_or_else(|| LoadError::MissingTensor { path: path.to_path_buf(), tensor: g.clone() })?;
        if info.shape.dims() != shape.as_slice() {
            return Err(LoadError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: g,
                expected: shape,
                found: info.shape.dims().to_vec(),
            });
        }
        jobs.push((name, g));
    }
    Ok(jobs)
}

/// Dequantizes every expected tensor to f32, undoes the q/k permutation, then converts
/// to `dtype` on `device`. Returns HF-named tensors. Dequantization is CPU-bound and
/// single-threaded per tensor in candle, so tensors are spread over all cores, each worker
/// reading through its own file handle.
/// `skip(name)` leaves a tensor out (QLoRA loads the projections separately).
pub fn load_tensors(
    cfg: &ModelConfig,
    content: &Content,
    path: &Path,
    dtype: DType,
    device: &Device,
    skip: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>, LoadError> {
    // Check names and shapes first, so a bad file fails before any heavy work.
    let jobs: Vec<(String, String)> =
        checked_names(cfg, content, path)?.into_iter().filter(|(n, _)| !skip(n)).collect();
    let load_one = |file: &mut std::fs::File, name: &str, g: &str| -> Result<Tensor, LoadError> {
        let terr = |e: candle_core::Error| LoadError::Tensor {
            path: path.to_path_buf(),
            tensor: g.to_string(),
            msg: e.to_string(),
        };
        read_tensor_f32(cfg, content, file, path, name, g)?
            .to_dtype(dtype)
            .map_err(terr)?
            .to_device(device)
            .map_err(terr)
    };
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(jobs.len().max(1));
    let results: Vec<Result<Vec<(String, Tensor)>, LoadError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let jobs = &jobs;
                let load_one = &load_one;
                s.spawn(move || {
                    let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
                    // Interleaved assignment balances big and small tensors across workers.
                    jobs.iter()
                        .skip(w)
                        .step_by(workers)
                        .map(|(name, g)| Ok((name.clone(), load_one(&mut file, name, g)?)))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("GGUF loader thread panicked")).collect()
    });
    let mut out = HashMap::with_capacity(jobs.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_round_trips_and_matches_llama_cpp_layout() {
        // 2 heads of D = 4 with 1 input column: HF rows per head are [a0 a1 | b0 b1]
        // (first half, second half); llama.cpp interleaves them as [a0 b0 a1 b1].
        let hf = Tensor::arange(0f32, 8., &Device::Cpu).unwrap().reshape((8, 1)).unwrap();
        let g = permute_rows(&hf, 2).unwrap();
        let rows: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(rows, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        let back = unpermute_rows(&g, 2).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), (0..8).map(|x| x as f32).collect::<Vec<_>>());
    }

    /// Every block type the issue names survives a GGUF file round trip and dequantizes to
    /// the original values within that type's quantization error (relative RMS).
    #[test]
    fn each_supported_block_type_dequantizes_to_the_original_values() {
        use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
        let dir = tempfile::tempdir().unwrap();
        // Seeded: candle's CPU `randn` cannot be.
        let original = crate::model::init::init_tensor("original", &[8, 256], 0, 1.0).unwrap();
        let cases = [
            (GgmlDType::F32, 0.0),
            (GgmlDType::F16, 1e-3),
            (GgmlDType::BF16, 5e-3),
            (GgmlDType::Q8_0, 1e-2),
            (GgmlDType::Q6K, 3e-2),
            (GgmlDType::Q4K, 0.12),
            (GgmlDType::Q4_1, 0.12),
            (GgmlDType::Q4_0, 0.15),
        ];
        for (dtype, tol) in cases {
            let q = QTensor::quantize(&original, dtype).unwrap();
            let path = dir.path().join(format!("{dtype:?}.gguf"));
            let arch = gguf_file::Value::String("llama".into());
            gguf_file::write(
                &mut std::fs::File::create(&path).unwrap(),
                &[("general.architecture", &arch)],
                &[("w", &q)],
            )
            .unwrap();
            let (content, mut f) = read_content(&path).unwrap();
            let back = content.tensor(&mut f, "w", &Device::Cpu).unwrap();
            assert_eq!(back.dtype(), dtype);
            let back = back.dequantize(&Device::Cpu).unwrap();
            assert_eq!(back.dims(), &[8, 256]);
            let err =
                (&back - &original).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            assert!(err <= tol as f32 + 1e-7, "{dtype:?}: relative RMS error {err} above {tol}");
            if dtype != GgmlDType::F32 {
                assert!(err > 0.0, "{dtype:?}: no quantization error at all, so nothing was quantized");
            }
        }
    }

    #[test]
    fn names_map_both_ways_for_every_layer_tensor() {
        assert_eq!(gguf_name("model.layers.12.self_attn.q_proj.weight").unwrap(), "blk.12.attn_q.weight");
        assert_eq!(gguf_name("model.layers.0.mlp.down_proj.weight").unwrap(), "blk.0.ffn_down.weight");
        assert_eq!(gguf_name("model.layers.3.post_attention_layernorm.weight").unwrap(), "blk.3.ffn_norm.weight");
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq").is_none());
    }
}
