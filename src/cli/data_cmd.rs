//! `loratune data lint` and `loratune data dedup`: data quality checks before training.
//!
//! Exit codes of `lint`: 0 when there are no errors (warnings do not fail), 1 when the data
//! has errors, 2 for usage errors (bad arguments, a file or model that cannot be opened),
//! the same code clap uses for its own argument errors.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

use crate::config::EnvKnobs;
use crate::data::lint::{self, DedupOptions, LintOptions};
use crate::data::{BadRecordPolicy, FormatChoice};
use crate::model::{self, ModelSource};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Check JSONL data: schema, duplicates, conflicts, train/eval leakage, empty answers,
    /// turn order, truncation, statistics. Exit code 1 when there are errors.
    Lint(LintArgs),
    /// Write a copy of a JSONL file without its exact and near duplicates (the first of
    /// each cluster stays; kept lines are copied byte for byte, in order).
    Dedup(DedupArgs),
}

#[derive(Args, Debug)]
pub struct LintArgs {
    /// Training file(s), linted together as one training set.
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// A held-out file: linted too, and checked for leakage from the training files.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Count tokens with this model's tokenizer and chat template (a Hugging Face folder,
    /// hub id or GGUF file), as training encodes them, to find truncated examples.
    #[arg(long)]
    pub model: Option<String>,
    /// Training's max_seq_len, for the truncation check.
    #[arg(long, default_value_t = 1024)]
    pub max_seq_len: usize,
    /// Record format: auto (detected per file), alpaca, messages, sharegpt, prompt-completion, text.
    #[arg(long, default_value_t = FormatChoice::Auto)]
    pub format: FormatChoice,
    /// Near duplicates: Jaccard similarity of word shingles at or above this, in (0, 1].
    #[arg(long, default_value_t = lint::DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Words per shingle for near duplicates.
    #[arg(long, default_value_t = lint::DEFAULT_SHINGLE_WORDS)]
    pub shingle_words: usize,
    /// Treat every warning as an error.
    #[arg(long)]
    pub strict: bool,
    /// Bad records are errors (error) or, as training with on_bad_record = "skip" passes
    /// over them, warnings (skip).
    #[arg(long, default_value_t = BadRecordPolicy::Error)]
    pub on_bad_record: BadRecordPolicy,
    /// Write the full report here as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Findings of each kind shown on stdout.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
}

#[derive(Args, Debug)]
pub struct DedupArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Near duplicates: Jaccard similarity of word shingles at or above this, in (0, 1].
    #[arg(long, default_value_t = lint::DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Words per shingle for near duplicates.
    #[arg(long, default_value_t = lint::DEFAULT_SHINGLE_WORDS)]
    pub shingle_words: usize,
    /// Remove exact duplicates only.
    #[arg(long)]
    pub exact_only: bool,
    /// Record format: auto, alpaca, messages, sharegpt, prompt-completion, text.
    #[arg(long, default_value_t = FormatChoice::Auto)]
    pub format: FormatChoice,
}

pub fn run(a: DataArgs, env: &EnvKnobs) -> Result<()> {
    match a.command {
        DataCommand::Lint(a) => lint_files(a, env),
        DataCommand::Dedup(a) => dedup_file(a),
    }
}

/// Prints the error as main does, with exit code 2.
fn usage_error(e: anyhow::Error) -> ! {
    eprintln!("error: {e:#}");
    std::process::exit(2);
}

fn check_near_args(threshold: f64, shingle_words: usize) -> Result<()> {
    anyhow::ensure!(
        threshold > 0.0 && threshold <= 1.0,
        "--threshold {threshold}: expected a Jaccard similarity in (0, 1]"
    );
    anyhow::ensure!(shingle_words >= 1, "--shingle-words must be at least 1");
    Ok(())
}

fn lint_files(a: LintArgs, env: &EnvKnobs) -> Result<()> {
    let opts = (|| -> Result<LintOptions> {
        check_near_args(a.threshold, a.shingle_words)?;
        anyhow::ensure!(a.max_seq_len >= 1, "--max-seq-len must be at least 1");
        Ok(LintOptions {
            format: a.format.fixed(),
            threshold: a.threshold,
            shingle_words: a.shingle_words,
            max_seq_len: a.max_seq_len,
            strict: a.strict,
            bad_records: a.on_bad_record,
        })
    })()
    .unwrap_or_else(|e| usage_error(e));
    let tokenizer = a.model.as_ref().map(|m| {
        ModelSource::parse(m)
            .map_err(anyhow::Error::from)
            .and_then(|s| Ok(model::checkpoint::load_tokenizer(&s, &env.hub.options())?))
            .with_context(|| format!("--model {m}: loading the tokenizer"))
            .unwrap_or_else(|e| usage_error(e))
    });
    let report =
        lint::lint(&a.files, a.eval.as_deref(), tokenizer.as_ref(), &opts).unwrap_or_else(|e| usage_error(e.into()));
    print!("{}", report.human_summary(a.show));
    if let Some(path) = &a.json {
        crate::atomic::write_json_file(path, &report)?;
        println!("wrote {}", path.display());
    }
    if report.has_errors() {
        std::process::exit(1);
    }
    Ok(())
}

fn dedup_file(a: DedupArgs) -> Result<()> {
    let opts = (|| -> Result<DedupOptions> {
        check_near_args(a.threshold, a.shingle_words)?;
        Ok(DedupOptions {
            format: a.format.fixed(),
            threshold: a.threshold,
            shingle_words: a.shingle_words,
            exact_only: a.exact_only,
        })
    })()
    .unwrap_or_else(|e| usage_error(e));
    let out = match lint::dedup(&a.input, &a.output, &opts) {
        Ok(out) => out,
        Err(lint::DedupError::Data(e @ crate::data::DataError::Open { .. })) => usage_error(e.into()),
        Err(e) => return Err(e.into()),
    };
    let removed = out.exact.len() + out.near.len();
    let list = |lines: &[usize]| -> String {
        let shown: Vec<String> = lines.iter().take(20).map(|l| l.to_string()).collect();
        let more = if lines.len() > 20 { format!(", ... {} more", lines.len() - 20) } else { String::new() };
        format!("lines {}{more}", shown.join(", "))
    };
    let mut parts = vec![format!("{} exact duplicate{}", out.exact.len(), if out.exact.len() == 1 { "" } else { "s" })];
    if !out.exact.is_empty() {
        parts[0].push_str(&format!(" ({})", list(&out.exact)));
    }
    if !a.exact_only {
        let mut near = format!(
            "{} near duplicate{} (J >= {})",
            out.near.len(),
            if out.near.len() == 1 { "" } else { "s" },
            a.threshold
        );
        if !out.near.is_empty() {
            near.push_str(&format!(" ({})", list(&out.near)));
        }
        parts.push(near);
    }
    println!("removed {removed} of {} lines: {}", out.lines, parts.join(", "));
    if out.bad_records > 0 {
        println!("kept {} lines that are not valid records as they are (see `loratune data lint`)", out.bad_records);
    }
    println!("wrote {}", a.output.display());
    Ok(())
}
