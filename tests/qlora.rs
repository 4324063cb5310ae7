//! QLoRA on the CPU: SmolLM2's own Q4_1 blocks kept in memory (`quantize = "gguf"`) train
//! exactly like the model dequantized at load, since the CPU expands blocks with the same
//! decoder; this checks the plumbing (which tensors stay in blocks, the q/k row order moved
//! block-row by block-row, expansion in forward and backward). Quantizing at load
//! (`q8_0`) stays within quantization error of the dense model. The GPU's bf16 kernels are
//! checked against candle's decoder in tests/cuda_kernels.rs.

use crate::common;

use candle_core::{Device, Tensor};
use loratune::encode::EncodedExample;
use loratune::lora::{LoraSpec, LoraWeights, Target};
use loratune::model::hub::HubOptions;
use loratune::model::quantized::{Quantize, Weight};
use loratune::model::{self, Llama, LoadOptions, ModelSource};
use loratune::train::step::{forward_backward, LoraGrads, StepOptions, TrainBatch};
use rand::SeedableRng;
use std::path::Path;

fn load(path: &Path, quantize: Option<Quantize>) -> Llama {
    let mut opts = LoadOptions::for_device(Device::Cpu, HubOptions { offline: true, ..HubOptions::from_env() });
    opts.quantize = quantize;
    model::load(&ModelSource::parse(path.to_str().unwrap()).unwrap(), &opts).unwrap().model
}

fn quantized_count(m: &Llama) -> usize {
    m.weights.layers.iter().flat_map(|l| l.projections()).filter(|p| matches!(p.weight, Weight::Quantized(_))).count()
}

/// Loss and every LoRA gradient of one step (adapter on all seven projections, B != 0).
fn step(m: &Llama, ids: &[Vec<u32>]) -> (f64, Vec<Tensor>) {
    let spec = LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, targets: Target::ALL.to_vec(), use_rslora: false };
    let mut lora = LoraWeights::init(&spec, &m.config, 3, &Device::Cpu).unwrap();
    // Fixed, spread values (B != 0, so both gradients are nonzero).
    let fixed: Vec<Tensor> = lora
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = t.elem_count();
            let v: Vec<f32> = (0..n).map(|j| (((i * 7919 + j * 104729) % 2003) as f32 / 2003.0 - 0.5) * 0.04).collect();
            Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        })
        .collect();
    lora.set_tensors(fixed.into_iter());
    let examples: Vec<EncodedExample> = ids
        .iter()
        .map(|r| EncodedExample { target_mask: vec![1; r.len()], input_ids: r.clone(), truncated: false })
        .collect();
    let rows: Vec<Vec<&EncodedExample>> = examples.iter().map(|e| vec![e]).collect();
    let batch = TrainBatch::new(&rows, 0, &Device::Cpu).unwrap();
    let mut grads = LoraGrads::zeros(&lora).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let opts = StepOptions { gradient_checkpointing: true, ..StepOptions::default() };
    let st = forward_backward(m, &lora, &batch, 1.0 / batch.num_targets as f64, opts, &mut rng, &mut grads).unwrap();
    (st.nll_sum / st.num_targets as f64, grads.tensors())
}

/// ||a - b|| / ||b|| over all gradients together.
fn rel(a: &[Tensor], b: &[Tensor]) -> f32 {
    let sq = |t: Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    let diff: f32 = a.iter().zip(b).map(|(x, y)| sq((x - y).unwrap())).sum();
    let norm: f32 = b.iter().map(|y| sq(y.clone())).sum();
    (diff / norm).sqrt()
}

#[test]
fn smollm2_q4_1_blocks_train_like_the_dequantized_model() {
    let gguf = common::smollm2_gguf();
    let dense = load(&gguf, None);
    let q = load(&gguf, Some(Quantize::Gguf));
    assert_eq!(quantized_count(&q), 30 * 7, "every projection of the file is Q4_1");
    // q/k rows moved as whole block rows expand to the dense load's (un-permuted) rows.
    for (a, b) in q.weights.layers[0].projections().iter().zip(dense.weights.layers[0].projections()) {
        let (a, b) = (a.weight.dense().unwrap(), b.weight.dense().unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }
    let ids: Vec<Vec<u32>> =
        (0..2).map(|r| (0..40).map(|j| ((r * 977 + j * 131) % 49000 + 17) as u32).collect()).collect();
    let (loss_d, grads_d) = step(&dense, &ids);
    let (loss_q, grads_q) = step(&q, &ids);
    eprintln!(
        "SmolLM2 step: dense {loss_d:.6}, Q4_1 blocks {loss_q:.6}; gradients differ by {:.1e} (relative)",
        rel(&grads_q, &grads_d)
    );
    assert!((loss_q - loss_d).abs() < 1e-6 * loss_d, "{loss_q} vs {loss_d}");
    assert!(rel(&grads_q, &grads_d) < 1e-5);
}

#[test]
fn quantizing_at_load_stays_within_quantization_error() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = common::init_tiny(dir.path(), "tiny", &[]);
    let dense = load(&tiny, None);
    let q = load(&tiny, Some(Quantize::parse("q8_0").unwrap()));
    // down_proj's rows (176 values) are not whole 32-value blocks: it stays dense.
    assert_eq!(quantized_count(&q), 2 * 6);
    assert!(matches!(q.weights.layers[0].mlp.down_proj.weight, Weight::Dense(_)));
    let ids: Vec<Vec<u32>> = (0..2).map(|r| (0..24).map(|j| ((r * 37 + j * 11) % 300) as u32).collect()).collect();
    let (loss_d, grads_d) = step(&dense, &ids);
    let (loss_q, grads_q) = step(&q, &ids);
    let loss_rel = (loss_q - loss_d).abs() / loss_d;
    eprintln!(
        "tiny step: dense {loss_d:.6}, q8_0 {loss_q:.6} ({loss_rel:.1e} relative); gradients {:.1e}",
        rel(&grads_q, &grads_d)
    );
    assert!(loss_rel < 1e-2 && loss_rel > 0.0, "{loss_rel}");
    // The tiny preset's large random weights amplify the 0.4% per-value error of Q8_0.
    assert!(rel(&grads_q, &grads_d) < 5e-2);

    // A preset-less GGUF keep request on a folder is refused with the reason.
    let mut opts = LoadOptions::for_device(Device::Cpu, HubOptions { offline: true, ..HubOptions::from_env() });
    opts.quantize = Some(Quantize::Gguf);
    let err = model::load(&ModelSource::HfDir(tiny.clone()), &opts).err().unwrap().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
}
