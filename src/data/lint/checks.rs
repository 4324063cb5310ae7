//! Checks of one example on its own (empty answers, turn order, token length) and the
//! length statistics.
//!
//! Turn order: the data reader accepts any sequence of system, user and assistant turns
//! with at least one assistant turn, and the chat template renders whatever it is given.
//! What the lint adds:
//! - error: a system turn after the first turn. Most chat templates only place a leading
//!   system prompt (Llama 2's raises an exception; others render it mid-conversation as
//!   if it were a turn), so the model would see something other than intended.
//! - warning: the conversation starts with an assistant turn (after an optional system
//!   turn), two user or two assistant turns follow each other, or the conversation ends
//!   with a user turn (that turn is never trained on). Templates render these, and some
//!   data sets use them deliberately.

use serde::{Deserialize, Serialize};

use crate::chat::Role;
use crate::data::Record;
use crate::encode;
use crate::tokenizer::Tokenizer;

/// Turn indices (0-based) whose answer is empty or whitespace only: assistant turns, a
/// completion (index 1), or a text record (index 0).
pub fn empty_answers(record: &Record) -> Vec<usize> {
    match record {
        Record::Conversation(messages) => messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == Role::Assistant && m.content.trim().is_empty())
            .map(|(i, _)| i)
            .collect(),
        Record::PromptCompletion { completion, .. } if completion.trim().is_empty() => vec![1],
        Record::Text(text) if text.trim().is_empty() => vec![0],
        _ => Vec::new(),
    }
}

/// What is odd about the order of a conversation's turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOrderProblem {
    SystemNotFirst,
    AssistantFirst,
    ConsecutiveUser,
    ConsecutiveAssistant,
    EndsWithUser,
}

impl TurnOrderProblem {
    /// Whether the problem is an error without `--strict`.
    pub fn is_error(self) -> bool {
        self == TurnOrderProblem::SystemNotFirst
    }

    pub fn describe(self) -> &'static str {
        match self {
            TurnOrderProblem::SystemNotFirst => "a system turn that is not the first turn",
            TurnOrderProblem::AssistantFirst => "the conversation starts with an assistant turn",
            TurnOrderProblem::ConsecutiveUser => "two user turns in a row",
            TurnOrderProblem::ConsecutiveAssistant => "two assistant turns in a row",
            TurnOrderProblem::EndsWithUser => "the conversation ends with a user turn, which is never trained on",
        }
    }
}

/// (turn index, problem) pairs, in turn order. The turn is the one that is out of place.
pub fn turn_order(record: &Record) -> Vec<(usize, TurnOrderProblem)> {
    let Record::Conversation(messages) = record else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut previous: Option<Role> = None;
    for (i, m) in messages.iter().enumerate() {
        match (previous, m.role) {
            (Some(_), Role::System) => out.push((i, TurnOrderProblem::SystemNotFirst)),
            (None | Some(Role::System), Role::Assistant) => out.push((i, TurnOrderProblem::AssistantFirst)),
            (Some(Role::User), Role::User) => out.push((i, TurnOrderProblem::ConsecutiveUser)),
            (Some(Role::Assistant), Role::Assistant) => out.push((i, TurnOrderProblem::ConsecutiveAssistant)),
            _ => {}
        }
        previous = Some(m.role);
    }
    if previous == Some(Role::User) {
        out.push((messages.len() - 1, TurnOrderProblem::EndsWithUser));
    }
    out
}

/// Turns of a conversation; `None` for other records.
pub fn turns(record: &Record) -> Option<usize> {
    record.messages().map(<[_]>::len)
}

/// Characters of all the example's text.
pub fn chars(record: &Record) -> usize {
    super::normalize::segments(record).iter().map(|(_, t)| t.chars().count()).sum()
}

/// An example's length in tokens as training encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    /// Tokens of the whole example, before truncation.
    pub tokens: usize,
    /// Target tokens of the whole example.
    pub targets: usize,
    /// Target tokens left after truncation to `max_seq_len`.
    pub targets_kept: usize,
}

/// Encodes `record` exactly as training does (`crate::encode::encode`), without cutting it,
/// and counts what truncation to `max_seq_len` would keep.
pub fn count_tokens(tok: &Tokenizer, record: &Record, max_seq_len: usize) -> Result<TokenCount, encode::EncodeError> {
    let e = encode::encode(tok, record, usize::MAX)?;
    let kept = e.len().min(max_seq_len);
    Ok(TokenCount {
        tokens: e.len(),
        targets: e.num_targets(),
        targets_kept: e.target_mask[..kept].iter().map(|&m| m as usize).sum(),
    })
}

/// min / mean / p50 / p95 / max of a list of counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub min: usize,
    pub mean: f64,
    pub p50: usize,
    pub p95: usize,
    pub max: usize,
}

impl Distribution {
    /// `None` for no values. Percentiles are nearest-rank: the smallest value with at
    /// least p% of the values at or below it.
    pub fn of(values: &[usize]) -> Option<Distribution> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_unstable();
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Distribution {
            min: v[0],
            mean: v.iter().sum::<usize>() as f64 / v.len() as f64,
            p50: rank(50.0),
            p95: rank(95.0),
            max: v[v.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Message;

    fn conv(roles: &[(Role, &str)]) -> Record {
        Record::Conversation(roles.iter().map(|(r, t)| Message::new(*r, *t)).collect())
    }

    #[test]
    fn empty_answers_are_found_per_turn() {
        let r = conv(&[
            (Role::User, "q"),
            (Role::Assistant, " \n\t"),
            (Role::User, ""),
            (Role::Assistant, "ok"),
            (Role::Assistant, ""),
        ]);
        assert_eq!(empty_answers(&r), vec![1, 4]);
        assert_eq!(empty_answers(&Record::PromptCompletion { prompt: "p".into(), completion: "  ".into() }), vec![1]);
        assert!(empty_answers(&Record::PromptCompletion { prompt: "".into(), completion: "c".into() }).is_empty());
        assert_eq!(empty_answers(&Record::Text("\n".into())), vec![0]);
        assert!(empty_answers(&Record::Text("t".into())).is_empty());
    }

    #[test]
    fn turn_order_problems() {
        use TurnOrderProblem::*;
        let ok = conv(&[
            (Role::System, "s"),
            (Role::User, "u"),
            (Role::Assistant, "a"),
            (Role::User, "u"),
            (Role::Assistant, "a"),
        ]);
        assert!(turn_order(&ok).is_empty());
        assert_eq!(turn_order(&conv(&[(Role::Assistant, "a")])), vec![(0, AssistantFirst)]);
        assert_eq!(turn_order(&conv(&[(Role::System, "s"), (Role::Assistant, "a")])), vec![(1, AssistantFirst)]);
        assert_eq!(
            turn_order(&conv(&[
                (Role::User, "u"),
                (Role::User, "u"),
                (Role::Assistant, "a"),
                (Role::Assistant, "a"),
                (Role::System, "s"),
                (Role::User, "u")
            ])),
            vec![(1, ConsecutiveUser), (3, ConsecutiveAssistant), (4, SystemNotFirst), (5, EndsWithUser)]
        );
        assert!(SystemNotFirst.is_error() && !ConsecutiveUser.is_error() && !AssistantFirst.is_error());
        assert!(turn_order(&Record::Text("t".into())).is_empty());
    }

    #[test]
    fn distribution_uses_nearest_rank() {
        let v: Vec<usize> = (1..=20).collect();
        let d = Distribution::of(&v).unwrap();
        assert_eq!((d.min, d.p50, d.p95, d.max), (1, 10, 19, 20));
        assert_eq!(d.mean, 10.5);
        let d = Distribution::of(&[7]).unwrap();
        assert_eq!((d.min, d.p50, d.p95, d.max, d.mean), (7, 7, 7, 7, 7.0));
        assert_eq!(Distribution::of(&[]), None);
        let d = Distribution::of(&[5, 1, 3]).unwrap();
        assert_eq!((d.min, d.p50, d.max), (1, 3, 5));
    }

    #[test]
    fn token_counts_match_training_encoding() {
        let tok = crate::tokenizer::tiny_chat_tokenizer().unwrap();
        let r = conv(&[(Role::User, "hello there"), (Role::Assistant, "a fairly long answer")]);
        let full = encode::encode(&tok, &r, usize::MAX).unwrap();
        let c = count_tokens(&tok, &r, 10).unwrap();
        assert_eq!(c.tokens, full.len());
        assert_eq!(c.targets, full.num_targets());
        let cut = encode::encode(&tok, &r, 10).unwrap();
        assert!(cut.truncated);
        assert_eq!(c.targets_kept, cut.num_targets());
        let c = count_tokens(&tok, &r, 10_000).unwrap();
        assert_eq!(c.targets_kept, c.targets);
    }
}
