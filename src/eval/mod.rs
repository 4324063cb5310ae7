//! Evaluation: how good a model (with or without an adapter) is on held-out data.
//!
//! - `loss.rs`: mean target-token loss and perplexity over a data set (what training tracks);
//! - `text_metrics.rs`: generated text scored against a reference answer (exact match,
//!   token F1, ROUGE-L, JSON validity).

mod loss;
pub mod text_metrics;

pub use loss::{batch_nll, evaluate, Batch, LossSummary};
