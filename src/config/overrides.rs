//! `--set SECTION.KEY=VALUE` overrides, applied to the parsed document
//! before its types are checked, so an override is held to the same rules as
//! the file.
//!
//! VALUE is read as a TOML value (`1e-4`, `true`, `"a.jsonl"`,
//! `["q_proj","v_proj"]`); text that is not one is taken as a bare string, so
//! `model.path=models/x.gguf` needs no quotes. For a key that takes a string,
//! VALUE is kept as written even when it would read as a number or date
//! (`output.dir=2024`).

use toml::{Table, Value};

use super::document::Origins;
use super::error::ConfigError;
use super::keys::{self, Kind, SECTIONS};

/// One parsed `--set`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Override {
    pub section: &'static str,
    pub name: &'static str,
    pub value: Value,
}

pub(crate) fn parse(text: &str) -> Result<Override, ConfigError> {
    let syntax = |reason: String| ConfigError::OverrideSyntax { text: text.to_string(), reason };
    let Some((key, raw)) = text.split_once('=') else {
        return Err(syntax("expected SECTION.KEY=VALUE, e.g. train.lr=1e-4".to_string()));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(syntax("the key before '=' is missing; expected SECTION.KEY=VALUE".to_string()));
    }
    let Some((section, name)) = key.split_once('.') else {
        let hint = match keys::suggest_key(None, key) {
            Some(full) => format!(" (did you mean \"{full}\"?)"),
            None => String::new(),
        };
        return Err(syntax(format!("\"{key}\" names no section; expected SECTION.KEY=VALUE{hint}")));
    };
    let at = format!("--set {text}");
    let Some(&section) = SECTIONS.iter().find(|s| **s == section) else {
        return Err(ConfigError::UnknownSection {
            at,
            section: section.to_string(),
            suggestion: keys::suggest_section(section).map(str::to_string),
        });
    };
    let Some(spec) = keys::lookup(section, name) else {
        return Err(ConfigError::UnknownKey {
            at,
            key: key.to_string(),
            suggestion: keys::suggest_key(Some(section), name),
        });
    };
    let raw = raw.trim();
    let value = match raw.parse::<Value>() {
        Ok(v @ (Value::String(_) | Value::Array(_))) => v,
        Ok(v) if !spec.kind.wants_string() => v,
        Ok(_) => Value::String(raw.to_string()),
        Err(_) => match spec.kind {
            Kind::StrList | Kind::StrOrStrList => unquoted_list(raw).unwrap_or_else(|| Value::String(raw.to_string())),
            _ => Value::String(raw.to_string()),
        },
    };
    Ok(Override { section: spec.section, name: spec.name, value })
}

/// `[q_proj,v_proj]`: an array whose entries lost their quotes, as the shell
/// leaves `--set lora.target_modules=["q_proj","v_proj"]` when it is not
/// quoted as a whole.
fn unquoted_list(raw: &str) -> Option<Value> {
    let inner = raw.strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.is_empty() {
        return Some(Value::Array(Vec::new()));
    }
    let items = inner.split(',').map(|item| Value::String(item.trim().trim_matches(['"', '\'']).to_string()));
    Some(Value::Array(items.collect()))
}

/// Parses and applies `overrides` in order (a later one wins), recording
/// each key's override for messages.
pub(crate) fn apply(table: &mut Table, overrides: &[String], origins: &mut Origins) -> Result<(), ConfigError> {
    for text in overrides {
        let o = parse(text)?;
        let section = table.entry(o.section).or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(section) = section {
            section.insert(o.name.to_string(), o.value);
        }
        origins.set_by_override(format!("{}.{}", o.section, o.name), text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        parse(text).unwrap().value
    }

    #[test]
    fn values_of_each_type() {
        assert_eq!(value("train.lr=1e-4"), Value::Float(1e-4));
        assert_eq!(value("lora.r = 8"), Value::Integer(8));
        assert_eq!(value("data.packing=true"), Value::Boolean(true));
        assert_eq!(value("data.train=\"a.jsonl\""), Value::String("a.jsonl".into()));
        assert_eq!(
            value("lora.target_modules=[\"q_proj\",\"v_proj\"]"),
            Value::Array(vec![Value::String("q_proj".into()), Value::String("v_proj".into())])
        );
        // Not TOML: a bare string.
        assert_eq!(value("model.path=models/x.gguf"), Value::String("models/x.gguf".into()));
        assert_eq!(value("train.lr_scheduler=linear"), Value::String("linear".into()));
        // A string key keeps what reads as a number; a number key does not.
        assert_eq!(value("output.dir=2024"), Value::String("2024".into()));
        assert_eq!(value("train.seed=2024"), Value::Integer(2024));
        // Quotes that the shell took away.
        assert_eq!(
            value("lora.target_modules=[q_proj, v_proj]"),
            Value::Array(vec![Value::String("q_proj".into()), Value::String("v_proj".into())])
        );
        assert_eq!(value("data.train=[a.jsonl]"), Value::Array(vec![Value::String("a.jsonl".into())]));
        assert_eq!(value("train.lr=[1e-4]"), Value::Array(vec![Value::Float(1e-4)]));
        // `=` inside the value belongs to the value.
        assert_eq!(value("output.dir=runs/a=b"), Value::String("runs/a=b".into()));
    }

    #[test]
    fn syntax_errors_name_the_override() {
        let msg = parse("train.lr").unwrap_err().to_string();
        assert!(msg.starts_with("--set train.lr: expected SECTION.KEY=VALUE"), "{msg}");
        let msg = parse("lr=1e-4").unwrap_err().to_string();
        assert!(msg.starts_with("--set lr=1e-4: \"lr\" names no section"), "{msg}");
        assert!(msg.contains("did you mean \"train.lr\"?"), "{msg}");
        let msg = parse("=1").unwrap_err().to_string();
        assert!(msg.starts_with("--set =1: the key before '=' is missing"), "{msg}");
    }

    #[test]
    fn unknown_keys_and_sections_suggest_the_closest() {
        let msg = parse("train.lrr=1").unwrap_err().to_string();
        assert_eq!(msg, "--set train.lrr=1: unknown key \"train.lrr\" (did you mean \"train.lr\"?)");
        let msg = parse("trian.lr=1").unwrap_err().to_string();
        assert!(msg.starts_with("--set trian.lr=1: unknown section [trian]"), "{msg}");
        assert!(msg.ends_with("(did you mean [train]?)"), "{msg}");
        let msg = parse("train.lr.x=1").unwrap_err().to_string();
        assert!(msg.contains("unknown key \"train.lr.x\""), "{msg}");
    }

    #[test]
    fn apply_creates_missing_sections_and_later_wins() {
        let mut table = Table::new();
        let mut origins = Origins::default();
        let overrides = ["lora.r=4".to_string(), "lora.r=8".to_string()];
        apply(&mut table, &overrides, &mut origins).unwrap();
        assert_eq!(table["lora"]["r"], Value::Integer(8));
        assert_eq!(origins.at("lora.r"), "--set lora.r=8");
    }
}
