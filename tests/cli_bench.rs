//! `loratune bench --preset`: random weights of a preset's shape and random token ids, no
//! files; the JSON names the job and the first step's loss is the base model's (B = 0),
//! about ln(vocab) for an untrained model on random ids.

use crate::common;

#[test]
fn preset_bench_needs_no_files_and_reports_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = common::loratune(
        d,
        &[
            "bench",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--json",
            "b.json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("tokens/s"), "{}", common::stdout(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("b.json")).unwrap()).unwrap();
    let ours = &r["ours"];
    assert_eq!(ours["model"], "preset tiny (random weights)");
    assert_eq!(ours["stream_tokens"], 32 * 2 * 3);
    assert_eq!(ours["step_s"].as_array().unwrap().len(), 2);
    assert!(ours["tokens_per_s"].as_f64().unwrap() > 0.0);
    let first = ours["first_loss"].as_f64().unwrap();
    let ln_vocab = (320f64).ln();
    assert!((first - ln_vocab).abs() < 1.0, "step-0 loss {first} vs ln(320) = {ln_vocab:.3}");

    assert!(ours["profile"].is_null(), "no profile unless asked");

    // --profile: every operation of the step appears, with its calls per step (tiny: 2 layers);
    // --seq and --batch are the spellings of --seq-len and --batch-size.
    let o = common::loratune(
        d,
        &[
            "bench",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--seq",
            "32",
            "--batch",
            "2",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--profile",
            "--json",
            "p.json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("attention fwd"), "{}", common::stdout(&o));
    assert!(common::stdout(&o).contains("over 2 timed steps (batch 2 x 32 tokens)"), "{}", common::stdout(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("p.json")).unwrap()).unwrap();
    let regions = r["ours"]["profile"].as_array().unwrap();
    let calls = |name: &str| {
        regions.iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("no region {name}: {regions:?}"))["calls"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(calls("attention fwd"), 2);
    assert_eq!(calls("attention bwd"), 2);
    assert_eq!(calls("q_proj fwd"), 2);
    assert_eq!(calls("rms_norm fwd"), 2);
    assert_eq!(calls("residual add + rms_norm fwd"), 2);
    assert_eq!(calls("final norm + lm head + loss"), 1);
    assert_eq!(calls("optimizer (AdamW)"), 1);
    let secs: Vec<f64> = regions.iter().map(|x| x["seconds"].as_f64().unwrap()).collect();
    assert!(secs.windows(2).all(|w| w[0] >= w[1]), "largest first: {secs:?}");

    let o = common::loratune(d, &["bench", "--preset", "no-such-model", "--device", "cpu"]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("unknown preset no-such-model"), "{}", common::stderr(&o));
}
