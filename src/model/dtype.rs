//! The float dtypes a user may choose for a model's weights (`[model] dtype`, `--dtype`).

use std::fmt;
use std::str::FromStr;

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// A compute or storage dtype as the config and the command line name it. The config
/// takes the short names only; `--dtype` also takes `float32`, `bfloat16` and `float16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatDtype {
    F32,
    Bf16,
    F16,
}

impl FloatDtype {
    pub const ALL: [FloatDtype; 3] = [FloatDtype::F32, FloatDtype::Bf16, FloatDtype::F16];

    /// `f32`, `bf16`, `f16`: the config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "f32",
            FloatDtype::Bf16 => "bf16",
            FloatDtype::F16 => "f16",
        }
    }

    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            FloatDtype::F32 => DType::F32,
            FloatDtype::Bf16 => DType::BF16,
            FloatDtype::F16 => DType::F16,
        }
    }
}

impl From<FloatDtype> for DType {
    fn from(d: FloatDtype) -> DType {
        d.dtype()
    }
}

impl fmt::Display for FloatDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FloatDtype {
    /// A plain message, so clap's `value_parser!` can show it as is.
    type Err = String;

    /// The command line's spelling: a short name or its long form (`bfloat16`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(FloatDtype::F32),
            "bf16" | "bfloat16" => Ok(FloatDtype::Bf16),
            "f16" | "float16" => Ok(FloatDtype::F16),
            other => Err(format!("unknown dtype \"{other}\" (expected f32, bf16 or f16)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_serialize_alike() {
        for d in FloatDtype::ALL {
            assert_eq!(d.name().parse::<FloatDtype>().unwrap(), d);
            assert_eq!(serde_json::to_value(d).unwrap(), d.name());
            assert_eq!(serde_json::from_value::<FloatDtype>(d.name().into()).unwrap(), d);
        }
        assert_eq!("bfloat16".parse::<FloatDtype>().unwrap().dtype(), DType::BF16);
        assert_eq!("fp16".parse::<FloatDtype>().unwrap_err(), "unknown dtype \"fp16\" (expected f32, bf16 or f16)");
        // The config takes the short names only.
        assert!(serde_json::from_value::<FloatDtype>("float32".into()).is_err());
    }
}
