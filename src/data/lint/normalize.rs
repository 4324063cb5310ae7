//! What "the same example" means for the lint: the text of an example as compared for
//! exact duplicates, near duplicates and conflicts.
//!
//! - The whole example is compared: every turn (system, user and assistant) with its role,
//!   or prompt and completion, or the text.
//! - Exact duplicates: each turn's text case-folded, with runs of whitespace collapsed to
//!   one space and the ends trimmed; punctuation counts. Two examples are exact duplicates
//!   when these strings, with the roles, are equal.
//! - Near duplicates: the words of the same turns (see `minhash.rs`: case-folded
//!   alphanumeric runs, punctuation ignored), role names included as words.
//! - Conflicts: the prompt is everything before the last assistant turn (or the prompt of
//!   a prompt/completion pair), normalised as for exact duplicates; the answer is that last
//!   turn (or the completion). Plain text records have no prompt and never conflict.

use crate::data::Record;

/// The labelled parts of an example, in order: (role or field name, text).
pub fn segments(record: &Record) -> Vec<(&'static str, &str)> {
    match record {
        Record::Conversation(messages) => messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect(),
        Record::PromptCompletion { prompt, completion } => vec![("prompt", prompt), ("completion", completion)],
        Record::Text(text) => vec![("text", text)],
    }
}

/// Case-folded, whitespace collapsed, trimmed.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// The string two exact duplicates share.
pub fn exact_key(record: &Record) -> String {
    join(&segments(record))
}

/// `role \x1f folded-text \x1e` per segment: separators that cannot come out of `fold`
/// as written by people, so turn boundaries stay visible.
fn join(segments: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (label, text) in segments {
        out.push_str(label);
        out.push('\u{1f}');
        out.push_str(&fold(text));
        out.push('\u{1e}');
    }
    out
}

/// (prompt key, answer key) for the conflict check; `None` for text records and for
/// conversations without an assistant turn.
pub fn prompt_and_answer(record: &Record) -> Option<(String, String)> {
    match record {
        Record::Conversation(messages) => {
            let last = messages.iter().rposition(|m| m.role == crate::chat::Role::Assistant)?;
            let prompt: Vec<(&str, &str)> =
                messages[..last].iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
            Some((join(&prompt), fold(&messages[last].content)))
        }
        Record::PromptCompletion { prompt, completion } => Some((fold(prompt), fold(completion))),
        Record::Text(_) => None,
    }
}

/// The words of the example for near-duplicate shingles: role names, then turn text.
pub fn word_segments(record: &Record) -> Vec<&str> {
    segments(record).into_iter().flat_map(|(label, text)| [label, text]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Message, Role};

    fn conv(turns: &[(Role, &str)]) -> Record {
        Record::Conversation(turns.iter().map(|(r, t)| Message::new(*r, *t)).collect())
    }

    #[test]
    fn fold_ignores_case_and_spacing_but_not_punctuation() {
        assert_eq!(fold("  Hello\t\tWORLD \n"), "hello world");
        assert_eq!(fold("Hello, world"), "hello, world");
        assert_ne!(fold("Hello, world"), fold("Hello world"));
        assert_eq!(fold(" \n "), "");
    }

    #[test]
    fn exact_keys_compare_whole_examples_with_roles() {
        let a = conv(&[(Role::System, "Be brief"), (Role::User, "Hi  there"), (Role::Assistant, "Hello")]);
        let b = conv(&[(Role::System, "be BRIEF"), (Role::User, "hi there "), (Role::Assistant, "hello")]);
        assert_eq!(exact_key(&a), exact_key(&b));
        // Same text, different system prompt: not a duplicate.
        let c = conv(&[(Role::System, "Be long"), (Role::User, "Hi there"), (Role::Assistant, "Hello")]);
        assert_ne!(exact_key(&a), exact_key(&c));
        // Same words moved across a turn boundary or role: not a duplicate.
        let d = conv(&[(Role::User, "Hi"), (Role::Assistant, "there Hello")]);
        let e = conv(&[(Role::User, "Hi there"), (Role::Assistant, "Hello")]);
        assert_ne!(exact_key(&d), exact_key(&e));
        let f = conv(&[(Role::Assistant, "Hi there"), (Role::Assistant, "Hello")]);
        assert_ne!(exact_key(&e), exact_key(&f));
        assert_ne!(
            exact_key(&Record::Text("x".into())),
            exact_key(&Record::PromptCompletion { prompt: "x".into(), completion: String::new() })
        );
    }

    #[test]
    fn prompt_is_everything_before_the_last_assistant_turn() {
        let a = conv(&[(Role::User, "Q1"), (Role::Assistant, "A1"), (Role::User, "Q2"), (Role::Assistant, "A2")]);
        let b = conv(&[(Role::User, "q1"), (Role::Assistant, "a1"), (Role::User, "q2"), (Role::Assistant, "Other")]);
        let (pa, aa) = prompt_and_answer(&a).unwrap();
        let (pb, ab) = prompt_and_answer(&b).unwrap();
        assert_eq!(pa, pb);
        assert_eq!(aa, "a2");
        assert_eq!(ab, "other");
        // An earlier turn that differs makes a different prompt.
        let c = conv(&[(Role::User, "Q1"), (Role::Assistant, "changed"), (Role::User, "Q2"), (Role::Assistant, "A2")]);
        assert_ne!(prompt_and_answer(&c).unwrap().0, pa);
        assert_eq!(prompt_and_answer(&Record::Text("t".into())), None);
        assert_eq!(
            prompt_and_answer(&Record::PromptCompletion { prompt: "P ".into(), completion: " C".into() }),
            Some(("p".into(), "c".into()))
        );
    }

    #[test]
    fn word_segments_carry_role_names() {
        let a = conv(&[(Role::User, "Hi"), (Role::Assistant, "Yo")]);
        assert_eq!(word_segments(&a), vec!["user", "Hi", "assistant", "Yo"]);
    }
}
