//! The config file as a TOML document, before it becomes typed structs:
//! parsing (with line numbers for errors), where each key was set, and the
//! checks that need the raw document — unknown sections and keys, value
//! types, required keys.

use std::collections::HashMap;

use serde::Deserialize;
use toml::{Table, Value};

use super::error::ConfigError;
use super::keys::{self, Kind, KEYS, SECTIONS};

/// Where each key's value came from, so that a message can point there:
/// `FILE:LINE` for a key set in the file, `--set TEXT` for an override, and
/// the bare file name for a default.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    file: String,
    /// Full key (`train.lr`, or a section `train`) -> 1-based line in the file.
    lines: HashMap<String, usize>,
    /// Full key -> the `--set` text that set it last.
    overrides: HashMap<String, String>,
}

impl Origins {
    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    /// The prefix of a message about `key`.
    pub(crate) fn at(&self, key: &str) -> String {
        if let Some(text) = self.overrides.get(key) {
            format!("--set {text}")
        } else if let Some(line) = self.lines.get(key) {
            format!("{}:{line}", self.file)
        } else {
            self.file.clone()
        }
    }

    /// The prefix of a message about several keys: an override of one of
    /// them if there is one (the user's latest word), else the first one set in the file.
    pub(crate) fn at_any(&self, keys: &[&str]) -> String {
        let key = keys
            .iter()
            .find(|k| self.overrides.contains_key(**k))
            .or_else(|| keys.iter().find(|k| self.lines.contains_key(**k)))
            .unwrap_or(&keys[0]);
        self.at(key)
    }

    pub(crate) fn set_by_override(&mut self, key: String, text: &str) {
        self.overrides.insert(key, text.to_string());
    }
}

/// Parses `text` into a table and records the line of every section and key.
pub(crate) fn parse(text: &str, file: &str) -> Result<(Table, Origins), ConfigError> {
    let document = toml::de::DeTable::parse(text).map_err(|e| syntax_error(text, file, &e))?;
    let mut origins = Origins { file: file.to_string(), ..Origins::default() };
    record_lines(text, document.get_ref(), "", &mut origins.lines);
    let table = Table::deserialize(toml::de::Deserializer::from(document)).map_err(|e| syntax_error(text, file, &e))?;
    Ok((table, origins))
}

fn syntax_error(text: &str, file: &str, error: &toml::de::Error) -> ConfigError {
    let start = error.span().map_or(0, |span| span.start).min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("").to_string();
    let mut message = error.message().trim_end().to_string();
    if let Some(hint) = unquoted_string_hint(&line_text) {
        message.push_str(&hint);
    }
    ConfigError::Syntax {
        file: file.to_string(),
        line: text[..start].matches('\n').count() + 1,
        column: text[line_start..start].chars().count() + 1,
        message,
        line_text,
    }
}

/// `lr = fast` reads to TOML as a broken `false`; say what was probably meant.
fn unquoted_string_hint(line: &str) -> Option<String> {
    let (key, value) = line.split_once('=')?;
    let (key, value) = (key.trim(), value.trim());
    let word = value.split(|c: char| c.is_whitespace() || c == '#').next()?;
    let bare = word.starts_with(|c: char| c.is_ascii_alphabetic()) && !["true", "false", "inf", "nan"].contains(&word);
    bare.then(|| format!(" (a string must be quoted: {key} = \"{word}\")"))
}

fn record_lines(text: &str, table: &toml::de::DeTable<'_>, prefix: &str, lines: &mut HashMap<String, usize>) {
    for (key, value) in table {
        let full = format!("{prefix}{}", key.get_ref());
        let offset = key.span().start.min(text.len());
        lines.insert(full.clone(), text[..offset].matches('\n').count() + 1);
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            record_lines(text, inner, &format!("{full}."), lines);
        }
    }
}

/// Rejects unknown sections and keys, naming the closest valid one.
pub(crate) fn check_known_keys(table: &Table, origins: &Origins) -> Result<(), ConfigError> {
    for (name, value) in table {
        match (SECTIONS.contains(&name.as_str()), value) {
            (true, Value::Table(section)) => {
                for key in section.keys() {
                    if keys::lookup(name, key).is_none() {
                        let full = format!("{name}.{key}");
                        return Err(ConfigError::UnknownKey {
                            at: origins.at(&full),
                            suggestion: keys::suggest_key(Some(name), key),
                            key: full,
                        });
                    }
                }
            }
            (true, other) => {
                return Err(ConfigError::WrongType {
                    at: origins.at(name),
                    key: name.clone(),
                    expected: "a table (a [section] of keys)",
                    found: describe(other),
                })
            }
            (false, Value::Table(_)) => {
                return Err(ConfigError::UnknownSection {
                    at: origins.at(name),
                    section: name.clone(),
                    suggestion: keys::suggest_section(name).map(str::to_string),
                })
            }
            (false, _) => {
                return Err(ConfigError::UnknownKey {
                    at: origins.at(name),
                    key: name.clone(),
                    suggestion: keys::suggest_key(None, name),
                })
            }
        }
    }
    Ok(())
}

/// Checks the TOML type of every key present, converting integers given for
/// a number (`alpha = 32`) into floats.
pub(crate) fn check_types(table: &mut Table, origins: &Origins) -> Result<(), ConfigError> {
    for spec in KEYS {
        let Some(value) = table.get_mut(spec.section).and_then(|s| s.as_table_mut()).and_then(|s| s.get_mut(spec.name))
        else {
            continue;
        };
        let full = format!("{}.{}", spec.section, spec.name);
        let wrong = |key: String, expected: &'static str, found: &Value| ConfigError::WrongType {
            at: origins.at(&full),
            key,
            expected,
            found: describe(found),
        };
        // Integers in a number list are numbers too (`weights = [4, 1]`).
        if let (Kind::FloatList, Value::Array(items)) = (spec.kind, &mut *value) {
            for item in items.iter_mut() {
                if let Value::Integer(i) = *item {
                    *item = Value::Float(i as f64);
                }
            }
        }
        match (spec.kind, &*value) {
            (Kind::Str, Value::String(_))
            | (Kind::Bool, Value::Boolean(_))
            | (Kind::Float, Value::Float(_))
            | (Kind::StrOrStrList, Value::String(_)) => {}
            (Kind::UInt, Value::Integer(i)) if *i >= 0 => {}
            (Kind::Float, Value::Integer(i)) => *value = Value::Float(*i as f64),
            (Kind::StrList | Kind::StrOrStrList, Value::Array(items)) => {
                if let Some((i, item)) = items.iter().enumerate().find(|(_, item)| !item.is_str()) {
                    return Err(wrong(format!("{full}[{i}]"), "a string", item));
                }
            }
            (Kind::FloatList, Value::Array(items)) => {
                if let Some((i, item)) = items.iter().enumerate().find(|(_, item)| !item.is_float()) {
                    return Err(wrong(format!("{full}[{i}]"), "a number", item));
                }
            }
            (kind, other) => return Err(wrong(full.clone(), kind.expected(), other)),
        }
    }
    Ok(())
}

/// Rejects a config without one of the keys every run needs.
pub(crate) fn check_required(table: &Table, origins: &Origins) -> Result<(), ConfigError> {
    for spec in KEYS {
        let Some(meaning) = spec.required else {
            continue;
        };
        let present = table.get(spec.section).and_then(|s| s.get(spec.name)).is_some();
        if !present {
            return Err(ConfigError::MissingKey {
                file: origins.file().to_string(),
                section: spec.section,
                name: spec.name,
                meaning,
            });
        }
    }
    Ok(())
}

/// `a string "fast"`, `an integer -1`, `an array [1, 2]`: a value as a message shows it.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("a string {s:?}"),
        Value::Integer(i) => format!("an integer {i}"),
        Value::Float(f) => format!("a number {f}"),
        Value::Boolean(b) => format!("a boolean {b}"),
        Value::Datetime(d) => format!("a date-time {d}"),
        Value::Array(_) => format!("an array {value}"),
        Value::Table(_) => "a table".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_sections_and_keys() {
        let text = "# a comment\n[model]\npath = \"m\"\n\n[train]\nlr = 1e-4\nlora.r = 8\n";
        let (table, origins) = parse(text, "run.toml").unwrap();
        assert_eq!(origins.at("model"), "run.toml:2");
        assert_eq!(origins.at("model.path"), "run.toml:3");
        assert_eq!(origins.at("train.lr"), "run.toml:6");
        assert_eq!(origins.at("train.lora.r"), "run.toml:7");
        assert_eq!(origins.at("data.train"), "run.toml");
        assert_eq!(table["train"]["lr"].as_float(), Some(1e-4));
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let text = "[model]\npath = \"m\"\n[train]\nlr = fast\n";
        let err = parse(text, "runs/x.toml").unwrap_err();
        let ConfigError::Syntax { line, column, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*line, *column), (4, 6));
        let msg = err.to_string();
        assert!(msg.starts_with("runs/x.toml:4:6: invalid TOML: "), "{msg}");
        assert!(msg.contains("4 | lr = fast"), "{msg}");
        assert!(msg.contains("(a string must be quoted: lr = \"fast\")"), "{msg}");
        let msg = parse("[train]\nlr = 1e-4 x\n", "r.toml").unwrap_err().to_string();
        assert!(!msg.contains("(a string must be quoted"), "{msg}");
    }

    #[test]
    fn describes_values_for_messages() {
        assert_eq!(describe(&Value::String("fast".into())), "a string \"fast\"");
        assert_eq!(describe(&Value::Integer(-1)), "an integer -1");
        assert_eq!(describe(&Value::Array(vec![Value::Integer(1), Value::Integer(2)])), "an array [1, 2]");
    }
}
