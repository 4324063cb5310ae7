//! The training job, as a recipe of named phases (torchtune's recipe shape, read in order
//! like llm.c's main):
//!
//! 1. [`data::load`]: the tokenizer, the data lint, the train/eval/regression sets encoded;
//! 2. [`plan::plan`]: the batch plan and the learning-rate schedule;
//! 3. [`start::load_model`]: the frozen base, loaded and hashed;
//! 4. [`start::start_or_resume`]: adapter, optimizer and trainer state, fresh or from the
//!    newest checkpoint; config.toml and run.json written;
//! 5. the base model's eval loss, before any training (`Run::measure_base`);
//! 6. the step loop (`Run::train`): one optimizer step (`Run::optimizer_step`), eval when
//!    due, checkpoint when due, until the last step, an early stop or Ctrl-C;
//! 7. `Run::finish`: the closing eval, the adapter, base vs tuned, eval.json.
//!
//! The step itself is [`crate::train`]; the run folder's files are named in [`layout`] and
//! typed in [`manifest`]. `--resume` continues from the newest complete checkpoint and
//! reaches the same adapter, bit for bit, as an uninterrupted run.

pub mod base_vs_tuned;
pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod layout;
pub mod lint_gate;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod start;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use self::batches::{BatchPlan, Loader};
use self::checkpoint::{EvalPoint, TrainerState};
use self::data::RunData;
use self::layout::{CONFIG_FILE, RUN_OUTPUTS};
use self::manifest::{EvalReport, Manifest};
use self::metrics::{MetricsLine, MetricsLog, Reporter};
use self::start::BaseModel;
use crate::config::{EnvKnobs, TrainConfig};
use crate::distributed::{self, ProcessGroup};
use crate::encode::EncodedExample;
use crate::lora::{self, LoraWeights};
use crate::model::{self, Llama, ModelSource};
use crate::tokenizer::Tokenizer;
use crate::train::optimizer::{self, AdamW};
use crate::train::schedule::Schedule;
use crate::train::step::{self, LoraGrads, StepOptions, TrainBatch};

pub use self::manifest::RunStatus;

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

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub run_dir: PathBuf,
    pub steps: usize,
    pub base_eval: Option<EvalPoint>,
    pub best_eval: Option<EvalPoint>,
    pub final_eval: Option<EvalPoint>,
}

/// Runs the whole job; see the module's documentation for its phases.
pub fn run(opts: RunOptions) -> Result<RunOutcome> {
    let process_start = Instant::now();
    let started_at = manifest::now();
    let cfg = &opts.config;
    // Rank 0 writes the run's files and speaks; the other ranks only compute.
    let main = opts.group.is_main();
    let run_dir = PathBuf::from(&cfg.output.dir);

    let source = ModelSource::parse(&cfg.model.path).with_context(|| format!("model.path {}", cfg.model.path))?;
    let hub = opts.environment.hub.options();
    let tokenizer = model::checkpoint::load_tokenizer(&source, &hub)
        .with_context(|| format!("loading the tokenizer of {}", cfg.model.path))?;
    // The run folder is prepared first so that the lint report has a place to go.
    if !opts.resume && main {
        prepare_run_dir(&run_dir, cfg.output.overwrite)?;
    }
    let data = data::load(cfg, &tokenizer, &run_dir, main)?;
    let (plan, schedule) = plan::plan(cfg, &data.train_lens(), opts.group.world_size);
    let base = start::load_model(cfg, &source, hub, &opts.device, main)?;
    let start = start::start_or_resume(cfg, &base, schedule.total_steps, opts.resume, &opts.device, &opts.group)?;

    let mut run = Run::new(opts, tokenizer, data, plan, schedule, base, start, started_at, process_start)?;
    run.measure_base()?;
    let status = run.train()?;
    run.finish(status)
}

/// Refuses a run folder that holds another run, unless `overwrite`, which removes exactly
/// the files a run writes ([`RUN_OUTPUTS`]).
fn prepare_run_dir(dir: &Path, overwrite: bool) -> Result<()> {
    // A folder holding only the lint report of a run the lint refused counts as empty.
    if dir.exists() && std::fs::read_dir(dir)?.any(|e| e.map_or(true, |e| e.file_name() != layout::LINT_FILE)) {
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

/// run.json at the start of this process: status `running`, this session appended to those
/// of earlier ones on resume.
fn new_manifest(
    opts: &RunOptions,
    data: &RunData,
    schedule: &Schedule,
    base: &BaseModel,
    start: &start::Start,
    started_at: String,
) -> Manifest {
    let cfg = &opts.config;
    let mut sessions = start.sessions.clone();
    sessions.push(manifest::Session { started_at: started_at.clone(), from_step: start.state.step });
    Manifest {
        loratune_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: option_env!("LORATUNE_GIT_COMMIT").unwrap_or("unknown").to_string(),
        command_line: opts.command_line.clone(),
        config_source: opts.config_source.clone(),
        config: cfg.clone(),
        base_model: base.identity.clone(),
        base_model_files: base.weight_files.clone(),
        init_adapter: start.init_adapter.clone(),
        data: data.files.clone(),
        eval_set: data.eval_set.to_string(),
        train_examples: data.train.len(),
        eval_examples: data.eval.len(),
        lora_parameters: start.lora.num_parameters(),
        total_steps: schedule.total_steps,
        seed: cfg.train.seed,
        device: model::device_label(&opts.device),
        dtype: base.dtype.as_str().to_string(),
        threads: candle_core::utils::get_num_threads(),
        ranks: opts.group.world_size,
        collectives: opts.group.backend,
        started_at: start.first_started.clone().unwrap_or(started_at),
        sessions,
        status: RunStatus::Running,
        steps_completed: start.state.step,
        ended_at: None,
        wall_seconds: start.state.wall_seconds,
        error: None,
        lint: data.lint.clone(),
        environment: opts.environment.clone(),
    }
}

/// Rank 0's summary of what will run: ranks, data and steps, adapter.
fn announce(opts: &RunOptions, data: &RunData, plan: &BatchPlan, schedule: &Schedule, lora_parameters: usize) {
    let cfg = &opts.config;
    let group = &opts.group;
    if group.world_size > 1 {
        println!(
            "ranks   {} processes ({:?} collectives): each runs {} of a step's {} micro-batches",
            group.world_size, group.backend, cfg.train.grad_accum, plan.grad_accum
        );
    }
    println!(
        "data    {} train examples, {} eval examples ({}), {} steps of {} x {} micro-batches",
        data.train.len(),
        data.eval.len(),
        data.eval_set,
        schedule.total_steps,
        plan.grad_accum,
        cfg.train.micro_batch_size
    );
    println!(
        "lora    r={} alpha={} on {} ({} trainable parameters)",
        cfg.lora.r,
        cfg.lora.alpha,
        cfg.lora.target_modules.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
        lora_parameters
    );
}

/// A run in progress: everything the step loop reads and the state it advances.
struct Run {
    opts: RunOptions,
    run_dir: PathBuf,
    /// Rank 0: writes the run's files and prints.
    main: bool,
    tokenizer: Tokenizer,
    /// Padding id of the batches (the tokenizer's pad, else EOS, else 0).
    pad: u32,
    data: RunData,
    plan: BatchPlan,
    schedule: Schedule,
    base: BaseModel,
    lora: LoraWeights,
    opt: AdamW,
    state: TrainerState,
    manifest: Manifest,
    /// metrics.jsonl (rank 0 only).
    metrics: Option<MetricsLog>,
    process_start: Instant,
    /// The step this process started from (0, or a resumed checkpoint's).
    session_start_step: usize,
    last_eval_step: Option<usize>,
}

impl Run {
    /// Records the run: config.toml, then run.json (status `running`), then opens
    /// metrics.jsonl (on resume, cut back to the checkpoint's step) and says what will run.
    #[allow(clippy::too_many_arguments)]
    fn new(
        opts: RunOptions,
        tokenizer: Tokenizer,
        data: RunData,
        plan: BatchPlan,
        schedule: Schedule,
        base: BaseModel,
        start: start::Start,
        started_at: String,
        process_start: Instant,
    ) -> Result<Run> {
        let cfg = &opts.config;
        let main = opts.group.is_main();
        let run_dir = PathBuf::from(&cfg.output.dir);
        let manifest = new_manifest(&opts, &data, &schedule, &base, &start, started_at);
        let mut metrics = None;
        if main {
            crate::atomic::write_bytes(&run_dir.join(CONFIG_FILE), cfg.to_toml_string().as_bytes())?;
            manifest.write(&run_dir)?;
            announce(&opts, &data, &plan, &schedule, start.lora.num_parameters());
            let keep_through = opts.resume.then_some(start.state.step);
            metrics = Some(MetricsLog::open(&run_dir.join(layout::METRICS_FILE), keep_through)?);
        }
        let pad = tokenizer.pad_id.or(tokenizer.eos_id).unwrap_or(0);
        Ok(Run {
            run_dir,
            main,
            tokenizer,
            pad,
            data,
            plan,
            schedule,
            base,
            lora: start.lora,
            opt: start.opt,
            session_start_step: start.state.step,
            last_eval_step: start.state.evals.last().map(|e| e.step),
            state: start.state,
            manifest,
            metrics,
            process_start,
            opts,
        })
    }

    fn cfg(&self) -> &TrainConfig {
        &self.opts.config
    }

    /// Training wall time of the whole run: earlier sessions plus this process.
    fn elapsed(&self) -> f64 {
        self.state.wall_seconds + self.process_start.elapsed().as_secs_f64()
    }

    fn say(&self, line: &str) {
        if self.main {
            println!("{line}");
        }
    }

    fn eval_loss(&self) -> Result<f64> {
        let batch_size = self.cfg().eval.batch_size;
        eval_loss(&self.base.model, &self.lora, &self.data.eval, batch_size, self.pad, &self.opts.group)
    }

    fn append_metrics(&self, line: &MetricsLine) -> Result<()> {
        match &self.metrics {
            Some(m) => m.append(line),
            None => Ok(()),
        }
    }

    fn write_manifest(&self) -> Result<()> {
        match self.main {
            true => self.manifest.write(&self.run_dir),
            false => Ok(()),
        }
    }

    /// Phase 5: the base model's eval loss, before any training (B = 0, so the adapter
    /// changes nothing yet). A resumed run has it already.
    fn measure_base(&mut self) -> Result<()> {
        if self.state.base_eval.is_some() || self.data.eval.is_empty() {
            return Ok(());
        }
        let loss = self.eval_loss()?;
        self.state.base_eval = Some(EvalPoint { step: 0, loss });
        self.state.best_eval = Some(EvalPoint { step: 0, loss });
        self.append_metrics(&MetricsLine {
            step: 0,
            eval_loss: Some(loss),
            elapsed_s: self.elapsed(),
            ..Default::default()
        })?;
        self.say(&format!("eval    step 0 (base model): loss {loss:.4}"));
        Ok(())
    }

    /// Phase 6: steps until the last one, an early stop or Ctrl-C. A failure is recorded in
    /// run.json before it is returned.
    fn train(&mut self) -> Result<RunStatus> {
        let cfg = self.cfg();
        let reporter = Reporter::new(self.schedule.total_steps, self.state.step, cfg.train.log_every, self.main);
        let mut loader = Loader::new(self.plan, self.data.train_lens(), self.state.position);
        let outcome = self.step_loop(&mut loader, &reporter);
        reporter.finish();
        self.manifest.steps_completed = self.state.step;
        self.manifest.wall_seconds = self.elapsed();
        if let Err(e) = &outcome {
            self.manifest.status = RunStatus::Failed;
            self.manifest.ended_at = Some(manifest::now());
            self.manifest.error = Some(format!("{e:#}"));
            self.write_manifest()?;
        }
        outcome
    }

    fn step_loop(&mut self, loader: &mut Loader, reporter: &Reporter) -> Result<RunStatus> {
        while self.state.step < self.schedule.total_steps {
            let (mut line, interrupted) = self.optimizer_step(loader)?;
            let stop_early = self.eval_when_due(&mut line, reporter)?;
            line.elapsed_s = self.elapsed();
            self.append_metrics(&line)?;
            reporter.step(&line, self.schedule.total_steps);
            self.checkpoint_when_due(stop_early || interrupted, reporter)?;
            if stop_early {
                reporter.println(&format!(
                    "early stop: no eval improvement for {} evals (best {:.4} at step {})",
                    self.state.evals_without_improvement,
                    self.state.best_eval.map_or(f64::NAN, |b| b.loss),
                    self.state.best_eval.map_or(0, |b| b.step)
                ));
                return Ok(RunStatus::EarlyStopped);
            }
            if interrupted {
                return Ok(RunStatus::Interrupted);
            }
        }
        Ok(RunStatus::Completed)
    }

    /// One optimizer step: this rank's share of the step's micro-batches forward and
    /// backward, then gradients, loss, token count and the Ctrl-C flag summed over ranks
    /// (so every rank takes the same update and stops at the same step), clipped, AdamW.
    /// Returns the step's metrics (without eval and elapsed time) and whether to stop.
    fn optimizer_step(&mut self, loader: &mut Loader) -> Result<(MetricsLine, bool)> {
        let t_step = Instant::now();
        let cfg = &self.opts.config;
        let group = &self.opts.group;
        let train = &self.data.train;
        // The whole group's micro-batches of this step; this rank runs its share.
        let micro_batches = loader.next_step();
        let step_targets: usize = micro_batches.iter().flatten().flatten().map(|&i| train[i].num_targets()).sum();
        let step_opts = StepOptions {
            mlp_chunk_rows: None,
            gradient_checkpointing: cfg.train.gradient_checkpointing,
            checkpoint_layers: cfg.train.checkpoint_layers,
            offload_checkpoints: cfg.train.offload_checkpoints,
            dropout: cfg.lora.dropout,
            profiler: None,
        };
        let mut grads = LoraGrads::zeros(&self.lora)?;
        let (mut nll, mut tokens) = (0f64, 0usize);
        for k in distributed::shard_range(micro_batches.len(), group.rank, group.world_size) {
            let rows: Vec<Vec<&EncodedExample>> =
                micro_batches[k].iter().map(|r| r.iter().map(|&i| &train[i]).collect()).collect();
            let batch = TrainBatch::new(&rows, self.pad, &self.opts.device)?;
            // Dropout draws from a stream of its own per micro-batch, whichever rank runs it.
            let mut rng = ChaCha8Rng::seed_from_u64(self.state.rng_seed);
            rng.set_stream(((self.state.step as u64) << 20) | k as u64);
            let scale = 1.0 / step_targets as f64;
            let s =
                step::forward_backward(&self.base.model, &self.lora, &batch, scale, step_opts, &mut rng, &mut grads)?;
            nll += s.nll_sum;
            tokens += s.num_tokens;
        }
        let mut g = group.sum_tensors(&grads.tensors())?;
        let mut shared = [nll, tokens as f64, f64::from(u8::from(self.opts.interrupt.load(Ordering::SeqCst)))];
        group.sum_f64(&mut shared)?;
        let (nll, tokens, interrupted) = (shared[0], shared[1] as usize, shared[2] > 0.0);
        let loss = nll / step_targets as f64;
        let grad_norm = optimizer::clip_by_global_norm(&mut g, cfg.train.max_grad_norm)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            let last = checkpoint::list(&self.run_dir)
                .pop()
                .map(|(s, d)| format!("; the last good checkpoint is {} (step {s})", d.display()))
                .unwrap_or_default();
            bail!(
                "step {}: the loss is {loss} and the gradient norm {grad_norm}: training diverged (try a lower train.lr or a max_grad_norm){last}",
                self.state.step + 1
            );
        }
        let lr = self.schedule.lr(self.state.step);
        let params = self.opt.update(&self.lora.tensors(), &g, lr)?;
        self.lora.set_tensors(params.into_iter());
        self.state.step += 1;
        self.state.position = loader.position;
        self.state.tokens_seen += tokens as u64;
        let dt = t_step.elapsed().as_secs_f64();
        let line = MetricsLine {
            step: self.state.step,
            epoch: Some(loader.position.epoch),
            loss: Some(loss),
            lr: Some(lr),
            grad_norm: Some(grad_norm),
            tokens: Some(tokens),
            tokens_per_s: Some(tokens as f64 / dt),
            eval_loss: None,
            elapsed_s: 0.0,
        };
        Ok((line, interrupted))
    }

    /// Evaluates every `eval.every` steps and at the last step, keeps the best adapter in
    /// `best/`, and counts evals without improvement. Returns whether to stop early.
    fn eval_when_due(&mut self, line: &mut MetricsLine, reporter: &Reporter) -> Result<bool> {
        let (step, every) = (self.state.step, self.cfg().eval.every);
        let due = (every > 0 && step % every == 0) || step == self.schedule.total_steps;
        if self.data.eval.is_empty() || !due {
            return Ok(false);
        }
        let loss = self.eval_loss()?;
        line.eval_loss = Some(loss);
        let point = EvalPoint { step, loss };
        self.state.evals.push(point);
        self.last_eval_step = Some(step);
        let cfg = &self.opts.config;
        let mut stop_early = false;
        let improved = self.state.best_eval.is_none_or(|b| loss < b.loss - cfg.eval.early_stopping_min_delta);
        if improved {
            self.state.best_eval = Some(point);
            self.state.evals_without_improvement = 0;
            if cfg.output.save_best && self.main {
                lora::save_adapter(&layout::best_dir(&self.run_dir), &self.lora, &cfg.model.path)?;
            }
        } else {
            self.state.evals_without_improvement += 1;
            let patience = cfg.eval.early_stopping_patience;
            stop_early = patience > 0 && self.state.evals_without_improvement >= patience;
        }
        let best = self.state.best_eval.expect("set above");
        reporter.println(&format!("eval    step {step}: loss {loss:.4} (best {:.4} at step {})", best.loss, best.step));
        Ok(stop_early)
    }

    /// Saves a checkpoint every `output.checkpoint_every` steps, at the last step and when
    /// the run stops (`stopping`), after checking that every rank holds the same adapter;
    /// prunes old ones and updates run.json.
    fn checkpoint_when_due(&mut self, stopping: bool, reporter: &Reporter) -> Result<()> {
        let (step, every) = (self.state.step, self.cfg().output.checkpoint_every);
        let due = (every > 0 && step % every == 0) || step == self.schedule.total_steps || stopping;
        if !due {
            return Ok(());
        }
        self.opts.group.check_in_sync(&self.lora.tensors(), &format!("step {step}"))?;
        if !self.main {
            return Ok(());
        }
        let cfg = &self.opts.config;
        let saved = TrainerState { wall_seconds: self.elapsed(), ..self.state.clone() };
        let dir = checkpoint::save(&self.run_dir, &self.lora, &self.opt, &saved, &cfg.model.path)?;
        checkpoint::prune(&self.run_dir, cfg.output.keep_checkpoints)?;
        self.manifest.steps_completed = step;
        self.manifest.wall_seconds = saved.wall_seconds;
        self.write_manifest()?;
        if stopping {
            reporter.println(&format!("saved   {}", dir.display()));
        }
        Ok(())
    }

    /// Phase 7: an eval at the last step if none was made there (so `final` describes the
    /// adapter on disk), the adapter, the base-vs-tuned checks and eval.json (all but after
    /// Ctrl-C, which leaves the checkpoint to resume from), and run.json's closing status.
    fn finish(mut self, status: RunStatus) -> Result<RunOutcome> {
        let stopped = status == RunStatus::Interrupted;
        if !stopped && !self.data.eval.is_empty() && self.last_eval_step != Some(self.state.step) {
            let loss = self.eval_loss()?;
            self.state.evals.push(EvalPoint { step: self.state.step, loss });
        }
        let final_eval = self.state.evals.last().copied().filter(|e| e.step == self.state.step);
        if !stopped && self.main {
            self.write_adapter_and_eval_report(final_eval)?;
        }
        self.manifest.status = status;
        self.manifest.ended_at = Some(manifest::now());
        self.write_manifest()?;
        let trained = self.state.step - self.session_start_step;
        self.say(&format!(
            "done    {:?} after {} steps ({} this session) in {:.0}s",
            status, self.state.step, trained, self.manifest.wall_seconds
        ));
        if let (Some(b), Some(f)) = (self.state.base_eval, final_eval) {
            self.say(&format!(
                "eval    base {:.4} -> final {:.4} ({:+.1}%)",
                b.loss,
                f.loss,
                100.0 * (f.loss - b.loss) / b.loss
            ));
        }
        Ok(RunOutcome {
            status,
            run_dir: self.run_dir,
            steps: self.state.step,
            base_eval: self.state.base_eval,
            best_eval: self.state.best_eval,
            final_eval,
        })
    }

    /// The final adapter, the regression set and samples of base and tuned, and eval.json.
    fn write_adapter_and_eval_report(&self, final_eval: Option<EvalPoint>) -> Result<()> {
        let cfg = self.cfg();
        lora::save_adapter(&self.run_dir, &self.lora, &cfg.model.path)?;
        let resolved = &self.base.identity.resolved;
        let extra_stops =
            if resolved.is_dir() { crate::generate::generation_config_stop_ids(resolved) } else { Vec::new() };
        let (regression, generation) = base_vs_tuned::check(
            &self.base.model,
            &self.lora,
            &self.tokenizer,
            &extra_stops,
            self.data.regression.as_ref(),
            &self.data.eval_prompts,
            &cfg.eval,
            self.pad,
            &self.run_dir,
        )?;
        let eval = &self.data.eval;
        let report = EvalReport {
            base: self.state.base_eval,
            best: self.state.best_eval,
            final_: final_eval,
            history: self.state.evals.clone(),
            eval_examples: eval.len(),
            eval_tokens: eval.iter().map(|e| e.len()).sum(),
            eval_targets: eval.iter().map(|e| e.num_targets()).sum(),
            regression,
            generation,
        };
        report.write(&self.run_dir)
    }
}
