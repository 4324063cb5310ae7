//! Instruction data: JSONL files in one of several common layouts, read into
//! format-independent [`Record`]s.
//!
//! - `format.rs`: the formats, detection, and parsing of one JSON record;
//!   no I/O, so it can serve any source of JSON values;
//! - `jsonl.rs`: files, lines, the bad-record policy, and errors that point
//!   at `file:line`;
//! - `lint/`: `loratune data lint` and `dedup`: duplicates, leakage, conflicts, empty
//!   answers, turn order, truncation and statistics over whole files.
//!
//! Validation here is limited to what makes a record unusable; softer issues
//! (an empty assistant reply, say) are left to a later lint pass.

mod format;
mod jsonl;
pub mod lint;

use std::path::PathBuf;

pub use format::{
    detect_format, parse_prompt, parse_record, DataFormat, FormatChoice, PromptRecord, Record, RecordProblem,
};
pub use jsonl::{read_jsonl, read_jsonl_from, read_prompts, BadRecordPolicy, DataError};

/// A record with the line it came from, kept so later stages (tokenising,
/// length checks) can still point the user at the source line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// 1-based line number in the file.
    pub line: usize,
    pub record: Record,
}

/// The usable contents of one data file, plus what was passed over.
#[derive(Debug)]
pub struct Dataset {
    pub path: PathBuf,
    pub format: DataFormat,
    /// The line the format was detected from; `None` when it was given.
    pub format_detected_at: Option<usize>,
    pub examples: Vec<Example>,
    /// Every line rejected under [`BadRecordPolicy::Skip`], in file order.
    pub skipped: Vec<DataError>,
    /// Physical lines read, blank ones included.
    pub lines_read: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// One line for the CLI: "skipped K bad records of N in FILE; first
    /// reasons: line A: ...; line B: ... (and M more)", giving at most
    /// `n` reasons. `None` when nothing was skipped.
    pub fn skip_report(&self, n: usize) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let k = self.skipped.len();
        let total = k + self.examples.len();
        let noun = if k == 1 { "record" } else { "records" };
        let mut s = format!("skipped {k} bad {noun} of {total} in {}", self.path.display());
        let shown: Vec<String> = self.skipped.iter().take(n).map(jsonl::located_reason).collect();
        if !shown.is_empty() {
            let label = if shown.len() == 1 { "first reason" } else { "first reasons" };
            s.push_str(&format!("; {label}: {}", shown.join("; ")));
        }
        if k > shown.len() && !shown.is_empty() {
            s.push_str(&format!(" (and {} more)", k - shown.len()));
        }
        Some(s)
    }
}
