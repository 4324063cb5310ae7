//! The CUDA kernels against the candle-op formulation of the same math in f32 on the same
//! GPU (which the CPU tests check against PEFT and finite differences). Fresh random inputs
//! every run, from a seed each test prints (`LORATUNE_TEST_SEED=N` replays one); errors are
//! ||got - ref|| / ||ref||, printed with `--nocapture`.
//!
//! Built only with `--features cuda` (`required-features` in Cargo.toml) and run on the GPU
//! machine:
//!   cargo test --release --features cuda --test cuda_kernels --no-run   (here, see scripts/build-cuda.sh)
//!   scripts/gpu/check-kernels.sh                                         (there)

use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use loratune::encode::EncodedExample;
use loratune::kernels::cuda as ck;
use loratune::kernels::{cudnn, AttentionChoice};
use loratune::lora::{LoraSpec, LoraWeights, Target};
use loratune::model::init::{init_tensor, preset, random_model_as};
use loratune::model::ModelConfig;
use loratune::train::ops::{self, AttnShape};
use loratune::train::optimizer::{AdamW, AdamWConfig};
use loratune::train::step::{forward_backward, LoraGrads, StepOptions, TrainBatch};

/// The GPU, its random generator seeded with `seed`.
fn gpu(seed: u64) -> Device {
    let dev = loratune::gpu::open_cuda(0).expect("these tests need a CUDA GPU");
    dev.set_seed(seed).unwrap();
    dev
}

/// This test's seed: `LORATUNE_TEST_SEED` when set, else a fresh one; printed, so that a
/// failure's output tells how to replay it.
fn test_seed(test: &str) -> u64 {
    let seed: u64 = match std::env::var("LORATUNE_TEST_SEED") {
        Ok(s) => s.parse().expect("LORATUNE_TEST_SEED is a whole number"),
        Err(_) => rand::random(),
    };
    println!("{test}: seed {seed} (LORATUNE_TEST_SEED={seed} replays it)");
    seed
}

/// N(0, std) values on the CPU from `seed` (candle's CPU `randn` cannot be seeded).
fn cpu_randn(name: &str, shape: &[usize], std: f32, seed: u64) -> Tensor {
    init_tensor(name, shape, seed, std).unwrap()
}

fn randn(shape: &[usize], std: f32, dev: &Device) -> Tensor {
    Tensor::randn(0f32, std, shape, dev).unwrap().to_dtype(DType::BF16).unwrap()
}

fn f32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

/// ||a - b|| / ||b|| in f64; NaN anywhere fails.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    let norm = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    let r = diff / norm;
    assert!(r.is_finite(), "non-finite error (NaN or Inf in the output)");
    r
}

fn check(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let r = rel(got, want);
    println!("{name:<28} rel err {r:.2e} (tolerance {tol:.0e})");
    assert!(r < tol, "{name}: relative error {r:.3e} above {tol:.0e}");
}

/// A batch layout with packing and padding: row 0 holds examples of `a` and `b` tokens then
/// padding, row 1 one example filling the row.
fn packed_batch(t: usize, a: usize, b: usize, vocab: usize, seed: u64, dev: &Device) -> TrainBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ex = |len: usize| EncodedExample {
        input_ids: (0..len).map(|_| rng.gen_range(0..vocab as u32)).collect(),
        target_mask: (0..len).map(|j| u8::from(j >= len / 4)).collect(),
        truncated: false,
    };
    let (e1, e2, e3) = (ex(a), ex(b), ex(t));
    TrainBatch::new(&[vec![&e1, &e2], vec![&e3]], 0, dev).unwrap()
}

/// Flash attention forward and backward against `attention_forward/backward` in f32 with
/// the equivalent additive bias, for both head dims, GQA, packing, padding, and a length
/// that is not a multiple of the 64-row tiles.
#[test]
fn flash_attention_matches_reference() {
    let seed = test_seed("flash_attention_matches_reference");
    let dev = gpu(seed);
    for (d, warps) in [(64, 4), (128, 4), (64, 8), (128, 8)] {
        ck::set_flash_warps(warps);
        println!("{warps} warps per block:");
        let (b, t, nh, nkv) = (2, 200, 6, 2);
        let s = AttnShape { b, t, nh, nkv, d };
        let batch = packed_batch(t, 120, 57, 100, seed, &dev);
        let n = b * t;
        let (q, k, v) =
            (randn(&[n, nh * d], 1.0, &dev), randn(&[n, nkv * d], 1.0, &dev), randn(&[n, nkv * d], 1.0, &dev));
        let (o, lse) = ck::flash_attention_forward(&q, &k, &v, &batch.kstart, s).unwrap();

        let heads =
            |x: &Tensor, h: usize| f32(x).reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let rows = |x: Tensor, h: usize| x.transpose(1, 2).unwrap().contiguous().unwrap().reshape((n, h * d)).unwrap();
        let (qh, kh, vh) = (heads(&q, nh), heads(&k, nkv), heads(&v, nkv));
        let (ctx, probs) = ops::attention_forward(&qh, &kh, &vh, batch.bias().unwrap()).unwrap();
        check(&format!("flash fwd o (D={d})"), &o, &rows(ctx, nh), 1e-2);
        // lse is log2 of the softmax normaliser of scale*scores: compare via the probabilities' row max.
        assert_eq!(lse.dims(), &[b, nh, t]);

        let dout = randn(&[n, nh * d], 1.0, &dev);
        let (dq, dk, dv) = ck::flash_attention_backward(&dout, &q, &k, &v, &o, &lse, &batch.kstart, s).unwrap();
        let (rq, rk, rv) = ops::attention_backward(&heads(&dout, nh), &qh, &kh, &vh, &probs).unwrap();
        check(&format!("flash bwd dq (D={d})"), &dq, &rows(rq, nh), 2e-2);
        check(&format!("flash bwd dk (D={d})"), &dk, &rows(rk, nkv), 2e-2);
        check(&format!("flash bwd dv (D={d})"), &dv, &rows(rv, nkv), 2e-2);
    }
    ck::set_flash_warps(4);
}

/// cuDNN's fused attention (forward, backward) against the same f32 reference, on odd
/// lengths (T = 2, 200, 240, 8191), GQA, both head dims, packing and padding. (At T = 1 cuDNN's
/// backward refuses the graph; `supported` says so and the step runs the flash kernels,
/// which `bf16_step_matches_f32_step` and `flash_attention_matches_reference` cover.) A padding tail is
/// one causal segment for cuDNN but self-only in the reference; neither reaches a real
/// token, so outputs are compared on real rows and dout is zero on padding rows.
#[test]
fn cudnn_attention_matches_reference() {
    let seed = test_seed("cudnn_attention_matches_reference");
    let dev = gpu(seed);
    cudnn::set_choice(AttentionChoice::Cudnn, std::env::var("LORATUNE_CUDNN_LIB").ok());
    assert!(cudnn::enabled(&dev).unwrap(), "cuDNN did not load: see LD_LIBRARY_PATH");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let one = EncodedExample { input_ids: vec![5], target_mask: vec![1], truncated: false };
    let single = TrainBatch::new(&[vec![&one]], 0, &dev).unwrap();
    let s1 = AttnShape { b: 1, t: 1, nh: 4, nkv: 4, d: 128 };
    assert!(!single.segment_tensors(s1).unwrap().supported(&s1), "one-token sequences go to the flash kernels");
    // Row 0's examples, then row 1's; T is the longer row. In the last case no example fills
    // a row, so the graph's sequence bound (a power of two) exceeds every segment.
    for (row0, row1, d, nh, nkv) in [
        (vec![1], vec![2], 128, 4, 4),
        (vec![120, 57], vec![200], 64, 6, 2),
        (vec![120, 57], vec![200], 128, 6, 2),
        (vec![3000, 4001, 1000], vec![8191], 128, 8, 2),
        (vec![120, 57], vec![150, 90], 128, 6, 2),
    ] {
        let (sum0, sum1) = (row0.iter().sum::<usize>(), row1.iter().sum::<usize>());
        let t = sum0.max(sum1);
        let mut ex = |len: usize| EncodedExample {
            input_ids: (0..len).map(|_| rng.gen_range(0..100u32)).collect(),
            target_mask: vec![1; len],
            truncated: false,
        };
        let r0: Vec<_> = row0.iter().map(|&l| ex(l)).collect();
        let r1: Vec<_> = row1.iter().map(|&l| ex(l)).collect();
        let batch = TrainBatch::new(&[r0.iter().collect(), r1.iter().collect()], 0, &dev).unwrap();
        let b = 2;
        let n = b * t;
        let real: Vec<f32> = (0..n).map(|at| f32::from(at % t < if at < t { sum0 } else { sum1 })).collect();
        let real = Tensor::from_vec(real, (n, 1), &dev).unwrap();
        let s = AttnShape { b, t, nh, nkv, d };
        let (q, k, v) =
            (randn(&[n, nh * d], 1.0, &dev), randn(&[n, nkv * d], 1.0, &dev), randn(&[n, nkv * d], 1.0, &dev));
        let seg = batch.segment_tensors(s).unwrap();
        assert!(seg.supported(&s));
        let (o, stats) = cudnn::sdpa_forward(&q, &k, &v, seg, s).unwrap();
        assert_eq!(stats.dims(), &[n, nh]);

        let heads =
            |x: &Tensor, h: usize| f32(x).reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let rows = |x: Tensor, h: usize| x.transpose(1, 2).unwrap().contiguous().unwrap().reshape((n, h * d)).unwrap();
        let on_real = |x: &Tensor| f32(x).broadcast_mul(&real).unwrap();
        let (qh, kh, vh) = (heads(&q, nh), heads(&k, nkv), heads(&v, nkv));
        let (ctx, probs) = ops::attention_forward(&qh, &kh, &vh, batch.bias().unwrap()).unwrap();
        let tag = format!("T={t} D={d} {nh}/{nkv} heads");
        check(&format!("cudnn fwd o ({tag})"), &on_real(&o), &on_real(&rows(ctx, nh)), 1e-2);

        let dout = randn(&[n, nh * d], 1.0, &dev).broadcast_mul(&real.to_dtype(DType::BF16).unwrap()).unwrap();
        let (dq, dk, dv) = cudnn::sdpa_backward(&dout, &q, &k, &v, &o, &stats, seg, s).unwrap();
        let (rq, rk, rv) = ops::attention_backward(&heads(&dout, nh), &qh, &kh, &vh, &probs).unwrap();
        check(&format!("cudnn bwd dq ({tag})"), &dq, &rows(rq, nh), 2e-2);
        check(&format!("cudnn bwd dk ({tag})"), &dk, &rows(rk, nkv), 2e-2);
        check(&format!("cudnn bwd dv ({tag})"), &dv, &rows(rv, nkv), 2e-2);
    }
}

#[test]
fn elementwise_kernels_match_reference() {
    let seed = test_seed("elementwise_kernels_match_reference");
    let dev = gpu(seed);
    let (n, h) = (300, 1536);
    let x = randn(&[n, h], 1.0, &dev);
    let w = (randn(&[h], 0.2, &dev).to_dtype(DType::F32).unwrap() + 1.0).unwrap().to_dtype(DType::BF16).unwrap();
    let (y, rstd) = ck::rms_norm_forward(&x, &w, 1e-5).unwrap();
    let (ry, rr) = ops::rms_norm_forward(&f32(&x), &f32(&w), 1e-5).unwrap();
    check("rms_norm fwd y", &y, &ry, 1e-2);
    check("rms_norm fwd rstd", &rstd, &rr, 1e-5);
    let o = randn(&[n, h], 1.0, &dev);
    let (sum, y2, rstd2) = ck::add_rms_norm_forward(&x, &o, &w, 1e-5).unwrap();
    let rsum = (f32(&x) + f32(&o)).unwrap();
    check("residual add", &ck::add(&x, &o).unwrap(), &rsum, 5e-3);
    check("residual add + rms_norm: sum", &sum, &rsum, 5e-3);
    let (ry2, rr2) = ops::rms_norm_forward(&rsum, &f32(&w), 1e-5).unwrap();
    check("residual add + rms_norm: y", &y2, &ry2, 1e-2);
    check("residual add + rms_norm: rstd", &rstd2, &rr2, 1e-2);
    let (dy, dres) = (randn(&[n, h], 1.0, &dev), randn(&[n, h], 1.0, &dev));
    let dx = ck::rms_norm_backward(&dy, &x, &w, &rstd, Some(&dres)).unwrap();
    let rdx = (f32(&dres) + ops::rms_norm_backward(&f32(&dy), &f32(&x), &f32(&w), &rr).unwrap()).unwrap();
    check("rms_norm bwd + residual", &dx, &rdx, 1e-2);

    // RoPE on rows against the head-layout candle op, at real positions.
    let (b, t, heads, d) = (2, 150, 3, 64);
    let cfg = ModelConfig { head_dim: d, ..preset("tiny").unwrap() };
    let rope = loratune::model::llama::Rope::new(&cfg, &dev).unwrap();
    let pos = Tensor::arange(0u32, t as u32, &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .repeat((b, 1))
        .unwrap();
    let (cos, sin) = rope.cos_sin(&pos, DType::F32).unwrap(); // (B, 1, T, D)
    let xr = randn(&[b * t, heads * d], 1.0, &dev);
    let (c16, s16) = (
        cos.to_dtype(DType::BF16).unwrap().reshape((b * t, d)).unwrap(),
        sin.to_dtype(DType::BF16).unwrap().reshape((b * t, d)).unwrap(),
    );
    let to_heads =
        |x: &Tensor| f32(x).reshape((b, t, heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let to_rows = |x: Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap().reshape((b * t, heads * d)).unwrap();
    let (c32, s32) = (f32(&c16).reshape((b, 1, t, d)).unwrap(), f32(&s16).reshape((b, 1, t, d)).unwrap());
    check(
        "rope fwd",
        &ck::rope(&xr, &c16, &s16, d, false).unwrap(),
        &to_rows(ops::rope_forward(&to_heads(&xr), &c32, &s32).unwrap()),
        1e-2,
    );
    check(
        "rope bwd",
        &ck::rope(&xr, &c16, &s16, d, true).unwrap(),
        &to_rows(ops::rope_backward(&to_heads(&xr), &c32, &s32).unwrap()),
        1e-2,
    );

    let (g, u, da) = (randn(&[n, h], 2.0, &dev), randn(&[n, h], 1.0, &dev), randn(&[n, h], 1.0, &dev));
    check("swiglu fwd", &ck::swiglu_forward(&g, &u).unwrap(), &ops::swiglu_forward(&f32(&g), &f32(&u)).unwrap(), 1e-2);
    let (dg, du) = ck::swiglu_backward(da.copy().unwrap(), &g, u.copy().unwrap()).unwrap(); // writes over its da and u
    let (rg, ru) = ops::swiglu_backward(f32(&da), &f32(&g), f32(&u)).unwrap();
    check("swiglu bwd gate", &dg, &rg, 1e-2);
    check("swiglu bwd up", &du, &ru, 1e-2);

    // Cross-entropy: loss and logit gradient of 70 rows over a 49152 vocabulary.
    let (rows, vocab) = (70, 49152);
    let logits = randn(&[rows, vocab], 3.0, &dev);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let labels: Vec<u32> = (0..rows).map(|_| rng.gen_range(0..vocab as u32)).collect();
    let labels = Tensor::new(labels.as_slice(), &dev).unwrap();
    let (nll, dl) = ck::cross_entropy(&logits, &labels, 0.25).unwrap();
    let lf = f32(&logits);
    let logp = candle_nn::ops::log_softmax(&lf, D::Minus1).unwrap();
    let rnll = logp.gather(&labels.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap().neg().unwrap();
    check("cross-entropy nll", &nll, &rnll, 1e-5);
    let onehot = candle_nn::encoding::one_hot(labels.clone(), vocab, 1f32, 0f32).unwrap();
    let rdl = ((logp.exp().unwrap() - onehot).unwrap() * 0.25).unwrap();
    check("cross-entropy dlogits", &dl, &rdl, 1e-2);
}

/// The fused AdamW kernel against the candle-op update on the CPU, three steps.
#[test]
fn adamw_kernel_matches_cpu_update() {
    let seed = test_seed("adamw_kernel_matches_cpu_update");
    let dev = gpu(seed);
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let p0 = cpu_randn("p0", &[64, 33], 1.0, seed);
    let (mut gpu_opt, mut cpu_opt) =
        (AdamW::new(cfg, &[p0.to_device(&dev).unwrap()]).unwrap(), AdamW::new(cfg, &[p0.clone()]).unwrap());
    let (mut pg, mut pc) = (p0.to_device(&dev).unwrap(), p0);
    for step in 0..3 {
        let g = cpu_randn(&format!("g{step}"), &[64, 33], 1.0, seed);
        pg = gpu_opt.update(&[pg], &[g.to_device(&dev).unwrap()], 1e-2).unwrap().remove(0);
        pc = cpu_opt.update(&[pc], &[g], 1e-2).unwrap().remove(0);
    }
    check("adamw 3 steps", &pg.to_device(&Device::Cpu).unwrap(), &pc, 1e-6);
}

/// A whole training step on a SmolLM2-shaped model (4 layers): the bf16 CUDA path (flash
/// or cuDNN attention, fused kernels, bf16 LoRA compute; checkpoints kept, recomputed on
/// the GPU or offloaded to host memory) against the f32 CUDA path (candle ops).
#[test]
fn bf16_step_matches_f32_step() {
    let seed = test_seed("bf16_step_matches_f32_step");
    let dev = gpu(seed);
    let cfg = ModelConfig {
        vocab_size: 2048,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 4,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        ..preset("tiny").unwrap()
    };
    // Both models hold the same bf16-rounded weights, so only the arithmetic differs.
    let m16 = random_model_as(&cfg, seed, 0.05, &dev, DType::BF16).unwrap();
    let named: std::collections::HashMap<String, Tensor> = m16
        .weights
        .named_tensors(&cfg)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F32).unwrap()))
        .collect();
    let w32 = loratune::model::llama::LlamaWeights::from_map(&cfg, named, std::path::Path::new("<f32 copy>")).unwrap();
    let m32 = loratune::model::Llama::new(cfg.clone(), w32).unwrap();
    let spec = LoraSpec { r: 8, alpha: 16.0, dropout: 0.0, targets: Target::ALL.to_vec(), use_rslora: false };
    let mut lora = LoraWeights::init(&spec, &cfg, 1, &dev).unwrap();
    let ts: Vec<Tensor> = lora.tensors().iter().map(|t| Tensor::randn(0f32, 0.05, t.dims(), &dev).unwrap()).collect();
    lora.set_tensors(ts.into_iter());
    let batch = packed_batch(200, 90, 70, cfg.vocab_size, seed, &dev);

    let run = |m: &loratune::model::Llama, checkpointing: bool, offload: bool| {
        let mut grads = LoraGrads::zeros(&lora).unwrap();
        let opts = StepOptions {
            gradient_checkpointing: checkpointing,
            offload_checkpoints: offload,
            ..StepOptions::default()
        };
        let st = forward_backward(
            m,
            &lora,
            &batch,
            1.0 / batch.num_targets as f64,
            opts,
            &mut ChaCha8Rng::seed_from_u64(0),
            &mut grads,
        )
        .unwrap();
        (st.nll_sum / batch.num_targets as f64, grads.tensors())
    };
    let (l32, g32) = run(&m32, false, false);
    let bits = |g: &[Tensor]| -> Vec<Vec<u16>> {
        g.iter()
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
                    .to_vec1::<half::bf16>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect()
    };
    for engine in [AttentionChoice::Flash, AttentionChoice::Cudnn] {
        cudnn::set_choice(engine, std::env::var("LORATUNE_CUDNN_LIB").ok());
        let mut in_place = None;
        for (checkpointing, offload) in [(false, false), (true, false), (true, true)] {
            let (l16, g16) = run(&m16, checkpointing, offload);
            let r = (l16 - l32).abs() / l32.abs();
            let how = format!("{engine:?}, checkpointing {checkpointing}, offload {offload}");
            println!("step loss bf16 {l16:.6} vs f32 {l32:.6}: rel {r:.2e} ({how})");
            assert!(r < 1e-2, "bf16 loss {l16} vs f32 {l32} ({how})");
            let (num, den) = g16.iter().zip(&g32).fold((0f64, 0f64), |(n, d), (a, b)| {
                let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
                (n + diff, d + b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
            });
            let gr = (num / den).sqrt();
            println!("step LoRA gradients, all tensors: rel err {gr:.2e} ({how})");
            assert!(gr < 5e-2, "bf16 gradients differ from f32 by {gr:.3e} ({how})");
            // Offloading moves the checkpoints, not the math: with the deterministic flash
            // kernels the gradients are the same bits as with the inputs kept on the GPU.
            match (engine, checkpointing, offload) {
                (AttentionChoice::Flash, true, false) => in_place = Some(bits(&g16)),
                (AttentionChoice::Flash, true, true) => {
                    assert!(Some(bits(&g16)) == in_place, "offloaded checkpoints changed the gradients")
                }
                _ => {}
            }
        }
    }
    cudnn::set_choice(AttentionChoice::Auto, std::env::var("LORATUNE_CUDNN_LIB").ok());
}

/// The bf16 dequantize kernels against candle's CPU decoders (rounded to bf16), for every
/// block format QLoRA keeps on the GPU.
#[test]
fn dequantize_kernels_match_candle() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let seed = test_seed("dequantize_kernels_match_candle");
    let dev = gpu(seed);
    let w = cpu_randn("w", &[96, 512], 0.3, seed);
    for format in loratune::model::quantized::CUDA_FORMATS {
        let q = QTensor::quantize(&w, format).unwrap();
        let want = q.dequantize(&Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let qw = loratune::model::quantized::QuantizedWeight::new(q, &dev, DType::BF16).unwrap();
        let got = qw.dequantize().unwrap().to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let max =
            (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        println!("dequantize {format:?}: max |gpu - candle| {max:.2e}");
        // Equal up to one bf16 rounding step where f32 FMA contraction differs.
        assert!(max <= 4e-3, "{format:?}: {max}");
        assert_ne!(format, GgmlDType::F32);
    }
}

/// QLoRA's bf16 step (projections in Q4_1 / Q4_K blocks, expanded by the kernels) against
/// the dense bf16 step on the same, dequantized weights: loss and LoRA gradients.
#[test]
fn quantized_step_matches_dense_step_on_the_same_weights() {
    let seed = test_seed("quantized_step_matches_dense_step_on_the_same_weights");
    let dev = gpu(seed);
    let cfg = ModelConfig {
        vocab_size: 2048,
        hidden_size: 512,
        intermediate_size: 1536,
        num_hidden_layers: 3,
        num_attention_heads: 8,
        num_key_value_heads: 2,
        head_dim: 64,
        ..preset("tiny").unwrap()
    };
    let spec = LoraSpec { r: 8, alpha: 16.0, dropout: 0.0, targets: Target::ALL.to_vec(), use_rslora: false };
    let mut lora = LoraWeights::init(&spec, &cfg, 1, &dev).unwrap();
    let ts: Vec<Tensor> = lora.tensors().iter().map(|t| Tensor::randn(0f32, 0.05, t.dims(), &dev).unwrap()).collect();
    lora.set_tensors(ts.into_iter());
    let batch = packed_batch(200, 90, 70, cfg.vocab_size, seed, &dev);
    for format in [candle_core::quantized::GgmlDType::Q4_1, candle_core::quantized::GgmlDType::Q4K] {
        let mut q = random_model_as(&cfg, 5, 0.05, &dev, DType::BF16).unwrap();
        loratune::model::quantized::quantize_model(&mut q, format).unwrap();
        let named: std::collections::HashMap<String, Tensor> =
            q.weights.named_tensors(&cfg).unwrap().into_iter().collect();
        let dense = loratune::model::Llama::new(
            cfg.clone(),
            loratune::model::llama::LlamaWeights::from_map(&cfg, named, std::path::Path::new("<dense>")).unwrap(),
        )
        .unwrap();
        let run = |m: &loratune::model::Llama| {
            let mut grads = LoraGrads::zeros(&lora).unwrap();
            let opts = StepOptions { gradient_checkpointing: true, ..StepOptions::default() };
            let st = forward_backward(
                m,
                &lora,
                &batch,
                1.0 / batch.num_targets as f64,
                opts,
                &mut ChaCha8Rng::seed_from_u64(0),
                &mut grads,
            )
            .unwrap();
            (st.nll_sum / batch.num_targets as f64, grads.tensors())
        };
        let (lq, gq) = run(&q);
        let (ld, gd) = run(&dense);
        let r = (lq - ld).abs() / ld.abs();
        let (num, den) = gq.iter().zip(&gd).fold((0f64, 0f64), |(n, d), (a, b)| {
            let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
            (n + diff, d + b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
        });
        let gr = (num / den).sqrt();
        println!("QLoRA {format:?} step: loss {lq:.6} vs dense {ld:.6} (rel {r:.2e}); gradients rel {gr:.2e}");
        assert!(r < 1e-2 && gr < 1e-2, "{format:?}: loss rel {r}, gradients rel {gr}");
    }
}
