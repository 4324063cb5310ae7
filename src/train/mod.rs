//! Training: the frozen-base LoRA step and the run around it.
//!
//! - `ops.rs`: forward/backward pairs of each decoder operation;
//! - `step.rs`: batches, saved activations, forward + backward of a micro-batch;
//! - `cpu_kernels.rs`: fused CPU loops where candle's op-by-op path is slow;
//! - `profile.rs`: per-operation timing of the step (`bench --profile`);
//! - `run.rs`: a training run from a config; `batches.rs`: its data, split, mix and order;
//! - `base_vs_tuned.rs`: the regression set and side-by-side samples of base and tuned.

pub mod base_vs_tuned;
pub mod batches;
pub mod bench;
pub mod checkpoint;
pub mod cpu_kernels;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
pub mod lint_gate;
pub mod ops;
pub mod optimizer;
pub mod profile;
pub mod report;
pub mod run;
pub mod schedule;
pub mod step;
#[cfg(test)]
mod step_tests;
