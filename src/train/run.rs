//! A training run from a validated config: load, encode, measure the base model, train
//! with periodic eval and checkpoints, and write the adapter, metrics.jsonl, eval.json and
//! the run.json manifest. `resume` continues from the newest complete checkpoint and
//! reaches the same adapter as an uninterrupted run.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::base_vs_tuned::{self, GenerationReport, RegressionReport, RegressionSet};
use super::batches::{self, BatchPlan, DataFileStats, DataPosition, Loader};
use super::checkpoint::{self, EvalPoint, TrainerState};
use super::optimizer::{self, AdamW, AdamWConfig};
use super::report::{MetricsLine, MetricsLog, Reporter};
use super::schedule::Schedule;
use super::step::{self, LoraGrads, StepOptions, TrainBatch};
use crate::config::{EnvKnobs, TrainConfig};
use crate::distributed::{self, Backend, ProcessGroup};
use crate::encode::EncodedExample;
use crate::lora::{self, LoraSpec, LoraWeights, Target};
use crate::model::{self, Llama, LoadOptions, ModelIdentity, ModelSource};

pub const CONFIG_FILE: &str = "config.toml";
pub const MANIFEST_FILE: &str = "run.json";
pub const EVAL_FILE: &str = "eval.json";
pub const METRICS_FILE: &str = "metrics.jsonl";

pub struct RunOptions {
    pub config: TrainConfig,
    /// Where the config came from (file path, or the run folder when resuming).
    pub config_source: String,
    pub resume: bool,
    pub device: Device,
    /// Set by Ctrl-C: the run checkpoints after the current step and stops.
    pub interrupt: Arc<AtomicBool>,
    pub command_line: Vec<String>,
    /// The ranks of a data-parallel run (`ProcessGroup::single()` for one process).
    pub group: ProcessGroup,
    /// The environment variables, as the command line read them (recorded in run.json).
    pub environment: EnvKnobs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    EarlyStopped,
    Interrupted,
    Failed,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub run_dir: PathBuf,
    pub steps: usize,
    pub base_eval: Option<EvalPoint>,
    pub best_eval: Option<EvalPoint>,
    pub final_eval: Option<EvalPoint>,
}

#[derive(Debug, Clone, Serialize)]
struct WeightFile {
    path: PathBuf,
    bytes: u64,
    sha256: String,
}

#[derive(Debug, Clone, Serialize)]
struct Manifest {
    loratune_version: &'static str,
    git_commit: &'static str,
    command_line: Vec<String>,
    config_source: String,
    config: TrainConfig,
    base_model: ModelIdentity,
    base_model_files: Vec<WeightFile>,
    /// The adapter file a fresh run started from (`lora.init_from`), hashed.
    init_adapter: Option<WeightFile>,
    data: Vec<DataFileStats>,
    eval_set: &'static str,
    train_examples: usize,
    eval_examples: usize,
    lora_parameters: usize,
    total_steps: usize,
    seed: u64,
    device: String,
    dtype: String,
    threads: usize,
    /// Processes that trained together (data parallel), and how their gradients travelled.
    ranks: usize,
    collectives: Backend,
    /// The environment knobs this process ran with.
    environment: EnvKnobs,
    started_at: String,
    /// One entry per process that worked on the run (the first, then each resume).
    sessions: Vec<Session>,
    status: RunStatus,
    steps_completed: usize,
    ended_at: Option<String>,
    wall_seconds: f64,
    error: Option<String>,
    /// The data lint's counts (`None` with `[data] lint = "off"`); the findings are in lint.json.
    lint: Option<crate::data::lint::LintSummary>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Session {
    started_at: String,
    from_step: usize,
}

#[derive(Debug, Clone, Serialize)]
struct EvalReport {
    base: Option<EvalPoint>,
    best: Option<EvalPoint>,
    #[serde(rename = "final")]
    final_: Option<EvalPoint>,
    history: Vec<EvalPoint>,
    eval_examples: usize,
    eval_tokens: usize,
    eval_targets: usize,
    /// The regression set on the base and the tuned model (`eval.regression`).
    regression: Option<RegressionReport>,
    /// Greedy answers of both models to held-out prompts, scored (`eval.generate_examples`).
    generation: Option<GenerationReport>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Mean target-token loss of `examples` with the adapter applied. With several ranks each
/// evaluates its share and the sums are added, so every rank gets the whole set's loss.
pub fn eval_loss(
    model: &Llama,
    lora: &LoraWeights,
    examples: &[EncodedExample],
    batch_size: usize,
    pad: u32,
    group: &ProcessGroup,
) -> Result<f64> {
    let mine = distributed::shard(examples, group.rank, group.world_size);
    let mut sums = [0f64, 0f64];
    if !mine.is_empty() {
        let s = crate::eval::evaluate(model, Some(lora), mine, batch_size, pad, |_, _| {})?;
        if s.target_tokens > 0 {
            sums = [s.loss * s.target_tokens as f64, s.target_tokens as f64];
        }
    }
    group.sum_f64(&mut sums)?;
    Ok(sums[0] / sums[1])
}

/// The adapter of `lora.init_from`, checked against the run's [lora] section: its rank,
/// scaling, rsLoRA flag and target modules must be the same (the config stays the one
/// description of what trains), else the error names each key with both values.
fn start_adapter(
    dir: &Path,
    spec: &LoraSpec,
    cfg: &crate::model::ModelConfig,
    device: &candle_core::Device,
) -> Result<(LoraWeights, WeightFile)> {
    let lora = lora::load_adapter(dir, cfg, device).with_context(|| format!("lora.init_from: {}", dir.display()))?;
    let a = &lora.spec;
    let names = |t: &[Target]| t.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
    let mut diffs = Vec::new();
    if a.r != spec.r {
        diffs.push(format!("lora.r = {} but the adapter has r = {}", spec.r, a.r));
    }
    if (a.alpha - spec.alpha).abs() > 1e-9 * spec.alpha.abs().max(1.0) {
        diffs.push(format!("lora.alpha = {} but the adapter has lora_alpha = {}", spec.alpha, a.alpha));
    }
    if a.use_rslora != spec.use_rslora {
        diffs.push(format!("lora.use_rslora = {} but the adapter has use_rslora = {}", spec.use_rslora, a.use_rslora));
    }
    if a.targets != spec.targets {
        diffs.push(format!(
            "lora.target_modules = [{}] but the adapter targets [{}]",
            names(&spec.targets),
            names(&a.targets)
        ));
    }
    if !diffs.is_empty() {
        anyhow::bail!("lora.init_from: {} does not match the [lora] section: {}", dir.display(), diffs.join("; "));
    }
    let weights = dir.join(lora::ADAPTER_WEIGHTS_FILE);
    let (sha256, bytes) = batches::sha256_file(&weights).with_context(|| format!("hashing {}", weights.display()))?;
    // Dropout is a training choice of this run, not part of the saved adapter.
    let lora = LoraWeights { spec: LoraSpec { dropout: spec.dropout, ..lora.spec }, ..lora };
    Ok((lora, WeightFile { path: weights, bytes, sha256 }))
}

fn lora_spec(cfg: &TrainConfig) -> LoraSpec {
    let mut targets = cfg.lora.target_modules.clone();
    targets.sort();
    targets.dedup();
    LoraSpec {
        r: cfg.lora.r,
        alpha: cfg.lora.alpha,
        dropout: cfg.lora.dropout,
        targets,
        use_rslora: cfg.lora.use_rslora,
    }
}

/// Files a fresh run writes; `overwrite` removes exactly these.
const RUN_OUTPUTS: &[&str] = &[
    CONFIG_FILE,
    MANIFEST_FILE,
    EVAL_FILE,
    METRICS_FILE,
    base_vs_tuned::SAMPLES_FILE,
    lora::ADAPTER_CONFIG_FILE,
    lora::ADAPTER_WEIGHTS_FILE,
    "checkpoints",
    "best",
    super::lint_gate::LINT_FILE,
];

fn prepare_run_dir(dir: &Path, overwrite: bool) -> Result<()> {
    // A folder holding only the lint report of a run the lint refused counts as empty.
    if dir.exists() && std::fs::read_dir(dir)?.any(|e| e.map_or(true, |e| e.file_name() != super::lint_gate::LINT_FILE))
    {
        if !overwrite {
            bail!(
                "output.dir {} is not empty: continue that run with `loratune train --resume {}`, choose another output.dir, or set output.overwrite = true",
                dir.display(),
                dir.display()
            );
        }
        for name in RUN_OUTPUTS {
            let p = dir.join(name);
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}

pub fn run(opts: RunOptions) -> Result<RunOutcome> {
    let cfg = &opts.config;
    let group = &opts.group;
    // Rank 0 writes the run's files and speaks; the other ranks only compute.
    let main = group.is_main();
    macro_rules! say {
        ($($t:tt)*) => { if main { println!($($t)*) } };
    }
    let run_dir = PathBuf::from(&cfg.output.dir);
    let process_start = Instant::now();
    let started_at = now();

    // Read and encode the data first: bad data should fail before a slow model load.
    let (format, policy) = (cfg.data.format.fixed(), cfg.data.on_bad_record);
    let source = ModelSource::parse(&cfg.model.path).with_context(|| format!("model.path {}", cfg.model.path))?;
    let hub = opts.environment.hub.options();
    let tokenizer = model::checkpoint::load_tokenizer(&source, &hub)
        .with_context(|| format!("loading the tokenizer of {}", cfg.model.path))?;
    // The run folder is prepared first so that the lint report has a place to go.
    if !opts.resume && main {
        prepare_run_dir(&run_dir, cfg.output.overwrite)?;
    }
    // Rank 0 lints (a refusal there ends every rank: the launcher stops the rest).
    let lint = if main { super::lint_gate::check(cfg, format, policy, &tokenizer, &run_dir)? } else { None };
    let mut files = Vec::new();
    let mut per_file = Vec::new();
    for p in &cfg.data.train {
        let (ex, stats) =
            batches::encode_file(Path::new(p), "train", format, policy, &tokenizer, cfg.data.max_seq_len)?;
        per_file.push(ex);
        files.push(stats);
    }
    let train = match &cfg.data.weights {
        Some(weights) => {
            let counts = batches::mix_counts(&per_file.iter().map(Vec::len).collect::<Vec<_>>(), weights);
            for ((stats, &k), w) in files.iter_mut().zip(&counts).zip(weights) {
                say!(
                    "mix     {k} of {} examples from {} (weight {w})",
                    stats.records - stats.without_targets,
                    stats.path.display()
                );
                stats.mixed_in = Some(k);
            }
            batches::mix(per_file, &counts, cfg.data.split_seed)
        }
        None => per_file.concat(),
    };
    let (train, eval, eval_set) = match &cfg.data.eval {
        Some(p) => {
            let (ex, stats) =
                batches::encode_file(Path::new(p), "eval", format, policy, &tokenizer, cfg.data.max_seq_len)?;
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
            let set = RegressionSet::read(Path::new(p), format, policy, &tokenizer, cfg.data.max_seq_len)?;
            files.push(set.stats.clone());
            Some(set)
        }
        None => None,
    };
    let lens: Vec<usize> = train.iter().map(|e| e.len()).collect();
    // The plan of the whole group: a step is grad_accum micro-batches on each rank, the
    // same steps a single process would take with grad_accum x ranks.
    let plan = BatchPlan {
        seed: cfg.train.seed,
        micro_batch_size: cfg.train.micro_batch_size,
        grad_accum: cfg.train.grad_accum * group.world_size,
        packing: cfg.data.packing,
        max_seq_len: cfg.data.max_seq_len,
    };
    let total_steps = match cfg.train.max_steps {
        Some(n) => n,
        None => (0..cfg.train.epochs).map(|e| plan.steps_in_epoch(&lens, e)).sum(),
    };
    let warmup_steps = if cfg.train.warmup_ratio > 0.0 {
        (cfg.train.warmup_ratio * total_steps as f64).ceil() as usize
    } else {
        cfg.train.warmup_steps
    };
    let schedule = Schedule {
        peak_lr: cfg.train.lr,
        warmup_steps,
        total_steps,
        decay: cfg.train.lr_scheduler,
        min_lr_ratio: cfg.train.min_lr_ratio,
    };

    // The model.
    let mut load_opts = LoadOptions::for_device(opts.device.clone(), hub);
    if let Some(d) = cfg.model.dtype {
        load_opts.dtype = d.dtype();
    }
    load_opts.quantize = cfg.model.quantize;
    let t0 = Instant::now();
    let loaded = model::load(&source, &load_opts).with_context(|| format!("loading model {}", cfg.model.path))?;
    let model = loaded.model;
    let pad = tokenizer.pad_id.or(tokenizer.eos_id).unwrap_or(0);
    say!(
        "model   {} ({} parameters, {} on {}, loaded in {:.1}s)",
        loaded.identity.source,
        loaded.identity.num_parameters,
        load_opts.dtype.as_str(),
        model::device_label(&opts.device),
        t0.elapsed().as_secs_f64()
    );
    let mut weight_files = Vec::new();
    for p in &loaded.identity.weight_files {
        let (sha256, bytes) = batches::sha256_file(p).with_context(|| format!("hashing {}", p.display()))?;
        weight_files.push(WeightFile { path: p.clone(), bytes, sha256 });
    }

    // Adapter, optimizer, state: fresh (or from lora.init_from) or from the newest checkpoint.
    let spec = lora_spec(cfg);
    let (mut lora, init_adapter) = match &cfg.lora.init_from {
        None => (LoraWeights::init(&spec, &model.config, cfg.train.seed, &opts.device)?, None),
        Some(dir) => {
            let (lora, file) = start_adapter(Path::new(dir), &spec, &model.config, &opts.device)?;
            say!("adapter starts from {dir} (r={}, {} tensors)", spec.r, lora.tensors().len());
            (lora, Some(file))
        }
    };
    let adam = AdamWConfig {
        beta1: cfg.train.adam_beta1,
        beta2: cfg.train.adam_beta2,
        eps: cfg.train.adam_eps,
        weight_decay: cfg.train.weight_decay,
    };
    let mut opt = AdamW::new(adam, &lora.tensors())?;
    let mut state = TrainerState {
        step: 0,
        total_steps,
        position: DataPosition { epoch: 0, micro_batch: 0 },
        rng_seed: cfg.train.seed,
        base_eval: None,
        best_eval: None,
        evals: Vec::new(),
        evals_without_improvement: 0,
        tokens_seen: 0,
        wall_seconds: 0.0,
        world_size: group.world_size,
    };
    let mut sessions = Vec::new();
    let mut first_started = started_at.clone();
    if opts.resume {
        if let Ok(text) = std::fs::read_to_string(run_dir.join(MANIFEST_FILE)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                let previous: Vec<Session> = serde_json::from_value(v["sessions"].clone()).unwrap_or_default();
                sessions.extend(previous);
                if let Some(s) = v["started_at"].as_str() {
                    first_started = s.to_string();
                }
                let recorded = v["base_model_files"].as_array().cloned().unwrap_or_default();
                let now_hashes: Vec<&str> = weight_files.iter().map(|w| w.sha256.as_str()).collect();
                let then_hashes: Vec<&str> = recorded.iter().filter_map(|w| w["sha256"].as_str()).collect();
                if !then_hashes.is_empty() && then_hashes != now_hashes {
                    bail!("{}: the base model's weight files have changed since this run started (sha256 differs); resuming would train on a different model", cfg.model.path);
                }
            }
        }
        let newest = checkpoint::list(&run_dir).pop();
        // Every rank reads the checkpoint itself; all must find rank 0's.
        let mut step0 = newest.as_ref().map_or(0u64, |(s, _)| *s as u64).to_le_bytes().to_vec();
        group.broadcast(&mut step0)?;
        let step0 = u64::from_le_bytes(step0[..8].try_into().context("rank 0's checkpoint step")?) as usize;
        if newest.as_ref().map_or(0, |(s, _)| *s) != step0 {
            bail!(
                "rank {} finds {} in {} but rank 0 resumes from step {step0}: on several machines, output.dir must be a file system they all share",
                group.rank,
                newest.as_ref().map_or("no checkpoint".to_string(), |(s, _)| format!("step {s}")),
                run_dir.display()
            );
        }
        match newest {
            Some((step, dir)) => {
                let (l, s) = checkpoint::load(&dir, &model.config, &mut opt, &opts.device)?;
                anyhow::ensure!(
                    l.spec == spec,
                    "{}: the adapter's LoRA settings differ from {}",
                    dir.display(),
                    CONFIG_FILE
                );
                if s.world_size != group.world_size {
                    bail!(
                        "{}: this run trained with {} rank(s) and is resumed with {}: its steps are batches of {} ranks, so resume it with --gpus {} (or as many ranks in all)",
                        dir.display(),
                        s.world_size,
                        group.world_size,
                        s.world_size,
                        s.world_size
                    );
                }
                lora = l;
                state = TrainerState { total_steps, ..s };
                say!("resume  from {} (step {step} of {total_steps})", dir.display());
            }
            None => say!("resume  no complete checkpoint in {}: starting from step 0", run_dir.display()),
        }
    }
    if main {
        crate::atomic::write_bytes(&run_dir.join(CONFIG_FILE), cfg.to_toml_string().as_bytes())?;
    }
    sessions.push(Session { started_at: started_at.clone(), from_step: state.step });
    let threads = candle_core::utils::get_num_threads();
    let mut manifest = Manifest {
        loratune_version: env!("CARGO_PKG_VERSION"),
        git_commit: option_env!("LORATUNE_GIT_COMMIT").unwrap_or("unknown"),
        command_line: opts.command_line.clone(),
        config_source: opts.config_source.clone(),
        config: cfg.clone(),
        base_model: loaded.identity.clone(),
        base_model_files: weight_files,
        init_adapter,
        data: files,
        eval_set,
        train_examples: train.len(),
        eval_examples: eval.len(),
        lora_parameters: lora.num_parameters(),
        total_steps,
        seed: cfg.train.seed,
        device: model::device_label(&opts.device),
        dtype: load_opts.dtype.as_str().to_string(),
        threads,
        ranks: group.world_size,
        collectives: group.backend,
        environment: opts.environment.clone(),
        started_at: first_started,
        sessions,
        status: RunStatus::Running,
        steps_completed: state.step,
        ended_at: None,
        wall_seconds: state.wall_seconds,
        error: None,
        lint,
    };
    let write_manifest = |m: &Manifest| -> Result<()> {
        if !main {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(m)? + "\n";
        crate::atomic::write_bytes(&run_dir.join(MANIFEST_FILE), text.as_bytes())?;
        Ok(())
    };
    write_manifest(&manifest)?;
    if group.world_size > 1 {
        say!(
            "ranks   {} processes ({:?} collectives): each runs {} of a step's {} micro-batches",
            group.world_size,
            group.backend,
            cfg.train.grad_accum,
            plan.grad_accum
        );
    }
    say!(
        "data    {} train examples, {} eval examples ({}), {} steps of {} x {} micro-batches",
        train.len(),
        eval.len(),
        eval_set,
        total_steps,
        plan.grad_accum,
        cfg.train.micro_batch_size
    );
    say!(
        "lora    r={} alpha={} on {} ({} trainable parameters)",
        spec.r,
        spec.alpha,
        cfg.lora.target_modules.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
        lora.num_parameters()
    );

    let metrics = match main {
        true => Some(MetricsLog::open(&run_dir.join(METRICS_FILE), opts.resume.then_some(state.step))?),
        false => None,
    };
    let append_metrics = |line: &MetricsLine| -> Result<()> {
        match &metrics {
            Some(m) => m.append(line),
            None => Ok(()),
        }
    };
    let base_model_name = cfg.model.path.clone();
    let eval_now = |lora: &LoraWeights| eval_loss(&model, lora, &eval, cfg.eval.batch_size, pad, group);
    let elapsed = |state: &TrainerState| state.wall_seconds + process_start.elapsed().as_secs_f64();

    // The base model's eval loss, before any training (B = 0, so this is the base).
    if state.base_eval.is_none() && !eval.is_empty() {
        let loss = eval_now(&lora)?;
        state.base_eval = Some(EvalPoint { step: 0, loss });
        state.best_eval = Some(EvalPoint { step: 0, loss });
        append_metrics(&MetricsLine {
            step: 0,
            eval_loss: Some(loss),
            elapsed_s: elapsed(&state),
            ..Default::default()
        })?;
        say!("eval    step 0 (base model): loss {loss:.4}");
    }

    let reporter = Reporter::new(total_steps, state.step, cfg.train.log_every, main);
    let mut loader = Loader::new(plan, &lens, state.position);
    let step_opts = StepOptions {
        gradient_checkpointing: cfg.train.gradient_checkpointing,
        checkpoint_layers: cfg.train.checkpoint_layers,
        dropout: cfg.lora.dropout,
        profiler: None,
    };
    let mut status = RunStatus::Completed;
    let mut last_eval_step = state.evals.last().map(|e| e.step);
    let session_start_step = state.step;

    let outcome: Result<()> = (|| {
        while state.step < total_steps {
            let t_step = Instant::now();
            // The whole group's micro-batches of this step; this rank runs its share.
            let micro_batches = loader.next_step();
            let step_targets: usize = micro_batches.iter().flatten().flatten().map(|&i| train[i].num_targets()).sum();
            let mine = distributed::shard_range(micro_batches.len(), group.rank, group.world_size);
            let mut grads = LoraGrads::zeros(&lora)?;
            let (mut nll, mut tokens) = (0f64, 0usize);
            for k in mine {
                let rows: Vec<Vec<&EncodedExample>> =
                    micro_batches[k].iter().map(|r| r.iter().map(|&i| &train[i]).collect()).collect();
                let batch = TrainBatch::new(&rows, pad, &opts.device)?;
                // Dropout draws from a stream of its own per micro-batch, whichever rank runs it.
                let mut rng = ChaCha8Rng::seed_from_u64(state.rng_seed);
                rng.set_stream(((state.step as u64) << 20) | k as u64);
                let s = step::forward_backward(
                    &model,
                    &lora,
                    &batch,
                    1.0 / step_targets as f64,
                    step_opts,
                    &mut rng,
                    &mut grads,
                )?;
                nll += s.nll_sum;
                tokens += s.num_tokens;
            }
            // Gradients, loss, tokens and the stop flag summed over ranks: every rank takes
            // the same optimizer step and stops at the same one.
            let mut g = group.sum_tensors(&grads.tensors())?;
            let mut shared = [nll, tokens as f64, f64::from(u8::from(opts.interrupt.load(Ordering::SeqCst)))];
            group.sum_f64(&mut shared)?;
            let (nll, tokens, interrupted) = (shared[0], shared[1] as usize, shared[2] > 0.0);
            let loss = nll / step_targets as f64;
            let grad_norm = optimizer::clip_by_global_norm(&mut g, cfg.train.max_grad_norm)?;
            if !loss.is_finite() || !grad_norm.is_finite() {
                let last = checkpoint::list(&run_dir)
                    .pop()
                    .map(|(s, d)| format!("; the last good checkpoint is {} (step {s})", d.display()))
                    .unwrap_or_default();
                bail!("step {}: the loss is {loss} and the gradient norm {grad_norm}: training diverged (try a lower train.lr or a max_grad_norm){last}", state.step + 1);
            }
            let lr = schedule.lr(state.step);
            let params = opt.update(&lora.tensors(), &g, lr)?;
            lora.set_tensors(params.into_iter());
            state.step += 1;
            state.position = loader.position;
            state.tokens_seen += tokens as u64;
            let dt = t_step.elapsed().as_secs_f64();
            let mut line = MetricsLine {
                step: state.step,
                epoch: Some(loader.position.epoch),
                loss: Some(loss),
                lr: Some(lr),
                grad_norm: Some(grad_norm),
                tokens: Some(tokens),
                tokens_per_s: Some(tokens as f64 / dt),
                eval_loss: None,
                elapsed_s: 0.0,
            };

            let due_eval = !eval.is_empty()
                && ((cfg.eval.every > 0 && state.step % cfg.eval.every == 0) || state.step == total_steps);
            let mut stop_early = false;
            if due_eval {
                let loss = eval_now(&lora)?;
                line.eval_loss = Some(loss);
                let point = EvalPoint { step: state.step, loss };
                state.evals.push(point);
                last_eval_step = Some(state.step);
                let improved = state.best_eval.is_none_or(|b| loss < b.loss - cfg.eval.early_stopping_min_delta);
                if improved {
                    state.best_eval = Some(point);
                    state.evals_without_improvement = 0;
                    if cfg.output.save_best && main {
                        lora::save_adapter(&run_dir.join("best"), &lora, &base_model_name)?;
                    }
                } else {
                    state.evals_without_improvement += 1;
                    stop_early = cfg.eval.early_stopping_patience > 0
                        && state.evals_without_improvement >= cfg.eval.early_stopping_patience;
                }
                let best = state.best_eval.expect("set above");
                reporter.println(&format!(
                    "eval    step {}: loss {loss:.4} (best {:.4} at step {})",
                    state.step, best.loss, best.step
                ));
            }
            line.elapsed_s = elapsed(&state);
            append_metrics(&line)?;
            reporter.step(&line, total_steps);

            let due_ckpt = (cfg.output.checkpoint_every > 0 && state.step % cfg.output.checkpoint_every == 0)
                || state.step == total_steps
                || stop_early
                || interrupted;
            if due_ckpt {
                group.check_in_sync(&lora.tensors(), &format!("step {}", state.step))?;
            }
            if due_ckpt && main {
                let saved = TrainerState { wall_seconds: elapsed(&state), ..state.clone() };
                let dir = checkpoint::save(&run_dir, &lora, &opt, &saved, &base_model_name)?;
                checkpoint::prune(&run_dir, cfg.output.keep_checkpoints)?;
                manifest.steps_completed = state.step;
                manifest.wall_seconds = saved.wall_seconds;
                write_manifest(&manifest)?;
                if interrupted || stop_early {
                    reporter.println(&format!("saved   {}", dir.display()));
                }
            }
            if stop_early {
                reporter.println(&format!(
                    "early stop: no eval improvement for {} evals (best {:.4} at step {})",
                    state.evals_without_improvement,
                    state.best_eval.map_or(f64::NAN, |b| b.loss),
                    state.best_eval.map_or(0, |b| b.step)
                ));
                status = RunStatus::EarlyStopped;
                break;
            }
            if interrupted {
                status = RunStatus::Interrupted;
                break;
            }
        }
        Ok(())
    })();
    reporter.finish();

    manifest.steps_completed = state.step;
    manifest.wall_seconds = elapsed(&state);
    if let Err(e) = outcome {
        manifest.status = RunStatus::Failed;
        manifest.ended_at = Some(now());
        manifest.error = Some(format!("{e:#}"));
        write_manifest(&manifest)?;
        return Err(e);
    }

    // A run that ended without an eval at its last step (interrupt, resume of a finished
    // run) gets one, so `final` always describes the adapter on disk.
    if status != RunStatus::Interrupted && !eval.is_empty() && last_eval_step != Some(state.step) {
        let loss = eval_now(&lora)?;
        state.evals.push(EvalPoint { step: state.step, loss });
    }
    let final_eval = state.evals.last().copied().filter(|e| e.step == state.step);
    if status != RunStatus::Interrupted && main {
        lora::save_adapter(&run_dir, &lora, &base_model_name)?;
        let extra_stops = if loaded.identity.resolved.is_dir() {
            crate::generate::generation_config_stop_ids(&loaded.identity.resolved)
        } else {
            Vec::new()
        };
        let (regression, generation) = base_vs_tuned::check(
            &model,
            &lora,
            &tokenizer,
            &extra_stops,
            regression.as_ref(),
            &eval_prompts,
            &cfg.eval,
            pad,
            &run_dir,
        )?;
        let report = EvalReport {
            base: state.base_eval,
            best: state.best_eval,
            final_: final_eval,
            history: state.evals.clone(),
            eval_examples: eval.len(),
            eval_tokens: eval.iter().map(|e| e.len()).sum(),
            eval_targets: eval.iter().map(|e| e.num_targets()).sum(),
            regression,
            generation,
        };
        let text = serde_json::to_string_pretty(&report)? + "\n";
        crate::atomic::write_bytes(&run_dir.join(EVAL_FILE), text.as_bytes())?;
    }
    manifest.status = status;
    manifest.ended_at = Some(now());
    write_manifest(&manifest)?;
    let trained = state.step - session_start_step;
    say!("done    {:?} after {} steps ({} this session) in {:.0}s", status, state.step, trained, manifest.wall_seconds);
    if let (Some(b), Some(f)) = (state.base_eval, final_eval) {
        say!("eval    base {:.4} -> final {:.4} ({:+.1}%)", b.loss, f.loss, 100.0 * (f.loss - b.loss) / b.loss);
    }
    Ok(RunOutcome {
        status,
        run_dir,
        steps: state.step,
        base_eval: state.base_eval,
        best_eval: state.best_eval,
        final_eval,
    })
}
