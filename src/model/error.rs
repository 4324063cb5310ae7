//! Errors from finding and loading a checkpoint. Every variant names the file (and the
//! tensor or key where there is one) so the user can go straight to the problem.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    #[error("{}: not a valid safetensors file ({msg}); the file may be truncated or corrupt", path.display())]
    Safetensors { path: PathBuf, msg: String },

    #[error("{}: shard \"{shard}\" listed in the index is missing", index.display())]
    MissingShard { index: PathBuf, shard: String },

    #[error("{}: tensor \"{tensor}\" is missing", path.display())]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{}: tensor \"{tensor}\" has shape {found:?} but config.json implies {expected:?}", path.display())]
    ShapeMismatch { path: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{}: tensor \"{tensor}\": {msg}", path.display())]
    Tensor { path: PathBuf, tensor: String, msg: String },

    #[error("{}: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },

    #[error("{0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),

    #[error("model \"{id}\": {msg}")]
    Hub { id: String, msg: String },

    #[error("model \"{0}\": no such file or folder, and not a Hugging Face hub id (expected org/name)")]
    NotFound(String),

    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

impl LoadError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LoadError::Io { path: path.to_path_buf(), source }
    }
}
