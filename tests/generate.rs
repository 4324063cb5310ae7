//! `loratune generate`: the KV-cache forward agrees with the full forward, greedy output
//! equals transformers' (tests/fixtures/generate_greedy.json), sampling is seeded, and batch
//! mode writes one JSONL row per prompt with file:line errors for bad ones.

use crate::common;

use candle_core::{Device, Tensor};
use loratune::chat::{Message, Role};
use loratune::generate::cached_forward::{self, all_logits, Cache};
use loratune::generate::{GenerateOptions, Generator, SamplingParams, StopReason};
use loratune::lora::load_adapter;
use loratune::model::hub::HubOptions;
use loratune::model::{self, LoadOptions, LoadedModel, ModelSource};
use std::path::Path;

fn load(path: &Path) -> LoadedModel {
    let opts = LoadOptions::for_device(Device::Cpu, HubOptions { offline: true, ..HubOptions::from_env() });
    model::load(&ModelSource::parse(path.to_str().unwrap()).unwrap(), &opts).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A prompt fed at once, then token by token, gives the logits the model's full forward
/// gives at every position (SmolLM2: GQA with 3 KV heads for 9 query heads, tied head).
#[test]
fn cached_forward_matches_the_full_forward() {
    let m = load(&common::smollm2_gguf());
    let msgs = [Message::new(Role::User, "Name three primary colours.")];
    let ids = m.tokenizer.encode(&m.tokenizer.render_chat(&msgs, true).unwrap(), false).unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let full = m.model.forward(&input, &input.ones_like().unwrap()).unwrap(); // (1, T, V)
    let stepwise = all_logits(&m.model, None, &ids).unwrap();
    let step_diff = max_abs_diff(&stepwise, &full);
    // Prefill of the first T-3 tokens at once, then three single steps.
    let split = ids.len() - 3;
    let mut cache = Cache::new(&m.model.config, 4);
    let mut last = vec![cached_forward::forward(&m.model, None, &ids[..split], &mut cache).unwrap()];
    for &id in &ids[split..] {
        last.push(cached_forward::forward(&m.model, None, &[id], &mut cache).unwrap());
    }
    assert_eq!(cache.len(), ids.len(), "the cache grew past its initial capacity");
    let mixed = Tensor::stack(&last, 0).unwrap();
    let mixed_diff = max_abs_diff(&mixed, &full.squeeze(0).unwrap().narrow(0, split - 1, 4).unwrap());
    eprintln!("{} tokens: token-by-token max |dlogit| {step_diff:.2e}, prefill + steps {mixed_diff:.2e}", ids.len());
    assert!(step_diff < 5e-4 && mixed_diff < 5e-4, "{step_diff} {mixed_diff}");
}

/// The same for Qwen3's shape (q/k norms on each head before RoPE, head_dim apart from
/// hidden / heads): token by token through the cache equals the full forward.
#[test]
fn cached_forward_matches_the_full_forward_qwen3() {
    let dir = tempfile::tempdir().unwrap();
    let m = load(&common::init_tiny(dir.path(), "tiny-qwen3", &[]));
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 11) % 300).collect();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let full = m.model.forward(&input, &input.ones_like().unwrap()).unwrap(); // (1, T, V)
    let stepwise = all_logits(&m.model, None, &ids).unwrap();
    let diff = max_abs_diff(&stepwise, &full);
    eprintln!("tiny-qwen3, {} tokens: token-by-token max |dlogit| {diff:.2e}", ids.len());
    assert!(diff < 5e-4, "{diff}");
}

/// Greedy decoding equals transformers' `generate(do_sample=False)` token for token: SmolLM2
/// chats (stopping at <|im_end|>), the tiny preset with and without PEFT's rsLoRA adapter, and
/// the tiny-qwen3 preset with and without a PEFT adapter on all seven projections.
#[test]
fn greedy_output_equals_transformers() {
    let fixture = common::fixture("generate_greedy.json");
    let dir = tempfile::tempdir().unwrap();
    let smol = load(&common::smollm2_gguf());
    let tiny = load(&common::init_tiny(dir.path(), "tiny", &[]));
    let qwen3 = load(&common::init_tiny(dir.path(), "tiny-qwen3", &[]));
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let m = match case["model"].as_str().unwrap() {
            "smollm2" => &smol,
            "tiny" => &tiny,
            "tiny-qwen3" => &qwen3,
            other => panic!("{name}: unknown model {other}"),
        };
        let adapter = case["adapter"]
            .as_str()
            .map(|a| load_adapter(&common::repo_root().join(a), &m.model.config, &Device::Cpu).unwrap());
        let gen = Generator::new(&m.model, adapter.as_ref(), &m.tokenizer, &ids_of(&case["eos_token_ids"]));
        let prompt = ids_of(&case["prompt_ids"]);
        if let Some(messages) = case.get("messages") {
            let messages: Vec<Message> = serde_json::from_value(messages.clone()).unwrap();
            assert_eq!(gen.prompt_ids(&messages, false).unwrap(), prompt, "{name}: chat template + tokenizer");
        }
        let want = ids_of(&case["output_ids"]);
        let stops = case["stopped_on_eos"].as_bool().unwrap_or(false);
        let opts =
            GenerateOptions { max_new_tokens: want.len(), sampling: SamplingParams::default(), ignore_eos: !stops };
        let mut streamed = String::new();
        let g = gen.generate(&prompt, &opts, |s| streamed.push_str(s)).unwrap();
        eprintln!("{name}: {:?}", g.text);
        assert_eq!(g.output_ids, want, "{name}: greedy tokens differ from transformers'");
        assert_eq!(g.stop == StopReason::Eos, stops, "{name}");
        assert_eq!(streamed, g.text, "{name}: streamed text is the decoded output");
        if let Some(text) = case.get("output_text").and_then(|t| t.as_str()) {
            assert_eq!(g.text, text, "{name}");
        }
    }
}

#[test]
fn sampling_is_seeded_and_batch_mode_writes_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::init_tiny(dir.path(), "tiny", &[]);
    let m = model_dir.to_str().unwrap();
    let sample = |seed: &str| {
        let o = common::loratune(
            dir.path(),
            &[
                "generate",
                "--model",
                m,
                "--prompt",
                "hello",
                "--temperature",
                "1.0",
                "--top-k",
                "50",
                "--top-p",
                "0.95",
                "--seed",
                seed,
                "--max-new-tokens",
                "12",
                "--ignore-eos",
                "--device",
                "cpu",
            ],
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
        common::stdout(&o)
    };
    assert_eq!(sample("1"), sample("1"), "same seed, same text");
    assert_ne!(sample("1"), sample("2"), "another seed, another text");

    let prompts = dir.path().join("prompts.jsonl");
    common::write(
        &prompts,
        concat!(
            "{\"prompt\": \"hi\"}\n",
            "\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"ref\"}]}\n",
            "{\"instruction\": \"say b\", \"system\": \"be brief\"}\n",
        ),
    );
    let out = dir.path().join("gen.jsonl");
    let o = common::loratune(
        dir.path(),
        &[
            "generate",
            "--model",
            m,
            "--data",
            prompts.to_str().unwrap(),
            "--max-new-tokens",
            "5",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r["line"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 3, 4]);
    assert_eq!(rows[1]["reference"], "ref");
    assert_eq!(rows[1]["prompt"], "a");
    assert_eq!(rows[2]["messages"][0]["content"], "be brief");
    for r in &rows {
        assert!(r["tokens"].as_u64().unwrap() >= 1 && r["tokens"].as_u64().unwrap() <= 5, "{r}");
        assert!(
            r["seconds"].as_f64().unwrap() > 0.0 && r["output"].is_string() && r["prompt_tokens"].as_u64().unwrap() > 3
        );
    }

    // A bad line stops before the model loads, naming file and line.
    common::write(&prompts, "{\"prompt\": \"ok\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}, {\"role\": \"assistant\", \"content\": \"z\"}]}\n");
    let o = common::loratune(
        dir.path(),
        &["generate", "--model", m, "--data", prompts.to_str().unwrap(), "--device", "cpu"],
    );
    let err = common::stderr(&o);
    assert!(!o.status.success() && err.contains("prompts.jsonl:2") && err.contains("user turn"), "{err}");
}
