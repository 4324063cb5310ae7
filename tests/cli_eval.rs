//! `loratune eval` end to end on the real model: the fixture's cases written as JSONL in
//! their formats, evaluated by the binary in one command, give transformers' loss; the same
//! conversations in alpaca, sharegpt and messages layouts give identical results.

use crate::common;

use serde_json::{json, Value};

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn eval_command_reproduces_transformers_loss_over_mixed_files() {
    let fx = common::fixture("reference_smollm2.json");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut chats, mut texts, mut pcs) = (String::new(), String::new(), String::new());
    for c in fx["cases"].as_array().unwrap() {
        let line = match c["kind"].as_str().unwrap() {
            "chat" => (&mut chats, json!({ "messages": c["messages"] })),
            "text" => (&mut texts, json!({ "text": c["text"] })),
            "prompt_completion" => (&mut pcs, json!({ "prompt": c["prompt"], "completion": c["completion"] })),
            k => panic!("{k}"),
        };
        line.0.push_str(&format!("{}\n", line.1));
    }
    common::write(&d.join("chats.jsonl"), &chats);
    common::write(&d.join("texts.jsonl"), &texts);
    common::write(&d.join("pc.jsonl"), &pcs);
    let model = common::smollm2_gguf();
    let o = common::loratune(
        d,
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "chats.jsonl",
            "texts.jsonl",
            "pc.jsonl",
            "--batch-size",
            "3",
            "--out",
            "out.json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = common::stdout(&o);
    assert!(stdout.contains("loss") && stdout.contains("perplexity"), "{stdout}");
    let r = read_json(&d.join("out.json"));
    let want = fx["batch_loss"].as_f64().unwrap();
    let got = r["loss"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4, "eval loss {got} vs transformers {want}");
    assert!((r["perplexity"].as_f64().unwrap() - got.exp()).abs() < 1e-9);
    let n_targets: u64 = fx["cases"].as_array().unwrap().iter().map(|c| c["n_targets"].as_u64().unwrap()).sum();
    let n_tokens: u64 =
        fx["cases"].as_array().unwrap().iter().map(|c| c["input_ids"].as_array().unwrap().len() as u64).sum();
    assert_eq!(r["target_tokens"].as_u64().unwrap(), n_targets);
    assert_eq!(r["total_tokens"].as_u64().unwrap(), n_tokens);
    let formats: Vec<&str> = r["files"].as_array().unwrap().iter().map(|f| f["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["messages", "text", "prompt_completion"]);
    assert_eq!(r["model"]["kind"], "gguf");
    assert_eq!(r["model"]["num_parameters"], 134515008);
}

#[test]
fn one_conversation_in_three_layouts_evaluates_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = common::init_tiny(d, "tiny", &[]);
    let (sys, user, input, answer) = ("Answer in JSON.", "Name a colour", "one word", "{\"colour\": \"teal\"}");
    common::write(
        &d.join("alpaca.jsonl"),
        &format!("{}\n", json!({"system": sys, "instruction": user, "input": input, "output": answer})),
    );
    let joined = format!("{user}\n\n{input}");
    common::write(
        &d.join("sharegpt.jsonl"),
        &format!(
            "{}\n",
            json!({"conversations": [{"from": "system", "value": sys}, {"from": "human", "value": joined}, {"from": "gpt", "value": answer}]})
        ),
    );
    common::write(
        &d.join("messages.jsonl"),
        &format!(
            "{}\n",
            json!({"messages": [{"role": "system", "content": sys}, {"role": "user", "content": joined}, {"role": "assistant", "content": answer}]})
        ),
    );
    let mut results = Vec::new();
    for f in ["alpaca", "sharegpt", "messages"] {
        let out = format!("{f}.json");
        let o = common::loratune(
            d,
            &["eval", "--model", model.to_str().unwrap(), "--data", &format!("{f}.jsonl"), "--out", &out],
        );
        assert!(o.status.success(), "{f}: {}", common::stderr(&o));
        let r = read_json(&d.join(&out));
        assert_eq!(r["files"][0]["format"], f);
        results.push((
            r["loss"].as_f64().unwrap(),
            r["target_tokens"].as_u64().unwrap(),
            r["total_tokens"].as_u64().unwrap(),
        ));
    }
    assert!(results[0].1 > 0);
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn truncation_is_counted_and_limits_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = common::init_tiny(d, "tiny", &[]);
    common::write(&d.join("t.jsonl"), &format!("{}\n{}\n", json!({"text": "a".repeat(100)}), json!({"text": "short"})));
    let o = common::loratune(
        d,
        &["eval", "--model", model.to_str().unwrap(), "--data", "t.jsonl", "--max-seq-len", "32", "--out", "r.json"],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let r = read_json(&d.join("r.json"));
    assert_eq!(r["files"][0]["truncated"], 1);
    // The tiny tokenizer is byte-level without merges: 32 + 5 tokens, 31 + 4 targets.
    assert_eq!(r["total_tokens"], 37);
    assert_eq!(r["target_tokens"], 35);
}
