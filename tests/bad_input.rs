//! Bad input ends with one clear message naming the file (and line or tensor) and what is
//! wrong, a non-zero exit, and never a panic.

use crate::common;

use std::path::Path;

/// Runs `eval` and returns stderr, asserting failure without a panic.
fn eval_fails(cwd: &Path, model: &Path, data: &str, extra: &[&str]) -> String {
    let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--data", data, "--device", "cpu"];
    args.extend_from_slice(extra);
    let o = common::loratune(cwd, &args);
    let err = common::stderr(&o);
    assert!(!o.status.success(), "expected failure for {data}, got success: {}", common::stdout(&o));
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    err
}

fn tiny(dir: &Path) -> std::path::PathBuf {
    common::init_tiny(dir, "tiny", &[])
}

#[test]
fn bad_data_lines_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny(d);
    let cases: &[(&str, &[u8], &[&str])] = &[
        ("malformed.jsonl", b"{\"text\": \"fine\"}\n{\"text\": \n", &["malformed.jsonl:2", "invalid JSON"]),
        ("missing.jsonl", b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\"}\n", &["missing.jsonl:2", "\"output\"", "missing"]),
        ("wrongtype.jsonl", b"{\"text\": \"ok\"}\n{\"text\": 5}\n", &["wrongtype.jsonl:2", "\"text\"", "string"]),
        (
            "role.jsonl",
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"robot\", \"content\": \"beep\"}]}\n",
            &["role.jsonl:1", "robot"],
        ),
        ("empty.jsonl", b"{\"messages\": []}\n", &["empty.jsonl:1", "empty"]),
        ("utf8.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \"caf\xe9\"}\n", &["utf8.jsonl:2", "UTF-8"]),
    ];
    for (name, bytes, expect) in cases {
        std::fs::write(d.join(name), bytes).unwrap();
        let err = eval_fails(d, &model, name, &[]);
        for e in *expect {
            assert!(err.contains(e), "{name}: expected {e:?} in: {err}");
        }
    }
}

#[test]
fn skip_policy_reports_count_and_reasons_and_evaluates_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny(d);
    common::write(&d.join("mixed.jsonl"), "{\"text\": \"one\"}\n{\"text\": 5}\nnot json\n{\"text\": \"two\"}\n");
    let o = common::loratune(
        d,
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "mixed.jsonl",
            "--on-bad-record",
            "skip",
            "--out",
            "r.json",
        ],
    );
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped 2") && err.contains("line 2") && err.contains("line 3"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["files"][0]["records"], 2);
    assert_eq!(report["files"][0]["skipped"], 2);
    assert_eq!(report["examples"], 2);
    assert!(report["loss"].as_f64().unwrap() > 0.0);
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn bad_checkpoints_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write(&d.join("ok.jsonl"), "{\"text\": \"hello\"}\n");

    // Unsupported architecture.
    let m = common::init_tiny(d, "tiny", &[]);
    edit_json(&m.join("config.json"), |v| v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]));
    let err = eval_fails(d, &m, "ok.jsonl", &[]);
    assert!(err.contains("config.json") && err.contains("GPT2LMHeadModel") && err.contains("not supported"), "{err}");

    // Tensor shape disagreeing with config.json.
    std::fs::remove_dir_all(&m).unwrap();
    let m = common::init_tiny(d, "tiny", &[]);
    edit_json(&m.join("config.json"), |v| v["intermediate_size"] = 200.into());
    let err = eval_fails(d, &m, "ok.jsonl", &[]);
    assert!(
        err.contains("model.safetensors")
            && err.contains("mlp.gate_proj.weight")
            && err.contains("[176, 64]")
            && err.contains("[200, 64]"),
        "{err}"
    );

    // Truncated safetensors.
    std::fs::remove_dir_all(&m).unwrap();
    let m = common::init_tiny(d, "tiny", &[]);
    let st = m.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len / 2).unwrap();
    let err = eval_fails(d, &m, "ok.jsonl", &[]);
    assert!(err.contains("model.safetensors") && err.contains("truncated or corrupt"), "{err}");

    // Corrupt header.
    std::fs::write(&st, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    let err = eval_fails(d, &m, "ok.jsonl", &[]);
    assert!(err.contains("model.safetensors") && err.contains("truncated or corrupt"), "{err}");

    // Missing shard.
    let sharded = d.join("sharded");
    let o = common::loratune(
        d,
        &["init-model", "--preset", "tiny", "--out", sharded.to_str().unwrap(), "--max-shard-size", "64KiB"],
    );
    assert!(o.status.success());
    let victim = std::fs::read_dir(&sharded)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("model-00002"))
        .unwrap();
    std::fs::remove_file(sharded.join(&victim)).unwrap();
    let err = eval_fails(d, &sharded, "ok.jsonl", &[]);
    assert!(err.contains("model.safetensors.index.json") && err.contains(&victim) && err.contains("missing"), "{err}");
}

#[test]
fn gguf_of_another_architecture_is_refused() {
    use candle_core::quantized::gguf_file;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write(&d.join("ok.jsonl"), "{\"text\": \"hello\"}\n");
    let llama = d.join("tiny.gguf");
    common::init_tiny(d, "tiny", &["--gguf", llama.to_str().unwrap()]);
    // Rewrite the same file with general.architecture = gpt2.
    let mut f = std::fs::File::open(&llama).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut meta: Vec<(String, gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in meta.iter_mut() {
        if k == "general.architecture" {
            *v = gguf_file::Value::String("gpt2".into());
        }
    }
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> =
        names.iter().map(|n| (n.clone(), content.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap())).collect();
    let other = d.join("gpt2.gguf");
    let mut out = std::fs::File::create(&other).unwrap();
    let mr: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &mr, &tr).unwrap();
    drop(out);
    let err = eval_fails(d, &other, "ok.jsonl", &[]);
    assert!(err.contains("gpt2.gguf") && err.contains("\"gpt2\"") && err.contains("not supported"), "{err}");

    // Not a GGUF at all.
    common::write(&d.join("junk.gguf"), "this is not a gguf file");
    let err = eval_fails(d, &d.join("junk.gguf"), "ok.jsonl", &[]);
    assert!(err.contains("junk.gguf") && err.contains("GGUF"), "{err}");
}
