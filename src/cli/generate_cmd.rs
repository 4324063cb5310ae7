//! `loratune generate`: text from a model (and adapter) for one prompt, streamed to the
//! terminal, or for every record of a JSONL file, written as JSONL.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

use crate::chat::{Message, Role};
use crate::config::{DeviceName, EnvKnobs};
use crate::generate::{self, GenerateOptions, Generation, Generator, SamplingParams};
use crate::model::{self, FloatDtype, LoadOptions, ModelSource};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Base model: a Hugging Face layout folder, a hub id (org/name) or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// A LoRA adapter folder (PEFT layout), applied unmerged.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// One prompt (a user message); the answer streams to stdout.
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    pub prompt: Option<String>,
    /// JSONL prompts: any training record (its last assistant turn is kept as `reference`),
    /// {"prompt": ...}, or messages ending with a user turn. Results go to --out.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// System message put before each prompt that has none.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 is greedy decoding (deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Feed the prompt text as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Do not stop at EOS / end of turn (fixed-length runs for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceName::Auto)]
    pub device: DeviceName,
    /// Compute dtype (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<FloatDtype>,
    /// Batch mode's output file (JSONL, one line per prompt).
    #[arg(long, default_value = "generations.jsonl")]
    pub out: PathBuf,
    /// Also write the single prompt's result (and timings) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One line of batch output.
#[derive(Serialize)]
struct Row<'a> {
    line: usize,
    prompt: &'a str,
    messages: &'a [Message],
    output: &'a str,
    reference: Option<&'a str>,
    prompt_tokens: usize,
    tokens: usize,
    stop: generate::StopReason,
    seconds: f64,
    tokens_per_second: f64,
}

pub fn run(a: GenerateArgs, env: &EnvKnobs) -> Result<()> {
    let sampling = SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    sampling.validate().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let opts = GenerateOptions { max_new_tokens: a.max_new_tokens, sampling, ignore_eos: a.ignore_eos };
    // Read the prompts before spending time on the model.
    let prompts = match (&a.prompt, &a.data) {
        (Some(p), _) => vec![(
            0,
            crate::data::PromptRecord { messages: vec![Message::new(Role::User, p.clone())], reference: None },
        )],
        (None, Some(path)) => crate::data::read_prompts(path)?,
        (None, None) => bail!("give --prompt TEXT or --data FILE.jsonl"),
    };

    let device = super::open_device(a.device)?;
    let mut load = LoadOptions::for_device(device, env.hub.options());
    if let Some(d) = a.dtype {
        load.dtype = d.dtype();
    }
    let source = ModelSource::parse(&a.model)?;
    let t0 = std::time::Instant::now();
    let loaded = model::load(&source, &load).with_context(|| format!("loading model {}", a.model))?;
    eprintln!("loaded {} in {:.2}s", loaded.identity.source, t0.elapsed().as_secs_f64());
    let lora = match &a.adapter {
        Some(dir) => Some(crate::lora::load_adapter(dir, &loaded.model.config, &load.device)?),
        None => None,
    };
    let extra_stops = if loaded.identity.resolved.is_dir() {
        generate::generation_config_stop_ids(&loaded.identity.resolved)
    } else {
        Vec::new()
    };
    let gen = Generator::new(&loaded.model, lora.as_ref(), &loaded.tokenizer, &extra_stops);
    if !a.raw && loaded.tokenizer.chat_template.is_none() {
        bail!("{} has no chat template; pass --raw to use the prompt text as it is", a.model);
    }

    let with_system = |messages: &[Message]| -> Vec<Message> {
        let mut m = messages.to_vec();
        if let Some(s) = &a.system {
            if m.first().map(|x| x.role) != Some(Role::System) {
                m.insert(0, Message::new(Role::System, s.clone()));
            }
        }
        m
    };

    if a.data.is_none() {
        let messages = with_system(&prompts[0].1.messages);
        let ids = gen.prompt_ids(&messages, a.raw)?;
        let mut stdout = std::io::stdout();
        let g = gen.generate(&ids, &opts, |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        })?;
        println!();
        report(&g);
        if let Some(path) = &a.json {
            crate::atomic::write_json_file(path, &g)?;
        }
        return Ok(());
    }

    // Batch: rows go to a side file as they finish, which becomes --out at the end.
    let partial = a.out.with_extension("jsonl.partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?,
    );
    let (mut new_tokens, mut seconds) = (0usize, 0f64);
    for (i, (line, p)) in prompts.iter().enumerate() {
        let messages = with_system(&p.messages);
        let ids = gen
            .prompt_ids(&messages, a.raw)
            .with_context(|| format!("{}:{line}", a.data.as_ref().expect("batch").display()))?;
        let g = gen.generate(&ids, &opts, |_| {})?;
        let secs = g.prefill_seconds + g.decode_seconds;
        new_tokens += g.output_ids.len();
        seconds += secs;
        let row = Row {
            line: *line,
            prompt: &messages.last().expect("ends with a user turn").content,
            messages: &messages,
            output: &g.text,
            reference: p.reference.as_deref(),
            prompt_tokens: g.prompt_tokens,
            tokens: g.output_ids.len(),
            stop: g.stop,
            seconds: secs,
            tokens_per_second: g.output_ids.len() as f64 / secs.max(1e-9),
        };
        writeln!(file, "{}", serde_json::to_string(&row)?)?;
        eprintln!(
            "[{}/{}] line {line}: {} tokens in {secs:.2}s ({:?})",
            i + 1,
            prompts.len(),
            g.output_ids.len(),
            g.stop
        );
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "generated    {} prompts, {new_tokens} tokens in {seconds:.1}s ({:.1} tokens/s)",
        prompts.len(),
        new_tokens as f64 / seconds.max(1e-9)
    );
    println!("wrote        {}", a.out.display());
    Ok(())
}

fn report(g: &Generation) {
    eprintln!(
        "prompt {} tokens, generated {} ({:?}); prefill {:.3}s, decode {:.1} tokens/s",
        g.prompt_tokens,
        g.output_ids.len(),
        g.stop,
        g.prefill_seconds,
        g.decode_tokens_per_second()
    );
}
