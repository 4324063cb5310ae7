//! What a run shows about the tuned model beside its base, beyond the eval loss: the
//! regression set's loss on both (did the model forget what the base did well?) and both
//! models' greedy answers to held-out prompts, scored against the references and written
//! side by side to samples.jsonl for a person to read.
//!
//! The base is frozen, so its side needs no state across a resume: it is measured with the
//! adapter left out, at the end of the run beside the tuned side.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

use super::batches;
use crate::config::EvalSection;
use crate::data::{BadRecordPolicy, DataFormat};
use crate::encode::EncodedExample;
use crate::eval::text_metrics::TextScores;
use crate::eval::{self, Answer, EvalPrompt, GenerationScores};
use crate::generate::Generator;
use crate::lora::LoraWeights;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

use super::layout::SAMPLES_FILE;

/// The regression set, encoded as the training data is.
pub struct RegressionSet {
    pub path: PathBuf,
    pub examples: Vec<EncodedExample>,
    pub stats: batches::DataFileStats,
}

impl RegressionSet {
    pub fn read(
        path: &Path,
        format: Option<DataFormat>,
        policy: BadRecordPolicy,
        tok: &Tokenizer,
        max_seq_len: usize,
    ) -> Result<Self> {
        let (encoded, stats) =
            batches::encode_file(path, "regression", format, policy, tok, max_seq_len).context("eval.regression")?;
        Ok(RegressionSet { path: path.to_path_buf(), examples: encoded.into_iter().map(|(e, _)| e).collect(), stats })
    }
}

/// eval.json's `regression` (read back by `loratune report`). `relative_change` and
/// `threshold` are fractions: 0.05 is 5%.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RegressionReport {
    pub file: PathBuf,
    pub examples: usize,
    pub base_loss: f64,
    pub tuned_loss: f64,
    /// (tuned - base) / base.
    pub relative_change: f64,
    pub threshold: f64,
    /// `relative_change > threshold`: the tuned model got worse at what the base did.
    pub forgetting: bool,
}

/// eval.json's `generation`: mean scores of both models' answers.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GenerationReport {
    pub examples: usize,
    pub max_new_tokens: usize,
    pub base: Option<GenerationScores>,
    pub tuned: Option<GenerationScores>,
}

/// One line of samples.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct Sample<'a> {
    pub line: usize,
    pub prompt: &'a str,
    pub reference: Option<&'a str>,
    pub base: &'a str,
    pub tuned: &'a str,
    pub scores: SampleScores,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleScores {
    pub base: Option<TextScores>,
    pub tuned: Option<TextScores>,
}

/// Regression-set loss of the base (no adapter) and the tuned model.
pub fn regression(
    model: &Llama,
    lora: &LoraWeights,
    set: &RegressionSet,
    batch_size: usize,
    pad: u32,
    threshold: f64,
) -> Result<RegressionReport> {
    let base_loss = eval::evaluate(model, None, &set.examples, batch_size, pad, |_, _| {})?.loss;
    let tuned_loss = eval::evaluate(model, Some(lora), &set.examples, batch_size, pad, |_, _| {})?.loss;
    let relative_change = (tuned_loss - base_loss) / base_loss;
    Ok(RegressionReport {
        file: set.path.clone(),
        examples: set.examples.len(),
        base_loss,
        tuned_loss,
        relative_change,
        threshold,
        forgetting: relative_change > threshold,
    })
}

/// Both models' greedy answers to `prompts`; writes samples.jsonl into `run_dir`.
pub fn samples(
    model: &Llama,
    lora: &LoraWeights,
    tok: &Tokenizer,
    extra_stop_ids: &[u32],
    prompts: &[EvalPrompt],
    max_new_tokens: usize,
    run_dir: &Path,
) -> Result<GenerationReport> {
    let answer = |adapter: Option<&LoraWeights>| -> Result<Vec<Answer>> {
        let gen = Generator::new(model, adapter, tok, extra_stop_ids);
        eval::answer_prompts(&gen, prompts, max_new_tokens, |_, _| {})
    };
    let base = answer(None)?;
    let tuned = answer(Some(lora))?;
    let mut text = String::new();
    for ((p, b), t) in prompts.iter().zip(&base).zip(&tuned) {
        let sample = Sample {
            line: p.line,
            prompt: p.prompt_text(),
            reference: p.reference.as_deref(),
            base: &b.text,
            tuned: &t.text,
            scores: SampleScores { base: b.scores, tuned: t.scores },
        };
        text.push_str(&serde_json::to_string(&sample)?);
        text.push('\n');
    }
    crate::atomic::write_bytes(&run_dir.join(SAMPLES_FILE), text.as_bytes())?;
    Ok(GenerationReport {
        examples: prompts.len(),
        max_new_tokens,
        base: GenerationScores::of(&base),
        tuned: GenerationScores::of(&tuned),
    })
}

/// The checks `[eval]` asks for at the end of a run, each printed as it finishes (with a
/// forgetting warning when the regression loss rose above the threshold).
#[allow(clippy::too_many_arguments)]
pub fn check(
    model: &Llama,
    lora: &LoraWeights,
    tok: &Tokenizer,
    extra_stop_ids: &[u32],
    regression_set: Option<&RegressionSet>,
    prompts: &[EvalPrompt],
    cfg: &EvalSection,
    pad: u32,
    run_dir: &Path,
) -> Result<(Option<RegressionReport>, Option<GenerationReport>)> {
    let regression = match regression_set {
        Some(set) => {
            let r = regression(model, lora, set, cfg.batch_size, pad, cfg.regression_threshold)?;
            println!(
                "regress base {:.4} -> tuned {:.4} ({:+.1}%) on {} ({} examples)",
                r.base_loss,
                r.tuned_loss,
                100.0 * r.relative_change,
                r.file.display(),
                r.examples
            );
            if r.forgetting {
                println!(
                    "warning the regression loss rose {:.1}%, above eval.regression_threshold ({:.1}%): the tuned model lost some of what the base did well (catastrophic forgetting); consider mixing general data in (data.weights), fewer steps or a lower lr",
                    100.0 * r.relative_change,
                    100.0 * r.threshold
                );
            }
            Some(r)
        }
        None => None,
    };
    let generation = match prompts.is_empty() {
        true => None,
        false => {
            let g = samples(model, lora, tok, extra_stop_ids, prompts, cfg.max_new_tokens, run_dir)?;
            println!("samples {} ({})", run_dir.join(SAMPLES_FILE).display(), describe(&g));
            Some(g)
        }
    };
    Ok((regression, generation))
}

/// "exact match 0.25 -> 0.75, token F1 ..., JSON valid ...": one line for the terminal.
pub fn describe(r: &GenerationReport) -> String {
    let (Some(b), Some(t)) = (&r.base, &r.tuned) else {
        return format!("{} prompts, no references to score against", r.examples);
    };
    let mut parts = vec![
        format!("exact match {:.2} -> {:.2}", b.mean.exact_match, t.mean.exact_match),
        format!("token F1 {:.2} -> {:.2}", b.mean.token_f1, t.mean.token_f1),
        format!("ROUGE-L {:.2} -> {:.2}", b.mean.rouge_l, t.mean.rouge_l),
    ];
    if let (Some(jb), Some(jt)) = (b.mean.json_valid, t.mean.json_valid) {
        parts.push(format!("JSON valid {jb:.2} -> {jt:.2}"));
    }
    format!("{} prompts, base -> tuned: {}", b.examples, parts.join(", "))
}
