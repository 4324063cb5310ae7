//! Checkpoints: `checkpoints/step-N/` holds the adapter (PEFT format), the optimizer
//! moments and `trainer_state.json` (step, data position, schedule, RNG, eval history).
//! A checkpoint is written into a hidden temporary folder and renamed into place, so a
//! run killed at any moment leaves every `step-N/` complete.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::batches::DataPosition;
use crate::lora::{self, LoraWeights};
use crate::model::ModelConfig;
use crate::train::optimizer::AdamW;

use super::layout::{checkpoints_dir, step_dir, OPTIMIZER_FILE, STATE_FILE};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub loss: f64,
}

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    /// The next micro-batch to train on.
    pub position: DataPosition,
    /// The dropout RNG of micro-batch k of step s is ChaCha8(seed) on stream (s << 20) | k:
    /// nothing else to save.
    pub rng_seed: u64,
    pub base_eval: Option<EvalPoint>,
    pub best_eval: Option<EvalPoint>,
    pub evals: Vec<EvalPoint>,
    /// Evals since the best one (early-stopping patience counter).
    pub evals_without_improvement: usize,
    pub tokens_seen: u64,
    /// Training wall time before this process (seconds).
    pub wall_seconds: f64,
    /// Ranks that trained together (data parallel); a resume needs as many. Checkpoints
    /// from before data parallelism lack it: one.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// Writes `checkpoints/step-{state.step}` atomically (temporary folder, then rename).
pub fn save(
    run_dir: &Path,
    lora: &LoraWeights,
    opt: &AdamW,
    state: &TrainerState,
    base_model: &str,
) -> Result<PathBuf> {
    let dest = step_dir(run_dir, state.step);
    if dest.join(STATE_FILE).is_file() {
        return Ok(dest); // already saved (e.g. the step a run resumed from)
    }
    let parent = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".tmp-step-{}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    lora::save_adapter(&tmp, lora, base_model)?;
    let names: Vec<String> = lora.named_tensors().into_iter().map(|(n, _)| n).collect();
    let moments = opt.state_tensors(&names)?;
    let opt_path = tmp.join(OPTIMIZER_FILE);
    crate::atomic::write_with(&opt_path, |p| {
        candle_core::safetensors::save(&moments, p).map_err(|e| std::io::Error::other(e.to_string()))
    })
    .with_context(|| format!("writing {}", opt_path.display()))?;
    crate::atomic::write_json_file(&tmp.join(STATE_FILE), state)?;
    if dest.exists() {
        // An incomplete folder of the same name (no state file) from an older layout.
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("moving {} into place", dest.display()))?;
    // Make the rename itself durable.
    std::fs::File::open(&parent).and_then(|d| d.sync_all()).ok();
    Ok(dest)
}

/// The complete checkpoints of a run, by step.
pub fn list(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(checkpoints_dir(run_dir)) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()) {
                if e.path().join(STATE_FILE).is_file() {
                    out.push((step, e.path()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Removes all but the newest `keep` checkpoints (and stale temporary folders).
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let all = list(run_dir);
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing old checkpoint {}", dir.display()))?;
    }
    if let Ok(entries) = std::fs::read_dir(checkpoints_dir(run_dir)) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                std::fs::remove_dir_all(e.path()).ok();
            }
        }
    }
    Ok(())
}

/// Loads a checkpoint folder: the adapter, the optimizer moments into `opt`, and the state.
pub fn load(dir: &Path, cfg: &ModelConfig, opt: &mut AdamW, device: &Device) -> Result<(LoraWeights, TrainerState)> {
    let lora = lora::load_adapter(dir, cfg, device)?;
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let state: TrainerState =
        serde_json::from_str(&text).with_context(|| format!("{}: not a valid trainer state", state_path.display()))?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let moments = candle_core::safetensors::load(&opt_path, &Device::Cpu)
        .with_context(|| format!("reading {}", opt_path.display()))?;
    let names: Vec<String> = lora.named_tensors().into_iter().map(|(n, _)| n).collect();
    if let Err(e) = opt.load_state(&names, moments, state.step as u64, device) {
        bail!("{}: {e}", opt_path.display());
    }
    Ok((lora, state))
}
