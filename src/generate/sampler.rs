//! Choosing the next token from logits: greedy at temperature 0, otherwise seeded sampling
//! with temperature, then top-k, then top-p (nucleus), applied in the order transformers
//! applies its logits warpers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); the other settings are then unused.
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// The next token id for `logits` (V,).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature as f32;
        // Candidates sorted by logit, highest first (ties by lower id, as a stable sort keeps them).
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t)).collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    acc += p as f64;
                    acc >= self.params.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.gen::<f32>() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return cand[i].0;
            }
            u -= p;
        }
        cand[probs.len() - 1].0
    }
}

/// Index of the largest value; the first one on ties, as torch.argmax.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(params: SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(params);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(Sampler::new(SamplingParams::default()).sample(&[0.0, 0.5, 0.2]), 1);
    }

    #[test]
    fn sampling_follows_the_softmax_and_the_seed() {
        // p = softmax([ln 1, ln 2, ln 7]) = [0.1, 0.2, 0.7].
        let logits = [1f32.ln(), 2f32.ln(), 7f32.ln()];
        let p = SamplingParams { temperature: 1.0, seed: 3, ..Default::default() };
        let n = 20_000;
        let counts = draw(p.clone(), &logits, n);
        for (c, want) in counts.iter().zip([0.1, 0.2, 0.7]) {
            let got = *c as f64 / n as f64;
            assert!((got - want).abs() < 0.015, "{counts:?}");
        }
        assert_eq!(draw(p.clone(), &logits, 50), draw(p, &logits, 50), "same seed, same draws");
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [1f32.ln(), 2f32.ln(), 7f32.ln()];
        let top_k = draw(SamplingParams { temperature: 1.0, top_k: 2, seed: 1, ..Default::default() }, &logits, 5000);
        assert_eq!(top_k[0], 0, "top-2 never draws the least likely: {top_k:?}");
        // Renormalised over {0.2, 0.7}: 0.222 / 0.778.
        assert!((top_k[1] as f64 / 5000.0 - 0.2222).abs() < 0.02, "{top_k:?}");
        // top_p 0.65 keeps only the 0.7 token; 0.8 keeps the 0.7 and 0.2 tokens.
        let only = draw(SamplingParams { temperature: 1.0, top_p: 0.65, seed: 1, ..Default::default() }, &logits, 500);
        assert_eq!(only, vec![0, 0, 500]);
        let two = draw(SamplingParams { temperature: 1.0, top_p: 0.8, seed: 1, ..Default::default() }, &logits, 2000);
        assert_eq!(two[0], 0);
        assert!(two[1] > 0);
        // A low temperature sharpens towards the argmax.
        let cold = draw(SamplingParams { temperature: 0.05, seed: 1, ..Default::default() }, &logits, 500);
        assert_eq!(cold, vec![0, 0, 500]);
    }
}
