//! The run's first phase: the data, read, linted, encoded, mixed and split, before the
//! slow model load, so that bad data fails in seconds.

use anyhow::Result;
use std::path::Path;

use super::base_vs_tuned::RegressionSet;
use super::batches::{self, DataFileStats};
use super::lint_gate;
use crate::config::TrainConfig;
use crate::data::lint::LintSummary;
use crate::encode::EncodedExample;
use crate::eval::EvalPrompt;
use crate::tokenizer::Tokenizer;

/// Everything the run trains and evaluates on, encoded with the model's tokenizer.
pub struct RunData {
    pub train: Vec<EncodedExample>,
    pub eval: Vec<EncodedExample>,
    /// Where the eval set came from: "file", "split" or "none".
    pub eval_set: &'static str,
    /// The first `eval.generate_examples` eval prompts, answered by base and tuned at the end.
    pub eval_prompts: Vec<EvalPrompt>,
    pub regression: Option<RegressionSet>,
    /// What the manifest records of each file (train files, eval file, regression set).
    pub files: Vec<DataFileStats>,
    /// The lint's counts (rank 0 only; `None` with `lint = "off"`).
    pub lint: Option<LintSummary>,
}

impl RunData {
    /// Token count of each training example, for the batch plan.
    pub fn train_lens(&self) -> Vec<usize> {
        self.train.iter().map(|e| e.len()).collect()
    }
}

/// Lints (on rank 0, `main`), reads and encodes the train files, mixes them by
/// `data.weights`, takes the eval set from `data.eval` or splits it off, and reads the
/// regression set. Only rank 0 (`main`) prints.
pub fn load(cfg: &TrainConfig, tokenizer: &Tokenizer, run_dir: &Path, main: bool) -> Result<RunData> {
    let (format, policy) = (cfg.data.format.fixed(), cfg.data.on_bad_record);
    // Rank 0 lints (a refusal there ends every rank: the launcher stops the rest).
    let lint = if main { lint_gate::check(cfg, format, policy, tokenizer, run_dir)? } else { None };
    let mut files = Vec::new();
    let mut per_file = Vec::new();
    for p in &cfg.data.train {
        let (ex, stats) = batches::encode_file(Path::new(p), "train", format, policy, tokenizer, cfg.data.max_seq_len)?;
        per_file.push(ex);
        files.push(stats);
    }
    let train = match &cfg.data.weights {
        Some(weights) => {
            let counts = batches::mix_counts(&per_file.iter().map(Vec::len).collect::<Vec<_>>(), weights);
            for ((stats, &k), w) in files.iter_mut().zip(&counts).zip(weights) {
                if main {
                    println!(
                        "mix     {k} of {} examples from {} (weight {w})",
                        stats.records - stats.without_targets,
                        stats.path.display()
                    );
                }
                stats.mixed_in = Some(k);
            }
            batches::mix(per_file, &counts, cfg.data.split_seed)
        }
        None => per_file.concat(),
    };
    let (train, eval, eval_set) = match &cfg.data.eval {
        Some(p) => {
            let (ex, stats) =
                batches::encode_file(Path::new(p), "eval", format, policy, tokenizer, cfg.data.max_seq_len)?;
            files.push(stats);
            (train, ex, "file")
        }
        None if cfg.data.eval_fraction > 0.0 => {
            let (t, e) = batches::split_eval(train, cfg.data.eval_fraction, cfg.data.split_seed);
            (t, e, "split")
        }
        None => (train, Vec::new(), "none"),
    };
    anyhow::ensure!(!train.is_empty(), "no training examples left after the eval split");
    let train: Vec<EncodedExample> = train.into_iter().map(|(e, _)| e).collect();
    let (eval, eval_records): (Vec<EncodedExample>, Vec<_>) = eval.into_iter().unzip();
    let eval_prompts = crate::eval::eval_prompts(&eval_records, cfg.eval.generate_examples);
    let regression = match &cfg.eval.regression {
        Some(p) => {
            let set = RegressionSet::read(Path::new(p), format, policy, tokenizer, cfg.data.max_seq_len)?;
            files.push(set.stats.clone());
            Some(set)
        }
        None => None,
    };
    Ok(RunData { train, eval, eval_set, eval_prompts, regression, files, lint })
}
