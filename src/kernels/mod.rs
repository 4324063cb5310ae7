//! Kernels: the fused loops and GPU kernels that the model, the training step and the
//! optimizer call, and their launchers. The layer below `model`, `lora` and `train`; it
//! imports none of them.
//!
//! - `cpu.rs`: fused CPU loops (f32) where candle's op-by-op path is slow;
//! - `cuda.rs` (feature `cuda`): launchers of the kernels in `cuda/*.cu`, one op per
//!   file, compiled to PTX by build.rs; without the feature, `cuda_stub.rs` gives the
//!   same functions as errors so that callers' CUDA branches type-check.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub mod cuda;

/// B rows of T tokens, NH query heads and NKV kv heads of dim D.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub d: usize,
}
