//! An adapter written by PEFT itself, with rsLoRA and all seven target modules (attention
//! and MLP), on the tiny preset (tests/fixtures/peft_adapter_tiny_rslora, made by
//! scripts/reference/make_peft_adapter.py): loratune reads it with PEFT's scaling and computes
//! the loss PEFT computed with it, and with the adapter's B set to zero, the base loss.

use crate::common;

use candle_core::Device;
use loratune::encode::EncodedExample;
use loratune::lora::{load_adapter, Target};
use loratune::model::hub::HubOptions;
use loratune::model::{self, LoadOptions, ModelSource};
use loratune::train::step::{forward_nll, TrainBatch};

#[test]
fn peft_rslora_adapter_on_all_modules_gives_peft_loss() {
    let dir = tempfile::tempdir().unwrap();
    // init-model's tiny preset (seed 0) is the model the fixture was made on.
    let model_dir = common::init_tiny(dir.path(), "tiny", &[]);
    let opts = LoadOptions::for_device(Device::Cpu, HubOptions { offline: true, ..HubOptions::from_env() });
    let loaded = model::load(&ModelSource::HfDir(model_dir), &opts).unwrap();
    let case = common::fixture("peft_adapter_tiny_rslora/case.json");
    let adapter_dir = common::repo_root().join("tests/fixtures/peft_adapter_tiny_rslora");
    let lora = load_adapter(&adapter_dir, &loaded.model.config, &Device::Cpu).unwrap();
    assert!(lora.spec.use_rslora);
    assert_eq!(lora.spec.targets, Target::ALL.to_vec());
    assert_eq!(lora.scaling, case["lora_scaling"].as_f64().unwrap(), "alpha / sqrt(r) = 8 / 2");

    // transformers' labels = input_ids: every token after the first of each row is a target.
    let examples: Vec<EncodedExample> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let ids: Vec<u32> = row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            EncodedExample { target_mask: vec![1; ids.len()], input_ids: ids, truncated: false }
        })
        .collect();
    let rows: Vec<Vec<&EncodedExample>> = examples.iter().map(|e| vec![e]).collect();
    let batch = TrainBatch::new(&rows, 0, &Device::Cpu).unwrap();
    let loss = forward_nll(&loaded.model, &lora, &batch).unwrap() / batch.num_targets as f64;
    let peft = case["loss"].as_f64().unwrap();
    eprintln!("loss with the adapter: loratune {loss:.7}, PEFT {peft:.7}");
    assert!((loss - peft).abs() < 1e-5 * peft, "loss {loss} vs PEFT {peft}");

    let mut base = lora.clone();
    for layer in &mut base.layers {
        for pair in layer.pairs.iter_mut().flatten() {
            pair.b = pair.b.zeros_like().unwrap();
        }
    }
    let base_loss = forward_nll(&loaded.model, &base, &batch).unwrap() / batch.num_targets as f64;
    let peft_base = case["base_loss"].as_f64().unwrap();
    assert!((base_loss - peft_base).abs() < 1e-5 * peft_base, "base loss {base_loss} vs PEFT {peft_base}");
    assert!((loss - base_loss).abs() > 0.05, "the adapter changes the loss: {loss} vs {base_loss}");
}
