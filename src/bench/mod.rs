//! `loratune bench`: training throughput on a fixed, tool-independent job, the same one
//! `scripts/bench/peft_cpu.py` runs with transformers + PEFT (its docstring is the spec;
//! keep the two in sync).
//!
//! The job: every conversation of a JSONL file rendered with the model's chat template (no
//! generation prompt), tokenized without added special tokens and concatenated in file
//! order; that stream cut into consecutive windows of exactly `seq_len` tokens (the tail is
//! dropped); step s takes the `batch_size` windows (s*B + k) mod n_windows; every token is
//! a target (the first of each window only as context, as in HF's label shift); LoRA
//! initialised as loratune does (seed 0, B = 0); AdamW with a constant learning rate,
//! weight decay 0, no gradient clipping; one optimizer step per batch. `warmup` steps are
//! untimed, then `steps` are timed one by one (batch upload and mask, forward, backward,
//! AdamW update).

pub mod attention;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::EnvKnobs;
use crate::data::{self, BadRecordPolicy, DataFormat};
use crate::encode::EncodedExample;
use crate::lora::{LoraSpec, LoraWeights, Target};
use crate::model::quantized::Quantize;
use crate::model::{self, LoadOptions, ModelSource};
use crate::profile::{timed, Profiler, RegionTime};
use crate::tokenizer::Tokenizer;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::step::{self, LoraGrads, StepOptions, TrainBatch};

/// The adapter's init seed; PEFT's side uses torch.manual_seed(0) (a different RNG, so
/// the A matrices differ; B = 0 on both sides makes step 0 the base model on both).
pub const SEED: u64 = 0;

/// What to run. `Default` is the documented job (SmolLM2-135M, calendar-train, CPU).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: String,
    pub data: PathBuf,
    /// Instead of `model` and `data`: random weights of this `init-model` preset's shape,
    /// built on the device, and random token ids.
    pub preset: Option<String>,
    pub seq_len: usize,
    pub batch_size: usize,
    pub r: usize,
    pub alpha: f64,
    /// Sorted, no duplicates.
    pub targets: Vec<Target>,
    pub lr: f64,
    pub warmup: usize,
    pub steps: usize,
    pub device: Device,
    /// None: the device's default (f32 on CPU, bf16 on CUDA).
    pub dtype: Option<DType>,
    pub gradient_checkpointing: bool,
    /// With checkpointing, how many leading layers are recomputed (None: all).
    pub checkpoint_layers: Option<usize>,
    /// With checkpointing on CUDA, the inputs wait in pinned host memory.
    pub offload_checkpoints: bool,
    /// Time every operation of the timed steps (synchronizing around each: slower steps).
    pub profile: bool,
    /// QLoRA: the projections in quantized blocks (a preset is quantized after it is drawn).
    pub quantize: Option<Quantize>,
    /// The environment variables, as the command line read them.
    pub environment: EnvKnobs,
}

/// Data-parallel figures of a benchmark run by several ranks (`bench --gpus N`).
#[derive(Debug, Clone, Serialize)]
pub struct RanksResult {
    pub ranks: usize,
    pub collectives: crate::distributed::Backend,
    /// The group's tokens per second: each rank's batch over the median step.
    pub tokens_per_s_all_ranks: f64,
    /// Median time of the gradient all-reduce, inside the step time.
    pub all_reduce_s_median: f64,
    /// Bytes each rank contributes to the all-reduce (f32 gradients).
    pub all_reduce_bytes: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            model: "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            data: "examples/data/calendar-train.jsonl".into(),
            preset: None,
            seq_len: 256,
            batch_size: 4,
            r: 16,
            alpha: 32.0,
            targets: vec![Target::QProj, Target::KProj, Target::VProj, Target::OProj],
            lr: 1e-4,
            warmup: 2,
            steps: 8,
            device: Device::Cpu,
            dtype: None,
            gradient_checkpointing: false,
            checkpoint_layers: None,
            offload_checkpoints: true,
            profile: false,
            quantize: None,
            environment: EnvKnobs::default(),
        }
    }
}

/// One step as it happens (for progress lines).
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// 0-based, warmup steps included.
    pub step: usize,
    pub timed: bool,
    pub loss: f64,
    pub seconds: f64,
    pub tokens: usize,
}

/// What a benchmark measured; serialises to the `ours` object of `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub tool: &'static str,
    pub version: &'static str,
    pub model: String,
    pub data: String,
    pub device: String,
    pub dtype: String,
    pub seq_len: usize,
    pub batch_size: usize,
    pub r: usize,
    pub alpha: f64,
    pub targets: Vec<&'static str>,
    pub lr: f64,
    pub warmup: usize,
    pub steps: usize,
    pub gradient_checkpointing: bool,
    pub checkpoint_layers: Option<usize>,
    /// Checkpointed inputs waited in host memory (CUDA, with checkpointing).
    pub offload_checkpoints: bool,
    /// QLoRA block format of the projections, if quantized.
    pub quantize: Option<String>,
    /// Bytes the projection weights take (blocks when quantized).
    pub projection_bytes: usize,
    pub conversations: usize,
    /// Length of the token stream, and the sha256 of its ids as little-endian u32 (the
    /// PEFT side computes the same, so equal hashes mean identical token streams).
    pub stream_tokens: usize,
    pub stream_sha256: String,
    pub windows: usize,
    pub lora_parameters: usize,
    pub load_s: f64,
    /// batch*seq_len / median timed step time.
    pub tokens_per_s: f64,
    /// batch*seq_len / fastest timed step.
    pub tokens_per_s_best: f64,
    pub step_s_median: f64,
    pub step_s_mean: f64,
    pub step_s_min: f64,
    /// Every timed step, in order.
    pub step_s: Vec<f64>,
    /// Loss of every step, warmup included.
    pub losses: Vec<f64>,
    /// Step 0 (the base model, since B = 0) and the last timed step.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Peak resident memory of the whole process (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Peak resident memory from the end of the load to the last step (VmHWM after a
    /// reset through /proc/self/clear_refs), MiB.
    pub train_peak_rss_mib: Option<f64>,
    /// candle_core::utils::get_num_threads() (matmul threads; RAYON_NUM_THREADS or the cores).
    pub threads: usize,
    /// CANDLE_NUM_THREADS as the process saw it (the binary sets 1 when unset: see main.rs).
    pub candle_num_threads: Option<String>,
    /// /proc/loadavg (1, 5, 15 min) when the steps began and ended.
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    /// Cores' worth of CPU that other processes used during the timed steps (/proc/stat
    /// busy time minus this process's), and that the hypervisor stole: how noisy the
    /// figure is. On an otherwise idle machine both are near 0.
    pub other_cpu_cores: Option<f64>,
    pub steal_cores: Option<f64>,
    /// On CUDA: peak device memory from the step's start to the last step (the pool's
    /// high-water marks; `device_total` adds what the device held when opened).
    pub peak_device: Option<crate::gpu::PeakMemory>,
    /// Model FLOPs per trained token (see `flops_per_token`), and what the device did of
    /// them against a measured dense matmul rate in the step's dtype.
    pub flops_per_token: f64,
    pub matmul_tflops: Option<f64>,
    pub achieved_tflops: f64,
    pub mfu: Option<f64>,
    /// With `profile`: time per timed step of each region of the step, largest first
    /// (`seconds` and `calls` per step). Profiled steps synchronize the device around every
    /// region, so they run slower than the throughput above says.
    pub profile: Option<Vec<RegionTime>>,
    /// With several ranks (or a group of one through NCCL): the all-reduce and the
    /// group's throughput; `tokens_per_s` above stays per rank.
    pub ranks: Option<RanksResult>,
}

/// CPU time counters in clock ticks (USER_HZ, 100 on Linux): the whole machine's busy
/// and steal time, and this process's own (all threads).
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    pub busy: u64,
    pub steal: u64,
    pub own: u64,
}

impl CpuTimes {
    pub fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let f: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal ...
        let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
        let steal = *f.get(7)?;
        let me = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest: Vec<&str> = me.get(me.rfind(')')? + 1..)?.split_whitespace().collect();
        let own = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        Some(CpuTimes { busy, steal, own })
    }

    /// (other processes' cores, stolen cores) between `self` and `later`, `seconds` apart.
    pub fn contention(self, later: CpuTimes, seconds: f64) -> (f64, f64) {
        let ticks = 100.0 * seconds;
        let other = later.busy.saturating_sub(self.busy).saturating_sub(later.own.saturating_sub(self.own));
        (other as f64 / ticks, later.steal.saturating_sub(self.steal) as f64 / ticks)
    }
}

/// The token stream: every conversation of `path`, rendered (no generation prompt),
/// tokenized without special tokens, concatenated in file order. Returns it with the
/// number of conversations.
pub fn token_stream(path: &Path, tok: &Tokenizer) -> Result<(Vec<u32>, usize)> {
    let ds = data::read_jsonl(path, Some(DataFormat::Messages), BadRecordPolicy::Error)?;
    let mut stream = Vec::new();
    for ex in &ds.examples {
        let messages = ex.record.messages().expect("messages format yields conversations");
        let rendered = tok.render_chat(messages, false).with_context(|| format!("{}:{}", path.display(), ex.line))?;
        stream.extend(tok.encode(&rendered, false).with_context(|| format!("{}:{}", path.display(), ex.line))?);
    }
    Ok((stream, ds.examples.len()))
}

/// sha256 of the ids as little-endian u32, hex.
pub fn stream_hash(stream: &[u32]) -> String {
    let mut h = Sha256::new();
    for id in stream {
        h.update(id.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Consecutive windows of exactly `seq_len` tokens; the tail shorter than one is dropped.
pub fn windows(stream: &[u32], seq_len: usize) -> Vec<&[u32]> {
    stream.chunks_exact(seq_len).collect()
}

/// The windows step `step` trains on: (step*batch_size + k) mod n_windows.
pub fn step_windows(step: usize, batch_size: usize, n_windows: usize) -> Vec<usize> {
    (0..batch_size).map(|k| (step * batch_size + k) % n_windows).collect()
}

/// A window as a training example: every token a target (position 0 only as context:
/// TrainBatch never predicts it, as HF's shifted labels do not).
pub fn window_example(w: &[u32]) -> EncodedExample {
    EncodedExample { input_ids: w.to_vec(), target_mask: vec![1; w.len()], truncated: false }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A field of /proc/self/status in kB, as MiB.
fn proc_status_mib(key: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Peak resident memory so far (VmHWM), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// Resets VmHWM to the current RSS (Linux: "5" into /proc/self/clear_refs).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = text.split_whitespace().take(3).filter_map(|s| s.parse().ok()).collect();
    (v.len() == 3).then(|| [v[0], v[1], v[2]])
}

/// Runs the benchmark; `progress` sees every step as it ends.
/// Runs the benchmark on this rank of `group` (`ProcessGroup::single()` alone): each rank
/// trains its own windows and the LoRA gradients are summed over ranks before the update,
/// as `train` does.
pub fn run(
    opts: &BenchOptions,
    group: &crate::distributed::ProcessGroup,
    mut progress: impl FnMut(&StepReport),
) -> Result<BenchResult> {
    anyhow::ensure!(opts.seq_len >= 2, "seq_len must be at least 2");
    anyhow::ensure!(opts.batch_size >= 1 && opts.steps >= 1, "batch_size and steps must be at least 1");
    anyhow::ensure!(!opts.targets.is_empty(), "no LoRA target modules");

    let (s, b) = (opts.seq_len, opts.batch_size);
    let hub = opts.environment.hub.options();
    let mut load_opts = LoadOptions::for_device(opts.device.clone(), hub.clone());
    if let Some(d) = opts.dtype {
        load_opts.dtype = d;
    }
    load_opts.quantize = opts.quantize;
    let dtype = load_opts.dtype;
    let (model, stream, conversations, pad, model_label, load_s) = match &opts.preset {
        // A preset: random weights of that shape, random token ids; no files at all.
        Some(name) => {
            let cfg = crate::model::init::preset(name).with_context(|| {
                format!("unknown preset {name} (expected one of {})", crate::model::init::PRESETS.join(", "))
            })?;
            let std = crate::model::init::default_init_std(name);
            let t0 = Instant::now();
            let mut model = if opts.device.is_cpu() {
                crate::model::init::random_model_as(&cfg, SEED, std, &opts.device, dtype)?
            } else {
                crate::model::init::random_model_on_device(&cfg, SEED, std, &opts.device, dtype)?
            };
            match opts.quantize {
                Some(Quantize::To(format)) => crate::model::quantized::quantize_model(&mut model, format)?,
                Some(Quantize::Gguf) => anyhow::bail!(
                    "--quantize gguf keeps a GGUF file's blocks; a preset has none (use q4_k, q4_0, q4_1 or q8_0)"
                ),
                None => {}
            }
            opts.device.synchronize()?;
            let load_s = t0.elapsed().as_secs_f64();
            let n = s * b * (opts.warmup + opts.steps) * group.world_size;
            let mut ids = ChaCha8Rng::seed_from_u64(SEED);
            let stream: Vec<u32> = (0..n).map(|_| ids.gen_range(0..cfg.vocab_size as u32)).collect();
            (model, stream, 0, 0, format!("preset {name} (random weights)"), load_s)
        }
        None => {
            // The data first: a bad file should fail before the model load.
            let source = ModelSource::parse(&opts.model).with_context(|| format!("model {}", opts.model))?;
            let tokenizer = model::checkpoint::load_tokenizer(&source, &hub)
                .with_context(|| format!("loading the tokenizer of {}", opts.model))?;
            let (stream, conversations) = token_stream(&opts.data, &tokenizer)?;
            anyhow::ensure!(
                stream.len() >= s,
                "{}: {} tokens, fewer than one window of {s}",
                opts.data.display(),
                stream.len()
            );
            let t0 = Instant::now();
            let loaded = model::load(&source, &load_opts).with_context(|| format!("loading model {}", opts.model))?;
            opts.device.synchronize()?;
            let load_s = t0.elapsed().as_secs_f64();
            let pad = tokenizer.pad_id.or(tokenizer.eos_id).unwrap_or(0);
            (loaded.model, stream, conversations, pad, opts.model.clone(), load_s)
        }
    };
    let wins = windows(&stream, s);
    let examples: Vec<EncodedExample> = wins.iter().map(|w| window_example(w)).collect();

    let spec =
        LoraSpec { r: opts.r, alpha: opts.alpha, dropout: 0.0, targets: opts.targets.clone(), use_rslora: false };
    let mut lora = LoraWeights::init(&spec, &model.config, SEED, &opts.device)?;
    let adam = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = AdamW::new(adam, &lora.tensors())?;
    let step_opts = StepOptions {
        mlp_chunk_rows: None,
        gradient_checkpointing: opts.gradient_checkpointing,
        checkpoint_layers: opts.checkpoint_layers,
        offload_checkpoints: opts.offload_checkpoints,
        dropout: 0.0,
        profiler: None,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(SEED); // draws dropout seeds only; dropout is 0

    let load_peak = peak_rss_mib();
    let reset = reset_peak_rss();
    crate::gpu::reset_peak_memory(&opts.device)?;
    let loadavg_start = loadavg();
    let (mut losses, mut times, mut reduce_times) = (Vec::new(), Vec::new(), Vec::new());
    let grouped = group.backend != crate::distributed::Backend::Single;
    let mut cpu_start = None;
    let profiler = opts.profile.then(|| Profiler::new(&opts.device));
    for step in 0..opts.warmup + opts.steps {
        if step == opts.warmup {
            cpu_start = CpuTimes::now().map(|c| (c, Instant::now()));
        }
        // Rank r of N trains the windows of "step" step * N + r: each rank its own data.
        let rows: Vec<Vec<&EncodedExample>> = step_windows(step * group.world_size + group.rank, b, examples.len())
            .into_iter()
            .map(|i| vec![&examples[i]])
            .collect();
        // Only timed steps are profiled, so the profile describes the same steps.
        let prof = profiler.as_ref().filter(|_| step >= opts.warmup);
        let t = Instant::now();
        let batch = timed(prof, "batch upload", || TrainBatch::new(&rows, pad, &opts.device))?;
        let mut grads = timed(prof, "lora grad accumulate", || LoraGrads::zeros(&lora))?;
        let st = step::forward_backward(
            &model,
            &lora,
            &batch,
            1.0 / batch.num_targets as f64,
            StepOptions { profiler: prof, ..step_opts },
            &mut rng,
            &mut grads,
        )?;
        let g = if grouped {
            opts.device.synchronize()?;
            let t_reduce = Instant::now();
            let g = group.sum_tensors(&grads.tensors())?;
            opts.device.synchronize()?;
            if step >= opts.warmup {
                reduce_times.push(t_reduce.elapsed().as_secs_f64());
            }
            g
        } else {
            grads.tensors()
        };
        let params = timed(prof, "optimizer (AdamW)", || opt.update(&lora.tensors(), &g, opts.lr))?;
        lora.set_tensors(params.into_iter());
        opts.device.synchronize()?;
        let dt = t.elapsed().as_secs_f64();
        let loss = st.nll_sum / st.num_targets as f64;
        anyhow::ensure!(loss.is_finite(), "step {step}: the loss is {loss}");
        let timed = step >= opts.warmup;
        losses.push(loss);
        if timed {
            times.push(dt);
        }
        progress(&StepReport { step, timed, loss, seconds: dt, tokens: b * s });
    }
    let loadavg_end = loadavg();
    let contention = cpu_start.zip(CpuTimes::now()).map(|((a, t), b)| a.contention(b, t.elapsed().as_secs_f64()));
    let train_peak = if reset { peak_rss_mib() } else { None };
    let peak_device = crate::gpu::peak_memory(&opts.device)?;
    let flops = flops_per_token(&model.config, &opts.targets, opts.r, s);
    // MFU on accelerators, where the step is matmul-bound by design; the CPU step is not.
    let matmul_tflops = if opts.device.is_cpu() { None } else { Some(matmul_rate(&opts.device, dtype)? / 1e12) };
    let peak = match (load_peak, peak_rss_mib()) {
        (Some(a), Some(c)) => Some(a.max(c)),
        (a, c) => a.or(c),
    };

    let step_s_median = median(&times);
    let step_s_min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let tokens = (b * s) as f64;
    let ranks = grouped.then(|| RanksResult {
        ranks: group.world_size,
        collectives: group.backend,
        tokens_per_s_all_ranks: tokens * group.world_size as f64 / step_s_median,
        all_reduce_s_median: median(&reduce_times),
        all_reduce_bytes: 4 * lora.num_parameters(),
    });
    let achieved_tflops = flops * tokens / step_s_median / 1e12;
    Ok(BenchResult {
        tool: "loratune",
        version: env!("CARGO_PKG_VERSION"),
        model: model_label,
        data: if opts.preset.is_some() { "random token ids".into() } else { opts.data.display().to_string() },
        device: model::device_label(&opts.device),
        dtype: dtype.as_str().to_string(),
        seq_len: s,
        batch_size: b,
        r: opts.r,
        alpha: opts.alpha,
        targets: opts.targets.iter().map(|t| t.name()).collect(),
        lr: opts.lr,
        warmup: opts.warmup,
        steps: opts.steps,
        gradient_checkpointing: opts.gradient_checkpointing,
        checkpoint_layers: opts.checkpoint_layers,
        offload_checkpoints: opts.offload_checkpoints && opts.gradient_checkpointing && opts.device.is_cuda(),
        quantize: opts.quantize.map(|q| format!("{q:?}")),
        projection_bytes: model
            .weights
            .layers
            .iter()
            .map(|l| l.projections().iter().map(|w| w.weight.storage_bytes()).sum::<usize>())
            .sum(),
        conversations,
        stream_tokens: stream.len(),
        stream_sha256: stream_hash(&stream),
        windows: examples.len(),
        lora_parameters: lora.num_parameters(),
        load_s,
        tokens_per_s: tokens / step_s_median,
        tokens_per_s_best: tokens / step_s_min,
        step_s_median,
        step_s_mean: times.iter().sum::<f64>() / times.len() as f64,
        step_s_min,
        step_s: times,
        first_loss: losses[0],
        last_loss: *losses.last().expect("at least one step"),
        losses,
        peak_rss_mib: peak,
        train_peak_rss_mib: train_peak,
        threads: candle_core::utils::get_num_threads(),
        candle_num_threads: opts.environment.candle_num_threads.map(|n| n.to_string()),
        loadavg_start,
        loadavg_end,
        other_cpu_cores: contention.map(|c| c.0),
        steal_cores: contention.map(|c| c.1),
        peak_device,
        flops_per_token: flops,
        matmul_tflops,
        achieved_tflops,
        mfu: matmul_tflops.map(|m| achieved_tflops / m),
        profile: profiler.map(|p| {
            p.report()
                .into_iter()
                .map(|r| RegionTime { seconds: r.seconds / opts.steps as f64, calls: r.calls / opts.steps, ..r })
                .collect()
        }),
        ranks,
    })
}

/// Model FLOPs of one trained token at sequence length `seq` with a frozen base: each
/// projection and the LM head run forward (2 FLOPs per weight) and backward for the input
/// gradient only (2 more; no weight gradient); each adapter costs 6 r (in + out); causal
/// attention costs 2 T NH D per layer forward (QK^T and PV over half the keys on average)
/// and twice that backward. Recomputation (checkpointing, flash's backward) is not counted,
/// as MFU conventionally counts only the model's own work.
pub fn flops_per_token(cfg: &crate::model::ModelConfig, targets: &[Target], r: usize, seq: usize) -> f64 {
    let projection_weights: usize = Target::ALL
        .iter()
        .map(|t| {
            let (i, o) = t.shape(cfg);
            i * o
        })
        .sum();
    let base = 4.0 * (cfg.num_hidden_layers * projection_weights + cfg.vocab_size * cfg.hidden_size) as f64;
    let lora: usize = targets
        .iter()
        .map(|t| {
            let (i, o) = t.shape(cfg);
            6 * r * (i + o)
        })
        .sum();
    let attention = 6.0 * (seq * cfg.num_attention_heads * cfg.head_dim) as f64;
    base + cfg.num_hidden_layers as f64 * (lora as f64 + attention)
}

/// Dense matmul rate (FLOP/s) on `device` in `dtype`: the median of timed square products,
/// 8192 on a GPU, 1024 on the CPU, after a warm-up.
pub fn matmul_rate(device: &Device, dtype: DType) -> Result<f64> {
    let n = if device.is_cpu() { 1024 } else { 8192 };
    let a = candle_core::Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = candle_core::Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let mut times = Vec::new();
    for i in 0..13 {
        device.synchronize()?;
        let t = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
        drop(c);
    }
    Ok(2.0 * (n as f64).powi(3) / median(&times))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-2-7B, r 16 on q/k/v/o, seq 1024, counted by hand: per layer 4·4096² + 3·4096·11008
    /// = 202,375,168 projection weights, ×32 plus the 32000×4096 head = 6,607,077,376, ×4
    /// (forward + input gradient); adapters 32·4·6·16·8192; attention 32·6·1024·32·128.
    #[test]
    fn flops_per_token_of_llama2_7b_lora() {
        let cfg = crate::model::init::preset("llama2-7b").unwrap();
        let qkvo = [Target::QProj, Target::KProj, Target::VProj, Target::OProj];
        let expected = 4.0 * 6_607_077_376.0 + 32.0 * 4.0 * 6.0 * 16.0 * 8192.0 + 32.0 * 6.0 * 1024.0 * 32.0 * 128.0;
        assert_eq!(flops_per_token(&cfg, &qkvo, 16, 1024), expected);
        assert_eq!(expected, 27_334_279_168.0);
    }

    /// 23 tokens, windows of 5: 4 windows (the 3-token tail dropped); batches of 3 wrap
    /// around the 4 windows; each window trains on its 4 next-token predictions.
    #[test]
    fn stream_is_cut_into_windows_and_batches_wrap_around() {
        let stream: Vec<u32> = (0..23).collect();
        let w = windows(&stream, 5);
        assert_eq!(w.len(), 4);
        assert_eq!(w[0], &[0, 1, 2, 3, 4]);
        assert_eq!(w[3], &[15, 16, 17, 18, 19]);
        assert_eq!(step_windows(0, 3, 4), vec![0, 1, 2]);
        assert_eq!(step_windows(1, 3, 4), vec![3, 0, 1]);
        assert_eq!(step_windows(2, 3, 4), vec![2, 3, 0]);
        assert_eq!(step_windows(3, 3, 4), vec![1, 2, 3]);
        assert_eq!(step_windows(5, 1, 4), vec![1]);
        assert!(windows(&stream[..4], 5).is_empty());

        let examples: Vec<EncodedExample> = w.iter().map(|x| window_example(x)).collect();
        let rows: Vec<Vec<&EncodedExample>> = step_windows(1, 3, 4).into_iter().map(|i| vec![&examples[i]]).collect();
        let batch = TrainBatch::new(&rows, 0, &Device::Cpu).unwrap();
        assert_eq!(batch.shape, (3, 5));
        assert_eq!(batch.num_tokens, 15);
        assert_eq!(batch.num_targets, 3 * 4, "B * (seq_len - 1), as HF's shifted labels");
        let ids: Vec<Vec<u32>> = batch.input_ids.to_vec2().unwrap();
        assert_eq!(ids, vec![vec![15, 16, 17, 18, 19], vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9]]);
        // Row b, position j predicts token j+1 of the same window.
        let pred: Vec<u32> = batch.predictor_rows.to_vec1().unwrap();
        let labels: Vec<u32> = batch.labels.to_vec1().unwrap();
        assert_eq!(&pred[..4], &[0, 1, 2, 3]);
        assert_eq!(&labels[..4], &[16, 17, 18, 19]);
        assert_eq!(&pred[4..8], &[5, 6, 7, 8]);
        assert_eq!(&labels[4..8], &[1, 2, 3, 4]);
    }

    #[test]
    fn stream_hash_matches_the_python_side() {
        // hashlib.sha256(numpy.asarray([1, 258], dtype="<u4").tobytes()).hexdigest()
        assert_eq!(stream_hash(&[1, 258]), "fb8bbe2ad3ab5292f19bc5d75bbab9b5fbddc5a78ce47ab41b2d3d59bca08596");
    }

    #[test]
    fn median_of_even_count_averages_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
