//! Reading a Hugging Face layout folder: config.json plus model.safetensors or the shards
//! listed in model.safetensors.index.json. Files are memory-mapped; each tensor is
//! checked against the shape config.json implies and converted to the compute dtype.

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::config::ModelConfig;
use super::error::LoadError;

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// Which safetensors file holds which tensor.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    /// Shard files in a stable order.
    pub files: Vec<PathBuf>,
    /// tensor name -> index into `files`; None for a single-file checkpoint.
    pub routing: Option<HashMap<String, usize>>,
    /// Where the routing came from (the index file), for messages.
    pub index: Option<PathBuf>,
}

impl WeightFiles {
    pub fn discover(dir: &Path) -> Result<Self, LoadError> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            let names = read_index(&index)?;
            let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
            for (_, shard) in &names {
                shard_ids.entry(shard.clone()).or_insert(0);
            }
            let mut files = Vec::with_capacity(shard_ids.len());
            for (i, (shard, id)) in shard_ids.iter_mut().enumerate() {
                let p = dir.join(shard);
                if !p.is_file() {
                    return Err(LoadError::MissingShard { index: index.clone(), shard: shard.clone() });
                }
                *id = i;
                files.push(p);
            }
            let routing = names.into_iter().map(|(t, s)| (t, shard_ids[&s])).collect();
            return Ok(WeightFiles { files, routing: Some(routing), index: Some(index) });
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Ok(WeightFiles { files: vec![single], routing: None, index: None });
        }
        Err(LoadError::Config {
            path: dir.to_path_buf(),
            msg: format!("no {SINGLE_FILE} or {INDEX_FILE} in this folder"),
        })
    }
}

impl WeightFiles {
    /// Index into `files` of the file holding `name`.
    pub fn file_of(&self, name: &str) -> Result<usize, LoadError> {
        match &self.routing {
            None => Ok(0),
            Some(r) => r.get(name).copied().ok_or_else(|| LoadError::MissingTensor {
                path: self.index.clone().unwrap_or_default(),
                tensor: name.to_string(),
            }),
        }
    }
}

/// The (tensor, shard file) pairs of a `model.safetensors.index.json`.
pub fn read_index(index: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let bad = |msg: String| LoadError::Config { path: index.to_path_buf(), msg };
    let text = std::fs::read_to_string(index).map_err(|e| LoadError::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map =
        json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    map.iter()
        .map(|(tensor, shard)| match shard.as_str() {
            Some(s) => Ok((tensor.clone(), s.to_string())),
            None => Err(bad(format!("weight_map[\"{tensor}\"] is not a file name"))),
        })
        .collect()
}

/// Loads every tensor `cfg` expects from `files`, converting to `dtype` on `device`.
/// `skip(name)` leaves a tensor out (QLoRA loads the projections separately).
pub fn load_tensors(
    cfg: &ModelConfig,
    files: &WeightFiles,
    dtype: DType,
    device: &Device,
    skip: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>, LoadError> {
    // Group by file so each file is mapped once.
    let mut per_file: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new(); files.files.len()];
    for (name, shape) in cfg.expected_tensors().into_iter().filter(|(n, _)| !skip(n)) {
        per_file[files.file_of(&name)?].push((name, shape));
    }
    let mut out = HashMap::new();
    #[cfg(feature = "cuda")]
    let mut uploader = match device {
        Device::Cuda(d) => Some(super::gpu_upload::Uploader::new(d).map_err(|e| LoadError::Tensor {
            path: files.files[0].clone(),
            tensor: "(pinned staging buffers)".into(),
            msg: e.to_string(),
        })?),
        _ => None,
    };
    for (path, wanted) in files.files.iter().zip(per_file) {
        if wanted.is_empty() {
            continue;
        }
        let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: the map is read-only and lives only while this file's tensors are copied
        // out; a checkpoint modified underneath a running load is outside what we support.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&mmap)
            .map_err(|e| LoadError::Safetensors { path: path.clone(), msg: e.to_string() })?;
        for (name, shape) in wanted {
            let view = checked_view(&st, path, &name, &shape)?;
            let terr = |e: candle_core::Error| LoadError::Tensor {
                path: path.clone(),
                tensor: name.clone(),
                msg: e.to_string(),
            };
            // Stored in the compute dtype and bound for a GPU: straight from the map to the
            // device through pinned buffers (gpu_upload), no host-side conversion.
            #[cfg(feature = "cuda")]
            if let Some(up) = uploader.as_mut().filter(|_| stored_dtype(view.dtype()) == Some(dtype)) {
                let t = up.upload(view.data(), dtype, &shape).map_err(terr)?;
                out.insert(name, t);
                continue;
            }
            let t = view.load(&Device::Cpu).map_err(terr)?;
            let t = t.to_dtype(dtype).map_err(terr)?.to_device(device).map_err(terr)?;
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// The tensor `name` of a mapped file, checked to have `shape`.
pub fn checked_view<'a>(
    st: &'a safetensors::SafeTensors<'a>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<safetensors::tensor::TensorView<'a>, LoadError> {
    let view =
        st.tensor(name).map_err(|_| LoadError::MissingTensor { path: path.to_path_buf(), tensor: name.to_string() })?;
    if view.shape() != shape {
        return Err(LoadError::ShapeMismatch {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            expected: shape.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    Ok(view)
}

/// The candle dtype of a safetensors dtype that loads without conversion.
#[cfg(feature = "cuda")]
fn stored_dtype(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::BF16 => Some(DType::BF16),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::F32 => Some(DType::F32),
        _ => None,
    }
}
