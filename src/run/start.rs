//! The run's third and fourth phases: the base model loaded and hashed, then the adapter,
//! optimizer and trainer state, either fresh (LoRA init or `lora.init_from`) or read back
//! from the newest checkpoint of a resumed run.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::path::Path;
use std::time::Instant;

use super::batches::DataPosition;
use super::checkpoint::{self, TrainerState};
use super::layout::CONFIG_FILE;
use super::manifest::{Manifest, Session, WeightFile};
use crate::config::TrainConfig;
use crate::distributed::ProcessGroup;
use crate::lora::{self, LoraSpec, LoraWeights, Target};
use crate::model::hub::HubOptions;
use crate::model::{self, Llama, LoadOptions, ModelConfig, ModelIdentity, ModelSource};
use crate::train::optimizer::{AdamW, AdamWConfig};

/// The frozen base model and what the manifest records of it.
pub struct BaseModel {
    pub model: Llama,
    pub identity: ModelIdentity,
    pub dtype: DType,
    /// Every weight file, hashed: a resume refuses a base whose files changed.
    pub weight_files: Vec<WeightFile>,
}

/// Loads `model.path` in `model.dtype` (quantized with `model.quantize`) onto `device`.
pub fn load_model(
    cfg: &TrainConfig,
    source: &ModelSource,
    hub: HubOptions,
    device: &Device,
    main: bool,
) -> Result<BaseModel> {
    let mut load_opts = LoadOptions::for_device(device.clone(), hub);
    if let Some(d) = cfg.model.dtype {
        load_opts.dtype = d.dtype();
    }
    load_opts.quantize = cfg.model.quantize;
    let t0 = Instant::now();
    let loaded = model::load(source, &load_opts).with_context(|| format!("loading model {}", cfg.model.path))?;
    if main {
        println!(
            "model   {} ({} parameters, {} on {}, loaded in {:.1}s)",
            loaded.identity.source,
            loaded.identity.num_parameters,
            load_opts.dtype.as_str(),
            model::device_label(device),
            t0.elapsed().as_secs_f64()
        );
    }
    let weight_files = loaded.identity.weight_files.iter().map(|p| WeightFile::hash(p)).collect::<Result<_>>()?;
    Ok(BaseModel { model: loaded.model, identity: loaded.identity, dtype: load_opts.dtype, weight_files })
}

/// The trainable state of a run: adapter, optimizer moments, trainer state.
pub struct Start {
    pub lora: LoraWeights,
    pub opt: AdamW,
    pub state: TrainerState,
    /// The `lora.init_from` adapter file, hashed (fresh runs only).
    pub init_adapter: Option<WeightFile>,
    /// The sessions before this one and when the run first started (from run.json on resume).
    pub sessions: Vec<Session>,
    pub first_started: Option<String>,
}

/// A fresh adapter (PEFT's init, or `lora.init_from`) with zeroed optimizer moments at step
/// 0; on `resume`, the newest complete checkpoint in the run folder instead, after checking
/// that the base model is the one the run started with.
pub fn start_or_resume(
    cfg: &TrainConfig,
    base: &BaseModel,
    total_steps: usize,
    resume: bool,
    device: &Device,
    group: &ProcessGroup,
) -> Result<Start> {
    let main = group.is_main();
    let run_dir = Path::new(&cfg.output.dir);
    let spec = lora_spec(cfg);
    let (lora, init_adapter) = match &cfg.lora.init_from {
        None => (LoraWeights::init(&spec, &base.model.config, cfg.train.seed, device)?, None),
        Some(dir) => {
            let (lora, file) = start_adapter(Path::new(dir), &spec, &base.model.config, device)?;
            if main {
                println!("adapter starts from {dir} (r={}, {} tensors)", spec.r, lora.tensors().len());
            }
            (lora, Some(file))
        }
    };
    let adam = AdamWConfig {
        beta1: cfg.train.adam_beta1,
        beta2: cfg.train.adam_beta2,
        eps: cfg.train.adam_eps,
        weight_decay: cfg.train.weight_decay,
    };
    let opt = AdamW::new(adam, &lora.tensors())?;
    let state = TrainerState {
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
    let mut start = Start { lora, opt, state, init_adapter, sessions: Vec::new(), first_started: None };
    if resume {
        let previous = previous_manifest(run_dir, cfg, base)?;
        start.sessions = previous.sessions;
        start.first_started = Some(previous.started_at);
        resume_from_checkpoint(&mut start, &spec, &base.model.config, run_dir, device, group)?;
    }
    Ok(start)
}

/// run.json of the run being resumed: it must read, and its base model's weight files must
/// hash as they did when the run started (else the resume would train on a different model).
fn previous_manifest(run_dir: &Path, cfg: &TrainConfig, base: &BaseModel) -> Result<Manifest> {
    let previous = Manifest::read(run_dir).context("resuming needs the run's manifest")?;
    let then: Vec<&str> = previous.base_model_files.iter().map(|w| w.sha256.as_str()).collect();
    let now: Vec<&str> = base.weight_files.iter().map(|w| w.sha256.as_str()).collect();
    if then != now {
        bail!(
            "{}: the base model's weight files have changed since this run started (sha256 differs); resuming would train on a different model",
            cfg.model.path
        );
    }
    Ok(previous)
}

/// Replaces `start`'s adapter, moments and state with the newest complete checkpoint's.
/// Every rank reads the checkpoint itself; all must find rank 0's.
fn resume_from_checkpoint(
    start: &mut Start,
    spec: &LoraSpec,
    model_cfg: &ModelConfig,
    run_dir: &Path,
    device: &Device,
    group: &ProcessGroup,
) -> Result<()> {
    let main = group.is_main();
    let total_steps = start.state.total_steps;
    let newest = checkpoint::list(run_dir).pop();
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
    let Some((step, dir)) = newest else {
        if main {
            println!("resume  no complete checkpoint in {}: starting from step 0", run_dir.display());
        }
        return Ok(());
    };
    let (lora, state) = checkpoint::load(&dir, model_cfg, &mut start.opt, device)?;
    anyhow::ensure!(lora.spec == *spec, "{}: the adapter's LoRA settings differ from {}", dir.display(), CONFIG_FILE);
    if state.world_size != group.world_size {
        bail!(
            "{}: this run trained with {} rank(s) and is resumed with {}: its steps are batches of {} ranks, so resume it with --gpus {} (or as many ranks in all)",
            dir.display(),
            state.world_size,
            group.world_size,
            state.world_size,
            state.world_size
        );
    }
    start.lora = lora;
    start.state = TrainerState { total_steps, ..state };
    if main {
        println!("resume  from {} (step {step} of {total_steps})", dir.display());
    }
    Ok(())
}

/// The adapter the `[lora]` section describes (targets sorted, each once).
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

/// The adapter of `lora.init_from`, checked against the run's [lora] section: its rank,
/// scaling, rsLoRA flag and target modules must be the same (the config stays the one
/// description of what trains), else the error names each key with both values.
fn start_adapter(dir: &Path, spec: &LoraSpec, cfg: &ModelConfig, device: &Device) -> Result<(LoraWeights, WeightFile)> {
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
        bail!("lora.init_from: {} does not match the [lora] section: {}", dir.display(), diffs.join("; "));
    }
    let weights = WeightFile::hash(&dir.join(lora::ADAPTER_WEIGHTS_FILE))?;
    // Dropout is a training choice of this run, not part of the saved adapter.
    let lora = LoraWeights { spec: LoraSpec { dropout: spec.dropout, ..lora.spec }, ..lora };
    Ok((lora, weights))
}
