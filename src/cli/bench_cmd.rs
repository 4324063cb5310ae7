//! `loratune bench`: training throughput on the fixed job of `crate::bench`, and with
//! `--peer peft` the same job run by transformers + PEFT (scripts/bench/peft_cpu.py) in
//! the same invocation, side by side.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::bench::{self, BenchOptions, BenchResult};
use crate::config::{DeviceName, EnvKnobs};
use crate::lora::Target;
use crate::model::quantized::Quantize;
use crate::model::FloatDtype;

const PEER_SCRIPT: &str = "scripts/bench/peft_cpu.py";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    None,
    Peft,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Base model: a Hugging Face layout folder, a hub id or a GGUF file.
    #[arg(long, default_value = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: String,
    /// JSONL of conversations (`messages`); all of them make the token stream.
    #[arg(long, default_value = "examples/data/calendar-train.jsonl")]
    pub data: PathBuf,
    /// Instead of --model and --data: random weights of an `init-model` preset's shape
    /// (e.g. llama2-7b), built on the device, trained on random token ids; no files needed.
    #[arg(long, conflicts_with_all = ["model", "data", "peer"])]
    pub preset: Option<String>,
    /// Tokens per window (also --seq).
    #[arg(long, visible_alias = "seq", default_value_t = 256)]
    pub seq_len: usize,
    /// Windows per step (also --batch).
    #[arg(long, visible_alias = "batch", default_value_t = 4)]
    pub batch_size: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub r: usize,
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    /// Comma-separated projections that get an adapter.
    #[arg(long, default_value = "q_proj,k_proj,v_proj,o_proj")]
    pub targets: String,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceName::Auto)]
    pub device: DeviceName,
    /// QLoRA: keep the projections quantized (gguf: a GGUF model's own blocks; q4_0, q4_1,
    /// q4_k, q8_0: quantized at load, or after drawing a preset).
    #[arg(long)]
    pub quantize: Option<Quantize>,
    /// Compute dtype (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<FloatDtype>,
    /// Keep only each layer's input and recompute it in backward (both sides).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Checkpoint only the first N layers (implies --gradient-checkpointing).
    #[arg(long)]
    pub checkpoint_layers: Option<usize>,
    /// With checkpointing on CUDA, keep the checkpointed inputs on the GPU instead of in
    /// pinned host memory (the default offloads them, as `train.offload_checkpoints`).
    #[arg(long)]
    pub no_offload_checkpoints: bool,
    /// Also time every operation of the timed steps and print where a step's time goes
    /// (synchronizes the device around each one, so the steps themselves run slower).
    #[arg(long)]
    pub profile: bool,
    /// Also run the same job with transformers + PEFT (CPU only) and compare.
    #[arg(long, value_enum, default_value_t = Peer::None)]
    pub peer: Peer,
    /// The Python that runs the peer (the reference venv of scripts/reference/setup-venv.sh).
    #[arg(long, default_value = "scripts/reference/.venv/bin/python")]
    pub python: String,
    /// Write the result (ours, peer, ratio) here as JSON.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
    /// Data parallel as `train --gpus N`: N processes, each training its own windows, the
    /// gradients summed over them every step; tokens/s is then per GPU, and the group's
    /// total and the all-reduce time are printed too.
    #[arg(long, value_name = "N", conflicts_with = "peer")]
    pub gpus: Option<usize>,
    /// Instead of a training step: time attention alone, forward and backward, at these
    /// comma-separated lengths (B 1, causal, bf16, CUDA) for each engine (flash, cuDNN), and
    /// print TFLOP/s; --attention-heads sets the shape.
    #[arg(long, value_name = "T,T,...", value_delimiter = ',', conflicts_with_all = ["peer", "gpus"])]
    pub attention: Option<Vec<usize>>,
    /// Query heads, kv heads and head dim of --attention.
    #[arg(long, value_name = "NH,NKV,D", value_delimiter = ',', default_value = "32,32,128")]
    pub attention_heads: Vec<usize>,
}

#[derive(Serialize)]
struct Combined<'a> {
    ours: &'a BenchResult,
    peer: Option<&'a Value>,
    /// ours / peer tokens per second.
    ratio: Option<f64>,
    /// The peer's token stream is the same ids as ours (sha256 of the ids).
    same_stream: Option<bool>,
    peer_loadavg_start: Option<[f64; 3]>,
    peer_loadavg_end: Option<[f64; 3]>,
}

fn parse_targets(spec: &str) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match Target::from_name(name) {
            Some(t) => out.push(t),
            None => bail!(
                "--targets: unknown module \"{name}\" (expected some of {})",
                Target::ALL.map(|t| t.name()).join(", ")
            ),
        }
    }
    out.sort();
    out.dedup();
    anyhow::ensure!(!out.is_empty(), "--targets is empty");
    Ok(out)
}

/// A repository-relative path: as given when it exists from here, else under the source
/// tree loratune was built from.
fn repo_path(p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_relative() && !path.exists() {
        let alt = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
        if alt.exists() {
            return alt;
        }
    }
    path
}

/// `bench --attention`: one line per engine and length, and the JSON when asked.
fn run_attention(a: &BenchArgs, lens: &[usize]) -> Result<()> {
    let [nh, nkv, d] = a.attention_heads[..] else { bail!("--attention-heads takes three numbers: NH,NKV,D") };
    let device = super::open_device(a.device)?;
    let rates = bench::attention::run(&device, lens, nh, nkv, d)?;
    println!(
        "attention, B 1, {nh}/{nkv} heads of {d}, causal, bf16 (median ms; TFLOP/s, backward = 2.5x forward FLOPs)"
    );
    println!("{:>7} {:>6} {:>9} {:>9} {:>9} {:>9}", "T", "engine", "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s");
    for r in &rates {
        println!(
            "{:>7} {:>6} {:>9.3} {:>9.0} {:>9.3} {:>9.0}",
            r.t, r.engine, r.fwd_ms, r.fwd_tflops, r.bwd_ms, r.bwd_tflops
        );
    }
    if let Some(path) = &a.json {
        crate::atomic::write_json_file(path, &rates)?;
    }
    Ok(())
}

pub fn run(a: BenchArgs, env: &EnvKnobs) -> Result<()> {
    if let Some(lens) = &a.attention {
        return run_attention(&a, lens);
    }
    let (device, group) = super::ranks::device_and_group(a.gpus.unwrap_or(1), a.device, None, env)?;
    let main = group.is_main();
    let targets = parse_targets(&a.targets)?;

    // Check the peer can run before spending minutes on our side.
    let peer = if a.peer == Peer::Peft {
        if !device.is_cpu() {
            bail!("--peer peft runs {PEER_SCRIPT} on the CPU; compare on the CPU with --device cpu");
        }
        let python = if a.python.contains('/') { repo_path(&a.python) } else { PathBuf::from(&a.python) };
        let script = repo_path(PEER_SCRIPT);
        if a.python.contains('/') && !python.exists() {
            bail!(
                "--peer peft needs the reference Python venv, and {} does not exist: create it with \
                 scripts/reference/setup-venv.sh (Python 3 and PyPI access; installs torch, transformers, peft), \
                 or point --python at a Python that has torch, transformers, peft and gguf",
                python.display()
            );
        }
        if !script.exists() {
            bail!("--peer peft: {PEER_SCRIPT} not found (run loratune bench from the loratune source tree)");
        }
        Some((python, script))
    } else {
        None
    };

    let opts = BenchOptions {
        model: a.model.clone(),
        data: a.data.clone(),
        preset: a.preset.clone(),
        seq_len: a.seq_len,
        batch_size: a.batch_size,
        r: a.r,
        alpha: a.alpha,
        targets,
        lr: a.lr,
        warmup: a.warmup,
        steps: a.steps,
        device,
        dtype: a.dtype.map(FloatDtype::dtype),
        gradient_checkpointing: a.gradient_checkpointing || a.checkpoint_layers.is_some(),
        checkpoint_layers: a.checkpoint_layers,
        offload_checkpoints: !a.no_offload_checkpoints,
        profile: a.profile,
        quantize: a.quantize,
        environment: env.clone(),
    };
    if main {
        eprintln!(
            "loratune: {} -> windows of {} x batch {}; r={} alpha={} on {}; {} warmup + {} timed steps",
            match &opts.preset {
                Some(p) => format!("preset {p}, random token ids"),
                None => format!("{} conversations", opts.data.display()),
            },
            opts.seq_len,
            opts.batch_size,
            opts.r,
            opts.alpha,
            opts.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
            opts.warmup,
            opts.steps
        );
    }
    let ours = bench::run(&opts, &group, |s| {
        if !main {
            return;
        }
        eprintln!(
            "  step {:3}{}  loss {:.4}  {:.3} s  {:.0} tokens/s",
            s.step,
            if s.timed { "" } else { " (warmup)" },
            s.loss,
            s.seconds,
            s.tokens as f64 / s.seconds
        )
    })
    .with_context(|| format!("rank {}", group.rank))?;
    if !main {
        return Ok(());
    }
    print_ours(&ours);

    let (mut peer_json, mut peer_la) = (None, (None, None));
    if let Some((python, script)) = peer {
        peer_la.0 = bench::loadavg();
        let v = run_peer(&python, &script, &a, &ours)?;
        peer_la.1 = bench::loadavg();
        peer_json = Some(v);
    }
    let ratio = peer_json.as_ref().and_then(|p| p["tokens_per_s"].as_f64()).map(|t| ours.tokens_per_s / t);
    let same_stream = peer_json.as_ref().and_then(|p| p["stream_sha256"].as_str()).map(|h| h == ours.stream_sha256);
    if let Some(p) = &peer_json {
        print_table(&ours, p, ratio, same_stream);
    }
    if let Some(out) = &a.json {
        let combined = Combined {
            ours: &ours,
            peer: peer_json.as_ref(),
            ratio,
            same_stream,
            peer_loadavg_start: peer_la.0,
            peer_loadavg_end: peer_la.1,
        };
        crate::atomic::write_json_file(out, &combined)?;
        println!("wrote        {}", out.display());
    }
    Ok(())
}

fn fmt_la(la: Option<[f64; 3]>) -> String {
    la.map_or("?".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
}

fn fmt_cores(other: Option<f64>, steal: Option<f64>) -> String {
    match (other, steal) {
        (Some(o), Some(s)) => format!("{o:.2} + {s:.2} cores"),
        _ => "?".into(),
    }
}

fn fmt_mib(x: Option<f64>) -> String {
    x.map_or("?".into(), |m| format!("{m:.0} MiB"))
}

fn print_ours(r: &BenchResult) {
    println!("model        {} ({} on {}, loaded in {:.2}s)", r.model, r.dtype, r.device, r.load_s);
    match r.conversations {
        0 => println!("data         {}: {} tokens, {} windows of {}", r.data, r.stream_tokens, r.windows, r.seq_len),
        n => println!(
            "data         {}: {n} conversations, {} tokens, {} windows of {}",
            r.data, r.stream_tokens, r.windows, r.seq_len
        ),
    }
    println!("lora         r={} alpha={} on {} ({} parameters)", r.r, r.alpha, r.targets.join(","), r.lora_parameters);
    match &r.quantize {
        Some(q) => println!(
            "base         projections quantized ({q}): {:.2} GiB of blocks",
            r.projection_bytes as f64 / (1u64 << 30) as f64
        ),
        None => println!("base         projections dense: {:.2} GiB", r.projection_bytes as f64 / (1u64 << 30) as f64),
    }
    println!("threads      {} (CANDLE_NUM_THREADS={})", r.threads, r.candle_num_threads.as_deref().unwrap_or("unset"));
    println!(
        "step         median {:.3}s, mean {:.3}s, min {:.3}s over {} timed steps (batch {} x {} tokens)",
        r.step_s_median, r.step_s_mean, r.step_s_min, r.steps, r.batch_size, r.seq_len
    );
    println!("throughput   {:.1} tokens/s (median; best {:.1})", r.tokens_per_s, r.tokens_per_s_best);
    if let Some(g) = &r.ranks {
        println!(
            "ranks        {} ({:?}): {:.1} tokens/s in all, {:.1} per rank; gradient all-reduce {:.2} ms median ({:.1} MiB)",
            g.ranks,
            g.collectives,
            g.tokens_per_s_all_ranks,
            r.tokens_per_s,
            1e3 * g.all_reduce_s_median,
            g.all_reduce_bytes as f64 / (1u64 << 20) as f64
        );
    }
    println!("loss         first {:.4} (base model), last {:.4}", r.first_loss, r.last_loss);
    println!("memory       peak RSS {} (training only: {})", fmt_mib(r.peak_rss_mib), fmt_mib(r.train_peak_rss_mib));
    if let Some(m) = &r.peak_device {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        println!(
            "device mem   peak {:.2} GiB (memory pool {:.2} GiB + {:.2} GiB in use at open; tensors {:.2} GiB at most)",
            gib(m.device_total()),
            gib(m.reserved),
            gib(m.baseline),
            gib(m.tensors)
        );
    }
    match (r.matmul_tflops, r.mfu) {
        (Some(mm), Some(mfu)) => println!(
            "compute      {:.2} GFLOP/token, {:.1} TFLOP/s achieved; {} matmul {:.1} TFLOP/s measured -> MFU {:.1}%",
            r.flops_per_token / 1e9,
            r.achieved_tflops,
            r.dtype,
            mm,
            100.0 * mfu
        ),
        _ => println!(
            "compute      {:.2} GFLOP/token, {:.2} TFLOP/s achieved",
            r.flops_per_token / 1e9,
            r.achieved_tflops
        ),
    }
    println!("load avg     {} at the first step, {} after the last", fmt_la(r.loadavg_start), fmt_la(r.loadavg_end));
    println!(
        "contention   {} (CPU used by other processes + stolen, during the timed steps)",
        fmt_cores(r.other_cpu_cores, r.steal_cores)
    );
    if let Some(regions) = &r.profile {
        let total: f64 = regions.iter().map(|x| x.seconds).sum();
        println!("profile      per timed step, each region between device synchronizations ({:.3} s in all):", total);
        for x in regions {
            println!(
                "  {:<28} {:>9.2} ms {:>5.1}%  {:>5} calls",
                x.name,
                1e3 * x.seconds,
                100.0 * x.seconds / total,
                x.calls
            );
        }
    }
}

fn run_peer(python: &Path, script: &Path, a: &BenchArgs, ours: &BenchResult) -> Result<Value> {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--model", &a.model])
        .arg("--data")
        .arg(&a.data)
        .args(["--seq-len", &a.seq_len.to_string()])
        .args(["--batch-size", &a.batch_size.to_string()])
        .args(["--r", &a.r.to_string()])
        .args(["--alpha", &a.alpha.to_string()])
        .args(["--targets", &ours.targets.join(",")])
        .args(["--lr", &a.lr.to_string()])
        .args(["--warmup", &a.warmup.to_string()])
        .args(["--steps", &a.steps.to_string()])
        .args(["--threads", &ours.threads.to_string()])
        .args(["--dtype", &ours.dtype]);
    if a.gradient_checkpointing {
        cmd.arg("--gradient-checkpointing");
    }
    eprintln!("peft: {} {}", python.display(), script.display());
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().with_context(|| {
        format!("running {} (create the venv with scripts/reference/setup-venv.sh)", python.display())
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} {} failed ({}); its stdout ended with: {}",
            python.display(),
            script.display(),
            out.status,
            stdout.lines().last().unwrap_or("")
        );
    }
    let last =
        stdout.lines().rev().find(|l| !l.trim().is_empty()).context("the PEFT script printed nothing on stdout")?;
    let v: Value = serde_json::from_str(last)
        .with_context(|| format!("the PEFT script's last stdout line is not JSON: {last}"))?;
    anyhow::ensure!(v["tokens_per_s"].is_number(), "the PEFT script's JSON has no tokens_per_s: {last}");
    Ok(v)
}

fn print_table(ours: &BenchResult, p: &Value, ratio: Option<f64>, same_stream: Option<bool>) {
    let f = |k: &str| p[k].as_f64();
    let num = |x: Option<f64>, prec: usize| x.map_or("?".into(), |x| format!("{x:.prec$}"));
    let peft_name =
        format!("PEFT {} (torch {})", p["peft"].as_str().unwrap_or("?"), p["torch"].as_str().unwrap_or("?"));
    println!();
    println!("{:<28} {:>16} {:>26}", "", "loratune", peft_name);
    let row = |name: &str, a: String, b: String| println!("{name:<28} {a:>16} {b:>26}");
    row("tokens/s (median step)", num(Some(ours.tokens_per_s), 1), num(f("tokens_per_s"), 1));
    row("tokens/s (fastest step)", num(Some(ours.tokens_per_s_best), 1), num(f("tokens_per_s_best"), 1));
    row(
        "step s median / mean / min",
        format!("{:.2} / {:.2} / {:.2}", ours.step_s_median, ours.step_s_mean, ours.step_s_min),
        format!("{} / {} / {}", num(f("step_s_median"), 2), num(f("step_s_mean"), 2), num(f("step_s_min"), 2)),
    );
    row("first loss (step 0, base)", num(Some(ours.first_loss), 5), num(f("first_loss"), 5));
    row("last loss", num(Some(ours.last_loss), 5), num(f("last_loss"), 5));
    row("peak RSS MiB (process)", num(ours.peak_rss_mib, 0), num(f("peak_rss_mib"), 0));
    row("peak RSS MiB (training)", num(ours.train_peak_rss_mib, 0), num(f("train_peak_rss_mib"), 0));
    row(
        "stream tokens",
        ours.stream_tokens.to_string(),
        p["stream_tokens"].as_u64().map_or("?".into(), |n| n.to_string()),
    );
    row(
        "threads",
        format!("{} (CANDLE {})", ours.threads, ours.candle_num_threads.as_deref().unwrap_or("unset")),
        p["threads"].to_string(),
    );
    row("load s", num(Some(ours.load_s), 2), num(f("load_s"), 2));
    row("load avg (1 min) at start", num(ours.loadavg_start.map(|l| l[0]), 2), num(p["loadavg_start"][0].as_f64(), 2));
    row(
        "other + stolen CPU (cores)",
        fmt_cores(ours.other_cpu_cores, ours.steal_cores),
        fmt_cores(f("other_cpu_cores"), f("steal_cores")),
    );
    println!();
    match ratio {
        Some(r) => println!("ratio        {r:.2}x PEFT's tokens/s (loratune / PEFT, median step)"),
        None => println!("ratio        ? (no tokens_per_s from the peer)"),
    }
    match same_stream {
        Some(true) => println!("stream       identical token ids on both sides (sha256 {})", &ours.stream_sha256[..16]),
        Some(false) => println!(
            "stream       WARNING: the token streams differ (sha256 {} vs {}): not the same job",
            &ours.stream_sha256[..16],
            p["stream_sha256"].as_str().unwrap_or("?")
        ),
        None => println!("stream       the peer reported no stream hash; compare the token counts above"),
    }
    let busy = |o: Option<f64>, s: Option<f64>| o.zip(s).is_some_and(|(o, s)| o + s > 0.2);
    if busy(ours.other_cpu_cores, ours.steal_cores) || busy(f("other_cpu_cores"), f("steal_cores")) {
        println!("noise        other processes used CPU during the timed steps: the figures are noisy; rerun on an idle machine");
    }
    if let Some(b) = f("first_loss") {
        let a = ours.first_loss;
        println!("loss         step-0 difference {:.2e} (both the base model: B = 0); later losses differ a little because A's random init differs", (a - b).abs());
    }
}
