//! Checks of the hand-written backward: against central finite differences of the loss,
//! and against candle autograd over an independently written forward.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::step::{forward_backward, forward_nll, LoraGrads, StepOptions, TrainBatch};
use crate::encode::EncodedExample;
use crate::lora::{add_lora_delta, LoraSpec, LoraWeights, Target};
use crate::model::init::{preset, random_model};
use crate::model::llama::{apply_rope, repeat_kv, rms_norm, Linear};
use crate::model::Llama;

fn example(len: usize, seed: u64, vocab: usize) -> EncodedExample {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let input_ids = (0..len).map(|_| rng.gen_range(0..vocab as u32)).collect();
    // A prompt part without targets, then targets, as in chat data.
    let target_mask = (0..len).map(|j| u8::from(j >= len / 3)).collect();
    EncodedExample { input_ids, target_mask, truncated: false }
}

/// Model, adapter with non-zero B (so every A gradient is non-zero too) and a batch with
/// padding and one packed row.
fn setup(preset_name: &str, targets: &[Target]) -> (Llama, LoraWeights, TrainBatch) {
    let cfg = preset(preset_name).unwrap();
    let model = random_model(&cfg, 3, 0.15, &Device::Cpu).unwrap();
    let spec = LoraSpec { r: 3, alpha: 6.0, dropout: 0.0, targets: targets.to_vec(), use_rslora: false };
    let mut lora = LoraWeights::init(&spec, &cfg, 5, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let ts: Vec<Tensor> = lora
        .tensors()
        .iter()
        .map(|t| {
            let n = t.elem_count();
            let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-0.3..0.3)).collect();
            Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        })
        .collect();
    lora.set_tensors(ts.into_iter());
    let v = cfg.vocab_size;
    let (e1, e2, e3, e4) = (example(11, 1, v), example(6, 2, v), example(4, 3, v), example(9, 4, v));
    let rows = vec![vec![&e1], vec![&e2, &e3], vec![&e4]];
    let batch = TrainBatch::new(&rows, 0, &Device::Cpu).unwrap();
    (model, lora, batch)
}

fn mean_loss(model: &Llama, lora: &LoraWeights, batch: &TrainBatch) -> f64 {
    forward_nll(model, lora, batch).unwrap() / batch.num_targets as f64
}

fn analytic(model: &Llama, lora: &LoraWeights, batch: &TrainBatch, checkpointing: bool) -> (f64, Vec<Tensor>) {
    analytic_checkpointing(model, lora, batch, checkpointing, None)
}

/// With `checkpoint_layers`: only that many leading layers are recomputed.
fn analytic_checkpointing(
    model: &Llama,
    lora: &LoraWeights,
    batch: &TrainBatch,
    checkpointing: bool,
    checkpoint_layers: Option<usize>,
) -> (f64, Vec<Tensor>) {
    let mut grads = LoraGrads::zeros(lora).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let opts = StepOptions { gradient_checkpointing: checkpointing, checkpoint_layers, ..StepOptions::default() };
    let stats =
        forward_backward(model, lora, batch, 1.0 / batch.num_targets as f64, opts, &mut rng, &mut grads).unwrap();
    (stats.nll_sum / batch.num_targets as f64, grads.tensors())
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

const ALL: [Target; 7] = Target::ALL;

/// For each adapter tensor P, the derivative of the loss along a unit direction mixing its
/// gradient with noise, by central differences (eps 1e-2, f32 forward), against the
/// analytic dot product. Tolerance: 2e-4 absolute + 1% relative (f32 round-off in the
/// loss is ~1e-7, so the difference quotient is good to ~1e-5).
fn check_finite_differences(preset_name: &str) {
    let (model, lora, batch) = setup(preset_name, &ALL);
    let (loss, grads) = analytic(&model, &lora, &batch, false);
    assert!((loss - mean_loss(&model, &lora, &batch)).abs() < 1e-5);
    let names: Vec<String> = lora.named_tensors().into_iter().map(|(n, _)| n).collect();
    let params = lora.tensors();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let eps = 1e-2;
    let mut worst = 0f64;
    for (i, g) in grads.iter().enumerate() {
        let gv = flat(g);
        let gnorm = gv.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(gnorm > 1e-4, "{}: gradient is {gnorm}", names[i]);
        let mut dir: Vec<f64> =
            gv.iter().map(|&x| x as f64 / gnorm + rng.gen_range(-1.0..1.0) / (gv.len() as f64).sqrt()).collect();
        let dn = dir.iter().map(|x| x * x).sum::<f64>().sqrt();
        dir.iter_mut().for_each(|x| *x /= dn);
        let predicted: f64 = gv.iter().zip(&dir).map(|(g, d)| *g as f64 * d).sum();
        let shifted = |sign: f64| {
            let p = flat(&params[i]);
            let moved: Vec<f32> = p.iter().zip(&dir).map(|(x, d)| (*x as f64 + sign * eps * d) as f32).collect();
            let mut l2 = lora.clone();
            let mut ts = params.clone();
            ts[i] = Tensor::from_vec(moved, params[i].dims(), &Device::Cpu).unwrap();
            l2.set_tensors(ts.into_iter());
            mean_loss(&model, &l2, &batch)
        };
        let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
        let err = (fd - predicted).abs();
        worst = worst.max(err / predicted.abs());
        assert!(
            err < 2e-4 + 1e-2 * predicted.abs(),
            "{preset_name} {}: analytic {predicted:.6e}, finite difference {fd:.6e}",
            names[i]
        );
    }
    eprintln!("{preset_name}: {} tensors, worst relative difference {worst:.2e}", grads.len());
}

#[test]
fn gradients_match_finite_differences_tiny_gqa() {
    check_finite_differences("tiny");
}

#[test]
fn gradients_match_finite_differences_qwen2_bias_tied() {
    check_finite_differences("tiny-qwen2");
}

#[test]
fn gradients_match_finite_differences_llama3_rope_mqa() {
    check_finite_differences("tiny-llama3");
}

#[test]
fn gradients_match_finite_differences_qwen3_qk_norm() {
    check_finite_differences("tiny-qwen3");
}

/// The loss written with plain candle ops (differentiable, autograd-friendly softmax), for
/// the autograd comparison. Separate from the step's forward on purpose.
fn autograd_loss(model: &Llama, lora: &LoraWeights, batch: &TrainBatch) -> Tensor {
    let cfg = &model.config;
    let (b, t) = batch.shape;
    let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let (cos, sin) = model.rope.cos_sin(&batch.positions, DType::F32).unwrap();
    let lin = |x: &Tensor, w: &Linear, l: usize, tgt: Target| -> Tensor {
        let mut y = x.matmul(&w.weight.dense().unwrap().t().unwrap()).unwrap();
        if let Some(bias) = &w.bias {
            y = y.broadcast_add(bias).unwrap();
        }
        match lora.layers[l].get(tgt) {
            Some(p) => add_lora_delta(&y, x, p, lora.scaling).unwrap(),
            None => y,
        }
    };
    let mut x = model.weights.embed_tokens.index_select(&batch.input_ids.flatten_all().unwrap(), 0).unwrap();
    for (l, w) in model.weights.layers.iter().enumerate() {
        let h = rms_norm(&x, &w.input_layernorm, cfg.rms_norm_eps).unwrap();
        let heads = |y: Tensor, n: usize, norm: &Option<Tensor>| {
            let y = y.reshape((b, t, n, d)).unwrap();
            let y = match norm {
                Some(w) => rms_norm(&y, w, cfg.rms_norm_eps).unwrap(),
                None => y,
            };
            y.transpose(1, 2).unwrap().contiguous().unwrap()
        };
        let a = &w.self_attn;
        let q = apply_rope(&heads(lin(&h, &a.q_proj, l, Target::QProj), nh, &a.q_norm), &cos, &sin).unwrap();
        let k = apply_rope(&heads(lin(&h, &a.k_proj, l, Target::KProj), nkv, &a.k_norm), &cos, &sin).unwrap();
        let v = heads(lin(&h, &a.v_proj, l, Target::VProj), nkv, &None);
        let k = repeat_kv(&k, nh / nkv).unwrap();
        let v = repeat_kv(&v, nh / nkv).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt())
            .unwrap()
            .broadcast_add(batch.bias().unwrap())
            .unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let ctx =
            probs.matmul(&v).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape((b * t, nh * d)).unwrap();
        x = (x + lin(&ctx, &w.self_attn.o_proj, l, Target::OProj)).unwrap();
        let h = rms_norm(&x, &w.post_attention_layernorm, cfg.rms_norm_eps).unwrap();
        let a = (lin(&h, &w.mlp.gate_proj, l, Target::GateProj).silu().unwrap()
            * lin(&h, &w.mlp.up_proj, l, Target::UpProj))
        .unwrap();
        x = (x + lin(&a, &w.mlp.down_proj, l, Target::DownProj)).unwrap();
    }
    let rows = x.index_select(&batch.predictor_rows, 0).unwrap();
    let h = rms_norm(&rows, &model.weights.norm, cfg.rms_norm_eps).unwrap();
    let logp = candle_nn::ops::log_softmax(&h.matmul(&model.weights.lm_head.t().unwrap()).unwrap(), D::Minus1).unwrap();
    logp.gather(&batch.labels.unsqueeze(1).unwrap(), 1).unwrap().neg().unwrap().mean_all().unwrap()
}

#[test]
fn gradients_match_candle_autograd_with_and_without_checkpointing() {
    for preset_name in ["tiny", "tiny-qwen2", "tiny-qwen3"] {
        let (model, lora, batch) = setup(preset_name, &ALL);
        let vars: Vec<Var> = lora.tensors().iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let mut lv = lora.clone();
        lv.set_tensors(vars.iter().map(|v| v.as_tensor().clone()));
        let loss = autograd_loss(&model, &lv, &batch);
        let store = loss.backward().unwrap();
        let (our_loss, ours) = analytic(&model, &lora, &batch, false);
        let (ckpt_loss, ckpt) = analytic(&model, &lora, &batch, true);
        // The first of the two layers recomputed, the second keeping its activations.
        let (part_loss, part) = analytic_checkpointing(&model, &lora, &batch, true, Some(1));
        assert_eq!(our_loss, part_loss);
        let ref_loss = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((our_loss - ref_loss).abs() < 1e-5, "{preset_name}: loss {our_loss} vs autograd {ref_loss}");
        assert_eq!(our_loss, ckpt_loss, "recomputing layers must not change the loss");
        for ((v, g), c) in vars.iter().zip(&ours).zip(&ckpt) {
            let reference = flat(store.get(v.as_tensor()).expect("autograd reaches every adapter"));
            let g = flat(g);
            let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = reference.iter().zip(&g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4 * scale.max(1e-3), "{preset_name}: max difference {diff} (scale {scale})");
            assert_eq!(g, flat(c), "checkpointed gradients must equal stored-activation gradients");
        }
        for (g, p) in ours.iter().zip(&part) {
            assert_eq!(flat(g), flat(p), "partly checkpointed gradients must equal stored-activation gradients");
        }
    }
}

#[test]
fn packing_does_not_change_an_examples_loss() {
    let cfg = preset("tiny").unwrap();
    let model = random_model(&cfg, 3, 0.15, &Device::Cpu).unwrap();
    let spec =
        LoraSpec { r: 2, alpha: 4.0, dropout: 0.0, targets: vec![Target::QProj, Target::VProj], use_rslora: false };
    let lora = LoraWeights::init(&spec, &cfg, 5, &Device::Cpu).unwrap();
    let (e1, e2) = (example(7, 1, cfg.vocab_size), example(12, 2, cfg.vocab_size));
    let packed = TrainBatch::new(&[vec![&e1, &e2]], 0, &Device::Cpu).unwrap();
    let separate = TrainBatch::new(&[vec![&e1], vec![&e2]], 0, &Device::Cpu).unwrap();
    let a = forward_nll(&model, &lora, &packed).unwrap();
    let b = forward_nll(&model, &lora, &separate).unwrap();
    assert_eq!(packed.num_targets, separate.num_targets);
    assert!((a - b).abs() < 1e-4, "packed {a} vs separate {b}");
    // The same two examples concatenated without segment boundaries would differ.
    let joined = EncodedExample {
        input_ids: [e1.input_ids.clone(), e2.input_ids.clone()].concat(),
        target_mask: [e1.target_mask.clone(), e2.target_mask.clone()].concat(),
        truncated: false,
    };
    let c = forward_nll(&model, &lora, &TrainBatch::new(&[vec![&joined]], 0, &Device::Cpu).unwrap()).unwrap();
    assert!((a - c).abs() > 1e-3);
}

#[test]
fn dropout_masks_are_reproduced_when_recomputing() {
    let (model, mut lora, batch) = setup("tiny", &[Target::QProj, Target::DownProj]);
    lora.spec.dropout = 0.3;
    let run = |ckpt: bool| {
        let mut grads = LoraGrads::zeros(&lora).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let opts = StepOptions { gradient_checkpointing: ckpt, dropout: 0.3, ..StepOptions::default() };
        let s = forward_backward(&model, &lora, &batch, 1.0, opts, &mut rng, &mut grads).unwrap();
        (s.nll_sum, grads.tensors().iter().map(flat).collect::<Vec<_>>())
    };
    let (l1, g1) = run(false);
    let (l2, g2) = run(true);
    assert_eq!(l1, l2);
    assert_eq!(g1, g2);
    let (l0, _) = analytic(&model, &lora, &batch, false);
    assert!((l1 / batch.num_targets as f64 - l0).abs() > 1e-4, "dropout had no effect");
}

/// The MLP run by row chunks (checkpointing's first pass, and its backward recomputing gate
/// and up chunk by chunk) gives the whole-rows step's loss and gradients, with adapters and
/// dropout on all seven projections and chunks that split examples (33 rows by 5).
#[test]
fn mlp_by_row_chunks_equals_whole_rows() {
    let (model, mut lora, batch) = setup("tiny", &ALL);
    lora.spec.dropout = 0.2;
    let run = |ckpt: bool, chunk: Option<usize>| {
        let mut grads = LoraGrads::zeros(&lora).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let opts =
            StepOptions { gradient_checkpointing: ckpt, dropout: 0.2, mlp_chunk_rows: chunk, ..StepOptions::default() };
        let s = forward_backward(&model, &lora, &batch, 1.0, opts, &mut rng, &mut grads).unwrap();
        (s.nll_sum, grads.tensors().iter().map(flat).collect::<Vec<_>>())
    };
    let (whole_loss, whole) = run(false, None);
    let (ckpt_loss, ckpt) = run(true, None);
    // One chunk holds all 33 rows: the same operations on the same rows.
    assert_eq!(whole_loss, ckpt_loss);
    assert_eq!(whole, ckpt);
    let (chunked_loss, chunked) = run(true, Some(5));
    assert!((chunked_loss - whole_loss).abs() <= 1e-6 * whole_loss.abs(), "{chunked_loss} vs {whole_loss}");
    for (a, b) in whole.iter().zip(&chunked) {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 0.0 && diff <= 1e-5 * scale, "max difference {diff} (scale {scale})");
    }
}

/// The step's forward and the reference forward of `model::llama` (which `eval` uses
/// without an adapter) give the same loss on the same examples. The adapter is freshly
/// initialised (B = 0), so both compute the base model.
#[test]
fn step_forward_equals_the_reference_forward() {
    for preset_name in ["tiny", "tiny-qwen2", "tiny-llama3", "tiny-qwen3"] {
        let cfg = preset(preset_name).unwrap();
        let model = random_model(&cfg, 3, 0.15, &Device::Cpu).unwrap();
        let spec = LoraSpec { r: 3, alpha: 6.0, dropout: 0.0, targets: Target::ALL.to_vec(), use_rslora: false };
        let lora = LoraWeights::init(&spec, &cfg, 5, &Device::Cpu).unwrap();
        let v = cfg.vocab_size;
        let examples = [example(11, 1, v), example(6, 2, v), example(4, 3, v), example(9, 4, v)];
        let rows: Vec<Vec<&EncodedExample>> = examples.iter().map(|e| vec![e]).collect();
        let batch = TrainBatch::new(&rows, 0, &Device::Cpu).unwrap();
        let step = mean_loss(&model, &lora, &batch);
        let reference = crate::eval::evaluate(&model, None, &examples, 4, 0, |_, _| {}).unwrap().loss;
        assert!(
            (step - reference).abs() < 1e-5 * reference.abs(),
            "{preset_name}: step {step} vs reference {reference}"
        );
    }
}
