//! The lint report: its JSON schema (these types, serialized as they are) and the short
//! human summary.
//!
//! Every finding has a `severity` ("error" or "warning") and points at `file` and `line`
//! (1-based, as editors count), or at several such locations for clusters. Lists are in
//! file order. `summary` holds the counts; `errors` and `warnings` count findings (a
//! duplicate cluster is one finding, however many lines it has).

use serde::{Deserialize, Serialize};

use super::checks::{Distribution, TurnOrderProblem};

/// Bumped when a field changes meaning or goes away (adding fields does not bump it).
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// Train or eval: duplicates are looked for within each, leakage between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Train,
    Eval,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LintReport {
    pub version: u32,
    pub options: ReportOptions,
    pub files: Vec<FileReport>,
    pub summary: LintSummary,
    /// Lines that are not usable records (what `on_bad_record` skips or stops at).
    pub bad_records: Vec<Problem>,
    /// Files that could not be linted at all (no records, format not detectable).
    pub file_errors: Vec<Problem>,
    pub empty_answers: Vec<EmptyAnswer>,
    pub turn_order: Vec<TurnOrder>,
    pub exact_duplicates: Vec<DuplicateCluster>,
    pub near_duplicates: Vec<DuplicateCluster>,
    pub conflicts: Vec<Conflict>,
    pub leakage: Vec<Leakage>,
    /// Examples longer than `max_seq_len` tokens; only with a tokenizer.
    pub truncated: Vec<Truncated>,
    /// Examples the tokenizer's chat template could not encode; only with a tokenizer.
    pub unencodable: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportOptions {
    pub threshold: f64,
    pub shingle_words: usize,
    pub max_seq_len: usize,
    /// Whether token counts and truncation were checked (a tokenizer was given).
    pub tokens_checked: bool,
    pub strict: bool,
    pub bad_records: String,
    /// The LSH banding used for the threshold: bands x rows of a 128-hash signature.
    pub lsh_bands: usize,
    pub lsh_rows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReport {
    pub path: String,
    pub role: Role,
    /// `None` when the file could not be read as records at all.
    pub format: Option<String>,
    pub lines: usize,
    pub examples: usize,
    pub bad_records: usize,
    pub stats: Stats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Turns per conversation (conversations only).
    pub turns: Option<Distribution>,
    /// Characters of all the example's text.
    pub chars: Option<Distribution>,
    /// Tokens as training encodes the example, before truncation (with a tokenizer).
    pub tokens: Option<Distribution>,
}

/// The counts. `truncated`, `without_targets` and `unencodable` are `None` without a tokenizer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LintSummary {
    pub files: usize,
    pub examples: usize,
    pub bad_records: usize,
    pub file_errors: usize,
    pub empty_answers: usize,
    pub turn_order: usize,
    pub exact_duplicate_clusters: usize,
    /// Lines a dedup would remove as exact duplicates (every copy after the first).
    pub exact_duplicate_lines: usize,
    pub near_duplicate_clusters: usize,
    /// Lines a dedup would remove as near duplicates.
    pub near_duplicate_lines: usize,
    pub conflicts: usize,
    pub leakage_exact: usize,
    pub leakage_near: usize,
    pub truncated: Option<usize>,
    /// Truncated examples left with no target token at all (training drops them).
    pub without_targets: Option<usize>,
    pub unencodable: Option<usize>,
    pub errors: usize,
    pub warnings: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    pub severity: Severity,
    pub file: String,
    pub line: Option<usize>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmptyAnswer {
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    /// 0-based turn index (1 for a completion, 0 for a text record).
    pub turn: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnOrder {
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    /// 0-based index of the turn that is out of place.
    pub turn: usize,
    pub problem: TurnOrderProblem,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DuplicateCluster {
    pub severity: Severity,
    pub role: Role,
    /// Every member, in file order; the first is the one a dedup keeps.
    pub members: Vec<Location>,
    /// Exact Jaccard of the word shingles, over the verified pairs (1 for exact duplicates).
    pub jaccard_min: f64,
    pub jaccard_max: f64,
    /// Near duplicates: the verified pairs that joined the members into one cluster.
    pub pairs: Vec<Pair>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pair {
    pub a: Location,
    pub b: Location,
    pub jaccard: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conflict {
    pub severity: Severity,
    pub role: Role,
    /// The start of the prompt's last turn, for people reading the report.
    pub prompt_preview: String,
    /// One list per distinct answer, each in file order; lists ordered by first line.
    pub answers: Vec<Vec<Location>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakKind {
    Exact,
    Near,
}

/// An eval example that duplicates training examples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leakage {
    pub severity: Severity,
    pub kind: LeakKind,
    pub eval: Location,
    pub train: Vec<TrainMatch>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainMatch {
    pub file: String,
    pub line: usize,
    pub jaccard: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Truncated {
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    pub tokens: usize,
    pub max_seq_len: usize,
    pub targets: usize,
    /// Target tokens left after truncation (0: training drops the example).
    pub targets_kept: usize,
}

impl LintReport {
    pub fn has_errors(&self) -> bool {
        self.summary.errors > 0
    }

    /// Counts, then up to `show` findings of each kind with file:line, then per-file stats.
    pub fn human_summary(&self, show: usize) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let mut line = |t: String| {
            out.push_str(&t);
            out.push('\n');
        };
        let sev = |v: Severity| match v {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        line(format!(
            "lint: {} examples in {} file{}: {} error{}, {} warning{}",
            s.examples,
            s.files,
            plural(s.files),
            s.errors,
            plural(s.errors),
            s.warnings,
            plural(s.warnings)
        ));
        let mut section = |title: String, count: usize, items: Vec<String>| {
            if count == 0 {
                return;
            }
            line(format!("  {title}: {count}"));
            for it in items.iter().take(show) {
                line(format!("    {it}"));
            }
            if items.len() > show {
                line(format!("    ... and {} more", items.len() - show));
            }
        };
        let at = |file: &str, l: Option<usize>| match l {
            Some(l) => format!("{file}:{l}"),
            None => file.to_string(),
        };
        section(
            "file errors".into(),
            s.file_errors,
            self.file_errors
                .iter()
                .map(|p| format!("{}: {}: {}", sev(p.severity), at(&p.file, p.line), p.reason))
                .collect(),
        );
        section(
            "bad records".into(),
            s.bad_records,
            self.bad_records
                .iter()
                .map(|p| format!("{}: {}: {}", sev(p.severity), at(&p.file, p.line), p.reason))
                .collect(),
        );
        section(
            "unencodable".into(),
            s.unencodable.unwrap_or(0),
            self.unencodable
                .iter()
                .map(|p| format!("{}: {}: {}", sev(p.severity), at(&p.file, p.line), p.reason))
                .collect(),
        );
        section(
            "empty answers".into(),
            s.empty_answers,
            self.empty_answers
                .iter()
                .map(|e| format!("{}: {}:{}: turn {} is empty", sev(e.severity), e.file, e.line, e.turn))
                .collect(),
        );
        section(
            "turn order".into(),
            s.turn_order,
            self.turn_order
                .iter()
                .map(|t| {
                    format!("{}: {}:{}: turn {}: {}", sev(t.severity), t.file, t.line, t.turn, t.problem.describe())
                })
                .collect(),
        );
        section(
            "train/eval leakage".into(),
            s.leakage_exact + s.leakage_near,
            self.leakage
                .iter()
                .map(|l| {
                    let train: Vec<String> = l.train.iter().take(3).map(|t| format!("{}:{}", t.file, t.line)).collect();
                    let more =
                        if l.train.len() > 3 { format!(" and {} more", l.train.len() - 3) } else { String::new() };
                    let kind = match l.kind {
                        LeakKind::Exact => "is an exact duplicate of".to_string(),
                        LeakKind::Near => format!(
                            "is a near duplicate (J {:.2}) of",
                            l.train.iter().map(|t| t.jaccard).fold(0.0, f64::max)
                        ),
                    };
                    format!("{}: {} {kind} {}{more}", sev(l.severity), l.eval, train.join(", "))
                })
                .collect(),
        );
        section(
            format!("exact duplicate clusters ({} extra lines)", s.exact_duplicate_lines),
            s.exact_duplicate_clusters,
            self.exact_duplicates.iter().map(|c| cluster_line(sev(c.severity), c, false)).collect(),
        );
        section(
            format!(
                "near duplicate clusters, J >= {} ({} extra lines)",
                self.options.threshold, s.near_duplicate_lines
            ),
            s.near_duplicate_clusters,
            self.near_duplicates.iter().map(|c| cluster_line(sev(c.severity), c, true)).collect(),
        );
        section(
            "conflicts (same prompt, different answers)".into(),
            s.conflicts,
            self.conflicts
                .iter()
                .map(|c| {
                    let groups: Vec<String> = c.answers.iter().map(|g| lines_of(g)).collect();
                    format!(
                        "{}: {:?}: {} answers: {}",
                        sev(c.severity),
                        c.prompt_preview,
                        c.answers.len(),
                        groups.join(" | ")
                    )
                })
                .collect(),
        );
        match s.truncated {
            Some(n) => section(
                format!(
                    "truncated to max_seq_len {} ({} left without targets)",
                    self.options.max_seq_len,
                    s.without_targets.unwrap_or(0)
                ),
                n,
                self.truncated
                    .iter()
                    .map(|t| {
                        format!(
                            "{}: {}:{}: {} tokens, {} of {} target tokens kept",
                            sev(t.severity),
                            t.file,
                            t.line,
                            t.tokens,
                            t.targets_kept,
                            t.targets
                        )
                    })
                    .collect(),
            ),
            None => line("  truncation: not checked (give --model to count tokens)".into()),
        }
        for f in &self.files {
            let d = |name: &str, d: &Option<Distribution>| {
                d.map(|d| format!(" {name} {}/{:.1}/{}/{}/{}", d.min, d.mean, d.p50, d.p95, d.max)).unwrap_or_default()
            };
            line(format!(
                "  {} ({}, {}): {} examples{}{}{}",
                f.path,
                match f.role {
                    Role::Train => "train",
                    Role::Eval => "eval",
                },
                f.format.as_deref().unwrap_or("unreadable"),
                f.examples,
                d("turns", &f.stats.turns),
                d("chars", &f.stats.chars),
                d("tokens", &f.stats.tokens),
            ));
        }
        if self.files.iter().any(|f| f.stats.chars.is_some()) {
            line("  (statistics are min/mean/p50/p95/max)".into());
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// "a.jsonl lines 3, 9, 12" when all in one file, else "a.jsonl:3, b.jsonl:9".
fn lines_of(locs: &[Location]) -> String {
    let first = &locs[0].file;
    if locs.iter().all(|l| &l.file == first) {
        let n: Vec<String> = locs.iter().take(10).map(|l| l.line.to_string()).collect();
        let more = if locs.len() > 10 { format!(" (+{})", locs.len() - 10) } else { String::new() };
        format!("{first} line{} {}{more}", plural(locs.len()), n.join(", "))
    } else {
        locs.iter().take(10).map(|l| l.to_string()).collect::<Vec<_>>().join(", ")
    }
}

fn cluster_line(sev: &str, c: &DuplicateCluster, near: bool) -> String {
    if near {
        let j = if c.jaccard_min == c.jaccard_max {
            format!("J {:.2}", c.jaccard_min)
        } else {
            format!("J {:.2}-{:.2}", c.jaccard_min, c.jaccard_max)
        };
        format!("{sev}: {} ({j})", lines_of(&c.members))
    } else {
        format!("{sev}: {}", lines_of(&c.members))
    }
}
