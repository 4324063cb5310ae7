//! One base tensor at a time, as f32 on the CPU, from a Hugging Face folder or a GGUF file:
//! for jobs that stream a checkpoint (merge) rather than hold all of it. Safetensors files
//! stay memory-mapped (the page cache holds them, not the process); GGUF tensors are
//! dequantized one by one.

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::config::ModelConfig;
use super::error::LoadError;
use super::safetensors_source::{checked_view, WeightFiles};
use super::{gguf_source, hub, ModelSource};
use crate::model::hub::HubOptions;

pub struct TensorReader {
    pub config: ModelConfig,
    /// The folder or file everything is read from (a hub id resolves to its snapshot).
    pub resolved: PathBuf,
    kind: Kind,
}

enum Kind {
    Safetensors {
        files: WeightFiles,
        maps: Vec<memmap2::Mmap>,
    },
    /// `names`: HF name -> GGUF name, checked against the file's directory at open.
    Gguf {
        content: Content,
        file: std::fs::File,
        names: HashMap<String, String>,
    },
}

impl TensorReader {
    /// Opens the source and checks that every tensor its config implies is there with the
    /// right shape, before any data is read.
    pub fn open(source: &ModelSource, hub_opts: &HubOptions) -> Result<Self, LoadError> {
        match source {
            ModelSource::HfDir(dir) => Self::open_hf_dir(dir),
            ModelSource::Hub(id) => Self::open_hf_dir(&hub::resolve(id, hub_opts)?),
            ModelSource::Gguf(path) => {
                let (content, file) = gguf_source::read_content(path)?;
                let config = gguf_source::config_from_gguf(&content, path)?;
                let names = gguf_source::checked_names(&config, &content, path)?.into_iter().collect();
                Ok(TensorReader { config, resolved: path.clone(), kind: Kind::Gguf { content, file, names } })
            }
        }
    }

    fn open_hf_dir(dir: &Path) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(LoadError::Config { path: dir.to_path_buf(), msg: "no config.json in this folder".into() });
        }
        let config = ModelConfig::from_hf_file(&config_path)?;
        let files = WeightFiles::discover(dir)?;
        let mut maps = Vec::with_capacity(files.files.len());
        for path in &files.files {
            let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
            // SAFETY: read-only map of a checkpoint nobody writes while we read it.
            maps.push(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?);
        }
        let reader = TensorReader { config, resolved: dir.to_path_buf(), kind: Kind::Safetensors { files, maps } };
        for (name, shape) in reader.config.expected_tensors() {
            reader.with_view(&name, &shape, |_, _| Ok(()))?;
        }
        Ok(reader)
    }

    /// True for a Hugging Face folder (its config.json and tokenizer files can be copied).
    pub fn is_hf_dir(&self) -> bool {
        matches!(self.kind, Kind::Safetensors { .. })
    }

    /// The files holding the weights.
    pub fn weight_files(&self) -> Vec<PathBuf> {
        match &self.kind {
            Kind::Safetensors { files, .. } => files.files.clone(),
            Kind::Gguf { .. } => vec![self.resolved.clone()],
        }
    }

    /// The float dtype the checkpoint stores its embedding in; None for quantized GGUF
    /// blocks, which have no float dtype of their own.
    pub fn stored_dtype(&self) -> Option<DType> {
        let embed = "model.embed_tokens.weight";
        match &self.kind {
            Kind::Safetensors { .. } => {
                let shape = [self.config.vocab_size, self.config.hidden_size];
                let stored = self.with_view(embed, &shape, |view, _| Ok(view.dtype())).ok()?;
                match stored {
                    safetensors::Dtype::BF16 => Some(DType::BF16),
                    safetensors::Dtype::F16 => Some(DType::F16),
                    safetensors::Dtype::F32 => Some(DType::F32),
                    _ => None,
                }
            }
            Kind::Gguf { content, names, .. } => match content.tensor_infos[&names[embed]].ggml_dtype {
                GgmlDType::BF16 => Some(DType::BF16),
                GgmlDType::F16 => Some(DType::F16),
                GgmlDType::F32 => Some(DType::F32),
                _ => None,
            },
        }
    }

    /// The tensor `name` (HF naming) of shape `shape`, as f32 on the CPU.
    pub fn read_f32(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        match &mut self.kind {
            Kind::Gguf { content, file, names } => {
                let g = names.get(name).ok_or_else(|| LoadError::MissingTensor {
                    path: self.resolved.clone(),
                    tensor: name.to_string(),
                })?;
                gguf_source::read_tensor_f32(&self.config, content, file, &self.resolved, name, g)
            }
            Kind::Safetensors { .. } => self.with_view(name, shape, |view, path| {
                let terr = |e: candle_core::Error| LoadError::Tensor {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    msg: e.to_string(),
                };
                view.load(&Device::Cpu).map_err(terr)?.to_dtype(DType::F32).map_err(terr)
            }),
        }
    }

    /// Runs `f` on the checked view of `name` and the path of the file holding it.
    fn with_view<T>(
        &self,
        name: &str,
        shape: &[usize],
        f: impl FnOnce(&safetensors::tensor::TensorView<'_>, &Path) -> Result<T, LoadError>,
    ) -> Result<T, LoadError> {
        let Kind::Safetensors { files, maps } = &self.kind else { unreachable!("safetensors only") };
        let i = files.file_of(name)?;
        let path = &files.files[i];
        let st = safetensors::SafeTensors::deserialize(&maps[i])
            .map_err(|e| LoadError::Safetensors { path: path.clone(), msg: e.to_string() })?;
        f(&checked_view(&st, path, name, shape)?, path)
    }
}
