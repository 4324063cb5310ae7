//! Greedy answers of a model (optionally with an adapter) to held-out prompts, scored
//! against their reference answers: the generation eval of a training run (base and tuned
//! side by side in samples.jsonl) and of `loratune compare`.

use serde::{Deserialize, Serialize};

use super::text_metrics::{self, TextScores};
use crate::chat::{Message, Role};
use crate::data::{Example, PromptRecord, Record};
use crate::generate::{GenerateOptions, Generator, SamplingParams, StopReason};

/// One prompt to answer, from an eval record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalPrompt {
    /// 1-based line in the source file.
    pub line: usize,
    /// Ends with a user turn (for a prompt/completion record: one user turn with the prompt).
    pub messages: Vec<Message>,
    /// Prompt/completion records were trained without the chat template: fed as raw text.
    pub raw: bool,
    pub reference: Option<String>,
}

impl EvalPrompt {
    /// The last user turn: what a reader needs to judge the answer.
    pub fn prompt_text(&self) -> &str {
        self.messages.last().map_or("", |m| m.content.as_str())
    }

    pub fn from_prompt_record(line: usize, p: PromptRecord) -> Self {
        EvalPrompt { line, messages: p.messages, raw: false, reference: p.reference }
    }
}

/// Prompts of the first `limit` records that have an answer to compare with: a
/// conversation up to its last assistant turn (that turn is the reference), or a
/// prompt/completion pair. Plain-text records have no prompt and are passed over.
pub fn eval_prompts(examples: &[Example], limit: usize) -> Vec<EvalPrompt> {
    let prompt = |e: &Example| match &e.record {
        Record::Conversation(m) => {
            let last = m.iter().rposition(|t| t.role == Role::Assistant)?;
            // A reply needs something to reply to: the turn before it must be the user's.
            (last > 0 && m[last - 1].role == Role::User).then(|| EvalPrompt {
                line: e.line,
                messages: m[..last].to_vec(),
                raw: false,
                reference: Some(m[last].content.clone()),
            })
        }
        Record::PromptCompletion { prompt, completion } => Some(EvalPrompt {
            line: e.line,
            messages: vec![Message::new(Role::User, prompt.clone())],
            raw: true,
            reference: Some(completion.clone()),
        }),
        Record::Text(_) => None,
    };
    examples.iter().filter_map(prompt).take(limit).collect()
}

/// One generated answer (SamplingParams' default is greedy).
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub text: String,
    pub tokens: usize,
    pub stop: StopReason,
    pub seconds: f64,
    /// Against the prompt's reference, when it has one.
    pub scores: Option<TextScores>,
}

/// Mean scores of a set of answers (over those with a reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationScores {
    /// Answers that were scored.
    pub examples: usize,
    #[serde(flatten)]
    pub mean: TextScores,
}

impl GenerationScores {
    pub fn of(answers: &[Answer]) -> Option<Self> {
        let scored: Vec<TextScores> = answers.iter().filter_map(|a| a.scores).collect();
        (!scored.is_empty()).then(|| GenerationScores { examples: scored.len(), mean: text_metrics::mean(&scored) })
    }
}

/// Greedy answers (temperature 0: deterministic) to every prompt, stopping at EOS/end of
/// turn or after `max_new_tokens`. `on_answer(done, total)` reports progress.
pub fn answer_prompts(
    gen: &Generator,
    prompts: &[EvalPrompt],
    max_new_tokens: usize,
    mut on_answer: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<Answer>> {
    let opts = GenerateOptions { max_new_tokens, sampling: SamplingParams::default(), ignore_eos: false };
    let mut answers = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let ids = gen.prompt_ids(&p.messages, p.raw).map_err(|e| anyhow::anyhow!("line {}: {e}", p.line))?;
        let g = gen.generate(&ids, &opts, |_| {})?;
        let text = g.text.trim().to_string();
        let scores = p.reference.as_deref().map(|r| text_metrics::score(&text, r));
        answers.push(Answer {
            text,
            tokens: g.output_ids.len(),
            stop: g.stop,
            seconds: g.prefill_seconds + g.decode_seconds,
            scores,
        });
        on_answer(i + 1, prompts.len());
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(line: usize, record: Record) -> Example {
        Example { line, record }
    }

    #[test]
    fn prompts_end_before_the_last_assistant_turn() {
        let conv = vec![
            Message::new(Role::System, "s"),
            Message::new(Role::User, "u1"),
            Message::new(Role::Assistant, "a1"),
            Message::new(Role::User, "u2"),
            Message::new(Role::Assistant, "a2"),
        ];
        let examples = vec![
            ex(1, Record::Text("plain".into())),
            ex(2, Record::Conversation(conv.clone())),
            ex(3, Record::PromptCompletion { prompt: "p".into(), completion: "c".into() }),
            ex(4, Record::Conversation(vec![Message::new(Role::Assistant, "no question")])),
        ];
        let p = eval_prompts(&examples, 10);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].line, p[0].messages.as_slice(), p[0].reference.as_deref(), p[0].raw),
            (2, &conv[..4], Some("a2"), false)
        );
        assert_eq!((p[1].line, p[1].prompt_text(), p[1].reference.as_deref(), p[1].raw), (3, "p", Some("c"), true));
        assert_eq!(eval_prompts(&examples, 1).len(), 1);
    }
}
