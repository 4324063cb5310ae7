//! Range, allowed-value and cross-key checks on the typed config. Each check
//! names the full key, what is allowed and what was given.

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;

use super::choices::BadChoices;
use super::document::Origins;
use super::error::ConfigError;
use super::schema::TrainConfig;

/// `bad`: the choice keys whose value was not one of their names (`choices.rs`), each
/// reported when its turn comes.
pub(crate) fn validate(cfg: &TrainConfig, origins: &Origins, mut bad: BadChoices) -> Result<(), ConfigError> {
    let c = Checker { origins };
    let (model, lora, data, train, eval, output, device) =
        (&cfg.model, &cfg.lora, &cfg.data, &cfg.train, &cfg.eval, &cfg.output, &cfg.device);

    c.not_empty("model.path", &model.path)?;
    bad.check("model.dtype")?;
    bad.check("model.quantize")?;

    c.int("lora.r", lora.r, 1, Some(1024))?;
    c.float("lora.alpha", lora.alpha, Lo::Excl(0.0), None)?;
    c.float("lora.dropout", lora.dropout, Lo::Incl(0.0), Some(Hi::Excl(1.0)))?;
    bad.check("lora.target_modules")?;
    c.list("lora.target_modules", &lora.target_modules)?;

    c.list("data.train", &data.train)?;
    for path in &data.train {
        c.not_empty("data.train", path)?;
    }
    if let Some(path) = &data.eval {
        c.not_empty("data.eval", path)?;
    }
    c.float("data.eval_fraction", data.eval_fraction, Lo::Incl(0.0), Some(Hi::Incl(0.5)))?;
    bad.check("data.format")?;
    c.int("data.max_seq_len", data.max_seq_len, 8, None)?;
    if let Some(weights) = &data.weights {
        if weights.len() != data.train.len() {
            return Err(c.invalid(
                "data.weights",
                format!(
                    "has {} entries but data.train lists {} files (one weight per file)",
                    weights.len(),
                    data.train.len()
                ),
            ));
        }
        for w in weights {
            c.float("data.weights", *w, Lo::Excl(0.0), None)?;
        }
    }
    bad.check("data.on_bad_record")?;
    bad.check("data.lint")?;

    c.int("train.epochs", train.epochs, 1, None)?;
    if let Some(k) = train.checkpoint_layers {
        c.int("train.checkpoint_layers", k, 1, None)?;
    }
    if let Some(steps) = train.max_steps {
        c.int("train.max_steps", steps, 1, None)?;
    }
    c.int("train.micro_batch_size", train.micro_batch_size, 1, None)?;
    c.int("train.grad_accum", train.grad_accum, 1, None)?;
    c.float("train.lr", train.lr, Lo::Excl(0.0), None)?;
    bad.check("train.lr_scheduler")?;
    c.float("train.warmup_ratio", train.warmup_ratio, Lo::Incl(0.0), Some(Hi::Excl(1.0)))?;
    if train.warmup_steps > 0 && train.warmup_ratio > 0.0 {
        let keys = ["train.warmup_steps", "train.warmup_ratio"];
        return Err(ConfigError::Conflict {
            at: origins.at_any(&keys),
            keys,
            reason: format!(
                "train.warmup_steps ({}) and train.warmup_ratio ({}) are both set; set one of them and leave the other at 0",
                train.warmup_steps, train.warmup_ratio
            ),
        });
    }
    c.float("train.min_lr_ratio", train.min_lr_ratio, Lo::Incl(0.0), Some(Hi::Incl(1.0)))?;
    c.float("train.weight_decay", train.weight_decay, Lo::Incl(0.0), None)?;
    c.float("train.adam_beta1", train.adam_beta1, Lo::Incl(0.0), Some(Hi::Excl(1.0)))?;
    c.float("train.adam_beta2", train.adam_beta2, Lo::Incl(0.0), Some(Hi::Excl(1.0)))?;
    c.float("train.adam_eps", train.adam_eps, Lo::Excl(0.0), None)?;
    c.float("train.max_grad_norm", train.max_grad_norm, Lo::Incl(0.0), None)?;
    c.int("train.log_every", train.log_every, 1, None)?;

    c.int("eval.batch_size", eval.batch_size, 1, None)?;
    if let Some(path) = &eval.regression {
        c.not_empty("eval.regression", path)?;
    }
    c.float("eval.regression_threshold", eval.regression_threshold, Lo::Incl(0.0), None)?;
    c.int("eval.max_new_tokens", eval.max_new_tokens, 1, None)?;
    c.float("eval.early_stopping_min_delta", eval.early_stopping_min_delta, Lo::Incl(0.0), None)?;
    if eval.early_stopping_patience > 0 && data.eval.is_none() && data.eval_fraction == 0.0 {
        let keys = ["eval.early_stopping_patience", "data.eval_fraction"];
        return Err(ConfigError::Conflict {
            at: origins.at_any(&keys),
            keys,
            reason:
                "eval.early_stopping_patience needs an eval set, but data.eval is not set and data.eval_fraction is 0"
                    .to_string(),
        });
    }

    c.not_empty("output.dir", &output.dir)?;
    c.int("output.keep_checkpoints", output.keep_checkpoints, 1, None)?;

    bad.check("device.name")?;
    if let Some(gpus) = device.gpus {
        c.int("device.gpus", gpus, 1, None)?;
    }
    if let Some(threads) = device.threads {
        c.int("device.threads", threads, 1, None)?;
    }
    bad.rest()
}

/// What is wrong with a list that must have entries and no repeats, if anything.
pub(crate) fn list_problem<T: Eq + Hash + Display>(items: &[T]) -> Option<String> {
    if items.is_empty() {
        return Some("must list at least one entry".to_string());
    }
    let mut seen = HashSet::new();
    let twice = items.iter().find(|item| !seen.insert(*item))?;
    Some(format!("\"{twice}\" is listed twice"))
}

/// Lower bound of a float range: inclusive or exclusive.
#[derive(Clone, Copy)]
enum Lo {
    Incl(f64),
    Excl(f64),
}

/// Upper bound of a float range.
#[derive(Clone, Copy)]
enum Hi {
    Incl(f64),
    Excl(f64),
}

struct Checker<'a> {
    origins: &'a Origins,
}

impl Checker<'_> {
    fn out_of_range(&self, key: &str, allowed: String, got: String) -> ConfigError {
        ConfigError::OutOfRange { at: self.origins.at(key), key: key.to_string(), allowed, got }
    }

    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::Invalid { at: self.origins.at(key), key: key.to_string(), reason }
    }

    fn int(&self, key: &str, value: usize, lo: usize, hi: Option<usize>) -> Result<(), ConfigError> {
        let ok = value >= lo && hi.is_none_or(|hi| value <= hi);
        if ok {
            return Ok(());
        }
        let allowed = match hi {
            Some(hi) => format!("between {lo} and {hi}"),
            None => format!(">= {lo}"),
        };
        Err(self.out_of_range(key, allowed, value.to_string()))
    }

    /// Also rejects NaN, and infinity where there is no upper bound.
    fn float(&self, key: &str, value: f64, lo: Lo, hi: Option<Hi>) -> Result<(), ConfigError> {
        let above = match lo {
            Lo::Incl(lo) => value >= lo,
            Lo::Excl(lo) => value > lo,
        };
        let below = match hi {
            Some(Hi::Incl(hi)) => value <= hi,
            Some(Hi::Excl(hi)) => value < hi,
            None => value.is_finite(),
        };
        if above && below {
            return Ok(());
        }
        let allowed = match (lo, hi) {
            (Lo::Incl(lo), None) => format!(">= {lo}"),
            (Lo::Excl(lo), None) => format!("> {lo}"),
            (lo, Some(hi)) => {
                let (open, lo) = match lo {
                    Lo::Incl(lo) => ('[', lo),
                    Lo::Excl(lo) => ('(', lo),
                };
                let (hi, close) = match hi {
                    Hi::Incl(hi) => (hi, ']'),
                    Hi::Excl(hi) => (hi, ')'),
                };
                format!("in {open}{lo}, {hi}{close}")
            }
        };
        let allowed = if hi.is_none() && above { format!("finite and {allowed}") } else { allowed };
        Err(self.out_of_range(key, allowed, value.to_string()))
    }

    fn not_empty(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        if value.trim().is_empty() {
            return Err(self.invalid(key, "must not be empty".to_string()));
        }
        Ok(())
    }

    /// A non-empty list without repeated entries.
    fn list<T: Eq + Hash + Display>(&self, key: &str, items: &[T]) -> Result<(), ConfigError> {
        match list_problem(items) {
            Some(reason) => Err(self.invalid(key, reason)),
            None => Ok(()),
        }
    }
}
