//! Base models: configs, checkpoint sources and the Llama-family decoder.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod gguf_source;
pub mod hub;
pub mod llama;
pub mod safetensors_source;

pub use checkpoint::{load, LoadOptions, LoadedModel, ModelIdentity, ModelSource};
pub use config::{Architecture, ModelConfig};
pub use error::LoadError;
pub use llama::Llama;
pub mod init;
