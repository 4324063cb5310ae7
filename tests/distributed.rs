//! Data-parallel training through the real binary, with CPU processes as the ranks and the
//! host collectives carrying the gradients (NCCL is the same code with another transport;
//! scripts/gpu/multi-gpu.sh runs it on GPUs). A 2-rank run must take the steps a single
//! process takes with twice the accumulation; only rank 0 writes; a resume needs the same
//! number of ranks; two "machines" meeting through MASTER_ADDR/MASTER_PORT make one group.

use crate::common;

use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The tiny model and 48 + 10 "shout the word" conversations; micro-batches of 4 with
/// dropout on, so that each micro-batch's dropout masks must follow it to its rank.
fn setup(d: &Path) {
    let model = common::init_tiny(d, "tiny", &[]);
    let words = [
        "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "inlet", "jolly", "kayak", "lemon",
        "maple", "north", "olive", "pearl",
    ];
    let line = |i: usize| {
        let w = format!("{}{}", words[i % 16], words[(i * 5 + 1) % 16]);
        common::shout_line(&w)
    };
    common::write(&d.join("train.jsonl"), &(0..48).map(line).collect::<String>());
    common::write(&d.join("eval.jsonl"), &(48..58).map(line).collect::<String>());
    let mut c = common::run_config(
        &model,
        &["train.jsonl"],
        "run",
        &[r#"lora.target_modules=["q_proj", "v_proj", "down_proj"]"#, "data.lint=warn"],
    );
    c.lora.r = 4;
    c.lora.alpha = 8.0;
    c.lora.dropout = 0.1;
    c.data.eval = Some("eval.jsonl".into());
    c.data.max_seq_len = 96;
    c.train.max_steps = Some(8);
    c.train.micro_batch_size = 4;
    c.train.grad_accum = 1;
    c.train.lr = 5e-3;
    c.train.warmup_steps = 2;
    c.train.seed = 11;
    c.eval.every = 4;
    c.eval.batch_size = 3;
    c.eval.generate_examples = 0;
    c.output.checkpoint_every = 4;
    c.output.keep_checkpoints = 10;
    c.device.threads = Some(1);
    common::write_config(&d.join("run.toml"), &c);
}

/// Starts loratune in `d` with `env` added, its output captured.
fn spawn(d: &Path, args: &[&str], env: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_loratune"))
        .args(args)
        .current_dir(d)
        .env("HF_HUB_OFFLINE", "1")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loratune")
}

/// Waits until `path` exists while `child` runs (it must not end first).
fn wait_for(path: &Path, child: &mut Child) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {} appeared", path.display());
        assert!(start.elapsed().as_secs() < 120, "{} never appeared", path.display());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn loratune(d: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    spawn(d, args, env).wait_with_output().expect("run loratune")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status, common::stdout(o), common::stderr(o));
}

fn adapter(run: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(run.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12);
    diff / scale
}

/// The adapters in two run folders are equal bit for bit.
fn assert_same_adapter(a: &Path, b: &Path, what: &str) {
    let (a, b) = (adapter(a), adapter(b));
    assert_eq!(a.len(), b.len(), "{what}");
    for (k, t) in &a {
        assert_eq!(max_rel_diff(t, &b[k]), 0.0, "{k}: {what}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn two_ranks_take_the_steps_of_one_process_with_twice_the_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let o = loratune(d, &["train", "run.toml", "--gpus", "2", "--set", "output.dir=\"two\""], &[]);
    ok(&o);
    assert!(common::stderr(&o).contains("launch  2 rank(s)"), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("ranks   2 processes (Host collectives)"), "{}", common::stdout(&o));
    let o = loratune(d, &["train", "run.toml", "--set", "train.grad_accum=2", "--set", "output.dir=\"one\""], &[]);
    ok(&o);

    let (two, one) = (read_jsonl(&d.join("two/metrics.jsonl")), read_jsonl(&d.join("one/metrics.jsonl")));
    // Rank 0 alone writes: one line per step (and the base eval), not one per rank.
    assert_eq!(two.len(), 9);
    assert_eq!(one.len(), 9);
    for (a, b) in two.iter().zip(&one) {
        assert_eq!(a["step"], b["step"]);
        assert_eq!(a["tokens"], b["tokens"], "the group's tokens per step are the single process's");
        for k in ["loss", "grad_norm", "eval_loss"] {
            if let (Some(x), Some(y)) = (a[k].as_f64(), b[k].as_f64()) {
                let rel = (x - y).abs() / y.abs();
                println!("step {} {k}: 2 ranks {x:.9}, 1 process {y:.9} (rel {rel:.1e})", a["step"]);
                assert!(rel < 2e-5, "step {} {k}: {x} vs {y}", a["step"]);
            } else {
                assert_eq!(a[k].is_null(), b[k].is_null(), "{k} at step {}", a["step"]);
            }
        }
    }
    let (a, b) = (adapter(&d.join("two")), adapter(&d.join("one")));
    assert_eq!(a.len(), b.len());
    let worst = a.iter().map(|(k, t)| max_rel_diff(t, &b[k])).fold(0f32, f32::max);
    println!("final adapters: max relative difference {worst:.2e}");
    assert!(worst < 1e-4, "adapters differ by {worst}");
    // Training moved the loss (so the equality above is about something).
    assert!(two[8]["eval_loss"].as_f64().unwrap() < two[0]["eval_loss"].as_f64().unwrap());

    let m = read_json(&d.join("two/run.json"));
    assert_eq!((m["ranks"].as_u64(), m["collectives"].as_str()), (Some(2), Some("host")));
    assert_eq!(read_json(&d.join("one/run.json"))["ranks"], 1);
    assert_eq!(read_json(&d.join("two/checkpoints/step-8/trainer_state.json"))["world_size"], 2);
}

#[test]
fn a_resume_continues_exactly_with_the_same_ranks_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // A constant rate after warmup: the 4-step run's schedule is then the 8-step run's.
    let constant = "train.lr_scheduler=\"constant\"";
    ok(&loratune(d, &["train", "run.toml", "--gpus", "2", "--set", "output.dir=\"whole\"", "--set", constant], &[]));
    ok(&loratune(
        d,
        &[
            "train",
            "run.toml",
            "--gpus",
            "2",
            "--set",
            "output.dir=\"part\"",
            "--set",
            "train.max_steps=4",
            "--set",
            constant,
        ],
        &[],
    ));

    let o = loratune(d, &["train", "--resume", "part", "--set", "train.max_steps=8"], &[]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(err.contains("trained with 2 rank(s) and is resumed with 1") && err.contains("--gpus 2"), "{err}");

    ok(&loratune(d, &["train", "--resume", "part", "--set", "train.max_steps=8", "--gpus", "2"], &[]));
    assert_same_adapter(&d.join("whole"), &d.join("part"), "resumed 2-rank run differs from the uninterrupted one");
}

#[test]
fn two_machines_meet_through_master_addr_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    ok(&loratune(d, &["train", "run.toml", "--gpus", "2", "--set", "output.dir=\"local\""], &[]));

    // Two launchers of one rank each, as on two machines, meeting at rank 0's port.
    let port = free_port().to_string();
    let node = |rank: &str| {
        let env = [
            ("NNODES", "2".to_string()),
            ("NODE_RANK", rank.to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.clone()),
        ];
        spawn(d, &["train", "run.toml", "--gpus", "1", "--set", "output.dir=\"nodes\""], &env)
    };
    let (n1, n0) = (node("1"), node("0"));
    let (o0, o1) = (n0.wait_with_output().unwrap(), n1.wait_with_output().unwrap());
    ok(&o0);
    ok(&o1);
    assert!(common::stderr(&o1).contains("(node 1 of 2)"), "{}", common::stderr(&o1));
    // Same ranks, same sums: the same bits as the one-machine run.
    assert_same_adapter(&d.join("local"), &d.join("nodes"), "two one-rank machines differ from one two-rank machine");
}

#[test]
fn a_rank_whose_peers_never_come_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let env = [
        ("RANK", "0".to_string()),
        ("WORLD_SIZE", "3".to_string()),
        ("MASTER_PORT", free_port().to_string()),
        ("LORATUNE_RENDEZVOUS_TIMEOUT", "1".to_string()),
    ];
    let o = loratune(d, &["train", "run.toml"], &env);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(err.contains("rank 0 of 3") && err.contains("rank(s) 1, 2 never connected"), "{err}");
    // Set by hand, a rank needs its number.
    let o = loratune(d, &["train", "run.toml"], &[("WORLD_SIZE", "2".to_string())]);
    assert!(common::stderr(&o).contains("RANK is not"), "{}", common::stderr(&o));
}

#[test]
fn ctrl_c_reaches_every_rank_once_and_the_run_resumes_to_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let long = [
        "--set",
        "train.max_steps=40",
        "--set",
        "train.lr_scheduler=\"constant\"",
        "--set",
        "output.checkpoint_every=0",
    ];
    let mut args = vec!["train", "run.toml", "--gpus", "2", "--set", "output.dir=\"whole\""];
    args.extend(long);
    ok(&loratune(d, &args, &[]));

    let mut args = vec!["train", "run.toml", "--gpus", "2"];
    args.extend(long);
    let mut child = spawn(d, &args, &[]);
    wait_for(&d.join("run/run.json"), &mut child);
    // SIGINT to the launcher alone, as a terminal's Ctrl-C would (its ranks have their own
    // process group): it passes the signal on once; the ranks agree on the step to stop at.
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(!err.contains("second interrupt"), "a rank got the signal twice: {err}");
    let stopped_at = read_json(&d.join("run/run.json"))["steps_completed"].as_u64().unwrap();
    assert!(stopped_at < 40, "stopped at {stopped_at}");
    assert!(d.join(format!("run/checkpoints/step-{stopped_at}/trainer_state.json")).is_file());

    ok(&loratune(d, &["train", "--resume", "run", "--gpus", "2"], &[]));
    assert_same_adapter(&d.join("whole"), &d.join("run"), "interrupted and resumed 2-rank run differs");
}

/// The pids of `parent`'s children (Linux: /proc/PID/task/*/children).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{parent}/task")).unwrap().flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

#[test]
fn a_rank_killed_mid_run_stops_the_group_and_the_last_checkpoint_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let long = ["--set", "train.max_steps=80", "--set", "train.lr_scheduler=\"constant\""];
    let mut args = vec!["train", "run.toml", "--gpus", "2", "--set", "output.dir=\"whole\""];
    args.extend(long);
    ok(&loratune(d, &args, &[]));

    let mut args = vec!["train", "run.toml", "--gpus", "2"];
    args.extend(long);
    let mut launcher = spawn(d, &args, &[]);
    wait_for(&d.join("run/checkpoints/step-4/trainer_state.json"), &mut launcher);
    // SIGKILL rank 1, as the OOM killer or a dead GPU would end it.
    let rank1 = children_of(launcher.id())
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == b"RANK=1"))
        })
        .expect("rank 1 among the launcher's children");
    assert!(Command::new("kill").args(["-KILL", &rank1.to_string()]).status().unwrap().success());
    let out = launcher.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the launcher must fail when a rank dies: {err}");
    assert!(err.contains("rank 1 failed") || err.contains("rank 1 closed its connection"), "{err}");

    // Rank 0 went down with it; its newest complete checkpoint takes the run to the end.
    ok(&loratune(d, &["train", "--resume", "run", "--gpus", "2"], &[]));
    assert_same_adapter(&d.join("whole"), &d.join("run"), "the resumed run differs from the uninterrupted one");
}

#[test]
fn a_launcher_killed_outright_takes_its_ranks_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let mut launcher = spawn(
        d,
        &[
            "train",
            "run.toml",
            "--gpus",
            "2",
            "--set",
            "train.max_steps=100000",
            "--set",
            "eval.every=0",
            "--set",
            "output.checkpoint_every=0",
        ],
        &[],
    );
    wait_for(&d.join("run/run.json"), &mut launcher);
    let ranks = children_of(launcher.id());
    assert_eq!(ranks.len(), 2, "two ranks under the launcher");
    launcher.kill().unwrap(); // SIGKILL: no chance to pass anything on
    launcher.wait().unwrap();
    // A process that is gone, or a zombie waiting for a reaper, no longer runs.
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    };
    let start = std::time::Instant::now();
    while ranks.iter().any(running) {
        assert!(start.elapsed().as_secs() < 20, "ranks {ranks:?} still run after their launcher was killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
