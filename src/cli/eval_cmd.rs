//! `loratune eval`: loss and perplexity of a model on a JSONL data set.

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

use crate::config::{DeviceName, EnvKnobs};
use crate::data::{self, BadRecordPolicy, FormatChoice};
use crate::encode;
use crate::eval::{self, LossSummary};
use crate::model::{self, FloatDtype, LoadOptions, ModelIdentity, ModelSource};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Base model: a Hugging Face layout folder, a hub id (org/name) or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// A LoRA adapter folder (PEFT format: adapter_model.safetensors + adapter_config.json),
    /// e.g. a training run's output folder, applied on top of the base model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSONL data file(s).
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Record format: auto (detected per file), alpaca, messages, sharegpt, prompt-completion, text.
    #[arg(long, default_value_t = FormatChoice::Auto)]
    pub format: FormatChoice,
    /// Longer examples are truncated to this many tokens.
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// What to do with a malformed record: error (stop) or skip (count and report).
    #[arg(long, default_value_t = BadRecordPolicy::Error)]
    pub on_bad_record: BadRecordPolicy,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceName::Auto)]
    pub device: DeviceName,
    /// Compute dtype (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<FloatDtype>,
    /// Where to write the JSON result.
    #[arg(long, default_value = "eval.json")]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct FileReport {
    path: PathBuf,
    format: String,
    records: usize,
    skipped: usize,
    skipped_reasons: Vec<String>,
    truncated: usize,
}

#[derive(Serialize)]
struct EvalReport {
    model: ModelIdentity,
    adapter: Option<PathBuf>,
    device: String,
    dtype: String,
    max_seq_len: usize,
    batch_size: usize,
    load_seconds: f64,
    files: Vec<FileReport>,
    #[serde(flatten)]
    summary: LossSummary,
}

pub fn run(a: EvalArgs, env: &EnvKnobs) -> Result<()> {
    let (format, policy) = (a.format.fixed(), a.on_bad_record);
    anyhow::ensure!(a.max_seq_len >= 2, "--max-seq-len must be at least 2");

    // Read and validate the data before spending time on the model.
    let datasets = a.data.iter().map(|p| data::read_jsonl(p, format, policy)).collect::<Result<Vec<_>, _>>()?;

    let device = super::open_device(a.device)?;
    let mut opts = LoadOptions::for_device(device, env.hub.options());
    if let Some(d) = a.dtype {
        opts.dtype = d.dtype();
    }
    let source = ModelSource::parse(&a.model)?;
    let t0 = std::time::Instant::now();
    let loaded = model::load(&source, &opts).with_context(|| format!("loading model {}", a.model))?;
    let load_seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "loaded {} ({} parameters) in {:.2}s",
        loaded.identity.source, loaded.identity.num_parameters, load_seconds
    );

    let mut examples = Vec::new();
    let mut files = Vec::new();
    for ds in &datasets {
        let mut truncated = 0;
        for ex in &ds.examples {
            let enc = encode::encode(&loaded.tokenizer, &ex.record, a.max_seq_len)
                .with_context(|| format!("{}:{}", ds.path.display(), ex.line))?;
            truncated += usize::from(enc.truncated);
            examples.push(enc);
        }
        if let Some(report) = ds.skip_report(3) {
            eprintln!("{report}");
        }
        files.push(FileReport {
            path: ds.path.clone(),
            format: ds.format.to_string(),
            records: ds.examples.len(),
            skipped: ds.skipped.len(),
            skipped_reasons: ds.skipped.iter().take(10).map(|e| e.to_string()).collect(),
            truncated,
        });
    }

    let adapter = match &a.adapter {
        Some(dir) => {
            let w = crate::lora::load_adapter(dir, &loaded.model.config, &opts.device)?;
            eprintln!(
                "adapter {} (r={}, alpha={}, {} tensors)",
                dir.display(),
                w.spec.r,
                w.spec.alpha,
                w.named_tensors().len()
            );
            Some(w)
        }
        None => None,
    };
    let pad = loaded.tokenizer.pad_id.or(loaded.tokenizer.eos_id).unwrap_or(0);
    let bar = super::progress::bar(examples.len() as u64, "eval");
    let summary = eval::evaluate(&loaded.model, adapter.as_ref(), &examples, a.batch_size, pad, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();

    println!("model        {}", loaded.identity.source);
    for f in &files {
        println!(
            "data         {} ({}, {} records{}{})",
            f.path.display(),
            f.format,
            f.records,
            if f.skipped > 0 { format!(", {} skipped", f.skipped) } else { String::new() },
            if f.truncated > 0 { format!(", {} truncated", f.truncated) } else { String::new() }
        );
    }
    println!("tokens       {} ({} targets)", summary.total_tokens, summary.target_tokens);
    println!("loss         {:.6}", summary.loss);
    println!("perplexity   {:.4}", summary.perplexity);
    println!("throughput   {:.0} tokens/s ({:.2}s)", summary.tokens_per_second, summary.seconds);

    let report = EvalReport {
        model: loaded.identity,
        adapter: a.adapter.clone(),
        device: crate::model::device_label(&opts.device),
        dtype: opts.dtype.as_str().to_string(),
        max_seq_len: a.max_seq_len,
        batch_size: a.batch_size,
        load_seconds,
        files,
        summary,
    };
    crate::atomic::write_json_file(&a.out, &report)?;
    println!("wrote        {}", a.out.display());
    Ok(())
}
