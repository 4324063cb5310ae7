//! loratune: LoRA fine-tuning on candle.
//!
//! The library is organised by domain noun:
//! - [`atomic`]: temp-file-then-rename writes for everything loratune saves;
//! - [`chat`]: roles and messages shared by data, templates and generation;
//! - [`data`]: JSONL instruction sets, format detection, validation;
//! - [`tokenizer`]: tokenizers (tokenizer.json or rebuilt from GGUF) and chat templates;
//! - [`model`]: model configs, checkpoint sources (HF folder, hub cache, GGUF), the Llama-family decoder;
//! - [`encode`]: records -> token ids and loss masks;
//! - [`config`]: the training run's TOML configuration, validated at the edge;
//! - [`eval`]: mean target-token loss and perplexity over a data set;
//! - [`lora`]: adapters (A/B matrices), their init and PEFT's file format;
//! - [`generate`]: text generation with a KV cache and an optional unmerged adapter;
//! - [`merge`]: adapters folded into the base, written as a full Hugging Face checkpoint;
//! - [`train`]: the frozen-base training step and the run around it;
//! - [`report`]: a run folder's report (report.html, report.md) with loss plots;
//! - [`gpu`]: opening a CUDA device for training and reading its peak memory;
//! - [`cli`]: the `loratune` command line (kept thin; `main.rs` only calls it).

pub mod atomic;
pub mod chat;
pub mod cli;
pub mod config;
pub mod data;
pub mod distributed;
pub mod encode;
pub mod eval;
pub mod generate;
pub mod gpu;
pub mod lora;
pub mod merge;
pub mod model;
pub mod report;
pub mod tokenizer;
pub mod train;
