//! Learning-rate schedules: linear warmup, then cosine, linear or constant.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
    /// The floor of cosine/linear decay, as a fraction of `peak_lr`.
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based). Warmup rises linearly to the
    /// peak over `warmup_steps` steps, reaching it on the last warmup step (unlike HF's,
    /// whose first step has lr 0 and does nothing); decay then runs from the peak at the
    /// first step after warmup to `min_lr_ratio * peak` at the last step.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps + 1).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let factor = match self.decay {
            Decay::Constant => return self.peak_lr,
            Decay::Linear => 1.0 - progress,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.peak_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_reaches_the_floor() {
        let s = Schedule { peak_lr: 1e-3, warmup_steps: 4, total_steps: 14, decay: Decay::Cosine, min_lr_ratio: 0.1 };
        let lrs: Vec<f64> = (0..14).map(|i| s.lr(i)).collect();
        assert!((lrs[0] - 2.5e-4).abs() < 1e-12);
        assert!((lrs[3] - 1e-3).abs() < 1e-12);
        assert!((lrs[4] - 1e-3).abs() < 1e-12);
        assert!((lrs[13] - 1e-4).abs() < 1e-12);
        // Halfway through decay, cosine is at the midpoint between peak and floor.
        let mid = Schedule { total_steps: 13, ..s }.lr(4 + 4);
        assert!((mid - 5.5e-4).abs() < 1e-12, "{mid}");
        assert!(lrs.windows(2).skip(4).all(|w| w[1] <= w[0]));
        let lin = Schedule { decay: Decay::Linear, min_lr_ratio: 0.0, ..s };
        assert!((lin.lr(13)).abs() < 1e-12);
        assert!((lin.lr(9) - 1e-3 * (1.0 - 5.0 / 9.0)).abs() < 1e-12);
        let c = Schedule { decay: Decay::Constant, ..s };
        assert_eq!(c.lr(13), 1e-3);
    }
}
