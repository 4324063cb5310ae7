//! Two models, or a model with and without an adapter, on the same prompts: greedy answers
//! side by side, each scored against the reference where the prompt has one, the loss on
//! the references, and how often the two agree. The shadow comparison before rollout.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

use super::generation::{answer_prompts, Answer, EvalPrompt, GenerationScores};
use crate::data::{BadRecordPolicy, Example};
use crate::encode::{self, EncodedExample};
use crate::generate::{self, Generator};
use crate::lora::{self, LoraWeights};
use crate::markdown::cell;
use crate::model::{self, LoadOptions, ModelSource};

/// One side of the comparison: a model, with an adapter or without.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    /// As the user named it (`base`, a folder, a file).
    pub label: String,
    pub model: String,
    pub adapter: Option<PathBuf>,
}

impl Side {
    /// `spec` is `base` (the `--model` alone), an adapter folder (PEFT layout: applied to
    /// `--model`, or to the base its adapter_config.json names), or a model (HF folder,
    /// GGUF file, hub id).
    pub fn parse(spec: &str, base: Option<&str>) -> Result<Side> {
        let path = Path::new(spec);
        if spec == "base" {
            let model = base.context("`base` needs --model (the base model to compare)")?;
            return Ok(Side { label: spec.into(), model: model.into(), adapter: None });
        }
        if path.join(lora::ADAPTER_CONFIG_FILE).is_file() {
            let model = match base {
                Some(m) => m.to_string(),
                None => adapter_base(path)?,
            };
            return Ok(Side { label: spec.into(), model, adapter: Some(path.to_path_buf()) });
        }
        Ok(Side { label: spec.into(), model: spec.into(), adapter: None })
    }
}

/// The base model an adapter folder names (`base_model_name_or_path`).
fn adapter_base(dir: &Path) -> Result<String> {
    let file = dir.join(lora::ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", file.display()))?;
    match v["base_model_name_or_path"].as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => anyhow::bail!("{}: no base_model_name_or_path; give the base with --model", file.display()),
    }
}

#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub load: LoadOptions,
    pub max_new_tokens: usize,
    pub max_seq_len: usize,
    pub batch_size: usize,
}

/// One side's results.
#[derive(Debug, Clone, Serialize)]
pub struct SideResult {
    #[serde(flatten)]
    pub side: Side,
    /// Mean scores over the prompts with a reference.
    pub scores: Option<GenerationScores>,
    /// Mean target-token loss on the references (every record a training record).
    pub loss: Option<f64>,
    pub mean_tokens: f64,
    pub tokens_per_second: f64,
    #[serde(skip)]
    pub answers: Vec<Answer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub data: PathBuf,
    #[serde(serialize_with = "count")]
    pub prompts: Vec<EvalPrompt>,
    pub max_new_tokens: usize,
    pub a: SideResult,
    pub b: SideResult,
    /// Share of prompts where both answers are the same text.
    pub identical: f64,
}

/// compare.json gives the number of prompts; the prompts themselves are in compare.jsonl.
fn count<S: serde::Serializer>(p: &[EvalPrompt], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(p.len() as u64)
}

/// Answers of `side` to every prompt, and its loss on `records` when given.
fn run_side(
    side: &Side,
    prompts: &[EvalPrompt],
    records: Option<&[Example]>,
    opts: &CompareOptions,
    mut progress: impl FnMut(&str),
) -> Result<SideResult> {
    let source = ModelSource::parse(&side.model).with_context(|| format!("{}: model {}", side.label, side.model))?;
    progress(&format!("loading {}", side.model));
    let loaded = model::load(&source, &opts.load).with_context(|| format!("loading model {}", side.model))?;
    let adapter: Option<LoraWeights> = match &side.adapter {
        Some(dir) => Some(
            lora::load_adapter(dir, &loaded.model.config, &opts.load.device)
                .with_context(|| format!("adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let extra_stops = if loaded.identity.resolved.is_dir() {
        generate::generation_config_stop_ids(&loaded.identity.resolved)
    } else {
        Vec::new()
    };
    let gen = Generator::new(&loaded.model, adapter.as_ref(), &loaded.tokenizer, &extra_stops);
    let answers = answer_prompts(&gen, prompts, opts.max_new_tokens, |done, total| {
        progress(&format!("{} {done}/{total}", side.label))
    })?;
    let loss = match records {
        Some(records) => {
            let encoded: Vec<EncodedExample> = records
                .iter()
                .map(|e| {
                    encode::encode(&loaded.tokenizer, &e.record, opts.max_seq_len)
                        .with_context(|| format!("line {}", e.line))
                })
                .collect::<Result<_>>()?;
            let pad = loaded.tokenizer.pad_id.or(loaded.tokenizer.eos_id).unwrap_or(0);
            Some(super::evaluate(&loaded.model, adapter.as_ref(), &encoded, opts.batch_size, pad, |_, _| {})?.loss)
        }
        None => None,
    };
    let tokens: usize = answers.iter().map(|a| a.tokens).sum();
    let seconds: f64 = answers.iter().map(|a| a.seconds).sum();
    Ok(SideResult {
        side: side.clone(),
        scores: GenerationScores::of(&answers),
        loss,
        mean_tokens: tokens as f64 / answers.len().max(1) as f64,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        answers,
    })
}

/// Reads `data` and runs both sides, one model in memory at a time. A file of training
/// records gives prompts with references (prompt/completion pairs fed raw, as they were
/// trained) and the loss on the references; a prompt-only file gives the answers alone.
pub fn compare(
    a: &Side,
    b: &Side,
    data: &Path,
    limit: Option<usize>,
    opts: &CompareOptions,
    mut progress: impl FnMut(&str),
) -> Result<Comparison> {
    let limit = limit.unwrap_or(usize::MAX);
    let (prompts, records) = match crate::data::read_jsonl(data, None, BadRecordPolicy::Error) {
        Ok(ds) => {
            let records: Vec<Example> = ds.examples.into_iter().take(limit).collect();
            (super::generation::eval_prompts(&records, limit), Some(records))
        }
        Err(_) => {
            let prompts = crate::data::read_prompts(data)?.into_iter().take(limit);
            (prompts.map(|(line, p)| EvalPrompt::from_prompt_record(line, p)).collect(), None)
        }
    };
    anyhow::ensure!(!prompts.is_empty(), "{}: no prompts", data.display());
    let ra = run_side(a, &prompts, records.as_deref(), opts, &mut progress)?;
    let rb = run_side(b, &prompts, records.as_deref(), opts, &mut progress)?;
    let same = ra.answers.iter().zip(&rb.answers).filter(|(x, y)| x.text == y.text).count();
    Ok(Comparison {
        data: data.to_path_buf(),
        max_new_tokens: opts.max_new_tokens,
        identical: same as f64 / prompts.len() as f64,
        a: ra,
        b: rb,
        prompts,
    })
}

/// One line of compare.jsonl.
#[derive(Serialize)]
struct Row<'a> {
    line: usize,
    prompt: &'a str,
    reference: Option<&'a str>,
    a: &'a str,
    b: &'a str,
    a_scores: Option<super::text_metrics::TextScores>,
    b_scores: Option<super::text_metrics::TextScores>,
}

/// Writes compare.json (metrics), compare.jsonl (one row per prompt) and compare.md (both
/// for people: the metrics table, then every prompt with both answers) into `dir`.
pub fn write(c: &Comparison, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rows = String::new();
    for (i, p) in c.prompts.iter().enumerate() {
        let (a, b) = (&c.a.answers[i], &c.b.answers[i]);
        let row = Row {
            line: p.line,
            prompt: p.prompt_text(),
            reference: p.reference.as_deref(),
            a: &a.text,
            b: &b.text,
            a_scores: a.scores,
            b_scores: b.scores,
        };
        rows.push_str(&serde_json::to_string(&row)?);
        rows.push('\n');
    }
    let paths = [dir.join("compare.json"), dir.join("compare.jsonl"), dir.join("compare.md")];
    crate::atomic::write_json_file(&paths[0], c)?;
    crate::atomic::write_bytes(&paths[1], rows.as_bytes())?;
    crate::atomic::write_bytes(&paths[2], markdown(c).as_bytes())?;
    Ok(paths.to_vec())
}

/// One mean score of a side's answers, when it has one.
type ScorePick = fn(&GenerationScores) -> Option<f64>;

/// The metrics as rows of (name, A, B), for the terminal and compare.md.
pub fn metric_rows(c: &Comparison) -> Vec<(String, String, String)> {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    let score = |r: &SideResult, pick: ScorePick| f(r.scores.as_ref().and_then(pick));
    let mut rows = vec![
        ("model".to_string(), c.a.side.model.clone(), c.b.side.model.clone()),
        (
            "adapter".to_string(),
            c.a.side.adapter.as_ref().map_or("-".into(), |p| p.display().to_string()),
            c.b.side.adapter.as_ref().map_or("-".into(), |p| p.display().to_string()),
        ),
        ("loss on references".to_string(), f(c.a.loss), f(c.b.loss)),
    ];
    let metrics: [(&str, ScorePick); 4] = [
        ("exact match", |s| Some(s.mean.exact_match)),
        ("token F1", |s| Some(s.mean.token_f1)),
        ("ROUGE-L", |s| Some(s.mean.rouge_l)),
        ("JSON valid", |s| s.mean.json_valid),
    ];
    for (name, pick) in metrics {
        rows.push((name.to_string(), score(&c.a, pick), score(&c.b, pick)));
    }
    rows.push(("mean answer tokens".into(), format!("{:.1}", c.a.mean_tokens), format!("{:.1}", c.b.mean_tokens)));
    rows.push(("tokens/s".into(), format!("{:.1}", c.a.tokens_per_second), format!("{:.1}", c.b.tokens_per_second)));
    rows
}

fn markdown(c: &Comparison) -> String {
    let mut md = format!(
        "# Comparison: A = `{}`, B = `{}`\n\n{} prompts from `{}`, greedy, at most {} new tokens; identical answers: {:.1}%.\n\n| metric | A | B |\n|---|---|---|\n",
        c.a.side.label,
        c.b.side.label,
        c.prompts.len(),
        c.data.display(),
        c.max_new_tokens,
        100.0 * c.identical
    );
    for (name, a, b) in metric_rows(c) {
        md.push_str(&format!("| {} | {} | {} |\n", cell(&name), cell(&a), cell(&b)));
    }
    md.push_str("\n## Answers\n\n| line | prompt | reference | A | B |\n|---|---|---|---|---|\n");
    for (i, p) in c.prompts.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            p.line,
            cell(p.prompt_text()),
            cell(p.reference.as_deref().unwrap_or("")),
            cell(&c.a.answers[i].text),
            cell(&c.b.answers[i].text)
        ));
    }
    md
}
