//! Shared helpers for integration tests: paths, the real test model, tiny checkpoints
//! made on the fly, and running the `loratune` binary.
#![allow(dead_code)]

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

/// A user turn and the assistant's answer as one JSONL line (no escaping: plain words only).
pub fn chat_line(user: &str, assistant: &str) -> String {
    format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{user}\"}}, {{\"role\": \"assistant\", \"content\": \"{assistant}\"}}]}}\n")
}

/// The tests' small task: "Shout amber" is answered "AMBER!".
pub fn shout_line(word: &str) -> String {
    chat_line(&format!("Shout {word}"), &format!("{}!", word.to_uppercase()))
}
