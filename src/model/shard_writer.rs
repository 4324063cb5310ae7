//! Writing weights as Hugging Face sharded safetensors: `model.safetensors`, or
//! `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json` when the
//! tensors exceed one shard. Tensors are produced on demand, one shard at a time, so a
//! writer holds at most one shard in memory whatever the model's size.

use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::error::LoadError;
use super::safetensors_source::{INDEX_FILE, SINGLE_FILE};

/// Groups `tensors` (in order) into shards of at most `max_shard_bytes` each (a tensor
/// larger than that gets a shard of its own).
pub fn plan_shards(
    tensors: &[(String, Vec<usize>)],
    dtype: DType,
    max_shard_bytes: u64,
) -> Vec<Vec<(String, Vec<usize>)>> {
    let elem = dtype.size_in_bytes() as u64;
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut current = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() as u64 * elem;
        if current > 0 && current + bytes > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += bytes;
        shards.last_mut().expect("non-empty").push((name.clone(), shape.clone()));
    }
    shards
}

/// Writes `tensors` into `dir` in `dtype`, calling `produce(name, shape)` for each in order
/// (any dtype; converted here) and `done(bytes)` after each. Every file is written
/// atomically. Returns the total bytes of tensor data.
pub fn write_shards(
    dir: &Path,
    tensors: &[(String, Vec<usize>)],
    dtype: DType,
    max_shard_bytes: u64,
    mut produce: impl FnMut(&str, &[usize]) -> Result<Tensor, LoadError>,
    mut done: impl FnMut(u64),
) -> Result<u64, LoadError> {
    let shards = plan_shards(tensors, dtype, max_shard_bytes);
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{:05}.safetensors", i + 1, n) };
        let mut named = HashMap::with_capacity(shard.len());
        for (name, shape) in shard {
            let t = produce(name, shape)?;
            if t.dims() != shape.as_slice() {
                return Err(LoadError::ShapeMismatch {
                    path: dir.join(&file),
                    tensor: name.clone(),
                    expected: shape.clone(),
                    found: t.dims().to_vec(),
                });
            }
            let t = t.to_dtype(dtype)?;
            let bytes = (t.elem_count() * dtype.size_in_bytes()) as u64;
            total += bytes;
            done(bytes);
            named.insert(name.clone(), t);
            weight_map.insert(name.clone(), file.clone());
        }
        let path = dir.join(&file);
        crate::atomic::write_with(&path, |tmp| {
            candle_core::safetensors::save(&named, tmp).map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(|e| LoadError::io(&path, e))?;
    }
    if n > 1 {
        write_json(
            &dir.join(INDEX_FILE),
            &serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map }),
        )?;
    }
    Ok(total)
}

/// [`crate::atomic::write_json`], with the model loader's error type.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), LoadError> {
    crate::atomic::write_json(path, value).map_err(|e| LoadError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_at_the_size_limit_and_keep_order() {
        let t = |n: &str, rows: usize| (n.to_string(), vec![rows, 4]);
        // f32: 16 bytes a row.
        let tensors = vec![t("a", 2), t("b", 2), t("c", 5), t("d", 1)];
        let plan = plan_shards(&tensors, DType::F32, 64);
        let names: Vec<Vec<&str>> = plan.iter().map(|s| s.iter().map(|(n, _)| n.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
        assert_eq!(plan_shards(&tensors, DType::F32, 1 << 20).len(), 1);
    }
}
