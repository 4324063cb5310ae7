//! Base models: configs, checkpoint sources and the Llama-family decoder.

pub mod checkpoint;
pub mod config;
pub mod dtype;
pub mod error;
pub mod gguf_source;
#[cfg(feature = "cuda")]
pub mod gpu_upload;
pub mod hub;
pub mod llama;
pub mod quantized;
pub mod safetensors_source;
pub mod shard_writer;
pub mod tensor_reader;

pub use checkpoint::{load, LoadOptions, LoadedModel, ModelIdentity, ModelSource};
pub use config::{Architecture, ModelConfig};
pub use dtype::FloatDtype;
pub use error::LoadError;
pub use llama::Llama;
pub mod init;

/// A device as runs and reports name it: `cpu`, `cuda:N`, `metal:N`.
pub fn device_label(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
