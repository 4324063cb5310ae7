//! loratune against transformers: token ids, loss masks and f32 CPU losses for fixed
//! texts and conversations, on SmolLM2-135M-Instruct (GGUF) and the tiny presets.
//! Fixtures come from scripts/reference/make_fixtures.py (see its README to rerun).

use crate::common;

use candle_core::Device;
use loratune::chat::{Message, Role};
use loratune::data::Record;
use loratune::encode::{encode, EncodedExample};
use loratune::eval::evaluate;
use loratune::model::hub::HubOptions;
use loratune::model::{self, LoadOptions, LoadedModel, ModelSource};

const LOSS_TOL: f64 = 1e-4;

fn offline_opts() -> LoadOptions {
    let hub =
        HubOptions { cache_dir: std::env::temp_dir().join("loratune-no-hub"), offline: true, revision: "main".into() };
    LoadOptions::for_device(Device::Cpu, hub)
}

fn record_of(case: &serde_json::Value) -> Record {
    let s = |k: &str| case[k].as_str().unwrap().to_string();
    match case["kind"].as_str().unwrap() {
        "text" => Record::Text(s("text")),
        "prompt_completion" => Record::PromptCompletion { prompt: s("prompt"), completion: s("completion") },
        "chat" => Record::Conversation(
            case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let role = match m["role"].as_str().unwrap() {
                        "system" => Role::System,
                        "user" => Role::User,
                        "assistant" => Role::Assistant,
                        r => panic!("fixture role {r}"),
                    };
                    Message::new(role, m["content"].as_str().unwrap())
                })
                .collect(),
        ),
        k => panic!("fixture kind {k}"),
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Checks every fixture case; collects all mismatches so one run shows them all.
fn check_against_fixture(loaded: &LoadedModel, fixture: &serde_json::Value) {
    let tok = &loaded.tokenizer;
    let pad = tok.pad_id.or(tok.eos_id).unwrap_or(0);
    let mut problems = Vec::new();
    let mut all: Vec<EncodedExample> = Vec::new();
    let mut max_diff = 0f64;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let record = record_of(case);
        if let Record::Conversation(messages) = &record {
            let rendered = tok.chat_template.as_ref().unwrap().render(messages, false).unwrap();
            if rendered != case["rendered"].as_str().unwrap() {
                problems
                    .push(format!("{name}: rendered chat differs:\n ours {rendered:?}\n ref  {:?}", case["rendered"]));
            }
        }
        let enc = encode(tok, &record, 100_000).unwrap();
        let want_ids = ids(&case["input_ids"]);
        let want_mask: Vec<u8> = ids(&case["target_mask"]).into_iter().map(|x| x as u8).collect();
        if enc.input_ids != want_ids {
            problems.push(format!("{name}: token ids differ:\n ours {:?}\n ref  {:?}", enc.input_ids, want_ids));
            continue;
        }
        if enc.target_mask != want_mask {
            problems.push(format!("{name}: target mask differs:\n ours {:?}\n ref  {:?}", enc.target_mask, want_mask));
            continue;
        }
        let s = evaluate(&loaded.model, None, std::slice::from_ref(&enc), 1, pad, |_, _| {}).unwrap();
        let want = case["loss"].as_f64().unwrap();
        assert_eq!(s.target_tokens as u64, case["n_targets"].as_u64().unwrap(), "{name}: target count");
        max_diff = max_diff.max((s.loss - want).abs());
        if (s.loss - want).abs() > LOSS_TOL {
            problems.push(format!(
                "{name}: loss {} vs transformers {want} (diff {:.2e})",
                s.loss,
                (s.loss - want).abs()
            ));
        }
        all.push(enc);
    }
    assert!(problems.is_empty(), "{} mismatches:\n{}", problems.len(), problems.join("\n"));
    // Batched with padding: the same numbers as one at a time.
    let s = evaluate(&loaded.model, None, &all, 4, pad, |_, _| {}).unwrap();
    let want = fixture["batch_loss"].as_f64().unwrap();
    eprintln!(
        "{}: {} cases, max |loss - transformers| = {max_diff:.2e}, batched diff = {:.2e}",
        fixture["model"],
        all.len(),
        (s.loss - want).abs()
    );
    assert!((s.loss - want).abs() <= LOSS_TOL, "batched loss {} vs transformers {want}", s.loss);
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let loaded = model::load(&ModelSource::Gguf(common::smollm2_gguf()), &offline_opts()).unwrap();
    check_against_fixture(&loaded, &common::fixture("reference_smollm2.json"));
}

#[test]
fn tiny_presets_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for preset in ["tiny", "tiny-qwen2", "tiny-llama3", "tiny-qwen3"] {
        let fixture_name = format!("reference_{}.json", preset.replace('-', "_"));
        if !common::repo_root().join("tests/fixtures").join(&fixture_name).is_file() {
            panic!("fixture {fixture_name} missing: see scripts/reference/README.md");
        }
        let path = common::init_tiny(dir.path(), preset, &[]);
        let loaded = model::load(&ModelSource::HfDir(path), &offline_opts()).unwrap();
        check_against_fixture(&loaded, &common::fixture(&fixture_name));
    }
}
