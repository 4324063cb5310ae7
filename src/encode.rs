//! Turning records into token ids and a loss mask.
//!
//! The rules (the reference script in scripts/reference implements the same ones):
//! - text: the tokenizer's own encoding with its special tokens; every token is a target.
//! - chat: rendered through the model's chat template; targets are the tokens of each
//!   assistant turn, i.e. the text the template adds between "prompt for turn i" (messages
//!   before i, with the generation prompt) and "conversation up to turn i", up to and
//!   including the end-of-turn (EOS) token, but not the separator after it.
//! - prompt/completion: plain text, no template; targets are the completion and an EOS.
//!
//! Position 0 is never a target (nothing predicts the first token).

use crate::chat::{Message, Role};
use crate::data::Record;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    pub input_ids: Vec<u32>,
    /// 1 where the token at this position is predicted and counted in the loss.
    pub target_mask: Vec<u8>,
    /// True when the example was cut to `max_seq_len`.
    pub truncated: bool,
}

impl EncodedExample {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn num_targets(&self) -> usize {
        self.target_mask.iter().map(|&m| m as usize).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the model has no chat template, so conversations cannot be encoded (use text or prompt/completion data, or a model with a chat_template)")]
    NoChatTemplate,
    #[error("the model has no EOS token id; it is needed to end completions")]
    NoEos,
    #[error("the chat template does not render conversations prefix by prefix (turn {turn}), so the assistant tokens cannot be located")]
    NotPrefixStable { turn: usize },
    #[error("{0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

/// Encodes one record. `max_seq_len` truncates from the right.
pub fn encode(tok: &Tokenizer, record: &Record, max_seq_len: usize) -> Result<EncodedExample, EncodeError> {
    let (mut ids, mut mask) = match record {
        Record::Text(text) => {
            let ids = tok.encode(text, true)?;
            let mask = vec![1u8; ids.len()];
            (ids, mask)
        }
        Record::Conversation(messages) => encode_chat(tok, messages)?,
        Record::PromptCompletion { prompt, completion } => {
            let eos = tok.eos_id.ok_or(EncodeError::NoEos)?;
            let text = format!("{prompt}{completion}");
            let (mut ids, offsets) = tok.encode_with_offsets(&text, true)?;
            let mut mask: Vec<u8> = offsets.iter().map(|&(s, e)| u8::from(e > s && s >= prompt.len())).collect();
            ids.push(eos);
            mask.push(1);
            (ids, mask)
        }
    };
    if let Some(first) = mask.first_mut() {
        *first = 0;
    }
    let truncated = ids.len() > max_seq_len;
    ids.truncate(max_seq_len);
    mask.truncate(max_seq_len);
    Ok(EncodedExample { input_ids: ids, target_mask: mask, truncated })
}

fn encode_chat(tok: &Tokenizer, messages: &[Message]) -> Result<(Vec<u32>, Vec<u8>), EncodeError> {
    let template = tok.chat_template.as_ref().ok_or(EncodeError::NoChatTemplate)?;
    let full = template.render(messages, false)?;
    // Byte spans of assistant text in `full`.
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != Role::Assistant {
            continue;
        }
        let prompt = template.render(&messages[..i], true)?;
        let upto = template.render(&messages[..=i], false)?;
        if !upto.starts_with(&prompt) || !full.starts_with(&upto) {
            return Err(EncodeError::NotPrefixStable { turn: i });
        }
        spans.push((prompt.len(), upto.len()));
    }
    let (ids, offsets) = tok.encode_with_offsets(&full, false)?;
    let mut mask = vec![0u8; ids.len()];
    for &(start, end) in &spans {
        let inside: Vec<usize> = (0..ids.len())
            .filter(|&k| offsets[k].0 >= start && offsets[k].0 < end && offsets[k].1 > offsets[k].0)
            .collect();
        // Stop after the last end-of-turn token: what follows it (a newline) is template
        // glue that the model never has to produce.
        let last = match tok.eos_id.and_then(|eos| inside.iter().rposition(|&k| ids[k] == eos)) {
            Some(p) => p + 1,
            None => inside.len(),
        };
        for &k in &inside[..last] {
            mask[k] = 1;
        }
    }
    Ok((ids, mask))
}
