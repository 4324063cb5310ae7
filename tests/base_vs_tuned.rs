//! What a run reports beside the eval loss, end to end through the binary on a tiny model:
//! data mixing (each file's share), the regression set on base and tuned (checked against
//! `loratune eval` with and without the adapter, and a forgetting warning that must fire),
//! samples.jsonl (checked against `loratune generate` and the text metrics), and
//! `loratune compare` (the same answers and losses by its own path).

use crate::common;

use loratune::config::TrainConfig;
use loratune::eval::text_metrics;
use serde_json::Value;
use std::path::Path;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

use crate::common::chat_line as chat;

const WORDS: [&str; 12] =
    ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "inlet", "kayak", "lemon", "maple"];

/// 144 distinct two-part words (the lint refuses duplicated train/eval examples).
fn word(i: usize) -> String {
    format!("{}{}", WORDS[i % 12], WORDS[(i / 12) % 12])
}

/// Loss that `loratune eval` reports for `data` (with `adapter` when given).
fn eval_loss(d: &Path, model: &Path, adapter: Option<&Path>, data: &str) -> f64 {
    let out = d.join("eval-out.json");
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data,
        "--max-seq-len",
        "96",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    let o = common::loratune(d, &args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    read_json(&out)["loss"].as_f64().unwrap()
}

/// `loratune generate --data` outputs (greedy), in file order.
fn generate(d: &Path, model: &Path, adapter: Option<&Path>, data: &str, max_new: usize) -> Vec<String> {
    let out = d.join("gen.jsonl");
    let max_new = max_new.to_string();
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data,
        "--max-new-tokens",
        &max_new,
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    let o = common::loratune(d, &args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    read_jsonl(&out).iter().map(|r| r["output"].as_str().unwrap().trim().to_string()).collect()
}

/// A run config on `model`, training on `train` for `steps` steps into `out`.
fn config(model: &Path, train: &[&str], out: &str, steps: usize) -> TrainConfig {
    let mut c = common::run_config(model, train, out, &[r#"lora.target_modules=["q_proj", "v_proj"]"#]);
    c.lora.r = 4;
    c.lora.alpha = 8.0;
    c.data.max_seq_len = 96;
    c.train.max_steps = Some(steps);
    c.train.micro_batch_size = 4;
    c.train.lr = 1e-2;
    c.train.seed = 3;
    c.eval.every = 6;
    c.eval.batch_size = 4;
    c
}

#[test]
fn run_mixes_data_checks_regression_and_writes_scored_samples() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A base that already does something well: the tiny model taught to echo 60 words
    // (`Say w` -> `w`) and merged. Task: shout other words. General data: echo yet others.
    // Regression set: 10 of the echoes the base learned, which shouting unlearns: its loss
    // must rise.
    let tiny = common::init_tiny(d, "tiny", &[]);
    common::write(
        &d.join("echo.jsonl"),
        &(100..160).map(|i| chat(&format!("Say {}", word(i)), &word(i))).collect::<String>(),
    );
    let mut pre = config(&tiny, &["echo.jsonl"], "pre", 30);
    pre.data.eval_fraction = 0.0;
    pre.eval.generate_examples = 0;
    common::write_config(&d.join("pre.toml"), &pre);
    let o = common::loratune(d, &["train", "pre.toml"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o =
        common::loratune(d, &["merge", "--model", tiny.to_str().unwrap(), "--adapter", "pre", "--out", "echo-base"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let model = d.join("echo-base");

    common::write(&d.join("task.jsonl"), &(0..48).map(|i| common::shout_line(&word(i))).collect::<String>());
    common::write(
        &d.join("general.jsonl"),
        &(0..40).map(|i| chat(&format!("Say {}", word(i + 3)), &word(i + 3))).collect::<String>(),
    );
    common::write(&d.join("eval.jsonl"), &(48..54).map(|i| common::shout_line(&word(i))).collect::<String>());
    common::write(
        &d.join("regression.jsonl"),
        &(100..110).map(|i| chat(&format!("Say {}", word(i)), &word(i))).collect::<String>(),
    );
    let mut cfg = config(&model, &["task.jsonl", "general.jsonl"], "run", 12);
    cfg.data.weights = Some(vec![0.8, 0.2]);
    cfg.data.eval = Some("eval.jsonl".into());
    cfg.eval.regression = Some("regression.jsonl".into());
    cfg.eval.regression_threshold = 0.0;
    cfg.eval.generate_examples = 3;
    cfg.eval.max_new_tokens = 12;
    common::write_config(&d.join("run.toml"), &cfg);
    let o = common::loratune(d, &["train", "run.toml"]);
    let stdout = common::stdout(&o);
    assert!(o.status.success(), "{stdout}\n{}", common::stderr(&o));
    let run = d.join("run");

    // Mixing: 80/20 of 48 task and 40 general examples is all 48 task + 12 general.
    let manifest = read_json(&run.join("run.json"));
    let mixed: Vec<u64> = manifest["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["role"] == "train")
        .map(|f| f["mixed_in"].as_u64().unwrap())
        .collect();
    assert_eq!(mixed, vec![48, 12]);
    assert_eq!(manifest["train_examples"], 60);
    assert!(stdout.contains("mix     12 of 40 examples from general.jsonl"), "{stdout}");

    // Regression: the run's base and tuned losses are what `loratune eval` measures.
    let ev = read_json(&run.join("eval.json"));
    let r = &ev["regression"];
    let base = eval_loss(d, &model, None, "regression.jsonl");
    let tuned = eval_loss(d, &model, Some(&run), "regression.jsonl");
    let (rb, rt) = (r["base_loss"].as_f64().unwrap(), r["tuned_loss"].as_f64().unwrap());
    eprintln!("regression loss: run base {rb:.6} tuned {rt:.6}; eval CLI base {base:.6} tuned {tuned:.6}");
    assert!((rb - base).abs() < 1e-5 * base && (rt - tuned).abs() < 1e-5 * tuned);
    assert_eq!(r["examples"], 10);
    assert!((r["relative_change"].as_f64().unwrap() - (rt - rb) / rb).abs() < 1e-12);
    assert!(rt > rb, "learning to shout must cost some of the echoing the base learned");
    assert_eq!(r["forgetting"], true);
    assert!(stdout.contains("warning the regression loss rose"), "{stdout}");

    // Samples: the first 3 eval prompts, answered as `loratune generate` answers them.
    let samples = read_jsonl(&run.join("samples.jsonl"));
    assert_eq!(samples.len(), 3);
    common::write(
        &d.join("eval3.jsonl"),
        &std::fs::read_to_string(d.join("eval.jsonl"))
            .unwrap()
            .lines()
            .take(3)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    let base_out = generate(d, &model, None, "eval3.jsonl", 12);
    let tuned_out = generate(d, &model, Some(&run), "eval3.jsonl", 12);
    let mut tuned_em = 0.0;
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s["line"], i + 1);
        assert_eq!(s["prompt"], format!("Shout {}", word(48 + i)));
        let reference = format!("{}!", word(48 + i).to_uppercase());
        assert_eq!(s["reference"], reference.as_str());
        assert_eq!(s["base"], base_out[i].as_str(), "sample {i}");
        assert_eq!(s["tuned"], tuned_out[i].as_str(), "sample {i}");
        let want = text_metrics::score(&tuned_out[i], &reference);
        assert_eq!(s["scores"]["tuned"]["token_f1"].as_f64().unwrap(), want.token_f1);
        assert_eq!(s["scores"]["tuned"]["rouge_l"].as_f64().unwrap(), want.rouge_l);
        tuned_em += want.exact_match / 3.0;
    }
    assert_ne!(base_out, tuned_out, "12 steps at lr 1e-2 change the answers");
    let g = &ev["generation"];
    assert_eq!(g["examples"], 3);
    assert!((g["tuned"]["exact_match"].as_f64().unwrap() - tuned_em).abs() < 1e-12);
    assert_eq!(g["tuned"]["json_valid"], Value::Null, "references are not JSON");

    // compare: base vs the run's adapter on the same prompts, by its own path.
    let o = common::loratune(
        d,
        &[
            "compare",
            "base",
            "run",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "eval3.jsonl",
            "--max-new-tokens",
            "12",
            "--max-seq-len",
            "96",
            "--device",
            "cpu",
            "--out",
            "cmp",
        ],
    );
    let out = common::stdout(&o);
    assert!(o.status.success(), "{out}\n{}", common::stderr(&o));
    let rows = read_jsonl(&d.join("cmp/compare.jsonl"));
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            (row["a"].as_str().unwrap(), row["b"].as_str().unwrap()),
            (base_out[i].as_str(), tuned_out[i].as_str())
        );
    }
    let c = read_json(&d.join("cmp/compare.json"));
    let (la, lb) = (c["a"]["loss"].as_f64().unwrap(), c["b"]["loss"].as_f64().unwrap());
    let (ea, eb) = (eval_loss(d, &model, None, "eval3.jsonl"), eval_loss(d, &model, Some(&run), "eval3.jsonl"));
    assert!((la - ea).abs() < 1e-5 * ea && (lb - eb).abs() < 1e-5 * eb, "{la} {lb} vs {ea} {eb}");
    assert_eq!(c["prompts"], 3);
    let identical = (0..3).filter(|&i| base_out[i] == tuned_out[i]).count() as f64 / 3.0;
    assert!((c["identical"].as_f64().unwrap() - identical).abs() < 1e-12);
    let md = std::fs::read_to_string(d.join("cmp/compare.md")).unwrap();
    assert!(md.contains(&format!("| 1 | Shout {} | {}! |", word(48), word(48).to_uppercase())), "{md}");
    assert!(out.contains("loss on references"), "{out}");
}

#[test]
fn compare_explains_a_side_it_cannot_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write(&d.join("p.jsonl"), "{\"prompt\": \"hi\"}\n");
    let o = common::loratune(d, &["compare", "base", "other", "--data", "p.jsonl"]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("`base` needs --model"), "{}", common::stderr(&o));
    // An adapter folder without --model uses the base its config names; here it is absent.
    std::fs::create_dir(d.join("ad")).unwrap();
    common::write(&d.join("ad/adapter_config.json"), "{\"r\": 4}");
    let o = common::loratune(d, &["compare", "ad", "base", "--data", "p.jsonl"]);
    assert!(
        common::stderr(&o).contains("no base_model_name_or_path; give the base with --model"),
        "{}",
        common::stderr(&o)
    );
}
