//! The training-run configuration: a TOML file with the sections `[model]`
//! `[lora]` `[data]` `[train]` `[eval]` `[output]` `[device]`, turned into
//! typed, validated structs at the edge (see `configs/README.md` for every
//! key).
//!
//! Loading goes one way, each step in its own file:
//! 1. `document.rs`: parse the TOML (syntax errors name file, line and
//!    column) and reject unknown sections and keys with a did-you-mean;
//! 2. `overrides.rs`: apply `--set SECTION.KEY=VALUE` overrides in order;
//! 3. `document.rs`: check each key's TOML type and the required keys;
//! 4. `choices.rs`: take out the keys whose value is not one of their names (the
//!    error waits for step 6);
//! 5. `schema.rs`: deserialize into [`TrainConfig`], defaults filling the rest, each
//!    choice (`train.lr_scheduler`, `model.dtype`, ...) into its enum;
//! 6. `validate.rs`: ranges, allowed values and conflicting keys.
//!
//! Paths are kept exactly as written; relative paths are relative to the
//! current directory of the process, not to the config file. Errors are
//! [`ConfigError`]s whose messages start with where the problem is
//! (`FILE:LINE`, `FILE` or `--set OVERRIDE`) and can be printed as-is.
//!
//! `env.rs` holds the other half of a run's settings: the environment variables, read
//! once into [`EnvKnobs`].

mod choices;
mod document;
mod env;
mod error;
mod keys;
mod overrides;
mod schema;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use env::{EnvKnobs, HubKnobs, FLASH_WARPS_VAR, NUM_THREADS_VAR};
pub use error::ConfigError;
pub use schema::{
    BadDeviceName, DataSection, DeviceName, DeviceSection, EvalSection, LintMode, LoraSection, ModelSection,
    OutputSection, TrainConfig, TrainSection, BAD_RECORD_POLICIES, DATA_FORMATS, DEVICE_NAMES, DTYPES, LINT_MODES,
    LR_SCHEDULERS, QUANTIZE, TARGET_MODULES,
};

impl TrainConfig {
    /// Reads the TOML file at `path`, applies `overrides` (`"train.lr=1e-4"`,
    /// in order, a later one winning) and validates the result.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        TrainConfig::from_str(&text, &path.display().to_string(), overrides)
    }

    /// As [`TrainConfig::from_file`], for TOML text already in memory;
    /// `source_name` stands for the file in messages.
    pub fn from_str(text: &str, source_name: &str, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
        let (mut table, mut origins) = document::parse(text, source_name)?;
        document::check_known_keys(&table, &origins)?;
        overrides::apply(&mut table, overrides, &mut origins)?;
        document::check_types(&mut table, &origins)?;
        document::check_required(&table, &origins)?;
        let bad_choices = choices::take_bad(&mut table, &origins);
        let config: TrainConfig = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            ConfigError::Deserialize { file: source_name.to_string(), message: e.message().to_string() }
        })?;
        validate::validate(&config, &origins, bad_choices)?;
        Ok(config)
    }

    /// The configuration as TOML, every key written out (defaults included,
    /// unset optional keys left out); reading it back gives an equal config.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self)
            .expect("a TrainConfig is plain tables of strings, numbers and arrays, which TOML can hold")
    }
}
