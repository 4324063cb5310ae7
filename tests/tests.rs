//! The integration tests as one test binary (as ripgrep's tests/tests.rs): one module per
//! area, each in tests/AREA.rs, sharing tests/common. One binary links the library once
//! instead of once per area, and its tests share the test threads.
//!
//! Its tests run in parallel threads of one process, so none may change what the process
//! shares: no `std::env::set_var`, no `set_current_dir`, no signal handler. A test passes
//! environment and working folder to the `loratune` processes it starts, never to itself.
//!
//! Two test targets are kept apart (see Cargo.toml): tests/cuda_kernels.rs (feature `cuda`,
//! run on the GPU machine) and tests/learn_smollm2.rs (trains the real model for minutes).
//!
//! One area: `cargo test --test tests train_run::`.

mod common;

mod bad_input;
mod base_vs_tuned;
mod cli_bench;
mod cli_eval;
mod data_lint;
mod distributed;
mod generate;
mod merge;
mod peft_adapters;
mod peft_gradients;
mod qlora;
mod reference;
mod report;
mod sources;
mod text_metrics;
mod train_run;
