//! The run's second phase: how many steps, which micro-batches make each, and the
//! learning rate of each.

use super::batches::BatchPlan;
use crate::config::TrainConfig;
use crate::train::schedule::Schedule;

/// The batch plan of the whole group and the learning-rate schedule (which holds the
/// total step count). A step is `grad_accum` micro-batches on each of `world_size` ranks:
/// the same steps a single process takes with `grad_accum x world_size`.
pub fn plan(cfg: &TrainConfig, train_lens: &[usize], world_size: usize) -> (BatchPlan, Schedule) {
    let plan = BatchPlan {
        seed: cfg.train.seed,
        micro_batch_size: cfg.train.micro_batch_size,
        grad_accum: cfg.train.grad_accum * world_size,
        packing: cfg.data.packing,
        max_seq_len: cfg.data.max_seq_len,
    };
    let total_steps = match cfg.train.max_steps {
        Some(n) => n,
        None => (0..cfg.train.epochs).map(|e| plan.steps_in_epoch(train_lens, e)).sum(),
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
    (plan, schedule)
}
