//! loratune: LoRA fine-tuning on candle.
//!
//! Modules by concept, in layers whose imports point one way:
//! `cli` → `run` → `train` → `model` / `lora` → `kernels`.
//!
//! - [`cli`]: the `loratune` command line (kept thin; `main.rs` only calls it);
//! - [`run`]: the training job as a recipe of named phases, the run folder's layout and
//!   its records (run.json, eval.json, metrics.jsonl, checkpoints);
//! - [`mod@bench`]: `loratune bench`, training throughput and memory of synthetic batches;
//! - [`train`]: the frozen-base training step (ops as forward/backward pairs, the step,
//!   AdamW, the learning-rate schedule);
//! - [`model`]: model configs, checkpoint sources (HF folder, hub cache, GGUF), the
//!   Llama-family decoder whose forward is the reference the step and generation are
//!   checked against;
//! - [`lora`]: adapters (A/B matrices), their init and PEFT's file format;
//! - [`kernels`]: fused CPU loops and CUDA kernels with their launchers;
//! - [`profile`]: per-region timing of the step (`bench --profile`);
//! - [`config`]: the training run's TOML configuration, validated at the edge;
//! - [`data`]: JSONL instruction sets, format detection, validation, lint and dedup;
//! - [`tokenizer`]: tokenizers (tokenizer.json or rebuilt from GGUF) and chat templates;
//! - [`encode`]: records -> token ids and loss masks;
//! - [`chat`]: roles and messages shared by data, templates and generation;
//! - [`eval`]: mean target-token loss, generation scores, `compare`;
//! - [`generate`]: text generation with a KV cache and an optional unmerged adapter;
//! - [`merge`]: adapters folded into the base, written as a full Hugging Face checkpoint;
//! - [`report`]: a run folder's report (report.html, report.md) with loss plots;
//! - [`markdown`]: Markdown escaping for report.md and compare.md;
//! - [`distributed`]: data-parallel process groups, their launcher and collectives;
//! - [`gpu`]: opening a CUDA device for training and reading its peak memory;
//! - [`atomic`]: temp-file-then-rename writes for everything loratune saves;
//! - [`digest`]: sha256 of the files a run depends on.

pub mod atomic;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod config;
pub mod data;
pub mod digest;
pub mod distributed;
pub mod encode;
pub mod eval;
pub mod generate;
pub mod gpu;
pub mod kernels;
pub mod lora;
pub mod markdown;
pub mod merge;
pub mod model;
pub mod profile;
pub mod report;
pub mod run;
pub mod tokenizer;
pub mod train;
