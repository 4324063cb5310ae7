//! Real learning on the real model, CI-sized: the README's main command
//! (`loratune train configs/smollm2-135m-cpu.toml`) trains SmolLM2-135M-Instruct on the
//! calendar set on CPU, and the held-out eval loss must fall by at least 30% relative to
//! the base model's.

mod common;

#[test]
fn smollm2_calendar_run_cuts_eval_loss_by_at_least_30_percent() {
    common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let root = common::repo_root();
    let o = common::loratune(
        &root,
        &["train", "configs/smollm2-135m-cpu.toml", "--set", &format!("output.dir={}", run.display())],
    );
    assert!(o.status.success(), "{}\n{}", common::stdout(&o), common::stderr(&o));
    let ev: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let base = ev["base"]["loss"].as_f64().unwrap();
    let fin = ev["final"]["loss"].as_f64().unwrap();
    let best = ev["best"]["loss"].as_f64().unwrap();
    let drop = (base - fin) / base;
    eprintln!(
        "SmolLM2 calendar run: eval loss base {base:.4} -> final {fin:.4} (best {best:.4}), {:.1}% lower",
        100.0 * drop
    );
    assert!(drop >= 0.30, "eval loss fell only {:.1}% ({base:.4} -> {fin:.4}); the target is 30%", 100.0 * drop);
    assert_eq!(ev["final"]["step"], 60);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "completed");
    assert_eq!(m["base_model"]["num_parameters"], 134515008);
}
