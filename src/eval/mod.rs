//! Evaluation: how good a model (with or without an adapter) is on held-out data.
//!
//! - `loss.rs`: mean target-token loss and perplexity over a data set (what training tracks);
//! - `text_metrics.rs`: generated text scored against a reference answer (exact match,
//!   token F1, ROUGE-L, JSON validity);
//! - `generation.rs`: greedy answers of a model to held-out prompts, scored, for the
//!   base-vs-tuned samples of a run and for `loratune compare`;
//! - `compare.rs`: two models or adapters on the same prompts, side by side.

pub mod compare;
mod generation;
mod loss;
pub mod text_metrics;

pub use generation::{answer_prompts, eval_prompts, Answer, EvalPrompt, GenerationScores};
pub use loss::{batch_nll, evaluate, Batch, LossSummary};
