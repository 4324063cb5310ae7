//! `loratune data lint` and `data dedup` on small files with every kind of finding planted
//! at a known line, and the lint that `loratune train` runs first.

use crate::common;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;

fn chat(turns: &[(&str, &str)]) -> String {
    let messages: Vec<Value> = turns.iter().map(|(r, c)| json!({"role": r, "content": c})).collect();
    json!({ "messages": messages }).to_string() + "\n"
}

/// A sentence of `n` distinct words that no other call with another `seed` shares.
fn words(seed: &str, n: usize) -> String {
    (0..n).map(|i| format!("{seed}{i}")).collect::<Vec<_>>().join(" ")
}

/// The lint's near-duplicate measure, written out again: case-folded alphanumeric words
/// of every turn with its role name in front, as a set of word bigrams.
fn bigrams(line: &str) -> HashSet<String> {
    let v: Value = serde_json::from_str(line).unwrap();
    let mut w: Vec<String> = Vec::new();
    for m in v["messages"].as_array().unwrap() {
        for text in [m["role"].as_str().unwrap(), m["content"].as_str().unwrap()] {
            w.extend(text.split(|c: char| !c.is_alphanumeric()).filter(|s| !s.is_empty()).map(str::to_lowercase));
        }
    }
    w.windows(2).map(|p| p.join(" ")).collect()
}

fn jaccard(a: &str, b: &str) -> f64 {
    let (a, b) = (bigrams(a), bigrams(b));
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// (file name, line) pairs of a list of findings or locations.
fn at(list: &Value) -> Vec<(String, u64)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                Path::new(x["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned(),
                x["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn t(line: u64) -> (String, u64) {
    ("train.jsonl".into(), line)
}

fn e(line: u64) -> (String, u64) {
    ("eval.jsonl".into(), line)
}

/// Writes train.jsonl and eval.jsonl with one of each finding; returns their lines.
fn planted(d: &Path) -> (Vec<String>, Vec<String>) {
    let long = words("story", 100);
    let mut changed: Vec<String> = long.split(' ').map(String::from).collect();
    for i in [5, 25, 45, 65, 85] {
        changed[i] = format!("changed{i}");
    }
    let near = changed.join(" ");
    let mut changed2: Vec<String> = long.split(' ').map(String::from).collect();
    for i in [10, 50, 90] {
        changed2[i] = format!("other{i}");
    }
    let near_eval = changed2.join(" ");
    let train = vec![
        /* 1 */
        chat(&[("system", "Be helpful."), ("user", &words("alpha", 12)), ("assistant", &words("beta", 12))]),
        /* 2 */
        chat(&[
            ("system", "be   HELPFUL."),
            ("user", &words("alpha", 12).to_uppercase()),
            ("assistant", &format!(" {} ", words("beta", 12))),
        ]),
        /* 3 */ "{\"messages\": [oops\n".to_string(),
        /* 4 */ chat(&[("user", &words("gamma", 10)), ("assistant", "  \n ")]),
        /* 5 */
        chat(&[
            ("user", &words("delta", 10)),
            ("assistant", &words("eps", 10)),
            ("system", "late system"),
            ("user", &words("zeta", 6)),
            ("assistant", &words("eta", 6)),
        ]),
        /* 6 */
        chat(&[("user", &words("theta", 8)), ("user", &words("iota", 8)), ("assistant", &words("kappa", 8))]),
        /* 7 */ chat(&[("user", "Tell me a story."), ("assistant", &long)]),
        /* 8 */ chat(&[("user", "Tell me a story."), ("assistant", &near)]),
        /* 9 */ chat(&[("user", "What is the capital of France?"), ("assistant", &words("paris", 15))]),
        /* 10 */ chat(&[("user", "what is the capital of  France?"), ("assistant", &words("lyon", 15))]),
        /* 11 */ "\n".to_string(),
        /* 12 */ chat(&[("user", &words("mu", 10)), ("assistant", &words("nu", 10))]),
    ];
    let eval = vec![
        /* 1 */ chat(&[("user", &words("mu", 10)), ("assistant", &words("nu", 10))]),
        /* 2 */ chat(&[("user", "Tell me a story."), ("assistant", &near_eval)]),
        /* 3 */ chat(&[("user", &words("xi", 10)), ("assistant", &words("omicron", 10))]),
    ];
    common::write(&d.join("train.jsonl"), &train.concat());
    common::write(&d.join("eval.jsonl"), &eval.concat());
    (train, eval)
}

#[test]
fn lint_reports_every_planted_finding_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (train, eval) = planted(d);
    let o = common::loratune(d, &["data", "lint", "train.jsonl", "--eval", "eval.jsonl", "--json", "report.json"]);
    let out = common::stdout(&o);
    assert_eq!(o.status.code(), Some(1), "errors exit 1\n{out}{}", common::stderr(&o));
    let r = read_json(&d.join("report.json"));

    assert_eq!(at(&r["bad_records"]), vec![t(3)]);
    assert!(r["bad_records"][0]["reason"].as_str().unwrap().starts_with("invalid JSON"), "{}", r["bad_records"]);
    assert_eq!(at(&r["empty_answers"]), vec![t(4)]);
    assert_eq!(r["empty_answers"][0]["turn"], 1);
    let order: Vec<(String, u64, u64, String, String)> = r["turn_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let (f, l) = at(&json!([x]))[0].clone();
            (
                f,
                l,
                x["turn"].as_u64().unwrap(),
                x["problem"].as_str().unwrap().to_string(),
                x["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("train.jsonl".into(), 5, 2, "system_not_first".into(), "error".into()),
            ("train.jsonl".into(), 6, 1, "consecutive_user".into(), "warning".into()),
        ]
    );

    // Exact duplicates: lines 1 and 2 differ only in case and spacing.
    let exact = r["exact_duplicates"].as_array().unwrap();
    assert_eq!(exact.len(), 1);
    assert_eq!(at(&exact[0]["members"]), vec![t(1), t(2)]);
    assert_eq!((exact[0]["role"].as_str(), exact[0]["severity"].as_str()), (Some("train"), Some("warning")));

    // Near duplicates: line 8 is line 7 with five of its 100 story words changed.
    let near = r["near_duplicates"].as_array().unwrap();
    assert_eq!(near.len(), 1, "{near:?}");
    assert_eq!(at(&near[0]["members"]), vec![t(7), t(8)]);
    let want = jaccard(&train[6], &train[7]);
    assert!((0.8..1.0).contains(&want), "{want}");
    assert_eq!(near[0]["pairs"][0]["jaccard"].as_f64().unwrap(), want);
    assert_eq!(near[0]["jaccard_min"].as_f64().unwrap(), want);

    // Conflicts: same question (up to case and spacing), different answers; the two story
    // lines are one too (same prompt, answers five words apart).
    let conflicts = r["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    let groups = |c: &Value| -> Vec<Vec<(String, u64)>> { c["answers"].as_array().unwrap().iter().map(at).collect() };
    assert_eq!(groups(&conflicts[0]), vec![vec![t(7)], vec![t(8)]]);
    assert_eq!(conflicts[0]["prompt_preview"], "tell me a story.");
    assert_eq!(groups(&conflicts[1]), vec![vec![t(9)], vec![t(10)]]);
    assert_eq!(conflicts[1]["prompt_preview"], "what is the capital of france?");

    // Leakage: eval line 1 is train line 12; eval line 2 is near the first story line (three
    // words changed) but not the second (eight words apart).
    let leaks = r["leakage"].as_array().unwrap();
    assert_eq!(leaks.len(), 2, "{leaks:?}");
    assert_eq!((at(&json!([leaks[0]["eval"]])), leaks[0]["kind"].as_str()), (vec![e(1)], Some("exact")));
    assert_eq!(at(&leaks[0]["train"]), vec![t(12)]);
    assert_eq!((at(&json!([leaks[1]["eval"]])), leaks[1]["kind"].as_str()), (vec![e(2)], Some("near")));
    let want: Vec<(String, u64)> = (1..=train.len() as u64)
        .filter(|&l| l != 3 && l != 11 && jaccard(&eval[1], &train[l as usize - 1]) >= 0.8)
        .map(t)
        .collect();
    assert_eq!(want, vec![t(7)]);
    assert!(jaccard(&eval[1], &train[7]) > 0.6, "line 8 is close, but below the threshold");
    assert_eq!(at(&leaks[1]["train"]), want);
    for m in leaks[1]["train"].as_array().unwrap() {
        let line = m["line"].as_u64().unwrap() as usize;
        assert_eq!(m["jaccard"].as_f64().unwrap(), jaccard(&eval[1], &train[line - 1]));
    }
    assert_eq!(r["truncated"], json!([]));

    let s = &r["summary"];
    let counts = [
        ("files", 2),
        ("examples", 13),
        ("bad_records", 1),
        ("file_errors", 0),
        ("empty_answers", 1),
        ("turn_order", 2),
        ("exact_duplicate_clusters", 1),
        ("exact_duplicate_lines", 1),
        ("near_duplicate_clusters", 1),
        ("near_duplicate_lines", 1),
        ("conflicts", 2),
        ("leakage_exact", 1),
        ("leakage_near", 1),
        // bad record, empty answer, system not first, exact leakage
        ("errors", 4),
        // consecutive user turns, exact and near duplicates, two conflicts, near leakage
        ("warnings", 6),
    ];
    for (k, v) in counts {
        assert_eq!(s[k], v, "summary.{k}: {s}");
    }
    assert_eq!(s["truncated"], Value::Null, "no tokenizer, no truncation check");
    let files = r["files"].as_array().unwrap();
    assert_eq!(
        (files[0]["examples"].as_u64(), files[0]["lines"].as_u64(), files[0]["format"].as_str()),
        (Some(10), Some(12), Some("messages"))
    );
    assert_eq!(files[0]["stats"]["turns"]["max"], 5);
    assert_eq!(files[0]["stats"]["turns"]["min"], 2);

    // The human summary names the file and line of each kind.
    for needle in [
        "4 errors, 6 warnings",
        "train.jsonl:3: invalid JSON",
        "train.jsonl:4: turn 1 is empty",
        "train.jsonl:5: turn 2",
        "train.jsonl lines 1, 2",
        "train.jsonl lines 7, 8",
        "eval.jsonl:1 is an exact duplicate of",
        "train.jsonl:12",
        "train.jsonl line 9 | train.jsonl line 10",
    ] {
        assert!(out.contains(needle), "stdout lacks {needle:?}:\n{out}");
    }

    // --strict: every warning is an error.
    let o = common::loratune(
        d,
        &["data", "lint", "train.jsonl", "--eval", "eval.jsonl", "--strict", "--json", "strict.json"],
    );
    assert_eq!(o.status.code(), Some(1));
    let s = read_json(&d.join("strict.json"))["summary"].clone();
    assert_eq!((s["errors"].as_u64(), s["warnings"].as_u64()), (Some(10), Some(0)));
    // Bad records as warnings, as training with on_bad_record = "skip" treats them.
    let o = common::loratune(d, &["data", "lint", "train.jsonl", "--on-bad-record", "skip", "--json", "skip.json"]);
    assert_eq!(o.status.code(), Some(1), "the empty answer is still an error");
    let r = read_json(&d.join("skip.json"));
    assert_eq!(r["bad_records"][0]["severity"], "warning");
    assert_eq!(r["summary"]["errors"], 2, "empty answer and system turn; no eval, no leakage");
}

#[test]
fn exit_codes_clean_data_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clean: String = (0..5)
        .map(|i| chat(&[("user", &words(&format!("q{i}x"), 8)), ("assistant", &words(&format!("a{i}x"), 8))]))
        .collect();
    common::write(&d.join("clean.jsonl"), &clean);
    let o = common::loratune(d, &["data", "lint", "clean.jsonl", "--json", "r.json"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", common::stdout(&o), common::stderr(&o));
    assert_eq!(read_json(&d.join("r.json"))["summary"]["errors"], 0);
    assert!(common::stdout(&o).contains("5 examples in 1 file: 0 errors, 0 warnings"), "{}", common::stdout(&o));

    // Warnings alone do not fail.
    common::write(&d.join("dup.jsonl"), &format!("{clean}{}", clean.lines().next().unwrap()));
    let o = common::loratune(d, &["data", "lint", "dup.jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stdout(&o));
    assert!(common::stdout(&o).contains("0 errors, 1 warning"), "{}", common::stdout(&o));

    let o = common::loratune(d, &["data", "lint", "missing.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(common::stderr(&o).contains("cannot open missing.jsonl"), "{}", common::stderr(&o));
    let o = common::loratune(d, &["data", "lint", "clean.jsonl", "--eval", "nope.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    let o = common::loratune(d, &["data", "lint", "clean.jsonl", "--threshold", "1.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(common::stderr(&o).contains("--threshold 1.5"), "{}", common::stderr(&o));
    let o = common::loratune(d, &["data", "lint"]);
    assert_eq!(o.status.code(), Some(2), "clap's own usage error");
    // A file with no usable record is a data error (1), not a usage error.
    common::write(&d.join("bad.jsonl"), "{\"id\": 1}\n");
    let o = common::loratune(d, &["data", "lint", "bad.jsonl", "--json", "bad.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        at(&json!([{"file": "bad.jsonl", "line": read_json(&d.join("bad.json"))["file_errors"][0]["line"]}])),
        vec![("bad.jsonl".into(), 1)]
    );
}

#[test]
fn dedup_keeps_the_first_of_each_cluster_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = words("tale", 60);
    let mut w: Vec<String> = long.split(' ').map(String::from).collect();
    w[30] = "twist".into();
    let lines = [
        chat(&[("user", "Tell a tale."), ("assistant", &long)]),
        chat(&[("user", &words("p", 9)), ("assistant", &words("r", 9))]).replace('\n', "\r\n"),
        chat(&[("user", &words("p", 9).to_uppercase()), ("assistant", &words("r", 9))]),
        "\n".to_string(),
        chat(&[("user", "Tell a tale!"), ("assistant", &w.join(" "))]),
        chat(&[("user", &words("s", 9)), ("assistant", &words("u", 9))]).trim_end().to_string(),
    ];
    common::write(&d.join("in.jsonl"), &lines.concat());
    let o = common::loratune(d, &["data", "dedup", "in.jsonl", "out.jsonl"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        common::stdout(&o)
            .contains("removed 2 of 6 lines: 1 exact duplicate (lines 3), 1 near duplicate (J >= 0.8) (lines 5)"),
        "{}",
        common::stdout(&o)
    );
    let want: String = [0, 1, 3, 5].iter().map(|&i| lines[i].as_str()).collect();
    assert_eq!(std::fs::read(d.join("out.jsonl")).unwrap(), want.as_bytes());
    // The result lints without duplicates.
    let o = common::loratune(d, &["data", "lint", "out.jsonl", "--json", "r.json"]);
    let s = read_json(&d.join("r.json"))["summary"].clone();
    assert_eq!(
        (s["exact_duplicate_clusters"].as_u64(), s["near_duplicate_clusters"].as_u64()),
        (Some(0), Some(0)),
        "{}",
        common::stdout(&o)
    );

    let o = common::loratune(d, &["data", "dedup", "in.jsonl", "exact.jsonl", "--exact-only"]);
    assert!(common::stdout(&o).contains("removed 1 of 6 lines: 1 exact duplicate (lines 3)"), "{}", common::stdout(&o));
    let want: String = [0, 1, 3, 4, 5].iter().map(|&i| lines[i].as_str()).collect();
    assert_eq!(std::fs::read_to_string(d.join("exact.jsonl")).unwrap(), want);
    let o = common::loratune(d, &["data", "dedup", "nope.jsonl", "x.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!d.join("x.jsonl").exists());
}

#[test]
fn model_token_counts_match_the_tokenizer() {
    let gguf = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lens = [3usize, 20, 45, 90, 150];
    let mut lines: Vec<String> =
        lens.iter().map(|&n| chat(&[("user", "Please repeat after me."), ("assistant", &words("echo", n))])).collect();
    // A prompt longer than the limit on its own: no target token survives truncation.
    lines.push(chat(&[("user", &words("long", 120)), ("assistant", "ok")]));
    common::write(&d.join("t.jsonl"), &lines.concat());
    let max = 200;
    let o = common::loratune(
        d,
        &[
            "data",
            "lint",
            "t.jsonl",
            "--model",
            gguf.to_str().unwrap(),
            "--max-seq-len",
            &max.to_string(),
            "--json",
            "r.json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "truncation is a warning\n{}{}", common::stdout(&o), common::stderr(&o));
    let r = read_json(&d.join("r.json"));

    // Count independently: the chat template's rendering, tokenized without added specials.
    let tok = loratune::model::checkpoint::load_tokenizer(
        &loratune::model::ModelSource::parse(gguf.to_str().unwrap()).unwrap(),
        &loratune::model::hub::HubOptions::from_env(),
    )
    .unwrap();
    let counts: Vec<usize> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let msgs: Vec<loratune::chat::Message> = serde_json::from_value(v["messages"].clone()).unwrap();
            tok.encode(&tok.render_chat(&msgs, false).unwrap(), false).unwrap().len()
        })
        .collect();
    let want: Vec<(u64, u64)> =
        counts.iter().enumerate().filter(|(_, &c)| c > max).map(|(i, &c)| (i as u64 + 1, c as u64)).collect();
    assert!(want.len() >= 2 && want.len() < lines.len(), "the lengths should straddle {max}: {counts:?}");
    let got: Vec<(u64, u64)> = r["truncated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["line"].as_u64().unwrap(), x["tokens"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, want);
    let last = r["truncated"].as_array().unwrap().last().unwrap();
    assert_eq!((last["line"].as_u64(), last["targets_kept"].as_u64()), (Some(6), Some(0)));
    assert_eq!(r["summary"]["truncated"], want.len());
    assert_eq!(r["summary"]["without_targets"], 1);
    let mut sorted = counts.clone();
    sorted.sort();
    let stats = &r["files"][0]["stats"]["tokens"];
    assert_eq!((stats["min"].as_u64(), stats["max"].as_u64()), (Some(sorted[0] as u64), Some(sorted[5] as u64)));
    assert!((stats["mean"].as_f64().unwrap() - counts.iter().sum::<usize>() as f64 / 6.0).abs() < 1e-9);
}

/// Writes `data` as train.jsonl and a one-step run config on it (no eval set) as run.toml,
/// with `overrides` (`SECTION.KEY=VALUE`) applied.
fn train_config(d: &Path, model: &Path, data: &str, overrides: &[&str]) -> std::path::PathBuf {
    common::write(&d.join("train.jsonl"), data);
    let mut c = common::run_config(model, &["train.jsonl"], "run", overrides);
    c.lora.r = 2;
    c.lora.alpha = 4.0;
    c.data.eval_fraction = 0.0;
    c.data.max_seq_len = 64;
    c.train.max_steps = Some(1);
    c.train.micro_batch_size = 2;
    let cfg = d.join("run.toml");
    common::write_config(&cfg, &c);
    cfg
}

#[test]
fn train_runs_the_lint_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = common::init_tiny(d, "tiny", &[]);
    let good: String =
        (0..6).map(|i| chat(&[("user", &format!("say {i}")), ("assistant", &format!("{i} {i}"))])).collect();
    let with_empty = format!("{good}{}", chat(&[("user", "say nothing"), ("assistant", "")]));

    // An empty answer is a lint error: the run stops before loading the model.
    train_config(d, &model, &with_empty, &[]);
    let o = common::loratune(d, &["train", "run.toml"]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(err.contains("1 lint error") && err.contains("run/lint.json") && err.contains("lint = \"warn\""), "{err}");
    assert!(common::stdout(&o).contains("train.jsonl:7: turn 1 is empty"), "{}", common::stdout(&o));
    let report = read_json(&d.join("run/lint.json"));
    assert_eq!(report["summary"]["empty_answers"], 1);
    assert!(!d.join("run/adapter_model.safetensors").exists() && !d.join("run/run.json").exists());

    // With lint = "warn" the same data trains; the folder of the refused run is reused, and
    // the manifest carries the lint's summary.
    let o = common::loratune(d, &["train", "run.toml", "--set", "data.lint=warn"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let manifest = read_json(&d.join("run/run.json"));
    let report = read_json(&d.join("run/lint.json"));
    assert_eq!(manifest["lint"], report["summary"]);
    assert_eq!((manifest["lint"]["errors"].as_u64(), manifest["lint"]["empty_answers"].as_u64()), (Some(1), Some(1)));
    assert_eq!(manifest["lint"]["truncated"], 0, "the run's tokenizer counted tokens");

    // Bad records under on_bad_record = "skip" are warnings: the default lint lets it run.
    std::fs::remove_dir_all(d.join("run")).unwrap();
    train_config(d, &model, &format!("{good}not json\n"), &["data.on_bad_record=skip"]);
    let o = common::loratune(d, &["train", "run.toml"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let manifest = read_json(&d.join("run/run.json"));
    assert_eq!(
        (
            manifest["lint"]["bad_records"].as_u64(),
            manifest["lint"]["errors"].as_u64(),
            manifest["lint"]["warnings"].as_u64()
        ),
        (Some(1), Some(0), Some(1))
    );
    // ... and lint = "off" skips it.
    std::fs::remove_dir_all(d.join("run")).unwrap();
    train_config(d, &model, &with_empty, &["data.lint=off"]);
    let o = common::loratune(d, &["train", "run.toml"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(read_json(&d.join("run/run.json"))["lint"], Value::Null);
    assert!(!d.join("run/lint.json").exists());
}

#[test]
fn shipped_configs_and_example_data_pass_the_default_lint() {
    let gguf = common::smollm2_gguf();
    let root = common::repo_root();
    // As configs/smollm2-135m-cpu.toml trains: its files, tokenizer and max_seq_len.
    let o = common::loratune(
        &root,
        &[
            "data",
            "lint",
            "examples/data/calendar-train.jsonl",
            "--eval",
            "examples/data/calendar-eval.jsonl",
            "--model",
            gguf.to_str().unwrap(),
            "--max-seq-len",
            "256",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", common::stdout(&o), common::stderr(&o));
    let o = common::loratune(&root, &["data", "lint", "examples/data/calendar-sample.jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stdout(&o));
}
