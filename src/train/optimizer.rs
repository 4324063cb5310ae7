//! AdamW over the adapter tensors (decoupled weight decay, bias-corrected moments, the
//! same arithmetic order as torch.optim.AdamW), and global-norm gradient clipping.

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments per parameter, in the adapter's tensor order.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates done so far.
    pub step: u64,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &[Tensor]) -> Result<Self> {
        let zeros = |p: &Tensor| p.zeros_like();
        Ok(AdamW {
            config,
            step: 0,
            exp_avg: params.iter().map(zeros).collect::<Result<_>>()?,
            exp_avg_sq: params.iter().map(zeros).collect::<Result<_>>()?,
        })
    }

    /// One update with learning rate `lr`; returns the new parameters.
    /// p <- p (1 - lr wd); p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
    pub fn update(&mut self, params: &[Tensor], grads: &[Tensor], lr: f64) -> Result<Vec<Tensor>> {
        let c = self.config;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let mut out = Vec::with_capacity(params.len());
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            #[cfg(feature = "cuda")]
            if p.device().is_cuda() && p.dtype() == DType::F32 {
                // One fused kernel per tensor instead of a dozen element-wise passes.
                let step = super::cuda_kernels::AdamWStep {
                    lr: lr as f32,
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    eps: c.eps as f32,
                    weight_decay: c.weight_decay as f32,
                    bc1: bc1 as f32,
                    bc2_sqrt: bc2.sqrt() as f32,
                };
                let (p, m, v) =
                    super::cuda_kernels::adamw(p, &g.contiguous()?, &self.exp_avg[i], &self.exp_avg_sq[i], step)?;
                out.push(p);
                self.exp_avg[i] = m;
                self.exp_avg_sq[i] = v;
                continue;
            }
            let m = ((&self.exp_avg[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.exp_avg_sq[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let p = if c.weight_decay > 0.0 { (p * (1.0 - lr * c.weight_decay))? } else { p.clone() };
            let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
            out.push((p - (m.div(&denom)? * (lr / bc1))?)?);
            self.exp_avg[i] = m;
            self.exp_avg_sq[i] = v;
        }
        Ok(out)
    }

    /// Moments keyed "{name}.exp_avg" / "{name}.exp_avg_sq", for a checkpoint.
    pub fn state_tensors(&self, names: &[String]) -> Result<HashMap<String, Tensor>> {
        let mut map = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            map.insert(format!("{n}.exp_avg"), self.exp_avg[i].to_device(&Device::Cpu)?);
            map.insert(format!("{n}.exp_avg_sq"), self.exp_avg_sq[i].to_device(&Device::Cpu)?);
        }
        Ok(map)
    }

    /// Restores moments written by `state_tensors`; every name must be present with the
    /// parameter's shape.
    pub fn load_state(
        &mut self,
        names: &[String],
        mut map: HashMap<String, Tensor>,
        step: u64,
        device: &Device,
    ) -> std::result::Result<(), String> {
        for (i, n) in names.iter().enumerate() {
            for (suffix, slot) in [("exp_avg", &mut self.exp_avg[i]), ("exp_avg_sq", &mut self.exp_avg_sq[i])] {
                let key = format!("{n}.{suffix}");
                let t = map.remove(&key).ok_or_else(|| format!("optimizer state lacks tensor {key}"))?;
                if t.dims() != slot.dims() {
                    return Err(format!("optimizer tensor {key} has shape {:?}, expected {:?}", t.dims(), slot.dims()));
                }
                *slot = t.to_dtype(DType::F32).and_then(|t| t.to_device(device)).map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of all gradients (f64). The per-tensor sums stay on the device and
/// are read back once (one synchronization, not one per tensor).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let sums = grads.iter().map(|g| g.to_dtype(DType::F64)?.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (torch's
/// clip_grad_norm_: coefficient max_norm / (norm + 1e-6), capped at 1). Returns the norm
/// before clipping. `max_norm` 0 disables clipping.
pub fn clip_by_global_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two AdamW steps on one tensor, against values computed by hand from torch's
    /// formula (see the doc comment of `update`).
    #[test]
    fn adamw_matches_torch_formula() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let p = Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(cfg, std::slice::from_ref(&p)).unwrap();
        let g1 = Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap();
        let p1 = opt.update(&[p], &[g1], 0.01).unwrap().remove(0);
        // Step 1: m = 0.1 g, v = 0.001 g^2, bias-corrected m/sqrt(v) = sign(g).
        let expect1 = [1.0 * (1.0 - 0.001) - 0.01 * 1.0, -2.0 * (1.0 - 0.001) + 0.01 * 1.0];
        let got1: Vec<f32> = p1.to_vec1().unwrap();
        for (a, b) in got1.iter().zip(expect1) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        let g2 = Tensor::new(&[-0.5f32, 0.0], &Device::Cpu).unwrap();
        let p2: Vec<f32> = opt.update(&[p1], &[g2], 0.01).unwrap().remove(0).to_vec1().unwrap();
        // Step 2, element 0: m = 0.9*0.05 + 0.1*(-0.5) = -0.005, v = 0.999*0.00025 + 0.001*0.25.
        let (m, v): (f64, f64) = (-0.005, 0.999 * 0.00025 + 0.001 * 0.25);
        let (bc1, bc2) = (1.0 - 0.9f64.powi(2), 1.0 - 0.999f64.powi(2));
        let e0 = got1[0] as f64 * (1.0 - 0.001) - 0.01 / bc1 * m / (v.sqrt() / bc2.sqrt() + 1e-8);
        assert!((p2[0] as f64 - e0).abs() < 1e-6, "{} vs {e0}", p2[0]);
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn clipping_scales_to_max_norm_and_reports_the_raw_norm() {
        let mut g = vec![Tensor::new(&[3.0f32], &Device::Cpu).unwrap(), Tensor::new(&[4.0f32], &Device::Cpu).unwrap()];
        let n = clip_by_global_norm(&mut g, 1.0).unwrap();
        assert_eq!(n, 5.0);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-5);
        let n = clip_by_global_norm(&mut g, 10.0).unwrap();
        assert!((n - 1.0).abs() < 1e-5);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-5, "below the limit nothing changes");
    }
}
