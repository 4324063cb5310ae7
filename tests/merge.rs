//! `loratune merge`: the merged checkpoint's logits equal the base's with the adapter
//! applied unmerged (both through generation's forward, so only the merge differs), for
//! the tiny preset from a safetensors folder and from GGUF, and for SmolLM2
//! from its Q4_1 GGUF; the folder is a complete, re-loadable Hugging Face checkpoint.

use crate::common;

use candle_core::{Device, Tensor};
use loratune::generate::cached_forward::all_logits;
use loratune::lora::{self, LoraSpec, LoraWeights, Target};
use loratune::model::hub::HubOptions;
use loratune::model::init::init_tensor;
use loratune::model::{self, LoadOptions, LoadedModel, ModelSource};
use std::path::Path;

fn load(path: &Path) -> LoadedModel {
    let opts = LoadOptions::for_device(Device::Cpu, HubOptions { offline: true, ..HubOptions::from_env() });
    model::load(&ModelSource::parse(path.to_str().unwrap()).unwrap(), &opts).unwrap()
}

/// An adapter on every projection with B != 0 (a fresh one is the base model exactly):
/// every A and B drawn from N(0, 0.1) by `seed` (candle's CPU `randn` cannot be seeded).
fn random_adapter(cfg: &loratune::model::ModelConfig, seed: u64) -> LoraWeights {
    let spec = LoraSpec { r: 4, alpha: 16.0, dropout: 0.0, targets: Target::ALL.to_vec(), use_rslora: false };
    let mut w = LoraWeights::init(&spec, cfg, seed, &Device::Cpu).unwrap();
    let noisy: Vec<Tensor> =
        w.named_tensors().iter().map(|(name, t)| init_tensor(name, t.dims(), seed, 0.1).unwrap()).collect();
    w.set_tensors(noisy.into_iter());
    w
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn merge(cwd: &Path, model: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "merge",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    common::loratune(cwd, &args)
}

#[test]
fn tiny_merge_equals_base_plus_adapter_from_safetensors_and_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    let base_dir = common::init_tiny(dir.path(), "tiny", &["--gguf", gguf.to_str().unwrap()]);
    let base = load(&base_dir);
    let adapter = random_adapter(&base.model.config, 5);
    let adapter_dir = dir.path().join("adapter");
    lora::save_adapter(&adapter_dir, &adapter, "tiny").unwrap();

    // Small shards, so the index and several files are exercised.
    let out = dir.path().join("merged");
    let o = merge(dir.path(), &base_dir, &adapter_dir, &out, &["--max-shard-size", "100KB"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("merged       14 of 21 tensors"), "{}", common::stdout(&o));
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let shards: std::collections::BTreeSet<&str> =
        index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() > 1, "{shards:?}");
    for s in &shards {
        assert!(out.join(s).is_file(), "{s}");
    }
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "loratune_merge.json"]
    {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("loratune_merge.json")).unwrap()).unwrap();
    assert_eq!(record["merged_tensors"], 14);
    assert_eq!(record["scaling"], 4.0);
    assert_eq!(record["adapter_sha256"].as_str().unwrap().len(), 64);
    // No staging folder is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let merged = load(&out);
    assert_eq!(merged.model.config, base.model.config);
    let messages = [loratune::chat::Message::new(loratune::chat::Role::User, "hi")];
    assert_eq!(
        merged.tokenizer.render_chat(&messages, true).unwrap(),
        base.tokenizer.render_chat(&messages, true).unwrap()
    );

    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 300).collect();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mask = input.ones_like().unwrap();
    let unmerged = all_logits(&base.model, Some(&adapter), &ids).unwrap();
    let diff = max_abs_diff(&all_logits(&merged.model, None, &ids).unwrap(), &unmerged);
    let effect = max_abs_diff(&base.model.forward(&input, &mask).unwrap(), &unmerged);
    eprintln!("tiny: merged vs base+adapter max |dlogit| {diff:.2e}; the adapter moves logits by up to {effect:.2}");
    assert!(diff < 1e-4, "merged logits differ from base + adapter by {diff}");
    assert!(effect > 0.1, "the adapter should change the logits ({effect})");

    // The same base as an F32 GGUF file merges to the same weights.
    let out_gguf = dir.path().join("merged-gguf");
    let o = merge(dir.path(), &gguf, &adapter_dir, &out_gguf, &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let from_gguf = load(&out_gguf);
    let diff =
        max_abs_diff(&from_gguf.model.forward(&input, &mask).unwrap(), &merged.model.forward(&input, &mask).unwrap());
    assert!(diff < 1e-5, "GGUF and safetensors bases merge differently: {diff}");
}

#[test]
fn smollm2_gguf_merge_equals_base_plus_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = common::smollm2_gguf();
    // PEFT's own adapter (q/k/v/o, r=4, B != 0) from the gradient fixture.
    let adapter_dir = common::repo_root().join("tests/fixtures/peft_grads_smollm2");
    let out = dir.path().join("merged");
    let o = merge(dir.path(), &gguf, &adapter_dir, &out, &["--dtype", "f32", "--max-shard-size", "200MB"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    eprintln!("{}", common::stdout(&o));
    assert!(common::stdout(&o).contains("merged       120 of 272 tensors"), "{}", common::stdout(&o));
    assert!(out.join("model-00001-of-00003.safetensors").is_file());
    // Streaming: the process never held the 513 MiB of merged weights at once.
    let stdout = common::stdout(&o);
    let peak: f64 = stdout
        .split("peak memory ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|x| x.parse().ok())
        .expect("peak memory printed");
    assert!(peak < 480.0, "peak resident memory {peak} MiB: the merge did not stream");

    let base = load(&gguf);
    let merged = load(&out);
    let adapter = lora::load_adapter(&adapter_dir, &base.model.config, &Device::Cpu).unwrap();
    let messages =
        [loratune::chat::Message::new(loratune::chat::Role::User, "Plan a meeting with Ana on Friday at 3pm.")];
    let text = base.tokenizer.render_chat(&messages, true).unwrap();
    assert_eq!(merged.tokenizer.render_chat(&messages, true).unwrap(), text, "chat template carried over");
    let ids = base.tokenizer.encode(&text, false).unwrap();
    assert_eq!(merged.tokenizer.encode(&text, false).unwrap(), ids, "tokenizer carried over");
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mask = input.ones_like().unwrap();
    let unmerged = all_logits(&base.model, Some(&adapter), &ids).unwrap();
    let diff = max_abs_diff(&all_logits(&merged.model, None, &ids).unwrap(), &unmerged);
    let effect = max_abs_diff(&base.model.forward(&input, &mask).unwrap(), &unmerged);
    eprintln!(
        "SmolLM2 ({} tokens): merged vs base+adapter max |dlogit| {diff:.2e}; adapter effect {effect:.2}",
        ids.len()
    );
    assert!(diff < 1e-4, "merged logits differ from base + adapter by {diff}");
    assert!(effect > 0.1, "the adapter should change the logits ({effect})");
}

#[test]
fn mismatched_adapters_and_existing_outputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base_dir = common::init_tiny(dir.path(), "tiny", &[]);
    // SmolLM2's adapter on the tiny model: the first tensor and both shapes are named.
    let smol_adapter = common::repo_root().join("tests/fixtures/peft_grads_smollm2");
    let o = merge(dir.path(), &base_dir, &smol_adapter, &dir.path().join("x"), &[]);
    let err = common::stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("layers.0.self_attn.q_proj.lora_A.weight") && err.contains("[4, 576]") && err.contains("[4, 64]"),
        "{err}"
    );
    assert!(!dir.path().join("x").exists(), "nothing is written on error");

    let adapter_dir = dir.path().join("adapter");
    lora::save_adapter(&adapter_dir, &random_adapter(&load(&base_dir).model.config, 1), "tiny").unwrap();
    let out = dir.path().join("merged");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("old.txt"), "keep me").unwrap();
    let o = merge(dir.path(), &base_dir, &adapter_dir, &out, &[]);
    assert!(!o.status.success() && common::stderr(&o).contains("--overwrite"), "{}", common::stderr(&o));
    assert!(out.join("old.txt").is_file());
    let o = merge(dir.path(), &base_dir, &adapter_dir, &out, &["--overwrite"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(!out.join("old.txt").exists() && out.join("model.safetensors").is_file());
}

/// transformers loads the merged folder and computes the same loss as PEFT's own
/// merge_and_unload, whose weights were identical (max difference 0;
/// tests/fixtures/merged_tiny_rslora.json from scripts/reference/check_merged.py); loratune's
/// loss on its merged folder equals transformers' loss on it.
#[test]
fn transformers_loads_the_merged_folder_with_peft_merge_loss() {
    let dir = tempfile::tempdir().unwrap();
    let base_dir = common::init_tiny(dir.path(), "tiny", &[]);
    let adapter_dir = common::repo_root().join("tests/fixtures/peft_adapter_tiny_rslora");
    let out = dir.path().join("merged");
    let o = merge(dir.path(), &base_dir, &adapter_dir, &out, &["--dtype", "f32"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let fixture = common::fixture("merged_tiny_rslora.json");
    // Byte equality with the file transformers loaded holds where the CPU rounds B·A as it did
    // here; the loss below is the check that matters, so a difference is only reported.
    let (sha, _) = loratune::digest::sha256_file(&out.join("model.safetensors")).unwrap();
    let same_file = fixture["merged_files"]["model.safetensors"] == sha.as_str();
    eprintln!("merged file identical to the one transformers loaded: {same_file}");

    let merged = load(&out);
    let examples: Vec<loratune::encode::EncodedExample> = fixture["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let ids: Vec<u32> = row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            loratune::encode::EncodedExample { target_mask: vec![1; ids.len()], input_ids: ids, truncated: false }
        })
        .collect();
    let summary = loratune::eval::evaluate(&merged.model, None, &examples, 2, 0, |_, _| {}).unwrap();
    let reference = fixture["transformers_loss_of_merged"].as_f64().unwrap();
    eprintln!("merged tiny: loratune loss {:.7}, transformers {reference:.7}", summary.loss);
    assert!((summary.loss - reference).abs() < 1e-5 * reference, "{} vs {reference}", summary.loss);
}
