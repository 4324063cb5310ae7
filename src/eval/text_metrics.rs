//! A generated answer scored against the reference answer, with the definitions people
//! compare against elsewhere:
//!
//! - exact match and token F1 as SQuAD v1.1's evaluation defines them (lower case, ASCII
//!   punctuation and the articles a/an/the removed, whitespace collapsed; F1 over the bag
//!   of remaining words), with SQuAD v2's rule for empty answers (both empty: 1, one: 0);
//! - ROUGE-L as Google's `rouge-score` package computes it without stemming (lower case,
//!   every run of characters other than a-z and 0-9 a separator; longest common
//!   subsequence of tokens; F-measure of its precision and recall);
//! - JSON validity, only when the reference is a JSON object or array: whether the answer
//!   parses as JSON (a surrounding Markdown code fence is removed first, as models add one).
//!
//! tests/text_metrics.rs checks all of them against scripts/reference/make_text_metrics_fixture.py.

use serde::{Deserialize, Serialize};

/// The scores of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TextScores {
    pub exact_match: f64,
    pub token_f1: f64,
    pub rouge_l: f64,
    /// `None` when the reference is not JSON.
    pub json_valid: Option<f64>,
}

pub fn score(prediction: &str, reference: &str) -> TextScores {
    TextScores {
        exact_match: exact_match(prediction, reference),
        token_f1: token_f1(prediction, reference),
        rouge_l: rouge_l(prediction, reference).f,
        json_valid: json_valid(prediction, reference).map(|v| v as u8 as f64),
    }
}

/// Mean of each score over `scores`; `json_valid` over the answers whose reference is JSON
/// (`None` when there is none). All NaN for no scores.
pub fn mean(scores: &[TextScores]) -> TextScores {
    let n = scores.len() as f64;
    let avg = |f: fn(&TextScores) -> f64| scores.iter().map(f).sum::<f64>() / n;
    let json: Vec<f64> = scores.iter().filter_map(|s| s.json_valid).collect();
    TextScores {
        exact_match: avg(|s| s.exact_match),
        token_f1: avg(|s| s.token_f1),
        rouge_l: avg(|s| s.rouge_l),
        json_valid: (!json.is_empty()).then(|| json.iter().sum::<f64>() / json.len() as f64),
    }
}

/// SQuAD's normalisation: lower case, ASCII punctuation dropped, the words a/an/the
/// dropped, words separated by single spaces (returned as the words).
fn squad_words(text: &str) -> Vec<String> {
    let lower: String = text.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    lower.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).map(str::to_owned).collect()
}

/// 1.0 when the normalised texts are equal, else 0.0.
pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    (squad_words(prediction) == squad_words(reference)) as u8 as f64
}

/// Harmonic mean of word precision and recall, words counted with multiplicity.
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (squad_words(prediction), squad_words(reference));
    if p.is_empty() || r.is_empty() {
        return (p.is_empty() && r.is_empty()) as u8 as f64;
    }
    let mut counts = std::collections::HashMap::new();
    for w in &r {
        *counts.entry(w.as_str()).or_insert(0usize) += 1;
    }
    let mut same = 0usize;
    for w in &p {
        if let Some(c) = counts.get_mut(w.as_str()).filter(|c| **c > 0) {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let (precision, recall) = (same as f64 / p.len() as f64, same as f64 / r.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// rouge-score's default tokens: lower case, split at every character outside a-z0-9.
fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prf {
    pub p: f64,
    pub r: f64,
    pub f: f64,
}

/// ROUGE-L: the longest common subsequence of tokens, as precision (over the prediction),
/// recall (over the reference) and their F-measure.
pub fn rouge_l(prediction: &str, reference: &str) -> Prf {
    let (p, r) = (rouge_tokens(prediction), rouge_tokens(reference));
    if p.is_empty() || r.is_empty() {
        return Prf { p: 0.0, r: 0.0, f: 0.0 };
    }
    let lcs = lcs_len(&p, &r) as f64;
    let (precision, recall) = (lcs / p.len() as f64, lcs / r.len() as f64);
    let f = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    Prf { p: precision, r: recall, f }
}

/// Length of the longest common subsequence, one row of the table at a time.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            row[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(row[j]) };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

/// Whether `prediction` parses as JSON, when `reference` is a JSON object or array; `None`
/// otherwise (a reference like `42` or `"yes"` is plain text that happens to parse).
pub fn json_valid(prediction: &str, reference: &str) -> Option<bool> {
    let is_structure = |s: &str| {
        matches!(
            serde_json::from_str::<serde_json::Value>(s.trim()),
            Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_))
        )
    };
    if !is_structure(reference) {
        return None;
    }
    Some(serde_json::from_str::<serde_json::Value>(strip_code_fence(prediction)).is_ok())
}

/// "```json\n{...}\n```" -> "{...}"; anything else trimmed.
fn strip_code_fence(text: &str) -> &str {
    let t = text.trim();
    let Some(inner) = t.strip_prefix("```").and_then(|s| s.strip_suffix("```")) else { return t };
    // The fence's info string (e.g. `json`) runs to the first newline.
    inner.split_once('\n').map_or(inner, |(_, body)| body).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_of_small_sequences() {
        let w = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(lcs_len(&w("a b c d"), &w("b d")), 2);
        assert_eq!(lcs_len(&w("a b c"), &w("c b a")), 1);
        assert_eq!(lcs_len(&w("x y"), &w("z")), 0);
    }

    #[test]
    fn code_fences_are_removed_before_parsing() {
        assert_eq!(strip_code_fence("```json\n{\"a\": 1}\n```"), "{\"a\": 1}");
        assert_eq!(strip_code_fence(" {\"a\": 1} "), "{\"a\": 1}");
        assert_eq!(json_valid("```\n[1, 2]\n```", "[3]"), Some(true));
        assert_eq!(json_valid("{\"a\": ", "{}"), Some(false));
        assert_eq!(json_valid("{}", "42"), None);
    }

    #[test]
    fn mean_counts_json_only_where_the_reference_is_json() {
        let s = [score("{\"a\": 1}", "{\"a\": 1}"), score("x", "y"), score("{\"b\": 2", "[3]")];
        let m = mean(&s);
        assert_eq!(m.json_valid, Some(0.5));
        assert!((m.exact_match - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(mean(&[score("a", "b")]).json_valid, None);
    }
}
