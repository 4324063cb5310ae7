//! `bench --attention`: forward and backward TFLOP/s of each attention engine a CUDA step
//! can run (our flash kernels, cuDNN's fused attention) on one causal sequence, so that
//! scripts/gpu/attention-bench.sh can print them beside torch's SDPA backends.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::kernels::cudnn::{self, SegmentTensors};
use crate::kernels::{cuda, AttnShape, Segments};

/// One engine at one length: median milliseconds and TFLOP/s.
#[derive(Debug, Serialize)]
pub struct AttentionRate {
    pub engine: &'static str,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub fwd_ms: f64,
    pub bwd_ms: f64,
    pub fwd_tflops: f64,
    pub bwd_tflops: f64,
}

/// Causal attention's forward FLOPs for one sequence: QK^T and PV, half the (T, T) square,
/// 2 * 2 * T^2 * H * D / 2 (FlashAttention's papers count the same; backward is 2.5x).
pub fn causal_fwd_flops(t: usize, heads: usize, d: usize) -> f64 {
    2.0 * (t as f64).powi(2) * heads as f64 * d as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median device milliseconds of `f` over `reps` runs after `warmup` (CUDA events, as
/// torch's figures beside these are timed).
fn time_ms<T>(dev: &Device, warmup: usize, reps: usize, mut f: impl FnMut() -> candle_core::Result<T>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let times = (0..reps).map(|_| cuda::elapsed_ms(dev, &mut f)).collect::<candle_core::Result<Vec<f64>>>()?;
    Ok(median(times))
}

/// Times each available engine at each length in `lens` with `heads` query heads, `kv_heads`
/// kv heads of dim `d`, B = 1, bf16, on random inputs.
pub fn run(dev: &Device, lens: &[usize], heads: usize, kv_heads: usize, d: usize) -> Result<Vec<AttentionRate>> {
    anyhow::ensure!(matches!(dev, Device::Cuda(_)), "bench --attention needs a CUDA device");
    let mut out = Vec::new();
    for &t in lens {
        let s = AttnShape { b: 1, t, nh: heads, nkv: kv_heads, d };
        let rand =
            |h: usize| -> Result<Tensor> { Ok(Tensor::randn(0f32, 1.0, (t, h * d), dev)?.to_dtype(DType::BF16)?) };
        let (q, k, v, dout) = (rand(heads)?, rand(kv_heads)?, rand(kv_heads)?, rand(heads)?);
        let kstart = Tensor::zeros(t, DType::U32, dev)?;
        let seg = SegmentTensors::new(&Segments { starts: vec![0, t as u32] }, s, dev)?;
        let (reps, warmup) = (if t >= 16384 { 5 } else { 10 }, 2);
        let flops = causal_fwd_flops(t, heads, d);
        let rate = |engine, fwd_ms: f64, bwd_ms: f64| AttentionRate {
            engine,
            t,
            heads,
            kv_heads,
            head_dim: d,
            fwd_ms,
            bwd_ms,
            fwd_tflops: flops / fwd_ms / 1e9,
            bwd_tflops: 2.5 * flops / bwd_ms / 1e9,
        };
        if cuda::flash_supported(d) {
            let (o, lse) = cuda::flash_attention_forward(&q, &k, &v, &kstart, s)?;
            let fwd = time_ms(dev, warmup, reps, || cuda::flash_attention_forward(&q, &k, &v, &kstart, s))?;
            let bwd =
                time_ms(dev, warmup, reps, || cuda::flash_attention_backward(&dout, &q, &k, &v, &o, &lse, &kstart, s))?;
            out.push(rate("flash", fwd, bwd));
        }
        if cudnn::enabled(dev)? {
            let (o, stats) = cudnn::sdpa_forward(&q, &k, &v, &seg, s).context("cuDNN attention forward")?;
            let fwd = time_ms(dev, warmup, reps, || cudnn::sdpa_forward(&q, &k, &v, &seg, s))?;
            let bwd = time_ms(dev, warmup, reps, || cudnn::sdpa_backward(&dout, &q, &k, &v, &o, &stats, &seg, s))?;
            out.push(rate("cudnn", fwd, bwd));
        }
    }
    Ok(out)
}
