//! Text generation with a base model and, optionally, an unmerged adapter: the chat
//! template applied to the prompt, a KV cache, greedy or seeded sampling, stops at EOS or
//! the model's end-of-turn token, text streamed as it completes.
//!
//! - `cached_forward.rs`: the decoder forward over new tokens with cached keys/values;
//! - `sampler.rs`: greedy / temperature / top-k / top-p choice of the next token;
//! - `detokenize.rs`: token ids -> text, released only at complete characters.

pub mod cached_forward;
mod detokenize;
mod sampler;

use candle_core::Result;
use serde::Serialize;
use std::path::Path;

use crate::chat::{Message, Role};
use crate::lora::LoraWeights;
use crate::model::Llama;
use crate::tokenizer::{Tokenizer, TokenizerError};
pub use detokenize::TextStream;
pub use sampler::{argmax, Sampler, SamplingParams};

/// Tokens that end a chat turn in the common templates (ChatML, Llama 3, Gemma, Phi):
/// generation stops on them when the vocabulary has them, whatever the config's EOS says.
const END_OF_TURN_TOKENS: &[&str] =
    &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"];

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep going past stop tokens (benchmarks that need a fixed length).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    /// A stop token was generated (it is the last of `output_ids`).
    Eos,
    /// `max_new_tokens` (or the model's context) was reached.
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// New tokens, the stop token included when there was one.
    pub output_ids: Vec<u32>,
    /// The new tokens as text, special tokens left out.
    pub text: String,
    pub stop: StopReason,
    /// Prompt forward and the first new token.
    pub prefill_seconds: f64,
    /// Every later token.
    pub decode_seconds: f64,
}

impl Generation {
    /// Tokens per second after the first token (the steady-state decode rate).
    pub fn decode_tokens_per_second(&self) -> f64 {
        (self.output_ids.len().saturating_sub(1)) as f64 / self.decode_seconds.max(1e-9)
    }
}

pub struct Generator<'a> {
    pub model: &'a Llama,
    pub lora: Option<&'a LoraWeights>,
    pub tokenizer: &'a Tokenizer,
    /// Sorted, deduplicated.
    pub stop_ids: Vec<u32>,
}

impl<'a> Generator<'a> {
    /// Stops on the config's EOS ids, the tokenizer's EOS, known end-of-turn tokens and
    /// `extra_stop_ids` (e.g. generation_config.json's `eos_token_id`).
    pub fn new(
        model: &'a Llama,
        lora: Option<&'a LoraWeights>,
        tokenizer: &'a Tokenizer,
        extra_stop_ids: &[u32],
    ) -> Self {
        let mut stop_ids: Vec<u32> = model.config.eos_token_ids.clone();
        stop_ids.extend(tokenizer.eos_id);
        stop_ids.extend(END_OF_TURN_TOKENS.iter().filter_map(|t| tokenizer.token_to_id(t)));
        stop_ids.extend_from_slice(extra_stop_ids);
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Generator { model, lora, tokenizer, stop_ids }
    }

    /// Token ids of a conversation ending with a user turn, rendered with the chat template
    /// and an open assistant turn; with `raw`, the single user message's text as it is
    /// (special tokens such as BOS added as the tokenizer does).
    pub fn prompt_ids(&self, messages: &[Message], raw: bool) -> std::result::Result<Vec<u32>, TokenizerError> {
        if raw {
            let text: Vec<&str> =
                messages.iter().filter(|m| m.role != Role::System).map(|m| m.content.as_str()).collect();
            return self.tokenizer.encode(&text.join("\n"), true);
        }
        let text = self.tokenizer.render_chat(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    /// Generates after `prompt` (token ids), calling `on_text` with each piece of text as
    /// it completes.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let cfg = &self.model.config;
        if prompt.is_empty() {
            candle_core::bail!("the prompt has no tokens");
        }
        if prompt.len() >= cfg.max_position_embeddings {
            candle_core::bail!(
                "the prompt has {} tokens; the model's context is {}",
                prompt.len(),
                cfg.max_position_embeddings
            );
        }
        let budget = opts.max_new_tokens.min(cfg.max_position_embeddings - prompt.len());
        let mut cache = cached_forward::Cache::new(cfg, prompt.len() + budget);
        let mut sampler = Sampler::new(opts.sampling.clone());
        let mut stream = TextStream::new(self.tokenizer);
        let mut out = Vec::with_capacity(budget);
        let mut stop = StopReason::Length;
        let start = std::time::Instant::now();
        let mut first_token_at = None;
        let mut next_input: &[u32] = prompt;
        let mut last = [0u32];
        while out.len() < budget {
            let logits = cached_forward::forward(self.model, self.lora, next_input, &mut cache)?;
            let id = sampler.sample(&logits.to_vec1::<f32>()?);
            first_token_at.get_or_insert_with(|| start.elapsed());
            out.push(id);
            if !opts.ignore_eos && self.stop_ids.binary_search(&id).is_ok() {
                stop = StopReason::Eos;
                break;
            }
            on_text(&stream.push(id).map_err(candle_core::Error::wrap)?);
            last[0] = id;
            next_input = &last;
        }
        on_text(&stream.finish().map_err(candle_core::Error::wrap)?);
        let total = start.elapsed();
        let prefill = first_token_at.unwrap_or(total);
        Ok(Generation {
            prompt_tokens: prompt.len(),
            text: self.tokenizer.decode(&out, true).map_err(candle_core::Error::wrap)?,
            output_ids: out,
            stop,
            prefill_seconds: prefill.as_secs_f64(),
            decode_seconds: (total - prefill).as_secs_f64(),
        })
    }
}

/// The `eos_token_id` (a number or a list) of a Hugging Face folder's generation_config.json.
pub fn generation_config_stop_ids(dir: &Path) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else { return Vec::new() };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    match &json["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}
