//! Loading whole configs: defaults, every kind of error and its message,
//! overrides, the round trip through TOML, and the shipped example config.

use std::path::Path;

use super::keys::{self, Kind, KEYS, SECTIONS};
use super::*;
use crate::data::{BadRecordPolicy, DataFormat, FormatChoice};
use crate::lora::Target;
use crate::model::FloatDtype;
use crate::train::schedule::Decay;

const MINIMAL: &str = r#"
[model]
path = "models/m.gguf"

[data]
train = "train.jsonl"

[output]
dir = "runs/x"
"#;

fn load(text: &str, overrides: &[&str]) -> Result<TrainConfig, ConfigError> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_str(text, "runs/x.toml", &overrides)
}

/// The message of the error that loading `text` with `overrides` gives.
fn error(text: &str, overrides: &[&str]) -> String {
    match load(text, overrides) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

/// MINIMAL with `lines` added to `[section]`: right under the header for
/// model (so on line 3), data (line 6) and output (line 9), else in a new
/// section at the end (header on line 11, first key on line 12).
fn set(section: &str, lines: &str) -> String {
    let header = format!("[{section}]\n");
    if MINIMAL.contains(&header) {
        MINIMAL.replace(&header, &format!("{header}{lines}\n"))
    } else {
        format!("{MINIMAL}\n{header}{lines}\n")
    }
}

#[test]
fn minimal_file_gets_every_default() {
    let cfg = load(MINIMAL, &[]).unwrap();
    assert_eq!(cfg, TrainConfig::new("models/m.gguf", vec!["train.jsonl".into()], "runs/x"));
    assert_eq!(cfg.model.dtype, None);
    let l = &cfg.lora;
    assert_eq!((l.r, l.alpha, l.dropout, l.use_rslora), (16, 32.0, 0.0, false));
    assert_eq!(l.target_modules, [Target::QProj, Target::KProj, Target::VProj, Target::OProj]);
    let d = &cfg.data;
    assert_eq!(d.train, ["train.jsonl"]);
    assert_eq!((d.eval.as_deref(), d.eval_fraction, d.split_seed), (None, 0.1, 42));
    assert_eq!(
        (d.format, d.max_seq_len, d.packing, d.on_bad_record),
        (FormatChoice::Auto, 1024, false, BadRecordPolicy::Error)
    );
    let t = &cfg.train;
    assert_eq!((t.epochs, t.max_steps, t.micro_batch_size, t.grad_accum), (1, None, 4, 1));
    assert_eq!((t.lr, t.lr_scheduler, t.warmup_steps, t.warmup_ratio), (2e-4, Decay::Cosine, 0, 0.0));
    assert_eq!((t.min_lr_ratio, t.weight_decay, t.adam_beta1, t.adam_beta2, t.adam_eps), (0.0, 0.0, 0.9, 0.999, 1e-8));
    assert_eq!((t.max_grad_norm, t.seed, t.gradient_checkpointing, t.log_every), (1.0, 42, false, 1));
    let e = &cfg.eval;
    assert_eq!((e.every, e.batch_size, e.early_stopping_patience, e.early_stopping_min_delta), (50, 8, 0, 0.0));
    let o = &cfg.output;
    assert_eq!(
        (o.dir.as_str(), o.checkpoint_every, o.keep_checkpoints, o.save_best, o.overwrite),
        ("runs/x", 100, 2, true, false)
    );
    assert_eq!((cfg.device.name, cfg.device.threads), (DeviceName::Auto, None));
}

#[test]
fn data_train_takes_one_path_or_a_list() {
    let cfg = load(MINIMAL, &[]).unwrap();
    assert_eq!(cfg.data.train, ["train.jsonl"]);
    let text = MINIMAL.replace(r#"train = "train.jsonl""#, r#"train = ["a.jsonl", "b.jsonl"]"#);
    assert_eq!(load(&text, &[]).unwrap().data.train, ["a.jsonl", "b.jsonl"]);
    let msg = error(&MINIMAL.replace(r#"train = "train.jsonl""#, "train = []"), &[]);
    assert_eq!(msg, "runs/x.toml:6: data.train: must list at least one entry");
    let msg = error(&MINIMAL.replace(r#"train = "train.jsonl""#, r#"train = ["a.jsonl", 3]"#), &[]);
    assert_eq!(msg, "runs/x.toml:6: data.train[1]: expected a string, found an integer 3");
}

#[test]
fn missing_required_keys_are_named() {
    let msg = error("[data]\ntrain = \"t.jsonl\"\n[output]\ndir = \"r\"\n", &[]);
    assert!(msg.starts_with("runs/x.toml: [model] path is required ("), "{msg}");
    let msg = error("[model]\npath = \"m\"\n[output]\ndir = \"r\"\n", &[]);
    assert!(msg.starts_with("runs/x.toml: [data] train is required ("), "{msg}");
    let msg = error("[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n[output]\n", &[]);
    assert!(msg.starts_with("runs/x.toml: [output] dir is required ("), "{msg}");
    // An override can supply a required key.
    let cfg = load("[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n", &["output.dir=runs/y"]).unwrap();
    assert_eq!(cfg.output.dir, "runs/y");
}

#[test]
fn unknown_keys_name_file_line_and_closest_key() {
    let msg = error(&set("train", "learning_rate = 1e-4"), &[]);
    assert_eq!(msg, "runs/x.toml:12: unknown key \"train.learning_rate\" (did you mean \"train.lr\"?)");
    let msg = error(&set("lora", "rank = 8"), &[]);
    assert_eq!(msg, "runs/x.toml:12: unknown key \"lora.rank\" (did you mean \"lora.r\"?)");
    let msg = error(&set("train", "warmup_stpes = 3"), &[]);
    assert!(msg.ends_with("unknown key \"train.warmup_stpes\" (did you mean \"train.warmup_steps\"?)"), "{msg}");
    let msg = error(&set("lora", "qwertyuiop = 1"), &[]);
    assert_eq!(msg, "runs/x.toml:12: unknown key \"lora.qwertyuiop\"");
    // Outside any section.
    let msg = error(&format!("lr = 1e-4\n{MINIMAL}"), &[]);
    assert_eq!(msg, "runs/x.toml:1: unknown key \"lr\" (did you mean \"train.lr\"?)");
    // Dotted keys in a known section.
    let msg = error(&format!("train.lrr = 1e-4\n{MINIMAL}"), &[]);
    assert_eq!(msg, "runs/x.toml:1: unknown key \"train.lrr\" (did you mean \"train.lr\"?)");
}

#[test]
fn unknown_sections_suggest_the_closest() {
    let msg = error(&set("trian", "lr = 1e-4"), &[]);
    assert!(msg.starts_with("runs/x.toml:11: unknown section [trian] (sections: [model] [lora]"), "{msg}");
    assert!(msg.ends_with("(did you mean [train]?)"), "{msg}");
    let msg = error(&set("wandb", "project = \"p\""), &[]);
    assert!(msg.starts_with("runs/x.toml:11: unknown section [wandb]"), "{msg}");
    assert!(!msg.contains("did you mean"), "{msg}");
    let msg = error(&format!("model = \"m.gguf\"\n{}", &MINIMAL.replace("[model]\npath = \"models/m.gguf\"", "")), &[]);
    assert_eq!(msg, "runs/x.toml:1: model: expected a table (a [section] of keys), found a string \"m.gguf\"");
}

#[test]
fn type_errors_name_key_and_expected_type() {
    let msg = error(&set("train", "lr = \"fast\""), &[]);
    assert_eq!(msg, "runs/x.toml:12: train.lr: expected a number, found a string \"fast\"");
    let msg = error(&set("lora", "r = 8.5"), &[]);
    assert_eq!(msg, "runs/x.toml:12: lora.r: expected a non-negative integer, found a number 8.5");
    let msg = error(&set("lora", "r = -1"), &[]);
    assert_eq!(msg, "runs/x.toml:12: lora.r: expected a non-negative integer, found an integer -1");
    let msg = error(&format!("{MINIMAL}\n[data.x]\n"), &[]);
    assert!(msg.contains("unknown key \"data.x\""), "{msg}");
    let msg = error(&set("lora", "use_rslora = \"yes\""), &[]);
    assert_eq!(msg, "runs/x.toml:12: lora.use_rslora: expected a boolean (true or false), found a string \"yes\"");
    let msg = error(&set("lora", "target_modules = \"q_proj\""), &[]);
    assert_eq!(msg, "runs/x.toml:12: lora.target_modules: expected an array of strings, found a string \"q_proj\"");
    // Integers are numbers.
    let cfg = load(&set("lora", "alpha = 16"), &[]).unwrap();
    assert_eq!(cfg.lora.alpha, 16.0);
}

#[test]
fn syntax_errors_name_file_and_line() {
    let msg = error(&set("train", "lr = fast"), &[]);
    assert!(msg.starts_with("runs/x.toml:12:6: invalid TOML: "), "{msg}");
    assert!(msg.contains("12 | lr = fast"), "{msg}");
    let msg = error(&set("train", "lr = 1\nlr = 2"), &[]);
    assert!(msg.starts_with("runs/x.toml:13:"), "{msg}");
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn out_of_range_values_name_key_range_and_value() {
    let cases = [
        ("train", "lr = -0.001", "runs/x.toml:12: train.lr must be > 0 (got -0.001)"),
        ("train", "lr = inf", "runs/x.toml:12: train.lr must be finite and > 0 (got inf)"),
        ("train", "lr = nan", "runs/x.toml:12: train.lr must be > 0 (got NaN)"),
        ("lora", "r = 0", "runs/x.toml:12: lora.r must be between 1 and 1024 (got 0)"),
        ("lora", "r = 2048", "runs/x.toml:12: lora.r must be between 1 and 1024 (got 2048)"),
        ("lora", "dropout = 1.0", "runs/x.toml:12: lora.dropout must be in [0, 1) (got 1)"),
        ("lora", "alpha = 0", "runs/x.toml:12: lora.alpha must be > 0 (got 0)"),
        ("data", "eval_fraction = 0.6", "runs/x.toml:6: data.eval_fraction must be in [0, 0.5] (got 0.6)"),
        ("data", "max_seq_len = 4", "runs/x.toml:6: data.max_seq_len must be >= 8 (got 4)"),
        ("train", "epochs = 0", "runs/x.toml:12: train.epochs must be >= 1 (got 0)"),
        ("train", "max_steps = 0", "runs/x.toml:12: train.max_steps must be >= 1 (got 0)"),
        ("train", "micro_batch_size = 0", "runs/x.toml:12: train.micro_batch_size must be >= 1 (got 0)"),
        ("train", "grad_accum = 0", "runs/x.toml:12: train.grad_accum must be >= 1 (got 0)"),
        ("train", "warmup_ratio = 1", "runs/x.toml:12: train.warmup_ratio must be in [0, 1) (got 1)"),
        ("train", "min_lr_ratio = 1.5", "runs/x.toml:12: train.min_lr_ratio must be in [0, 1] (got 1.5)"),
        ("train", "weight_decay = -1", "runs/x.toml:12: train.weight_decay must be >= 0 (got -1)"),
        ("train", "adam_beta2 = 1", "runs/x.toml:12: train.adam_beta2 must be in [0, 1) (got 1)"),
        ("train", "adam_eps = 0", "runs/x.toml:12: train.adam_eps must be > 0 (got 0)"),
        ("train", "max_grad_norm = -1", "runs/x.toml:12: train.max_grad_norm must be >= 0 (got -1)"),
        ("train", "log_every = 0", "runs/x.toml:12: train.log_every must be >= 1 (got 0)"),
        ("eval", "batch_size = 0", "runs/x.toml:12: eval.batch_size must be >= 1 (got 0)"),
        (
            "eval",
            "early_stopping_min_delta = -0.1",
            "runs/x.toml:12: eval.early_stopping_min_delta must be >= 0 (got -0.1)",
        ),
        ("output", "keep_checkpoints = 0", "runs/x.toml:9: output.keep_checkpoints must be >= 1 (got 0)"),
        ("device", "threads = 0", "runs/x.toml:12: device.threads must be >= 1 (got 0)"),
    ];
    for (section, extra, expected) in cases {
        assert_eq!(error(&set(section, extra), &[]), expected, "for [{section}] {extra:?}");
    }
}

#[test]
fn enumerated_values_list_the_allowed_and_suggest() {
    let msg = error(&set("train", "lr_scheduler = \"cosin\""), &[]);
    assert_eq!(
        msg,
        "runs/x.toml:12: train.lr_scheduler: unknown value \"cosin\" (expected one of: cosine, linear, constant) (did you mean \"cosine\"?)"
    );
    let msg = error(&set("lora", "target_modules = [\"q_proj\", \"v_porj\"]"), &[]);
    assert!(
        msg.starts_with(
            "runs/x.toml:12: lora.target_modules: unknown value \"v_porj\" (expected one of: q_proj, k_proj"
        ),
        "{msg}"
    );
    assert!(msg.ends_with("(did you mean \"v_proj\"?)"), "{msg}");
    let msg = error(&set("lora", "target_modules = []"), &[]);
    assert_eq!(msg, "runs/x.toml:12: lora.target_modules: must list at least one entry");
    let msg = error(&set("lora", "target_modules = [\"q_proj\", \"q_proj\"]"), &[]);
    assert_eq!(msg, "runs/x.toml:12: lora.target_modules: \"q_proj\" is listed twice");
    let msg = error(&set("data", "format = \"sharegtp\""), &[]);
    assert!(msg.contains("data.format: unknown value \"sharegtp\""), "{msg}");
    assert!(msg.ends_with("(did you mean \"sharegpt\"?)"), "{msg}");
    let msg = error(&set("data", "on_bad_record = \"ignore\""), &[]);
    assert_eq!(msg, "runs/x.toml:6: data.on_bad_record: unknown value \"ignore\" (expected one of: error, skip)");
    let msg = error(&set("model", "dtype = \"fp16\""), &[]);
    assert!(
        msg.starts_with("runs/x.toml:3: model.dtype: unknown value \"fp16\" (expected one of: f32, bf16, f16)"),
        "{msg}"
    );
    let msg = error(&set("model", "quantize = \"q4_km\""), &[]);
    assert!(
        msg.starts_with(
            "runs/x.toml:3: model.quantize: unknown value \"q4_km\" (expected one of: gguf, q4_0, q4_1, q4_k, q8_0)"
        ),
        "{msg}"
    );
    let msg = error(&set("device", "name = \"cdua\""), &[]);
    assert_eq!(
        msg,
        "runs/x.toml:12: device.name: unknown value \"cdua\" (expected one of: auto, cpu, cuda, cuda:N) (did you mean \"cuda\"?)"
    );
    let msg = error(&set("device", "name = \"cuda:x\""), &[]);
    assert!(msg.starts_with("runs/x.toml:12: device.name: \"cuda:x\": the GPU number"), "{msg}");
    for name in ["auto", "cpu", "cuda", "cuda:0", "cuda:3"] {
        assert_eq!(load(&set("device", &format!("name = \"{name}\"")), &[]).unwrap().device.name.to_string(), name);
    }
    let cfg = load(&set("data", "format = \"prompt_completion\""), &[]).unwrap();
    assert_eq!(cfg.data.format, FormatChoice::Fixed(DataFormat::PromptCompletion));
}

#[test]
fn empty_paths_are_rejected() {
    let msg = error(&MINIMAL.replace("\"models/m.gguf\"", "\"\""), &[]);
    assert_eq!(msg, "runs/x.toml:3: model.path: must not be empty");
    let msg = error(MINIMAL, &["output.dir=\"\""]);
    assert_eq!(msg, "--set output.dir=\"\": output.dir: must not be empty");
}

#[test]
fn warmup_steps_and_ratio_conflict() {
    let msg = error(&set("train", "warmup_steps = 10\nwarmup_ratio = 0.1"), &[]);
    assert_eq!(
        msg,
        "runs/x.toml:12: train.warmup_steps (10) and train.warmup_ratio (0.1) are both set; set one of them and leave the other at 0"
    );
    // The override that made the conflict is the one named.
    let msg = error(&set("train", "warmup_steps = 10"), &["train.warmup_ratio=0.05"]);
    assert!(msg.starts_with("--set train.warmup_ratio=0.05: train.warmup_steps (10) and"), "{msg}");
    // Either one alone is fine.
    assert_eq!(load(&set("train", "warmup_ratio = 0.1"), &[]).unwrap().train.warmup_ratio, 0.1);
    assert_eq!(load(&set("train", "warmup_steps = 10"), &[]).unwrap().train.warmup_steps, 10);
}

#[test]
fn early_stopping_needs_an_eval_set() {
    let msg = error(
        &set("data", "eval_fraction = 0.0").replace("[output]", "[eval]\nearly_stopping_patience = 3\n[output]"),
        &[],
    );
    assert!(msg.contains("eval.early_stopping_patience needs an eval set"), "{msg}");
    load(&set("eval", "early_stopping_patience = 3"), &[]).unwrap();
    load(
        &set("data", "eval = \"e.jsonl\"\neval_fraction = 0.0")
            .replace("[output]", "[eval]\nearly_stopping_patience = 3\n[output]"),
        &[],
    )
    .unwrap();
}

#[test]
fn overrides_of_each_type() {
    let cfg = load(
        MINIMAL,
        &[
            "train.lr=1e-4",
            "lora.r=8",
            "data.packing=true",
            "data.train=\"a.jsonl\"",
            "lora.target_modules=[\"q_proj\",\"v_proj\"]",
            "model.path=models/x.gguf",
            "lora.alpha=16",
            "train.max_steps=60",
            "device.name=cuda:1",
        ],
    )
    .unwrap();
    assert_eq!(cfg.train.lr, 1e-4);
    assert_eq!(cfg.lora.r, 8);
    assert!(cfg.data.packing);
    assert_eq!(cfg.data.train, ["a.jsonl"]);
    assert_eq!(cfg.lora.target_modules, [Target::QProj, Target::VProj]);
    assert_eq!(cfg.model.path, "models/x.gguf");
    assert_eq!(cfg.lora.alpha, 16.0);
    assert_eq!(cfg.train.max_steps, Some(60));
    assert_eq!(cfg.device.name, DeviceName::CudaOrdinal(1));
    // A list for data.train, and a later override winning over an earlier one and the file.
    let cfg = load(&set("lora", "r = 4"), &["data.train=[\"a.jsonl\",\"b.jsonl\"]", "lora.r=2", "lora.r=32"]).unwrap();
    assert_eq!(cfg.data.train, ["a.jsonl", "b.jsonl"]);
    assert_eq!(cfg.lora.r, 32);
}

#[test]
fn override_errors_name_the_override() {
    assert_eq!(
        error(MINIMAL, &["train.lrr=1"]),
        "--set train.lrr=1: unknown key \"train.lrr\" (did you mean \"train.lr\"?)"
    );
    assert_eq!(
        error(MINIMAL, &["train.lr=fast"]),
        "--set train.lr=fast: train.lr: expected a number, found a string \"fast\""
    );
    assert_eq!(error(MINIMAL, &["train.lr=-0.001"]), "--set train.lr=-0.001: train.lr must be > 0 (got -0.001)");
    assert!(error(MINIMAL, &["train.lr"]).starts_with("--set train.lr: expected SECTION.KEY=VALUE"));
    assert!(error(MINIMAL, &["lr=1"]).starts_with("--set lr=1: \"lr\" names no section"));
    // A later error in the file is still reported against the file.
    let msg = error(&set("lora", "r = 0"), &["train.lr=1e-4"]);
    assert_eq!(msg, "runs/x.toml:12: lora.r must be between 1 and 1024 (got 0)");
}

#[test]
fn round_trip_through_toml_and_json() {
    let mut cfg = load(&set("train", "max_steps = 7\n[device]\nthreads = 2"), &[]).unwrap();
    cfg.model.dtype = Some(FloatDtype::Bf16);
    cfg.data.train = vec!["a.jsonl".into(), "b.jsonl".into()];
    cfg.data.eval = Some("e.jsonl".into());
    cfg.train.lr = 3e-5;
    cfg.train.adam_eps = 1e-12;
    let text = cfg.to_toml_string();
    assert_eq!(TrainConfig::from_str(&text, "round-trip.toml", &[]).unwrap(), cfg, "{text}");
    // Unset optional keys are left out, and that reads back as None too.
    let minimal = load(MINIMAL, &[]).unwrap();
    assert_eq!(TrainConfig::from_str(&minimal.to_toml_string(), "rt.toml", &[]).unwrap(), minimal);
    // JSON, for the run manifest.
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), cfg);
    let value: serde_json::Value = serde_json::to_value(&minimal).unwrap();
    assert_eq!(value["lora"]["r"], 16);
    assert_eq!(value["model"]["dtype"], serde_json::Value::Null);
}

/// The key table of keys.rs and the structs of schema.rs list the same keys,
/// each with the TOML type its field serializes to.
#[test]
fn key_table_matches_the_structs() {
    let mut cfg = load(MINIMAL, &[]).unwrap();
    // Every optional key set, so that each one serializes.
    cfg.model.dtype = Some(FloatDtype::F16);
    cfg.data.eval = Some("e.jsonl".into());
    cfg.train.max_steps = Some(3);
    cfg.device.threads = Some(1);
    cfg.device.gpus = Some(2);
    cfg.lora.init_from = Some("runs/a".into());
    cfg.data.weights = Some(vec![1.0]);
    cfg.model.quantize = Some("q4_k".parse().unwrap());
    cfg.train.checkpoint_layers = Some(8);
    cfg.eval.regression = Some("general.jsonl".into());
    let toml::Value::Table(doc) = toml::Value::try_from(&cfg).unwrap() else { panic!() };
    let mut sections: Vec<&str> = doc.keys().map(String::as_str).collect();
    let mut expected_sections = SECTIONS.to_vec();
    sections.sort_unstable();
    expected_sections.sort_unstable();
    assert_eq!(sections, expected_sections);
    let mut found = 0;
    for (section, table) in &doc {
        for (name, value) in table.as_table().unwrap() {
            let spec = keys::lookup(section, name).unwrap_or_else(|| panic!("{section}.{name} is not in KEYS"));
            let fits = matches!(
                (spec.kind, value),
                (Kind::Str, toml::Value::String(_))
                    | (Kind::UInt, toml::Value::Integer(_))
                    | (Kind::Float, toml::Value::Float(_))
                    | (Kind::Bool, toml::Value::Boolean(_))
                    | (Kind::StrList | Kind::StrOrStrList | Kind::FloatList, toml::Value::Array(_))
            );
            assert!(fits, "{section}.{name}: {:?} vs {value:?}", spec.kind);
            found += 1;
        }
    }
    assert_eq!(found, KEYS.len());
}

#[test]
fn from_file_names_a_missing_file() {
    let err = TrainConfig::from_file(Path::new("no/such/run.toml"), &[]).unwrap_err();
    assert!(err.to_string().starts_with("no/such/run.toml: cannot read the config file: "), "{err}");
}

/// configs/llama2-7b-lora.toml (run on the GPU machine by scripts/gpu/train-7b.sh) parses and
/// validates here too.
#[test]
fn shipped_llama2_7b_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/llama2-7b-lora.toml");
    let cfg = TrainConfig::from_file(&path, &[]).unwrap();
    assert_eq!(cfg.model.path, "models/llama2-7b-random");
    assert_eq!(cfg.model.dtype, Some(FloatDtype::Bf16));
    assert_eq!(cfg.device.name, DeviceName::Cuda);
    assert_eq!((cfg.lora.r, cfg.data.max_seq_len, cfg.data.packing), (16, 1024, true));
    assert_eq!((cfg.train.micro_batch_size, cfg.train.grad_accum, cfg.train.max_steps), (4, 2, Some(30)));
}

#[test]
fn shipped_smollm2_cpu_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/smollm2-135m-cpu.toml");
    let cfg = TrainConfig::from_file(&path, &[]).unwrap();
    assert_eq!(cfg.model.path, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(cfg.data.train, ["examples/data/calendar-train.jsonl", "examples/data/general-train.jsonl"]);
    assert_eq!(cfg.data.weights, Some(vec![0.85, 0.15]));
    assert_eq!(cfg.eval.regression.as_deref(), Some("examples/data/general-regression.jsonl"));
    assert_eq!(cfg.data.eval.as_deref(), Some("examples/data/calendar-eval.jsonl"));
    assert_eq!(cfg.output.dir, "runs/smollm2-calendar");
    assert_eq!(cfg.device.name, DeviceName::Cpu);
    let l = &cfg.lora;
    assert_eq!((l.r, l.alpha, l.dropout), (8, 16.0, 0.0));
    assert_eq!(l.target_modules, [Target::QProj, Target::KProj, Target::VProj, Target::OProj]);
    assert_eq!(cfg.data.max_seq_len, 256);
    let t = &cfg.train;
    assert_eq!((t.micro_batch_size, t.grad_accum, t.lr, t.lr_scheduler), (8, 1, 1e-3, Decay::Cosine));
    assert_eq!((t.warmup_steps, t.max_steps, t.weight_decay, t.max_grad_norm, t.seed), (5, Some(60), 0.0, 1.0, 42));
    assert_eq!((cfg.eval.every, cfg.output.checkpoint_every), (20, 20));
}

/// The README documents every key (each appears as `` `name` `` in its section's table).
#[test]
fn readme_documents_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    for section in SECTIONS {
        let header = format!("### [{section}]");
        let start = readme.find(&header).unwrap_or_else(|| panic!("no {header} in configs/README.md"));
        let body = &readme[start + header.len()..];
        let body = &body[..body.find("\n### ").unwrap_or(body.len())];
        for k in KEYS.iter().filter(|k| k.section == *section) {
            assert!(
                body.contains(&format!("| `{}` |", k.name)),
                "configs/README.md: [{section}] does not document {}",
                k.name
            );
        }
    }
}

#[test]
fn mixing_weights_need_one_positive_number_per_train_file() {
    let cfg = load(&set("data", "weights = [3]"), &[]).unwrap();
    assert_eq!(cfg.data.weights, Some(vec![3.0]), "integers are numbers");
    let msg = error(&set("data", "weights = [0.5, 0.5]"), &[]);
    assert!(msg.contains("data.weights: has 2 entries but data.train lists 1 files (one weight per file)"), "{msg}");
    let msg = error(&set("data", "weights = [\"a\"]"), &[]);
    assert!(msg.contains("data.weights[0]") && msg.contains("a number"), "{msg}");
    let msg = error(&set("data", "weights = [0.0]"), &[]);
    assert!(msg.contains("data.weights"), "{msg}");
    let cfg = load(MINIMAL, &["data.weights=[2]"]).unwrap();
    assert_eq!(cfg.data.weights, Some(vec![2.0]), "--set takes a list of numbers");
}

#[test]
fn eval_extras_have_defaults_and_ranges() {
    let cfg = load(MINIMAL, &[]).unwrap();
    assert_eq!(
        (
            cfg.eval.regression.as_deref(),
            cfg.eval.regression_threshold,
            cfg.eval.generate_examples,
            cfg.eval.max_new_tokens
        ),
        (None, 0.05, 4, 128)
    );
    let msg = error(&set("eval", "max_new_tokens = 0"), &[]);
    assert!(msg.contains("eval.max_new_tokens"), "{msg}");
    let msg = error(&set("eval", "regression_threshold = -0.1"), &[]);
    assert!(msg.contains("eval.regression_threshold"), "{msg}");
}
