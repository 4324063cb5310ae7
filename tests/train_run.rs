//! `loratune train` end to end on a tiny generated model: the run folder's files (PEFT
//! adapter, metrics, eval report, manifest, checkpoints), exact resume after Ctrl-C and
//! after SIGKILL, divergence handling and early stopping. Everything goes through the
//! real binary in a temporary folder.

use crate::common;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// metrics.jsonl as one JSON value per line.
fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A tiny model (byte tokens) and a run config training it to upper-case a word: 48
/// training conversations, 8 held out. Returns the config path.
fn setup(d: &Path, steps: usize) -> PathBuf {
    let model = common::init_tiny(d, "tiny", &[]);
    let words = [
        "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "inlet", "jolly", "kayak", "lemon",
        "maple", "north", "olive", "pearl",
    ];
    let line = |i: usize| {
        let w = format!("{}{}", words[i % 16], words[(i * 7 + 3) % 16]);
        common::shout_line(&w)
    };
    common::write(&d.join("train.jsonl"), &(0..48).map(line).collect::<String>());
    common::write(&d.join("eval.jsonl"), &(48..56).map(line).collect::<String>());
    // The 16-word vocabulary repeats every 16 lines: train holds each conversation three times
    // and eval repeats train's first eight, which the data lint rightly calls duplicates and
    // leakage. These tests are about the run's mechanics, so the lint only warns.
    let mut c = common::run_config(
        &model,
        &["train.jsonl"],
        "run",
        &[r#"lora.target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]"#, "data.lint=warn"],
    );
    c.lora.r = 4;
    c.lora.alpha = 8.0;
    c.lora.dropout = 0.1;
    c.data.eval = Some("eval.jsonl".into());
    c.data.max_seq_len = 96;
    c.train.max_steps = Some(steps);
    c.train.micro_batch_size = 4;
    c.train.grad_accum = 2;
    c.train.lr = 5e-3;
    c.train.warmup_steps = 2;
    c.train.seed = 7;
    c.eval.every = 4;
    c.eval.batch_size = 4;
    c.output.checkpoint_every = 4;
    c.output.keep_checkpoints = 50;
    let cfg = d.join("run.toml");
    common::write_config(&cfg, &c);
    cfg
}

fn train(d: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    common::loratune(d, &all)
}

#[test]
fn run_writes_a_peft_adapter_metrics_eval_report_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d, 12);
    let o = train(d, &["run.toml"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let run = d.join("run");

    // The adapter in PEFT's layout, with PEFT's names and shapes.
    let cfg = read_json(&run.join("adapter_config.json"));
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["lora_dropout"], 0.1);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["use_rslora"], false);
    let mut targets: Vec<&str> =
        cfg["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    targets.sort();
    assert_eq!(targets, ["gate_proj", "k_proj", "o_proj", "q_proj", "v_proj"]);
    let bytes = std::fs::read(run.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // tiny: 2 layers, hidden 64, 4 heads of 16, 2 kv heads, MLP 176 wide.
    let shapes = [
        ("self_attn.q_proj", 64, 64),
        ("self_attn.k_proj", 64, 32),
        ("self_attn.v_proj", 64, 32),
        ("self_attn.o_proj", 64, 64),
        ("mlp.gate_proj", 64, 176),
    ];
    assert_eq!(st.names().len(), 2 * shapes.len() * 2);
    for l in 0..2 {
        for (m, inp, out) in shapes {
            let a = st.tensor(&format!("base_model.model.model.layers.{l}.{m}.lora_A.weight")).unwrap();
            let b = st.tensor(&format!("base_model.model.model.layers.{l}.{m}.lora_B.weight")).unwrap();
            assert_eq!(a.shape(), [4, inp], "{m} A");
            assert_eq!(b.shape(), [out, 4], "{m} B");
            assert_eq!(a.dtype(), safetensors::Dtype::F32);
            // B starts at zero; after 12 steps it has moved.
            assert!(
                b.data().chunks(4).any(|c| f32::from_le_bytes(c.try_into().unwrap()) != 0.0),
                "{m} B never trained"
            );
        }
    }

    // metrics.jsonl: step 0 is the base eval, then one line per step.
    let metrics = read_jsonl(&run.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 13);
    assert_eq!(metrics[0]["step"], 0);
    assert!(metrics[0]["eval_loss"].as_f64().is_some());
    for (i, m) in metrics[1..].iter().enumerate() {
        assert_eq!(m["step"], i + 1);
        for k in ["loss", "lr", "grad_norm", "tokens_per_s", "tokens"] {
            assert!(m[k].as_f64().is_some_and(f64::is_finite), "step {}: {k} in {m}", i + 1);
        }
        assert_eq!(m["eval_loss"].is_number(), (i + 1) % 4 == 0, "eval at steps 4, 8, 12: {m}");
    }
    // Warmup over 2 steps (half the peak, then the peak), then cosine down to 0 at step 12.
    let lr = |s: usize| metrics[s]["lr"].as_f64().unwrap();
    assert!(
        (lr(1) - 2.5e-3).abs() < 1e-12 && (lr(2) - 5e-3).abs() < 1e-12 && (lr(3) - 5e-3).abs() < 1e-12,
        "{} {} {}",
        lr(1),
        lr(2),
        lr(3)
    );
    assert!(lr(12).abs() < 1e-12 && lr(8) < lr(4) && lr(4) < lr(3), "{} {} {}", lr(4), lr(8), lr(12));

    // eval.json: base (step 0), best, final (step 12), history; training helped.
    let ev = read_json(&run.join("eval.json"));
    let base = ev["base"]["loss"].as_f64().unwrap();
    let fin = ev["final"]["loss"].as_f64().unwrap();
    assert_eq!(ev["base"]["step"], 0);
    assert_eq!(ev["final"]["step"], 12);
    assert!(fin < base, "eval loss {base} -> {fin}");
    assert_eq!(ev["history"].as_array().unwrap().len(), 3);
    assert_eq!(ev["eval_examples"], 8);
    let best = ev["best"]["loss"].as_f64().unwrap();
    assert!(ev["history"].as_array().unwrap().iter().all(|h| h["loss"].as_f64().unwrap() >= best));
    assert_eq!(metrics[12]["eval_loss"].as_f64().unwrap(), fin);

    // The manifest identifies model, data and code.
    let m = read_json(&run.join("run.json"));
    assert_eq!(m["status"], "completed");
    assert_eq!(m["steps_completed"], 12);
    assert_eq!(m["loratune_version"], env!("CARGO_PKG_VERSION"));
    assert!(m["git_commit"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(m["seed"], 7);
    assert_eq!(m["device"], "cpu");
    assert_eq!(m["config"]["train"]["lr"], 5e-3);
    assert_eq!(m["config"]["train"]["adam_beta2"], 0.999, "defaults are resolved into the manifest");
    let files = m["base_model_files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["sha256"].as_str().unwrap(), sha256_hex(Path::new(files[0]["path"].as_str().unwrap())));
    let data = m["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["sha256"].as_str().unwrap(), sha256_hex(&d.join("train.jsonl")));
    assert_eq!(data[1]["sha256"].as_str().unwrap(), sha256_hex(&d.join("eval.jsonl")));
    assert_eq!(m["train_examples"], 48);
    assert_eq!(m["eval_examples"], 8);
    assert!(m["wall_seconds"].as_f64().unwrap() > 0.0);
    assert!(m["ended_at"].is_string());

    // Checkpoints at 4, 8, 12, each with adapter, optimizer moments and state.
    for s in [4, 8, 12] {
        let c = run.join(format!("checkpoints/step-{s}"));
        for f in ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json"] {
            assert!(c.join(f).is_file(), "{}/{f}", c.display());
        }
        assert_eq!(read_json(&c.join("trainer_state.json"))["step"], s);
    }
    assert_eq!(std::fs::read(run.join("checkpoints/step-12/adapter_model.safetensors")).unwrap(), bytes);
    assert!(run.join("best/adapter_model.safetensors").is_file());

    // The written adapter, loaded again by `eval --adapter`, gives the run's final loss.
    let o = common::loratune(
        d,
        &[
            "eval",
            "--model",
            "tiny",
            "--adapter",
            "run",
            "--data",
            "eval.jsonl",
            "--max-seq-len",
            "96",
            "--out",
            "e.json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let reloaded = read_json(&d.join("e.json"))["loss"].as_f64().unwrap();
    assert!((reloaded - fin).abs() < 1e-6, "eval --adapter {reloaded} vs run's final {fin}");

    // A second run into the same folder is refused; nothing is lost.
    let o = train(d, &["run.toml"]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("--resume"), "{}", common::stderr(&o));
    assert_eq!(std::fs::read(run.join("adapter_model.safetensors")).unwrap(), bytes);
}

/// The final adapter, the last checkpoint's optimizer moments and the metrics of an
/// uninterrupted run of `steps` steps.
fn reference_run(d: &Path, steps: usize) -> (Vec<u8>, Vec<u8>, Vec<Value>) {
    setup(d, steps);
    let o = train(d, &["run.toml"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let run = d.join("run");
    let metrics = read_jsonl(&run.join("metrics.jsonl"));
    (
        std::fs::read(run.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(run.join(format!("checkpoints/step-{steps}/optimizer.safetensors"))).unwrap(),
        metrics,
    )
}

/// Losses of the training lines, which must agree bitwise between the two runs.
fn train_losses(m: &[Value]) -> Vec<(u64, f64)> {
    m.iter()
        .filter(|l| l["loss"].is_number())
        .map(|l| (l["step"].as_u64().unwrap(), l["loss"].as_f64().unwrap()))
        .collect()
}

fn wait_for(path: &Path, child: &mut std::process::Child) {
    let start = Instant::now();
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {} appeared", path.display());
        assert!(start.elapsed() < Duration::from_secs(120), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn_train(d: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_loratune"))
        .arg("train")
        .args(args)
        .current_dir(d)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn ctrl_c_checkpoints_and_resume_reaches_the_uninterrupted_adapter_bitwise() {
    let ref_dir = tempfile::tempdir().unwrap();
    let (want_adapter, want_opt, want_metrics) = reference_run(ref_dir.path(), 12);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Same run, checkpointing only at the end, so the Ctrl-C checkpoint is the only one.
    setup(d, 12);
    let mut child = spawn_train(d, &["run.toml", "--set", "output.checkpoint_every=0"]);
    // Interrupt as soon as the run has written its manifest (the handler is installed
    // before that): the run finishes the step it is in, checkpoints and stops.
    let metrics = d.join("run/metrics.jsonl");
    wait_for(&d.join("run/run.json"), &mut child);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let m = read_json(&d.join("run/run.json"));
    let stopped_at = m["steps_completed"].as_u64().unwrap();
    assert!((1..12).contains(&stopped_at), "stopped at {stopped_at}");
    assert!(d.join(format!("run/checkpoints/step-{stopped_at}/trainer_state.json")).is_file());
    assert!(!d.join("run/adapter_model.safetensors").exists(), "an interrupted run writes no final adapter");

    let o = train(d, &["--resume", "run"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains(&format!("(step {stopped_at} of 12)")), "{}", common::stdout(&o));
    assert!(
        std::fs::read(d.join("run/adapter_model.safetensors")).unwrap() == want_adapter,
        "resumed adapter differs from the uninterrupted run's"
    );
    assert!(
        std::fs::read(d.join("run/checkpoints/step-12/optimizer.safetensors")).unwrap() == want_opt,
        "optimizer moments differ"
    );
    let got = read_jsonl(&metrics);
    assert_eq!(
        train_losses(&got),
        train_losses(&want_metrics),
        "metrics.jsonl after resume: one line per step, same losses"
    );
    let m = read_json(&d.join("run/run.json"));
    assert_eq!(m["status"], "completed");
    assert_eq!(m["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(m["sessions"][1]["from_step"].as_u64().unwrap(), stopped_at);
}

#[test]
fn sigkilled_run_resumes_from_its_last_checkpoint_to_the_same_adapter() {
    let ref_dir = tempfile::tempdir().unwrap();
    let (want_adapter, _, want_metrics) = reference_run(ref_dir.path(), 40);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d, 40);
    let mut child = spawn_train(d, &["run.toml"]);
    // Kill without warning once the step-4 checkpoint exists: whatever the process was
    // doing then (training a later step, writing the next checkpoint into its temporary
    // folder, appending metrics), the resume must reach the same adapter.
    wait_for(&d.join("run/checkpoints/step-4/trainer_state.json"), &mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let m = read_json(&d.join("run/run.json"));
    assert_eq!(m["status"], "running", "the killed process never got to record an end");

    let o = train(d, &["--resume", "run"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        std::fs::read(d.join("run/adapter_model.safetensors")).unwrap() == want_adapter,
        "resumed adapter differs from the uninterrupted run's"
    );
    let got = read_jsonl(&d.join("run/metrics.jsonl"));
    assert_eq!(train_losses(&got), train_losses(&want_metrics));
    assert!(
        !d.join("run/checkpoints").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp")),
        "stale temporary checkpoint left behind"
    );
}

#[test]
fn a_half_written_checkpoint_is_ignored_on_resume() {
    let ref_dir = tempfile::tempdir().unwrap();
    let (want_adapter, _, _) = reference_run(ref_dir.path(), 12);

    // Take the reference run's folder as it was after step 8's checkpoint, then fake a
    // crash in the middle of writing step 12's: a temporary folder, and a step-12 folder
    // without its state file (as a copy interrupted by a full disk would leave).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d, 12);
    let run = d.join("run");
    let src = ref_dir.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    for f in ["config.toml", "run.json"] {
        std::fs::copy(src.join(f), run.join(f)).unwrap();
    }
    for s in [4, 8] {
        let to = run.join(format!("checkpoints/step-{s}"));
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(src.join(format!("checkpoints/step-{s}"))).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(run.join("checkpoints/.tmp-step-12")).unwrap();
    common::write(&run.join("checkpoints/.tmp-step-12/adapter_model.safetensors"), "truncated");
    std::fs::create_dir_all(run.join("checkpoints/step-12")).unwrap();
    common::write(&run.join("checkpoints/step-12/adapter_model.safetensors"), "truncated");

    let o = train(d, &["--resume", "run"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("step-8"), "resumes from step 8: {}", common::stdout(&o));
    assert!(std::fs::read(run.join("adapter_model.safetensors")).unwrap() == want_adapter);
    assert!(run.join("checkpoints/step-12/trainer_state.json").is_file());
}

#[test]
fn diverging_run_stops_with_a_clear_error_and_keeps_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An absurd learning rate without clipping: after the first update A and B hold
    // values near 1e30, and the next forward overflows f32.
    setup(d, 12);
    let o = train(
        d,
        &[
            "run.toml",
            "--set",
            "train.lr=1e30",
            "--set",
            "train.warmup_steps=0",
            "--set",
            "train.max_grad_norm=0",
            "--set",
            "output.checkpoint_every=1",
        ],
    );
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(
        err.contains("step 2: the loss is") && err.contains("diverged") && err.contains("checkpoints/step-1"),
        "{err}"
    );
    let m = read_json(&d.join("run/run.json"));
    assert_eq!(m["status"], "failed");
    assert!(m["error"].as_str().unwrap().contains("diverged"));
    assert_eq!(m["steps_completed"], 1);
    let state = read_json(&d.join("run/checkpoints/step-1/trainer_state.json"));
    assert_eq!(state["step"], 1);
    // The saved step-1 adapter is finite (the bad update was never applied).
    let bytes = std::fs::read(d.join("run/checkpoints/step-1/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in st.tensors() {
        assert!(t.data().chunks(4).all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite()), "{name}");
    }
}

#[test]
fn early_stopping_ends_the_run_after_patience_evals_without_improvement() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // min_delta larger than any possible gain: every eval after the base one fails to
    // improve, so with patience 2 the run stops at the second eval (step 8 of 40).
    setup(d, 40);
    let o = train(
        d,
        &["run.toml", "--set", "eval.early_stopping_patience=2", "--set", "eval.early_stopping_min_delta=100.0"],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let m = read_json(&d.join("run/run.json"));
    assert_eq!(m["status"], "early_stopped");
    assert_eq!(m["steps_completed"], 8);
    let ev = read_json(&d.join("run/eval.json"));
    assert_eq!(ev["best"]["step"], 0, "the base model stays the best");
    assert_eq!(ev["final"]["step"], 8);
    assert!(d.join("run/adapter_model.safetensors").is_file());
    assert!(d.join("run/checkpoints/step-8/trainer_state.json").is_file());
}

/// `lora.init_from`: a second run starts from the first run's saved adapter, so its base eval
/// (step 0) equals the first run's final eval, and its manifest hashes the adapter it started
/// from; an adapter of another rank than the [lora] section says is refused, naming both.
#[test]
fn a_run_continues_from_a_saved_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d, 4);
    let o = train(d, &["run.toml"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let first_final = read_json(&d.join("run/eval.json"))["final"]["loss"].as_f64().unwrap();

    let o = train(
        d,
        &["run.toml", "--set", "output.dir=run2", "--set", "lora.init_from=run", "--set", "train.max_steps=2"],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("adapter starts from run (r=4"), "{}", common::stdout(&o));
    let m = read_jsonl(&d.join("run2/metrics.jsonl"));
    let start = m[0]["eval_loss"].as_f64().unwrap();
    assert_eq!(m[0]["step"], 0);
    assert!(
        (start - first_final).abs() <= 1e-12 * first_final,
        "continued run starts at {start}, the first ended at {first_final}"
    );
    let manifest = read_json(&d.join("run2/run.json"));
    assert_eq!(manifest["init_adapter"]["sha256"], sha256_hex(&d.join("run/adapter_model.safetensors")));
    assert!(read_json(&d.join("run/run.json"))["init_adapter"].is_null());

    let o = train(d, &["run.toml", "--set", "output.dir=run3", "--set", "lora.init_from=run", "--set", "lora.r=8"]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(
        err.contains("lora.init_from: run does not match the [lora] section: lora.r = 8 but the adapter has r = 4"),
        "{err}"
    );
}

/// A resume reads run.json back: a torn one is refused (naming the file), never skipped,
/// since skipping it would also skip the check that the base model is the one the run
/// started with; and that check refuses a base whose weights hash differently.
#[test]
fn resume_refuses_an_unreadable_manifest_and_a_changed_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = setup(d, 4);
    let o = train(d, &[cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let manifest = d.join("run/run.json");
    let whole = std::fs::read_to_string(&manifest).unwrap();

    common::write(&manifest, &whole[..whole.len() / 2]);
    let o = train(d, &["--resume", "run"]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("resuming needs the run's manifest") && e.contains("run/run.json"), "{e}");

    let mut m: Value = serde_json::from_str(&whole).unwrap();
    m["base_model_files"][0]["sha256"] = Value::String("0".repeat(64));
    common::write(&manifest, &serde_json::to_string_pretty(&m).unwrap());
    let o = train(d, &["--resume", "run"]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("the base model's weight files have changed since this run started"), "{e}");
}
