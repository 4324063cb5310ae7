//! The table of every section and key with its TOML type, and the
//! did-you-mean suggestions for unknown keys, sections and values.
//!
//! The table mirrors the structs of `schema.rs` (a test checks that they list
//! the same keys); it exists so that the loader can name the full key and the
//! expected type in its messages instead of passing on serde's.

/// The sections, in file order.
pub(crate) const SECTIONS: &[&str] = &["model", "lora", "data", "train", "eval", "output", "device"];

/// The TOML type a key takes. Optional keys (`Option<T>` fields) have the kind of `T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    /// A non-negative integer (`usize`, `u64`).
    UInt,
    /// Any number; integers are accepted and converted.
    Float,
    Bool,
    StrList,
    /// An array of numbers (integers accepted and converted).
    FloatList,
    /// `data.train`: one string or an array of strings.
    StrOrStrList,
}

impl Kind {
    /// For "expected ..." in messages.
    pub(crate) fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::UInt => "a non-negative integer",
            Kind::Float => "a number",
            Kind::Bool => "a boolean (true or false)",
            Kind::StrList => "an array of strings",
            Kind::FloatList => "an array of numbers",
            Kind::StrOrStrList => "a string or an array of strings",
        }
    }

    /// Whether a `--set` value should be kept as the literal text when it
    /// parses as something other than a string (`output.dir=2024`).
    pub(crate) fn wants_string(self) -> bool {
        matches!(self, Kind::Str | Kind::StrOrStrList)
    }
}

pub(crate) struct KeySpec {
    pub section: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    /// `Some(what it is)` for the keys a config must set.
    pub required: Option<&'static str>,
}

const fn key(section: &'static str, name: &'static str, kind: Kind) -> KeySpec {
    KeySpec { section, name, kind, required: None }
}

const fn required(section: &'static str, name: &'static str, kind: Kind, what: &'static str) -> KeySpec {
    KeySpec { section, name, kind, required: Some(what) }
}

use Kind::*;

pub(crate) const KEYS: &[KeySpec] = &[
    required("model", "path", Str, "the base model: a Hugging Face folder, a hub id org/name or a .gguf file"),
    key("model", "dtype", Str),
    key("model", "quantize", Str),
    key("lora", "r", UInt),
    key("lora", "alpha", Float),
    key("lora", "dropout", Float),
    key("lora", "target_modules", StrList),
    key("lora", "use_rslora", Bool),
    key("lora", "init_from", Str),
    required("data", "train", StrOrStrList, "the training set: a JSONL file or an array of them"),
    key("data", "eval", Str),
    key("data", "eval_fraction", Float),
    key("data", "split_seed", UInt),
    key("data", "format", Str),
    key("data", "max_seq_len", UInt),
    key("data", "packing", Bool),
    key("data", "on_bad_record", Str),
    key("data", "weights", FloatList),
    key("data", "lint", Str),
    key("train", "epochs", UInt),
    key("train", "max_steps", UInt),
    key("train", "micro_batch_size", UInt),
    key("train", "grad_accum", UInt),
    key("train", "lr", Float),
    key("train", "lr_scheduler", Str),
    key("train", "warmup_steps", UInt),
    key("train", "warmup_ratio", Float),
    key("train", "min_lr_ratio", Float),
    key("train", "weight_decay", Float),
    key("train", "adam_beta1", Float),
    key("train", "adam_beta2", Float),
    key("train", "adam_eps", Float),
    key("train", "max_grad_norm", Float),
    key("train", "seed", UInt),
    key("train", "gradient_checkpointing", Bool),
    key("train", "checkpoint_layers", UInt),
    key("train", "offload_checkpoints", Bool),
    key("train", "log_every", UInt),
    key("eval", "every", UInt),
    key("eval", "batch_size", UInt),
    key("eval", "early_stopping_patience", UInt),
    key("eval", "early_stopping_min_delta", Float),
    key("eval", "regression", Str),
    key("eval", "regression_threshold", Float),
    key("eval", "generate_examples", UInt),
    key("eval", "max_new_tokens", UInt),
    required("output", "dir", Str, "the run folder"),
    key("output", "checkpoint_every", UInt),
    key("output", "keep_checkpoints", UInt),
    key("output", "save_best", Bool),
    key("output", "overwrite", Bool),
    key("device", "name", Str),
    key("device", "threads", UInt),
    key("device", "gpus", UInt),
];

pub(crate) fn lookup(section: &str, name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// Names other tools (transformers, PEFT, axolotl, nanoGPT) use for our keys,
/// which string similarity alone would not connect: `learning_rate` -> `train.lr`.
const ALIASES: &[(&str, &str)] = &[
    ("model_name_or_path", "model.path"),
    ("base_model", "model.path"),
    ("torch_dtype", "model.dtype"),
    ("precision", "model.dtype"),
    ("rank", "lora.r"),
    ("lora_r", "lora.r"),
    ("lora_alpha", "lora.alpha"),
    ("lora_dropout", "lora.dropout"),
    ("lora_target_modules", "lora.target_modules"),
    ("modules", "lora.target_modules"),
    ("rslora", "lora.use_rslora"),
    ("lora_model_dir", "lora.init_from"),
    ("adapter", "lora.init_from"),
    ("files", "data.train"),
    ("train_file", "data.train"),
    ("train_files", "data.train"),
    ("dataset", "data.train"),
    ("eval_file", "data.eval"),
    ("validation_file", "data.eval"),
    ("val_fraction", "data.eval_fraction"),
    ("val_set_size", "data.eval_fraction"),
    ("validation_split", "data.eval_fraction"),
    ("seq_len", "data.max_seq_len"),
    ("sequence_len", "data.max_seq_len"),
    ("max_length", "data.max_seq_len"),
    ("cutoff_len", "data.max_seq_len"),
    ("block_size", "data.max_seq_len"),
    ("sample_packing", "data.packing"),
    ("seed", "data.split_seed"),
    ("learning_rate", "train.lr"),
    ("num_epochs", "train.epochs"),
    ("num_train_epochs", "train.epochs"),
    ("max_iters", "train.max_steps"),
    ("batch_size", "train.micro_batch_size"),
    ("per_device_train_batch_size", "train.micro_batch_size"),
    ("gradient_accumulation_steps", "train.grad_accum"),
    ("gradient_accumulation", "train.grad_accum"),
    ("lr_scheduler_type", "train.lr_scheduler"),
    ("scheduler", "train.lr_scheduler"),
    ("warmup", "train.warmup_steps"),
    ("beta1", "train.adam_beta1"),
    ("beta2", "train.adam_beta2"),
    ("adam_epsilon", "train.adam_eps"),
    ("grad_clip", "train.max_grad_norm"),
    ("clip_grad_norm", "train.max_grad_norm"),
    ("logging_steps", "train.log_every"),
    ("eval_steps", "eval.every"),
    ("eval_interval", "eval.every"),
    ("eval_every", "eval.every"),
    ("eval_batch_size", "eval.batch_size"),
    ("per_device_eval_batch_size", "eval.batch_size"),
    ("patience", "eval.early_stopping_patience"),
    ("output_dir", "output.dir"),
    ("out_dir", "output.dir"),
    ("save_steps", "output.checkpoint_every"),
    ("save_every", "output.checkpoint_every"),
    ("save_total_limit", "output.keep_checkpoints"),
    ("device", "device.name"),
    ("num_threads", "device.threads"),
];

/// Names other tools use for our sections.
const SECTION_ALIASES: &[(&str, &str)] = &[
    ("training", "train"),
    ("trainer", "train"),
    ("optimizer", "train"),
    ("optim", "train"),
    ("dataset", "data"),
    ("datasets", "data"),
    ("adapter", "lora"),
    ("peft", "lora"),
    ("evaluation", "eval"),
    ("checkpoint", "output"),
    ("checkpointing", "output"),
];

/// The closest of `candidates` to `word`, if one is close enough to be a
/// plausible typo (Jaro-Winkler similarity >= 0.8, case-insensitive).
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The full key (`train.lr`) most likely meant by an unknown `name`, written
/// in `section` (`None`: at the top level, outside any section).
pub(crate) fn suggest_key(section: Option<&str>, name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    let aliased = || ALIASES.iter().filter(|(alias, _)| *alias == lower).map(|(_, full)| *full);
    // 1. A synonym that lives in this very section.
    if let Some(section) = section {
        if let Some(full) = aliased().find(|full| full.split('.').next() == Some(section)) {
            return Some(full.to_string());
        }
    }
    // 2. The same name in another section (`train.dropout` -> `lora.dropout`, a top-level `lr`).
    if let Some(k) = KEYS.iter().find(|k| k.name == lower) {
        return Some(format!("{}.{}", k.section, k.name));
    }
    // 3. A synonym anywhere.
    if let Some(full) = aliased().next() {
        return Some(full.to_string());
    }
    // 4. A typo of a key of this section.
    if let Some(section) = section {
        let names = KEYS.iter().filter(|k| k.section == section).map(|k| k.name);
        if let Some(best) = closest(name, names) {
            return Some(format!("{section}.{best}"));
        }
    }
    // 5. A typo of a key of any section.
    let best = closest(name, KEYS.iter().map(|k| k.name))?;
    KEYS.iter().find(|k| k.name == best).map(|k| format!("{}.{}", k.section, k.name))
}

/// The section most likely meant by an unknown `[name]`.
pub(crate) fn suggest_section(name: &str) -> Option<&'static str> {
    let lower = name.to_lowercase();
    if let Some((_, section)) = SECTION_ALIASES.iter().find(|(alias, _)| *alias == lower) {
        return Some(section);
    }
    closest(name, SECTIONS.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_belongs_to_a_known_section_once() {
        for k in KEYS {
            assert!(SECTIONS.contains(&k.section), "{}.{}", k.section, k.name);
            assert_eq!(KEYS.iter().filter(|o| o.section == k.section && o.name == k.name).count(), 1);
        }
        for (alias, full) in ALIASES {
            let (section, name) = full.split_once('.').unwrap();
            assert!(lookup(section, name).is_some(), "alias {alias} -> {full}");
        }
    }

    #[test]
    fn suggestions_for_typos_synonyms_and_misplaced_keys() {
        assert_eq!(suggest_key(Some("train"), "learning_rate").as_deref(), Some("train.lr"));
        assert_eq!(suggest_key(Some("lora"), "rank").as_deref(), Some("lora.r"));
        assert_eq!(suggest_key(Some("train"), "lrr").as_deref(), Some("train.lr"));
        assert_eq!(suggest_key(Some("lora"), "target_module").as_deref(), Some("lora.target_modules"));
        assert_eq!(suggest_key(Some("train"), "dropout").as_deref(), Some("lora.dropout"));
        assert_eq!(suggest_key(None, "lr").as_deref(), Some("train.lr"));
        // `batch_size` is a key of [eval] but in [train] it means the micro-batch.
        assert_eq!(suggest_key(Some("train"), "batch_size").as_deref(), Some("train.micro_batch_size"));
        assert_eq!(suggest_key(Some("train"), "zzzz"), None);
        assert_eq!(suggest_section("trian"), Some("train"));
        assert_eq!(suggest_section("training"), Some("train"));
        assert_eq!(suggest_section("optimizer"), Some("train"));
        assert_eq!(suggest_section("xyz"), None);
        assert_eq!(closest("cosin", ["cosine", "linear", "constant"]), Some("cosine"));
        assert_eq!(closest("q_porj", ["q_proj", "k_proj", "gate_proj"]), Some("q_proj"));
    }
}
