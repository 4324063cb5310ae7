//! Errors from reading a run configuration.
//!
//! Every message starts with where the problem is — `FILE:LINE`, `FILE` (for a
//! default or a missing key) or `--set OVERRIDE` — then names the full key
//! (`train.lr`), so it can be printed as-is on the command line.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    /// The text is not valid TOML.
    #[error("{file}:{line}:{column}: invalid TOML: {message}\n{line:>5} | {line_text}")]
    Syntax { file: String, line: usize, column: usize, message: String, line_text: String },

    /// A `--set` override is not of the form `SECTION.KEY=VALUE`.
    #[error("--set {text}: {reason}")]
    OverrideSyntax { text: String, reason: String },

    /// A table that is not one of the seven sections.
    #[error("{at}: unknown section [{section}] (sections: [model] [lora] [data] [train] [eval] [output] [device]){}", DidYouMean(suggestion.as_deref(), "[", "]"))]
    UnknownSection { at: String, section: String, suggestion: Option<String> },

    /// A key that no section has; `suggestion` is the closest valid full key.
    #[error("{at}: unknown key \"{key}\"{}", DidYouMean(suggestion.as_deref(), "\"", "\""))]
    UnknownKey { at: String, key: String, suggestion: Option<String> },

    /// A required key (`model.path`, `data.train`, `output.dir`) is absent.
    #[error("{file}: [{section}] {name} is required ({meaning})")]
    MissingKey { file: String, section: &'static str, name: &'static str, meaning: &'static str },

    /// A value of the wrong TOML type.
    #[error("{at}: {key}: expected {expected}, found {found}")]
    WrongType { at: String, key: String, expected: &'static str, found: String },

    /// A number outside its range.
    #[error("{at}: {key} must be {allowed} (got {got})")]
    OutOfRange { at: String, key: String, allowed: String, got: String },

    /// A string that is not one of a fixed set of values.
    #[error("{at}: {key}: unknown value \"{got}\" (expected one of: {}){}", allowed.join(", "), DidYouMean(suggestion.as_deref(), "\"", "\""))]
    UnknownValue { at: String, key: String, got: String, allowed: Vec<&'static str>, suggestion: Option<String> },

    /// A value of the right type and range that is still not acceptable
    /// (an empty path, a duplicated list entry ...).
    #[error("{at}: {key}: {reason}")]
    Invalid { at: String, key: String, reason: String },

    /// Two settings that cannot be used together.
    #[error("{at}: {reason}")]
    Conflict { at: String, keys: [&'static str; 2], reason: String },

    /// The checked table still did not fit the structs (a bug in the key
    /// table of `keys.rs`, which should rule this out).
    #[error("{file}: {message}")]
    Deserialize { file: String, message: String },
}

/// ` (did you mean "x"?)`, or nothing.
struct DidYouMean<'a>(Option<&'a str>, &'static str, &'static str);

impl fmt::Display for DidYouMean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " (did you mean {}{s}{}?)", self.1, self.2),
            None => Ok(()),
        }
    }
}
