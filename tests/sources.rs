//! One tiny model, four ways in: an HF layout folder, the same folder sharded, a hub id
//! resolved from a cache folder the test builds, and a GGUF file. All must give
//! identical logits.

use crate::common;

use candle_core::{Device, Tensor};
use loratune::model::hub::HubOptions;
use loratune::model::{self, LoadOptions, ModelSource};
use std::path::Path;

fn opts(cache: &Path) -> LoadOptions {
    LoadOptions::for_device(
        Device::Cpu,
        HubOptions { cache_dir: cache.to_path_buf(), offline: true, revision: "main".into() },
    )
}

fn logits(source: ModelSource, cache: &Path) -> Vec<f32> {
    let loaded = model::load(&source, &opts(cache)).unwrap_or_else(|e| panic!("{source}: {e}"));
    let text = "<|im_start|>user\nHello, tiny model! 123<|im_end|>\n";
    let ids = loaded.tokenizer.encode(text, true).unwrap();
    let n = ids.len();
    let input = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, n), candle_core::DType::U8, &Device::Cpu).unwrap();
    loaded.model.forward(&input, &mask).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Copies the checkpoint into `cache` in the layout of the Python hub client:
/// models--ORG--NAME/refs/main -> commit, snapshots/COMMIT/<files>.
fn build_hub_cache(checkpoint: &Path, cache: &Path, id: &str) {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(checkpoint).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn hf_folder_sharded_hub_cache_and_gguf_give_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gguf = d.join("tiny.gguf");
    let hf = common::init_tiny(d, "tiny", &["--gguf", gguf.to_str().unwrap()]);
    // Same seed, small shards: must be the same weights split over several files.
    let sharded_out = d.join("sharded");
    let o = common::loratune(
        d,
        &["init-model", "--preset", "tiny", "--out", sharded_out.to_str().unwrap(), "--max-shard-size", "64KiB"],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(sharded_out.join("model.safetensors.index.json").is_file());
    assert!(
        std::fs::read_dir(&sharded_out)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-0"))
            .count()
            > 2
    );
    let cache = d.join("hub");
    build_hub_cache(&hf, &cache, "loratune-tests/tiny");

    let reference = logits(ModelSource::HfDir(hf.clone()), &cache);
    assert!(reference.iter().all(|x| x.is_finite()));
    assert_eq!(logits(ModelSource::HfDir(sharded_out), &cache), reference, "sharded folder");
    assert_eq!(logits(ModelSource::parse("loratune-tests/tiny").unwrap(), &cache), reference, "hub cache");
    assert_eq!(logits(ModelSource::Gguf(gguf), &cache), reference, "GGUF");
}

#[test]
fn hub_id_not_cached_while_offline_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // Data is read before the model, so give a valid file: the model error must be the one reported.
    common::write(&dir.path().join("x.jsonl"), "{\"text\": \"hi\"}\n");
    let o = common::loratune(dir.path(), &["eval", "--model", "meta-llama/Llama-2-7b-hf", "--data", "x.jsonl"]);
    let err = common::stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("meta-llama/Llama-2-7b-hf")
            && err.contains("not in the local hub cache")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn init_model_takes_tokenizer_and_template_from_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gguf = common::smollm2_gguf();
    let out = common::init_tiny(d, "tiny", &["--tokenizer", gguf.to_str().unwrap()]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 49152, "vocabulary sized to the tokenizer");
    assert_eq!(config["eos_token_id"], 2);
    let loaded = model::load(&ModelSource::HfDir(out), &opts(&d.join("hub"))).unwrap();
    // The saved tokenizer and template reproduce transformers' ids for SmolLM2's chats.
    let fixture = common::fixture("reference_smollm2.json");
    for case in fixture["cases"].as_array().unwrap() {
        let rendered = case["rendered"].as_str().unwrap();
        let special = case["kind"] != "chat";
        let want: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        if case["kind"] == "prompt_completion" {
            continue; // its ids carry an appended EOS
        }
        assert_eq!(loaded.tokenizer.encode(rendered, special).unwrap(), want, "{}", case["name"]);
        if case["kind"] == "chat" {
            let messages: Vec<loratune::chat::Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            assert_eq!(loaded.tokenizer.chat_template.as_ref().unwrap().render(&messages, false).unwrap(), rendered);
        }
    }
}
