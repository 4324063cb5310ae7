//! LoRA gradients of loratune's training step against PEFT's for one batch: SmolLM2-135M
//! with adapters on q/k/v/o (tests/fixtures/peft_grads_smollm2) and the tiny-qwen3 preset with
//! adapters on all seven projections (tests/fixtures/peft_grads_tiny_qwen3), both made by
//! scripts/reference/make_peft_grads.py.
//! The adapter there was written by PEFT's own save_pretrained, so this also checks that
//! loratune reads PEFT adapters.

use crate::common;

use candle_core::{Device, Tensor};
use loratune::data::Record;
use loratune::encode::{encode, EncodedExample};
use loratune::lora::load_adapter;
use loratune::model::hub::HubOptions;
use loratune::model::{self, LoadOptions, ModelSource};
use loratune::train::step::{forward_backward, LoraGrads, StepOptions, TrainBatch};
use rand::SeedableRng;

fn rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect()
}

#[test]
fn smollm2_lora_gradients_match_peft() {
    check_against_peft(ModelSource::Gguf(common::smollm2_gguf()), "peft_grads_smollm2");
}

#[test]
fn tiny_qwen3_lora_gradients_match_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = common::init_tiny(tmp.path(), "tiny-qwen3", &[]);
    check_against_peft(ModelSource::HfDir(model_dir), "peft_grads_tiny_qwen3");
}

/// The model at `source`, the adapter and batch of the fixture folder `name`.
fn check_against_peft(source: ModelSource, name: &str) {
    let dir = common::repo_root().join("tests/fixtures").join(name);
    let case = common::fixture(&format!("{name}/case.json"));
    let opts = LoadOptions::for_device(Device::Cpu, HubOptions { offline: true, ..HubOptions::from_env() });
    let loaded = model::load(&source, &opts).unwrap();
    let lora = load_adapter(&dir, &loaded.model.config, &Device::Cpu).unwrap();
    assert_eq!((lora.spec.r, lora.scaling), (4, 2.0));

    // Our encoding of the same conversations gives PEFT's ids and target masks.
    let ids = rows(&case["input_ids"]);
    let attn = rows(&case["attention_mask"]);
    let targets = rows(&case["target_mask"]);
    let mut examples = Vec::new();
    for (i, messages) in case["messages"].as_array().unwrap().iter().enumerate() {
        let msgs = serde_json::from_value(messages.clone()).unwrap();
        let ours = encode(&loaded.tokenizer, &Record::Conversation(msgs), 4096).unwrap();
        let n = attn[i].iter().filter(|&&m| m == 1).count();
        assert_eq!(ours.input_ids, ids[i][..n], "ids of conversation {i}");
        let mask: Vec<u8> = targets[i][..n].iter().map(|&m| m as u8).collect();
        assert_eq!(ours.target_mask, mask, "target mask of conversation {i}");
        examples.push(EncodedExample { input_ids: ours.input_ids, target_mask: ours.target_mask, truncated: false });
    }
    let batch_rows: Vec<Vec<&EncodedExample>> = examples.iter().map(|e| vec![e]).collect();
    let batch = TrainBatch::new(&batch_rows, case["pad_id"].as_u64().unwrap() as u32, &Device::Cpu).unwrap();
    assert_eq!(batch.num_targets as u64, case["n_targets"].as_u64().unwrap());

    let mut grads = LoraGrads::zeros(&lora).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let step_opts = StepOptions { offload_checkpoints: false, ..StepOptions::default() };
    let stats =
        forward_backward(&loaded.model, &lora, &batch, 1.0 / batch.num_targets as f64, step_opts, &mut rng, &mut grads)
            .unwrap();
    let loss = stats.nll_sum / batch.num_targets as f64;
    let peft_loss = case["loss_f64"].as_f64().unwrap();
    eprintln!("loss: loratune {loss:.7}, PEFT {peft_loss:.7}");
    assert!((loss - peft_loss).abs() < 1e-4, "loss {loss} vs PEFT {peft_loss}");

    let reference = candle_core::safetensors::load(dir.join("grads.safetensors"), &Device::Cpu).unwrap();
    let names: Vec<String> = lora.named_tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), reference.len());
    let mut worst = (0f64, String::new());
    for (name, g) in names.iter().zip(grads.tensors()) {
        let r: &Tensor = reference.get(name).unwrap_or_else(|| panic!("PEFT has no gradient {name}"));
        let diff = (&g - r).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt() as f64;
        let norm = r.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt() as f64;
        let rel = diff / norm;
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        assert!(rel < 1e-3, "{name}: relative difference {rel:.2e} (|g| {norm:.3e})");
    }
    eprintln!("worst relative gradient difference {:.2e} ({})", worst.0, worst.1);
}
