//! Shared helpers for integration tests: paths, the real test model, tiny checkpoints
//! made on the fly, run configs, and running the `loratune` binary.
#![allow(dead_code)]

use loratune::config::TrainConfig;
use std::path::{Path, PathBuf};
use std::process::Output;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// SmolLM2-135M-Instruct (GGUF Q4_1). Fails loudly rather than skipping: CI fetches it.
pub fn smollm2_gguf() -> PathBuf {
    let p = repo_root().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-test-model.sh", p.display());
    p
}

pub fn fixture(name: &str) -> serde_json::Value {
    let p = repo_root().join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// Runs the loratune binary with `args` in `cwd`.
pub fn loratune(cwd: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_loratune"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cwd.join("no-hub-cache"))
        .output()
        .expect("run loratune")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes a tiny checkpoint (seed 0, as the reference fixtures use) into `dir/name`,
/// optionally with a GGUF copy, through the real CLI.
pub fn init_tiny(dir: &Path, preset: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(preset);
    let mut args = vec!["init-model", "--preset", preset, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = loratune(dir, &args);
    assert!(o.status.success(), "init-model failed: {}", stderr(&o));
    out
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A run config on the CPU: [`TrainConfig::new`] (every default) for `model`, the `train`
/// files and the run folder `output_dir`, with `overrides` (`SECTION.KEY=VALUE`) applied
/// as `loratune train --set` applies them. Keys with a fixed set of values
/// (`lora.target_modules`, `data.lint`, `data.on_bad_record`, `train.lr_scheduler`,
/// `device.name`, ...) go through `overrides`, spelled as in a config file, whatever type
/// holds them in [`TrainConfig`]; numbers, flags and paths are plain fields to assign.
pub fn run_config(model: &Path, train: &[&str], output_dir: &str, overrides: &[&str]) -> TrainConfig {
    let cfg = TrainConfig::new(model.to_str().unwrap(), train.iter().map(|t| t.to_string()).collect(), output_dir);
    let overrides: Vec<String> = ["device.name=cpu"].iter().chain(overrides).map(|o| o.to_string()).collect();
    TrainConfig::from_str(&cfg.to_toml_string(), "the test's run config", &overrides).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes `cfg` to `path` as the TOML file `loratune train` reads.
pub fn write_config(path: &Path, cfg: &TrainConfig) {
    write(path, &cfg.to_toml_string());
}

/// A user turn and the assistant's answer as one JSONL line (no escaping: plain words only).
pub fn chat_line(user: &str, assistant: &str) -> String {
    format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{user}\"}}, {{\"role\": \"assistant\", \"content\": \"{assistant}\"}}]}}\n")
}

/// The tests' small task: "Shout amber" is answered "AMBER!".
pub fn shout_line(word: &str) -> String {
    chat_line(&format!("Shout {word}"), &format!("{}!", word.to_uppercase()))
}
