//! The frozen-base LoRA training step: the math of one optimizer step, nothing around it.
//!
//! - `ops.rs`: forward/backward pairs of each decoder operation, with their shapes;
//! - `step.rs`: a micro-batch's saved activations and its forward + backward, producing
//!   the LoRA gradients (`step_tests.rs` checks it against candle autograd on the
//!   reference forward of `model::llama`);
//! - `optimizer.rs`: AdamW in torch's order of operations and global-norm clipping;
//! - `schedule.rs`: warmup then cosine/linear/constant learning-rate decay.
//!
//! The job around the step (data, checkpoints, eval, the run folder) is [`crate::run`];
//! the fused kernels the ops call are [`crate::kernels`].

mod mlp;
pub mod ops;
pub mod optimizer;
pub mod schedule;
pub mod step;
#[cfg(test)]
mod step_tests;
