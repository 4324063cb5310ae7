//! `loratune data lint`: what is wrong with a training set beyond records that do not
//! parse. Schema problems come from the data reader itself ([`read_jsonl`] with
//! [`BadRecordPolicy::Skip`] collects every bad line); on top of that the lint finds exact
//! and near duplicates, conflicting answers, train/eval leakage, empty answers, odd turn
//! order, examples that `max_seq_len` would truncate, and length statistics.
//!
//! - `normalize.rs`: what "the same example" means (the text compared);
//! - `minhash.rs`: shingles, MinHash signatures, LSH banding, exact Jaccard;
//! - `duplicates.rs`: exact groups, verified near pairs, clusters;
//! - `checks.rs`: per-example checks and statistics;
//! - `report.rs`: the report's JSON schema and the human summary;
//! - `dedup.rs`: `loratune data dedup`, which removes what the lint calls duplicates.
//!
//! Severity, without and with `strict`:
//!
//! | finding | default | strict |
//! |---|---|---|
//! | bad record (schema) | error (warning when bad records are skipped) | same |
//! | file with no usable record | error | error |
//! | empty or whitespace-only answer | error | error |
//! | exact train/eval leakage | error | error |
//! | system turn not first | error | error |
//! | unencodable by the chat template | error | error |
//! | other turn order (assistant first, repeated role, ends on user) | warning | error |
//! | exact duplicate | warning | error |
//! | near duplicate | warning | error |
//! | near train/eval leakage | warning | error |
//! | conflicting answers | warning | error |
//! | truncated by max_seq_len | warning | error |

mod checks;
mod dedup;
mod duplicates;
mod minhash;
mod normalize;
mod report;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use checks::{Distribution, TurnOrderProblem};
pub use dedup::{dedup, DedupError, DedupOptions, DedupOutcome};
pub use report::*;

use super::{read_jsonl, BadRecordPolicy, DataError, DataFormat, Dataset, Record};
use crate::tokenizer::Tokenizer;

/// Default Jaccard threshold for near duplicates.
pub const DEFAULT_THRESHOLD: f64 = 0.8;
/// Default shingle size in words: two-word shingles keep a 100-word text with five words
/// changed above 0.8 (each changed word breaks at most two shingles), where five-word
/// shingles would put it near 0.6.
pub const DEFAULT_SHINGLE_WORDS: usize = 2;

#[derive(Debug, Clone)]
pub struct LintOptions {
    /// `None` detects each file's format.
    pub format: Option<DataFormat>,
    /// Near duplicates have Jaccard >= this, in (0, 1].
    pub threshold: f64,
    pub shingle_words: usize,
    /// Truncation is checked against this (with a tokenizer).
    pub max_seq_len: usize,
    /// Every warning becomes an error.
    pub strict: bool,
    /// `Skip`: bad records are warnings, as training with `on_bad_record = "skip"` passes
    /// over them.
    pub bad_records: BadRecordPolicy,
}

impl Default for LintOptions {
    fn default() -> Self {
        LintOptions {
            format: None,
            threshold: DEFAULT_THRESHOLD,
            shingle_words: DEFAULT_SHINGLE_WORDS,
            max_seq_len: 1024,
            strict: false,
            bad_records: BadRecordPolicy::Error,
        }
    }
}

impl LintOptions {
    fn severity(&self, error_by_default: bool) -> Severity {
        if error_by_default || self.strict {
            Severity::Error
        } else {
            Severity::Warning
        }
    }
}

/// One usable example and where it came from.
struct Item<'a> {
    role: Role,
    file: usize,
    line: usize,
    record: &'a Record,
}

/// What the per-example checks found.
struct ExampleFacts {
    empty: Vec<usize>,
    turn_order: Vec<(usize, TurnOrderProblem)>,
    turns: Option<usize>,
    chars: usize,
    tokens: Option<Result<checks::TokenCount, String>>,
}

/// Lints the training files (together, as one training set) and the eval file. Only a
/// file that cannot be opened or read is an `Err`; everything else is a finding.
pub fn lint(
    train: &[PathBuf],
    eval: Option<&Path>,
    tokenizer: Option<&Tokenizer>,
    opts: &LintOptions,
) -> Result<LintReport, DataError> {
    let mut report = LintReport {
        version: REPORT_VERSION,
        options: ReportOptions {
            threshold: opts.threshold,
            shingle_words: opts.shingle_words,
            max_seq_len: opts.max_seq_len,
            tokens_checked: tokenizer.is_some(),
            strict: opts.strict,
            bad_records: opts.bad_records.to_string(),
            lsh_bands: 0,
            lsh_rows: 0,
        },
        files: Vec::new(),
        summary: LintSummary::default(),
        bad_records: Vec::new(),
        file_errors: Vec::new(),
        empty_answers: Vec::new(),
        turn_order: Vec::new(),
        exact_duplicates: Vec::new(),
        near_duplicates: Vec::new(),
        conflicts: Vec::new(),
        leakage: Vec::new(),
        truncated: Vec::new(),
        unencodable: Vec::new(),
    };
    let search = duplicates::NearSearch { threshold: opts.threshold, shingle_words: opts.shingle_words };
    let lsh = search.lsh();
    (report.options.lsh_bands, report.options.lsh_rows) = (lsh.bands, lsh.rows);

    // Read every file, keeping its bad lines as findings.
    let inputs: Vec<(&Path, Role)> =
        train.iter().map(|p| (p.as_path(), Role::Train)).chain(eval.map(|p| (p, Role::Eval))).collect();
    let bad_severity = opts.severity(opts.bad_records == BadRecordPolicy::Error);
    let mut datasets: Vec<Option<Dataset>> = Vec::new();
    for &(path, role) in &inputs {
        let name = path.display().to_string();
        let mut file = FileReport {
            path: name.clone(),
            role,
            format: None,
            lines: 0,
            examples: 0,
            bad_records: 0,
            stats: Stats::default(),
        };
        let mut bad =
            |e: &DataError| Problem { severity: bad_severity, file: name.clone(), line: e.line(), reason: e.reason() };
        match read_jsonl(path, opts.format, BadRecordPolicy::Skip) {
            Ok(ds) => {
                report.bad_records.extend(ds.skipped.iter().map(&mut bad));
                (file.format, file.lines, file.examples, file.bad_records) =
                    (Some(ds.format.to_string()), ds.lines_read, ds.len(), ds.skipped.len());
                datasets.push(Some(ds));
            }
            Err(e @ (DataError::Open { .. } | DataError::Read { .. })) => return Err(e),
            Err(DataError::AllBad { skipped, .. }) => {
                report.bad_records.extend(skipped.iter().map(&mut bad));
                file.bad_records = skipped.len();
                report.file_errors.push(Problem {
                    severity: Severity::Error,
                    file: name.clone(),
                    line: None,
                    reason: "no usable records: every record is bad".into(),
                });
                datasets.push(None);
            }
            Err(e) => {
                report.file_errors.push(Problem {
                    severity: Severity::Error,
                    file: name.clone(),
                    line: e.line(),
                    reason: e.reason(),
                });
                datasets.push(None);
            }
        }
        report.files.push(file);
    }
    let items: Vec<Item> = datasets
        .iter()
        .zip(&inputs)
        .enumerate()
        .filter_map(|(f, (ds, &(_, role)))| ds.as_ref().map(|ds| (f, ds, role)))
        .flat_map(|(f, ds, role)| {
            ds.examples.iter().map(move |e| Item { role, file: f, line: e.line, record: &e.record })
        })
        .collect();
    let names: Vec<String> = report.files.iter().map(|f| f.path.clone()).collect();
    let loc = |i: usize| Location { file: names[items[i].file].clone(), line: items[i].line };
    let loc = &loc;

    // Per-example checks, in parallel.
    let facts: Vec<ExampleFacts> = items
        .par_iter()
        .map(|it| ExampleFacts {
            empty: checks::empty_answers(it.record),
            turn_order: checks::turn_order(it.record),
            turns: checks::turns(it.record),
            chars: checks::chars(it.record),
            tokens: tokenizer.map(|t| checks::count_tokens(t, it.record, opts.max_seq_len).map_err(|e| e.to_string())),
        })
        .collect();
    let mut empty_answers = Vec::new();
    let mut turn_order = Vec::new();
    let mut truncated = Vec::new();
    let mut unencodable = Vec::new();
    for (i, f) in facts.iter().enumerate() {
        let at = loc(i);
        for &turn in &f.empty {
            empty_answers.push(EmptyAnswer { severity: Severity::Error, file: at.file.clone(), line: at.line, turn });
        }
        for &(turn, problem) in &f.turn_order {
            turn_order.push(TurnOrder {
                severity: opts.severity(problem.is_error()),
                file: at.file.clone(),
                line: at.line,
                turn,
                problem,
            });
        }
        match &f.tokens {
            Some(Ok(c)) if c.tokens > opts.max_seq_len => truncated.push(Truncated {
                severity: opts.severity(false),
                file: at.file.clone(),
                line: at.line,
                tokens: c.tokens,
                max_seq_len: opts.max_seq_len,
                targets: c.targets,
                targets_kept: c.targets_kept,
            }),
            Some(Err(reason)) => unencodable.push(Problem {
                severity: Severity::Error,
                file: at.file.clone(),
                line: Some(at.line),
                reason: reason.clone(),
            }),
            _ => {}
        }
    }
    for (f, file) in report.files.iter_mut().enumerate() {
        let of = |get: &dyn Fn(&ExampleFacts) -> Option<usize>| -> Option<Distribution> {
            let v: Vec<usize> =
                items.iter().zip(&facts).filter(|(it, _)| it.file == f).filter_map(|(_, x)| get(x)).collect();
            Distribution::of(&v)
        };
        file.stats = Stats {
            turns: of(&|x| x.turns),
            chars: of(&|x| Some(x.chars)),
            tokens: of(&|x| x.tokens.as_ref().and_then(|t| t.as_ref().ok()).map(|c| c.tokens)),
        };
    }

    // Exact duplicates within each role, and eval examples that are exact copies of train.
    let records: Vec<&Record> = items.iter().map(|it| it.record).collect();
    let group = duplicates::exact_groups(&records);
    let mut members: HashMap<(usize, Role), Vec<usize>> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        members.entry((group[i], it.role)).or_default().push(i);
    }
    let mut exact_clusters: Vec<&Vec<usize>> = members.values().filter(|m| m.len() > 1).collect();
    exact_clusters.sort_by_key(|m| m[0]);
    for m in exact_clusters {
        report.exact_duplicates.push(DuplicateCluster {
            severity: opts.severity(false),
            role: items[m[0]].role,
            members: m.iter().map(|&i| loc(i)).collect(),
            jaccard_min: 1.0,
            jaccard_max: 1.0,
            pairs: Vec::new(),
        });
        report.summary.exact_duplicate_lines += m.len() - 1;
    }
    let mut leakage = Vec::new();
    for (i, _) in items.iter().enumerate().filter(|(_, it)| it.role == Role::Eval) {
        if let Some(train) = members.get(&(group[i], Role::Train)) {
            let train =
                train.iter().map(|&t| TrainMatch { file: loc(t).file, line: items[t].line, jaccard: 1.0 }).collect();
            leakage.push(Leakage { severity: Severity::Error, kind: LeakKind::Exact, eval: loc(i), train });
        }
    }

    // Near duplicates among one representative per exact group and role.
    let reps: Vec<usize> = (0..items.len()).filter(|&i| members[&(group[i], items[i].role)][0] == i).collect();
    let pairs = search.pairs(&records, &reps, |a, b| group[a] == group[b]);
    let (same_role, cross_role): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|p| items[p.a].role == items[p.b].role);
    for c in duplicates::clusters(&same_role) {
        report.summary.near_duplicate_lines += c.members.len() - 1;
        report.near_duplicates.push(DuplicateCluster {
            severity: opts.severity(false),
            role: items[c.members[0]].role,
            members: c.members.iter().map(|&i| loc(i)).collect(),
            jaccard_min: c.jaccard_min,
            jaccard_max: c.jaccard_max,
            pairs: c.links.iter().map(|p| Pair { a: loc(p.a), b: loc(p.b), jaccard: p.jaccard }).collect(),
        });
    }
    let mut near_leaks: HashMap<usize, Vec<TrainMatch>> = HashMap::new();
    for p in cross_role {
        let (e, t) = if items[p.a].role == Role::Eval { (p.a, p.b) } else { (p.b, p.a) };
        // The eval representative and its exact copies in eval all leak.
        for &copy in &members[&(group[e], Role::Eval)] {
            near_leaks.entry(copy).or_default().push(TrainMatch {
                file: loc(t).file,
                line: items[t].line,
                jaccard: p.jaccard,
            });
        }
    }
    for (e, mut train) in near_leaks {
        train.sort_by(|x, y| y.jaccard.total_cmp(&x.jaccard).then((&x.file, x.line).cmp(&(&y.file, y.line))));
        leakage.push(Leakage { severity: opts.severity(false), kind: LeakKind::Near, eval: loc(e), train });
    }
    leakage.sort_by(|a, b| {
        (&a.eval.file, a.eval.line).cmp(&(&b.eval.file, b.eval.line)).then((a.kind as u8).cmp(&(b.kind as u8)))
    });

    report.conflicts = conflicts(&items, opts, loc);
    report.empty_answers = empty_answers;
    report.turn_order = turn_order;
    report.leakage = leakage;
    report.truncated = truncated;
    report.unencodable = unencodable;
    finish_summary(&mut report, tokenizer.is_some(), items.len());
    Ok(report)
}

/// Same prompt, different answers, within each role. Prompts are grouped by hash and
/// confirmed on the text, as exact duplicates are.
fn conflicts(items: &[Item], opts: &LintOptions, loc: &dyn Fn(usize) -> Location) -> Vec<Conflict> {
    let keys: Vec<Option<(u64, u64)>> = items
        .par_iter()
        .map(|it| {
            normalize::prompt_and_answer(it.record).map(|(p, a)| (duplicates::hash_str(&p), duplicates::hash_str(&a)))
        })
        .collect();
    let mut by_prompt: HashMap<(Role, u64), Vec<usize>> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        if let Some((p, _)) = k {
            by_prompt.entry((items[i].role, *p)).or_default().push(i);
        }
    }
    let mut out = Vec::new();
    for group in by_prompt.values() {
        let answers: HashSet<u64> = group.iter().map(|&i| keys[i].expect("keyed").1).collect();
        if answers.len() < 2 {
            continue;
        }
        let texts: Vec<(String, String)> =
            group.iter().map(|&i| normalize::prompt_and_answer(items[i].record).expect("keyed")).collect();
        // Within one hash group, split by the actual prompt text, then by answer.
        let mut done = vec![false; group.len()];
        for n in 0..group.len() {
            if done[n] {
                continue;
            }
            let same_prompt: Vec<usize> = (n..group.len()).filter(|&m| !done[m] && texts[m].0 == texts[n].0).collect();
            let mut by_answer: Vec<(String, Vec<Location>)> = Vec::new();
            for &m in &same_prompt {
                done[m] = true;
                match by_answer.iter_mut().find(|(a, _)| *a == texts[m].1) {
                    Some((_, locs)) => locs.push(loc(group[m])),
                    None => by_answer.push((texts[m].1.clone(), vec![loc(group[m])])),
                }
            }
            if by_answer.len() > 1 {
                out.push(Conflict {
                    severity: opts.severity(false),
                    role: items[group[n]].role,
                    prompt_preview: prompt_preview(items[group[n]].record),
                    answers: by_answer.into_iter().map(|(_, l)| l).collect(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.answers[0][0].cmp(&b.answers[0][0]));
    out
}

/// The first 80 characters of the last prompt turn (or the prompt).
fn prompt_preview(record: &Record) -> String {
    let text = match record {
        Record::Conversation(m) => {
            let last = m.iter().rposition(|m| m.role == crate::chat::Role::Assistant).unwrap_or(m.len());
            m[..last].last().map(|m| m.content.as_str()).unwrap_or("")
        }
        Record::PromptCompletion { prompt, .. } => prompt,
        Record::Text(t) => t,
    };
    let folded = normalize::fold(text);
    match folded.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &folded[..cut]),
        None => folded,
    }
}

fn finish_summary(r: &mut LintReport, tokens_checked: bool, examples: usize) {
    let s = &mut r.summary;
    s.files = r.files.len();
    s.examples = examples;
    s.bad_records = r.bad_records.len();
    s.file_errors = r.file_errors.len();
    s.empty_answers = r.empty_answers.len();
    s.turn_order = r.turn_order.len();
    s.exact_duplicate_clusters = r.exact_duplicates.len();
    s.near_duplicate_clusters = r.near_duplicates.len();
    s.conflicts = r.conflicts.len();
    s.leakage_exact = r.leakage.iter().filter(|l| l.kind == LeakKind::Exact).count();
    s.leakage_near = r.leakage.iter().filter(|l| l.kind == LeakKind::Near).count();
    if tokens_checked {
        s.truncated = Some(r.truncated.len());
        s.without_targets = Some(r.truncated.iter().filter(|t| t.targets_kept == 0).count());
        s.unencodable = Some(r.unencodable.len());
    }
    let severities: Vec<Severity> = r
        .bad_records
        .iter()
        .chain(&r.file_errors)
        .chain(&r.unencodable)
        .map(|p| p.severity)
        .chain(r.empty_answers.iter().map(|x| x.severity))
        .chain(r.turn_order.iter().map(|x| x.severity))
        .chain(r.exact_duplicates.iter().chain(&r.near_duplicates).map(|x| x.severity))
        .chain(r.conflicts.iter().map(|x| x.severity))
        .chain(r.leakage.iter().map(|x| x.severity))
        .chain(r.truncated.iter().map(|x| x.severity))
        .collect();
    s.errors = severities.iter().filter(|&&v| v == Severity::Error).count();
    s.warnings = severities.len() - s.errors;
}
