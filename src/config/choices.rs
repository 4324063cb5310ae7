//! The keys that take one of a fixed set of names (`train.lr_scheduler = "cosine"`). Each
//! is read into its enum when the structs are deserialized (`schema.rs`); a name its enum
//! does not take is caught here first, on the document, so that the message can name the
//! file and line, list the allowed names and suggest the closest.
//!
//! Such a key is taken out of the document (its default stands in while the structs are
//! filled) and its error is kept in [`BadChoices`] until `validate.rs` reaches the key:
//! with several problems in one config, the one reported is the first in `validate`'s order.

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::{Table, Value};

use super::document::Origins;
use super::error::ConfigError;
use super::keys::closest;
use super::schema::{
    BadDeviceName, DeviceName, LintMode, BAD_RECORD_POLICIES, DATA_FORMATS, DEVICE_NAMES, DTYPES, LINT_MODES,
    LR_SCHEDULERS, QUANTIZE, TARGET_MODULES,
};
use super::validate::list_problem;
use crate::data::{BadRecordPolicy, FormatChoice};
use crate::lora::Target;
use crate::model::quantized::Quantize;
use crate::model::FloatDtype;
use crate::train::schedule::Decay;

/// The errors of the choice keys whose value was not one of their names, by full key, in
/// key order.
#[derive(Debug, Default)]
pub(crate) struct BadChoices(Vec<(&'static str, ConfigError)>);

impl BadChoices {
    /// `key`'s error, if its value was not one of its names.
    pub(crate) fn check(&mut self, key: &str) -> Result<(), ConfigError> {
        match self.0.iter().position(|(k, _)| *k == key) {
            Some(i) => Err(self.0.remove(i).1),
            None => Ok(()),
        }
    }

    /// The first error that no [`BadChoices::check`] took (none, when `validate` checks
    /// every choice key).
    pub(crate) fn rest(mut self) -> Result<(), ConfigError> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(self.0.remove(0).1),
        }
    }
}

/// Takes every choice key whose value its enum does not read out of `table`, keeping its
/// error. Runs after the types are checked, so each value is a string (a list of strings
/// for `lora.target_modules`).
pub(crate) fn take_bad(table: &mut Table, origins: &Origins) -> BadChoices {
    let mut p = Pass { table, origins, bad: BadChoices::default() };
    p.one_of::<FloatDtype>("model.dtype", DTYPES);
    p.one_of::<Quantize>("model.quantize", QUANTIZE);
    p.list_of::<Target>("lora.target_modules", TARGET_MODULES);
    p.one_of::<FormatChoice>("data.format", DATA_FORMATS);
    p.one_of::<BadRecordPolicy>("data.on_bad_record", BAD_RECORD_POLICIES);
    p.one_of::<LintMode>("data.lint", LINT_MODES);
    p.one_of::<Decay>("train.lr_scheduler", LR_SCHEDULERS);
    p.device("device.name");
    p.bad
}

/// Whether `T`'s `Deserialize` takes `name`: the one rule of which names a choice has.
fn reads_as<T: DeserializeOwned>(name: &str) -> bool {
    let name: serde::de::value::StrDeserializer<serde::de::value::Error> = name.into_deserializer();
    T::deserialize(name).is_ok()
}

struct Pass<'a> {
    table: &'a mut Table,
    origins: &'a Origins,
    bad: BadChoices,
}

impl Pass<'_> {
    fn value(&self, key: &str) -> Option<&Value> {
        let (section, name) = key.split_once('.').expect("a full key");
        self.table.get(section)?.get(name)
    }

    fn reject(&mut self, key: &'static str, error: ConfigError) {
        let (section, name) = key.split_once('.').expect("a full key");
        if let Some(Value::Table(t)) = self.table.get_mut(section) {
            t.remove(name);
        }
        self.bad.0.push((key, error));
    }

    fn unknown_value(&self, key: &str, got: &str, allowed: &'static [&'static str]) -> ConfigError {
        ConfigError::UnknownValue {
            at: self.origins.at(key),
            key: key.to_string(),
            got: got.to_string(),
            allowed: allowed.to_vec(),
            suggestion: closest(got, allowed.iter().copied()).map(str::to_string),
        }
    }

    fn one_of<T: DeserializeOwned>(&mut self, key: &'static str, allowed: &'static [&'static str]) {
        let Some(got) = self.value(key).and_then(Value::as_str) else { return };
        if !reads_as::<T>(got) {
            let error = self.unknown_value(key, got, allowed);
            self.reject(key, error);
        }
    }

    /// A list whose entries are each one of `allowed`. As `validate` checks a list first
    /// (not empty, no repeats), a list with a repeat is reported as such here too.
    fn list_of<T: DeserializeOwned>(&mut self, key: &'static str, allowed: &'static [&'static str]) {
        let Some(items) = self.value(key).and_then(Value::as_array) else { return };
        let items: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
        let Some(got) = items.iter().find(|item| !reads_as::<T>(item)) else { return };
        let error = match list_problem(&items) {
            Some(reason) => ConfigError::Invalid { at: self.origins.at(key), key: key.to_string(), reason },
            None => self.unknown_value(key, got, allowed),
        };
        self.reject(key, error);
    }

    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    fn device(&mut self, key: &'static str) {
        let Some(name) = self.value(key).and_then(Value::as_str) else { return };
        let error = match DeviceName::parse(name) {
            Ok(_) => return,
            Err(BadDeviceName::Unknown) => ConfigError::UnknownValue {
                at: self.origins.at(key),
                key: key.to_string(),
                got: name.to_string(),
                allowed: DEVICE_NAMES.to_vec(),
                suggestion: closest(name, ["auto", "cpu", "cuda"]).map(str::to_string),
            },
            Err(e) => ConfigError::Invalid { at: self.origins.at(key), key: key.to_string(), reason: e.reason(name) },
        };
        self.reject(key, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    /// Each list of names is exactly what its enum reads and writes: every name reads as a
    /// value that writes the same name back, one name per value.
    fn names_match<T: DeserializeOwned + Serialize + PartialEq>(names: &[&str], values: usize) {
        let mut seen: Vec<T> = Vec::new();
        for name in names {
            let v: T = serde_json::from_value(serde_json::json!(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(serde_json::to_value(&v).unwrap(), serde_json::json!(name));
            assert!(!seen.contains(&v), "{name} twice");
            seen.push(v);
        }
        assert_eq!(names.len(), values, "{names:?}");
    }

    #[test]
    fn name_lists_match_their_enums() {
        names_match::<FloatDtype>(DTYPES, FloatDtype::ALL.len());
        names_match::<Quantize>(QUANTIZE, Quantize::ALL.len());
        names_match::<Target>(TARGET_MODULES, Target::ALL.len());
        names_match::<FormatChoice>(DATA_FORMATS, 1 + crate::data::DataFormat::ALL.len());
        names_match::<BadRecordPolicy>(BAD_RECORD_POLICIES, 2);
        names_match::<LintMode>(LINT_MODES, 3);
        names_match::<Decay>(LR_SCHEDULERS, 3);
        for name in ["auto", "cpu", "cuda", "cuda:0", "cuda:12"] {
            let d: DeviceName = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!((d.to_string(), name.parse::<DeviceName>().unwrap()), (name.to_string(), d));
        }
        assert!(reads_as::<FormatChoice>("prompt_completion"), "the other spelling of prompt-completion");
    }

    /// The resolved config writes each choice as the name the file gave.
    #[test]
    fn choices_write_back_the_names_read() {
        let text = r#"
[model]
path = "m.gguf"
dtype = "bf16"
quantize = "q4_k"
[lora]
target_modules = ["v_proj", "down_proj"]
[data]
train = "t.jsonl"
format = "prompt-completion"
on_bad_record = "skip"
lint = "warn"
[train]
lr_scheduler = "linear"
[output]
dir = "runs/x"
[device]
name = "cuda:1"
"#;
        let out = crate::config::TrainConfig::from_str(text, "run.toml", &[]).unwrap().to_toml_string();
        for line in [
            "dtype = \"bf16\"",
            "quantize = \"q4_k\"",
            "target_modules = [\"v_proj\", \"down_proj\"]",
            "format = \"prompt-completion\"",
            "on_bad_record = \"skip\"",
            "lint = \"warn\"",
            "lr_scheduler = \"linear\"",
            "name = \"cuda:1\"",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
    }

    #[test]
    fn command_line_device_messages() {
        assert_eq!(
            "gpu".parse::<DeviceName>().unwrap_err(),
            "unknown device \"gpu\" (expected auto, cpu, cuda or cuda:N)"
        );
        let e = "cuda:x".parse::<DeviceName>().unwrap_err();
        assert!(e.starts_with("device \"cuda:x\": the GPU number after \"cuda:\" must be"), "{e}");
    }
}
