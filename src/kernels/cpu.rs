//! Fused CPU kernels for the training step, where candle's op-by-op path spends more time
//! on memory traffic, temporaries and scalar `expf` than on arithmetic.
//!
//! Each kernel is a plain loop over contiguous f32 rows that LLVM vectorizes. The default
//! x86-64 target only allows SSE2, so `simd_dispatch!` compiles the same body again with
//! AVX-512 and with AVX2+FMA enabled and picks the best one the CPU has at run time.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, InplaceOp1, Layout, Result, Shape};
use rayon::prelude::*;
use std::sync::Mutex;

/// Defines `$name(args) -> ret` that runs `$body` compiled for the best instruction set
/// available (AVX-512, else AVX2+FMA, else the baseline).
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// exp(x) in f32 to about 2 ulp, written so that it vectorizes: x = n ln2 + r with
/// |r| <= ln2/2, exp(r) by Cephes' degree-6 polynomial, 2^n built in the exponent bits.
/// n is rounded by adding 1.5 * 2^23 (whose ulp is 1), which leaves n in the low bits of
/// the sum, instead of a float-to-int cast (Rust's saturating cast does not vectorize).
/// Underflows to exactly 0 below -87.3 (as masked attention scores need).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let xc = x.clamp(-87.3, 88.7);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5.0e-1);
    let e = (p * r * r + r) + 1.0;
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < -87.3 {
        0.0
    } else {
        e * scale
    }
}

const LANES: usize = 16;

simd_dispatch! {
    fn row_max(row: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] = acc[i].max(c[i]);
            }
        }
        tail.iter().copied().chain(acc).fold(f32::NEG_INFINITY, f32::max)
    }
}

simd_dispatch! {
    /// `row[i] = exp(row[i] - shift)`; returns the sum of the new values.
    fn exp_shift_sum(row: &mut [f32], shift: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp(c[i] - shift);
                acc[i] += c[i];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - shift);
            sum += *x;
        }
        sum
    }
}

simd_dispatch! {
    fn scale_row(row: &mut [f32], s: f32) -> () {
        for x in row.iter_mut() {
            *x *= s;
        }
    }
}

/// Cross-entropy through softmax, forward and backward in one pass, in place: each row
/// of logits (n, V) f32 becomes `scale * (softmax(row) - onehot(label))`, the gradient
/// of `scale * sum(nll)`; the sum of `-log softmax(row)[label]` is kept in `nll_sum`.
pub struct SoftmaxCrossEntropyGrad {
    /// (n,) one label per row.
    pub labels: Vec<u32>,
    pub scale: f32,
    pub nll_sum: Mutex<f64>,
}

impl SoftmaxCrossEntropyGrad {
    pub fn new(labels: Vec<u32>, scale: f32) -> Self {
        SoftmaxCrossEntropyGrad { labels, scale, nll_sum: Mutex::new(0.0) }
    }

    pub fn nll_sum(&self) -> f64 {
        *self.nll_sum.lock().expect("not poisoned")
    }

    /// One row: returns its -log p(label).
    fn row(&self, row: &mut [f32], label: usize) -> f64 {
        let max = row_max(row);
        let picked = row[label] - max;
        let sum = exp_shift_sum(row, max);
        scale_row(row, self.scale / sum);
        row[label] -= self.scale;
        (sum as f64).ln() - picked as f64
    }
}

impl InplaceOp1 for SoftmaxCrossEntropyGrad {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy-grad"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("{}: expects f32 logits", self.name()) };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: logits must be contiguous", self.name())
        };
        let (n, v) = layout.shape().dims2()?;
        if n != self.labels.len() {
            candle_core::bail!("{}: {n} rows but {} labels", self.name(), self.labels.len());
        }
        if let Some(&bad) = self.labels.iter().find(|&&l| l as usize >= v) {
            candle_core::bail!("{}: label {bad} is outside the vocabulary of {v}", self.name());
        }
        // Rows in parallel, their losses added in row order: rayon's parallel sum would
        // associate them as its work-stealing happened to split, changing the last bits of
        // the logged loss from run to run.
        let rows: Vec<f64> =
            data[start..end].par_chunks_mut(v).zip(&self.labels).map(|(row, &l)| self.row(row, l as usize)).collect();
        let total: f64 = rows.iter().sum();
        *self.nll_sum.lock().expect("not poisoned") += total;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Element-wise and row kernels behind candle custom ops (CPU, contiguous f32)
// ---------------------------------------------------------------------------------------

/// The contiguous f32 data of an op input, or an error naming the op.
fn f32_data<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { candle_core::bail!("{op}: expects f32 inputs") };
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("{op}: expects contiguous inputs") };
    Ok(&data[start..end])
}

/// Elements per parallel task of the element-wise kernels.
const TASK: usize = 1 << 14;

/// out[i] = f(inputs at i), in parallel chunks; `kernel` does one chunk.
fn par_map(inputs: &[&[f32]], kernel: fn(&[&[f32]], &mut [f32])) -> Vec<f32> {
    let n = inputs[0].len();
    let mut out = vec![0f32; n];
    out.par_chunks_mut(TASK).enumerate().for_each(|(k, o)| {
        let range = k * TASK..k * TASK + o.len();
        let ins: Vec<&[f32]> = inputs.iter().map(|x| &x[range.clone()]).collect();
        kernel(&ins, o);
    });
    out
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

simd_dispatch! {
    fn swiglu_kernel(x: &[&[f32]], out: &mut [f32]) -> () {
        for ((o, &g), &u) in out.iter_mut().zip(x[0]).zip(x[1]) {
            *o = g * sigmoid(g) * u;
        }
    }
}

simd_dispatch! {
    fn swiglu_grad_up_kernel(x: &[&[f32]], out: &mut [f32]) -> () {
        for ((o, &da), &g) in out.iter_mut().zip(x[0]).zip(x[1]) {
            *o = da * g * sigmoid(g);
        }
    }
}

simd_dispatch! {
    fn swiglu_grad_gate_kernel(x: &[&[f32]], out: &mut [f32]) -> () {
        for (((o, &da), &g), &u) in out.iter_mut().zip(x[0]).zip(x[1]).zip(x[2]) {
            let s = sigmoid(g);
            *o = da * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

/// An element-wise CPU op over same-shaped contiguous f32 inputs (two or three), as a
/// candle custom op: `out[i] = f(inputs[0][i], inputs[1][i], ...)`, `kernel` doing a chunk.
pub struct ElementWise {
    pub name: &'static str,
    pub kernel: fn(&[&[f32]], &mut [f32]),
}

impl ElementWise {
    fn run(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let shape = inputs[0].1.shape();
        let mut data = Vec::with_capacity(inputs.len());
        for (s, l) in inputs {
            if l.shape() != shape {
                candle_core::bail!("{}: input shapes {:?} and {:?} differ", self.name, shape, l.shape());
            }
            data.push(f32_data(self.name, s, l)?);
        }
        Ok((CpuStorage::F32(par_map(&data, self.kernel)), shape.clone()))
    }
}

impl CustomOp2 for ElementWise {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2)])
    }
}

impl CustomOp3 for ElementWise {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// a = silu(g) * u; (g, u): (N, I) -> a (N, I).
pub const SWIGLU: ElementWise = ElementWise { name: "swiglu", kernel: swiglu_kernel };
/// du = da * silu(g); (da, g) -> du.
pub const SWIGLU_GRAD_UP: ElementWise = ElementWise { name: "swiglu-grad-up", kernel: swiglu_grad_up_kernel };
/// dg = da * u * silu'(g), silu'(g) = sig(g) (1 + g (1 - sig(g))); (da, g, u) -> dg.
pub const SWIGLU_GRAD_GATE: ElementWise = ElementWise { name: "swiglu-grad-gate", kernel: swiglu_grad_gate_kernel };

simd_dispatch! {
    /// One row of attention: p = softmax(scale * s + bias), in place of s.
    fn softmax_row(s: &mut [f32], bias: &[f32], scale: f32) -> () {
        for (x, &b) in s.iter_mut().zip(bias) {
            *x = *x * scale + b;
        }
        let max = row_max(s);
        let sum = exp_shift_sum(s, max);
        scale_row(s, 1.0 / sum);
    }
}

simd_dispatch! {
    /// One row of the softmax backward: ds = scale * p * (dp - sum(dp * p)), in place of dp.
    fn softmax_grad_row(dp: &mut [f32], p: &[f32], scale: f32) -> () {
        let mut acc = [0f32; LANES];
        let (head, tail) = dp.split_at(dp.len() - dp.len() % LANES);
        for (c, q) in head.chunks_exact(LANES).zip(p.chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += c[i] * q[i];
            }
        }
        let mut dot: f32 = acc.iter().sum();
        for (x, q) in tail.iter().zip(&p[head.len()..]) {
            dot += x * q;
        }
        for (x, &q) in dp.iter_mut().zip(p) {
            *x = scale * q * (*x - dot);
        }
    }
}

/// Attention probabilities: softmax over the last axis of `scale * scores + bias`.
/// scores: (B, NH, T, T) f32, bias: (B, 1, T, T) f32 (0 or f32::MIN) -> probs, same shape
/// as scores. Masked entries come out exactly 0.
pub struct AttentionSoftmax {
    pub scale: f32,
}

impl CustomOp2 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "attention-softmax"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (scores, bias) = (f32_data(self.name(), s1, l1)?, f32_data(self.name(), s2, l2)?);
        let (b, nh, t, t2) = l1.shape().dims4()?;
        if t != t2 || l2.shape().dims4()? != (b, 1, t, t) {
            candle_core::bail!("{}: scores {:?} and bias {:?} do not match", self.name(), l1.shape(), l2.shape());
        }
        let mut out = scores.to_vec();
        out.par_chunks_mut(t).enumerate().for_each(|(r, row)| {
            let (bi, i) = (r / (nh * t), r % t);
            let brow = &bias[(bi * t + i) * t..(bi * t + i + 1) * t];
            softmax_row(row, brow, self.scale);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax backward of the attention: dp: (..., T) upstream gradient of the probabilities,
/// probs: same shape -> d(scores) = scale * P * (dP - rowsum(dP * P)).
pub struct AttentionSoftmaxGrad {
    pub scale: f32,
}

impl CustomOp2 for AttentionSoftmaxGrad {
    fn name(&self) -> &'static str {
        "attention-softmax-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dp, p) = (f32_data(self.name(), s1, l1)?, f32_data(self.name(), s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.shape(), l2.shape());
        }
        let t = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = dp.to_vec();
        out.par_chunks_mut(t).zip(p.par_chunks(t)).for_each(|(row, prow)| softmax_grad_row(row, prow, self.scale));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn exp_matches_std_to_a_few_ulp_and_underflows_to_zero() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst:.2e}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn fused_cross_entropy_matches_the_op_by_op_formula() {
        let (n, v) = (5usize, 1037usize); // a vocabulary that is not a multiple of the lanes
        let vals: Vec<f32> = (0..n * v).map(|i| ((i * 7919 % 1000) as f32 / 50.0) - 10.0).collect();
        let labels: Vec<u32> = vec![0, 1036, 500, 17, 999];
        let logits = Tensor::from_vec(vals.clone(), (n, v), &Device::Cpu).unwrap();
        let op = SoftmaxCrossEntropyGrad::new(labels.clone(), 0.25);
        logits.inplace_op1(&op).unwrap();
        let got = logits.to_vec2::<f32>().unwrap();
        let mut nll = 0f64;
        for r in 0..n {
            let row: Vec<f64> = vals[r * v..(r + 1) * v].iter().map(|&x| x as f64).collect();
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
            nll += sum.ln() + max - row[labels[r] as usize];
            for j in 0..v {
                let want = 0.25 * ((row[j] - max).exp() / sum - if j == labels[r] as usize { 1.0 } else { 0.0 });
                assert!((got[r][j] as f64 - want).abs() < 1e-7, "row {r} col {j}: {} vs {want}", got[r][j]);
            }
        }
        assert!((op.nll_sum() - nll).abs() < 1e-5 * nll, "{} vs {nll}", op.nll_sum());
    }

    /// N(0, std) values from a fixed seed (candle's CPU `randn` cannot be seeded).
    fn randn(name: &str, shape: &[usize], std: f32) -> Tensor {
        crate::model::init::init_tensor(name, shape, 0, std).unwrap()
    }

    fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
        let d = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < tol, "{what}: max |fused - candle ops| = {d:.2e}");
    }

    #[test]
    fn swiglu_kernels_match_candle_ops() {
        // 40,000 elements: several parallel tasks and a ragged last one; gates out to +-12.
        let g = randn("g", &[50, 800], 4.0).clamp(-12f32, 12f32).unwrap();
        let u = randn("u", &[50, 800], 1.0);
        let da = randn("da", &[50, 800], 1.0);
        let sig = candle_nn::ops::sigmoid(&g).unwrap();
        let silu = (&g * &sig).unwrap();
        assert_close(&g.apply_op2_no_bwd(&u, &SWIGLU).unwrap(), &(&silu * &u).unwrap(), 1e-5, "swiglu");
        assert_close(&da.apply_op2_no_bwd(&g, &SWIGLU_GRAD_UP).unwrap(), &(&da * &silu).unwrap(), 1e-5, "grad up");
        let dsilu = (&sig * ((&g * (1.0 - &sig).unwrap()).unwrap() + 1.0).unwrap()).unwrap();
        let want = ((&da * &u).unwrap() * dsilu).unwrap();
        assert_close(&da.apply_op3_no_bwd(&g, &u, &SWIGLU_GRAD_GATE).unwrap(), &want, 1e-5, "grad gate");
        let err = g.apply_op2_no_bwd(&u.narrow(0, 0, 10).unwrap(), &SWIGLU).unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");
    }

    #[test]
    fn attention_softmax_and_its_gradient_match_candle_ops() {
        let dev = Device::Cpu;
        let (b, nh, t) = (2, 3, 37);
        let scores = randn("scores", &[b, nh, t, t], 3.0);
        // Causal, and in the second row of the batch two packed examples (split at 20).
        let mut bias = vec![f32::MIN; b * t * t];
        for bi in 0..b {
            for i in 0..t {
                let start = if bi == 1 && i >= 20 { 20 } else { 0 };
                for j in start..=i {
                    bias[(bi * t + i) * t + j] = 0.0;
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, t, t), &dev).unwrap();
        let scale = 0.125f32;
        let probs = scores.apply_op2_no_bwd(&bias, &AttentionSoftmax { scale }).unwrap();
        let want =
            candle_nn::ops::softmax_last_dim(&(&scores * scale as f64).unwrap().broadcast_add(&bias).unwrap()).unwrap();
        assert_close(&probs, &want, 1e-6, "softmax");
        let p = probs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(p[1], 0.0, "a future position gets exactly 0");
        let dp = randn("dp", &[b, nh, t, t], 1.0);
        let ds = dp.apply_op2_no_bwd(&probs, &AttentionSoftmaxGrad { scale }).unwrap();
        let want = ((&probs * dp.broadcast_sub(&(&dp * &probs).unwrap().sum_keepdim(3).unwrap()).unwrap()).unwrap()
            * scale as f64)
            .unwrap();
        assert_close(&ds, &want, 1e-6, "softmax backward");
    }

    #[test]
    fn labels_outside_the_vocabulary_are_an_error() {
        let logits = Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = logits.inplace_op1(&SoftmaxCrossEntropyGrad::new(vec![1, 8], 1.0)).unwrap_err();
        assert!(err.to_string().contains("label 8"), "{err}");
    }
}
