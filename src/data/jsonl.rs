//! Reading a JSONL file into a [`Dataset`]: line splitting, format detection
//! across lines, the bad-record policy, and errors that carry file and line.
//!
//! Lines are read as bytes so that one badly encoded line is reported with its
//! number instead of aborting the whole read with a bare UTF-8 error.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use super::format::{detect_format, json_kind, parse_record, DataFormat, RecordProblem};
use super::{Dataset, Example};

/// What to do with a line that cannot become an example (`[data] on_bad_record`,
/// `--on-bad-record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRecordPolicy {
    /// Stop at the first bad line: the safe default for training data.
    #[default]
    Error,
    /// Collect bad lines in [`Dataset::skipped`] and carry on.
    Skip,
}

impl BadRecordPolicy {
    pub fn name(self) -> &'static str {
        match self {
            BadRecordPolicy::Error => "error",
            BadRecordPolicy::Skip => "skip",
        }
    }
}

impl fmt::Display for BadRecordPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BadRecordPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(BadRecordPolicy::Error),
            "skip" => Ok(BadRecordPolicy::Skip),
            _ => Err(format!("unknown bad-record policy {s:?} (expected error or skip)")),
        }
    }
}

/// Why a data file could not be read, or why one of its lines was rejected.
///
/// Display always leads with the file (and line, where there is one) so a
/// message can be shown to the user as is; [`DataError::reason`] gives the
/// text without that prefix, for lists that already name the file.
/// The underlying io errors are part of the message rather than a `source`,
/// so `anyhow`'s `{:#}` does not print them twice.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened.
    Open { path: PathBuf, error: io::Error },
    /// Reading failed part way through.
    Read { path: PathBuf, line: usize, error: io::Error },
    /// `offset` is the 0-based byte offset, from the start of the line, of the
    /// first byte that is not valid UTF-8.
    InvalidUtf8 { path: PathBuf, line: usize, offset: usize },
    /// `message` is serde_json's, without its position; `column` is 1-based.
    InvalidJson { path: PathBuf, line: usize, message: String, column: usize },
    /// Valid JSON that is not a usable record.
    Record { path: PathBuf, line: usize, problem: RecordProblem },
    /// The first JSON object matches no format and none was given.
    Undetectable { path: PathBuf, line: usize, keys: Vec<String> },
    /// Nothing but blank lines.
    NoRecords { path: PathBuf },
    /// Under [`BadRecordPolicy::Skip`], every record was bad; all their errors.
    AllBad { path: PathBuf, skipped: Vec<DataError> },
}

/// Formats in the order users think of them, for "expected ..." lists.
const LISTED_FORMATS: [DataFormat; 5] =
    [DataFormat::Alpaca, DataFormat::Messages, DataFormat::ShareGpt, DataFormat::PromptCompletion, DataFormat::Text];

impl DataError {
    pub fn path(&self) -> &Path {
        match self {
            DataError::Open { path, .. }
            | DataError::Read { path, .. }
            | DataError::InvalidUtf8 { path, .. }
            | DataError::InvalidJson { path, .. }
            | DataError::Record { path, .. }
            | DataError::Undetectable { path, .. }
            | DataError::NoRecords { path }
            | DataError::AllBad { path, .. } => path,
        }
    }

    /// The 1-based line the error is about, when it is about one line.
    pub fn line(&self) -> Option<usize> {
        match self {
            DataError::Read { line, .. }
            | DataError::InvalidUtf8 { line, .. }
            | DataError::InvalidJson { line, .. }
            | DataError::Record { line, .. }
            | DataError::Undetectable { line, .. } => Some(*line),
            DataError::Open { .. } | DataError::NoRecords { .. } | DataError::AllBad { .. } => None,
        }
    }

    /// Whether this is one bad line, which [`BadRecordPolicy::Skip`] may
    /// pass over, as opposed to a problem with the file as a whole.
    pub fn is_bad_record(&self) -> bool {
        matches!(self, DataError::InvalidUtf8 { .. } | DataError::InvalidJson { .. } | DataError::Record { .. })
    }

    /// The message without the leading `path:line: `.
    pub fn reason(&self) -> String {
        match self {
            DataError::Open { error, .. } => format!("cannot open: {error}"),
            DataError::Read { error, .. } => format!("read error: {error}"),
            DataError::InvalidUtf8 { offset, .. } => {
                format!("line is not valid UTF-8 (invalid byte at offset {offset})")
            }
            DataError::InvalidJson { message, column, .. } => {
                format!("invalid JSON: {message} at column {column}")
            }
            DataError::Record { problem, .. } => problem.to_string(),
            DataError::Undetectable { keys, .. } => {
                let has = if keys.is_empty() {
                    "it has no keys".to_owned()
                } else {
                    let quoted: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
                    format!("it has keys {}", quoted.join(", "))
                };
                let expected: Vec<String> =
                    LISTED_FORMATS.iter().map(|f| format!("{f} ({})", f.required_fields().join(", "))).collect();
                let (last, rest) = expected.split_last().expect("formats listed");
                format!(
                    "could not detect the format of the first record: {has}; expected {} or {last}",
                    rest.join(", ")
                )
            }
            DataError::NoRecords { .. } => "file has no records".to_owned(),
            DataError::AllBad { skipped, .. } => {
                let mut s = format!("no usable records: all {} records are bad", skipped.len());
                if let Some(first) = skipped.first() {
                    s.push_str(&format!("; first, {}", located_reason(first)));
                }
                s
            }
        }
    }
}

/// `line N: reason`, or just the reason for file-level errors.
pub(crate) fn located_reason(e: &DataError) -> String {
    match e.line() {
        Some(l) => format!("line {l}: {}", e.reason()),
        None => e.reason(),
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path().display();
        match (self, self.line()) {
            (DataError::Open { error, .. }, _) => write!(f, "cannot open {path}: {error}"),
            (_, Some(line)) => write!(f, "{path}:{line}: {}", self.reason()),
            (_, None) => write!(f, "{path}: {}", self.reason()),
        }
    }
}

/// Reads a JSONL data file.
///
/// `format: None` detects the format from the first line that parses as a
/// JSON object; later lines of another format are bad records. Blank lines
/// are ignored; a UTF-8 BOM on line 1 and CRLF endings are accepted.
pub fn read_jsonl(path: &Path, format: Option<DataFormat>, on_bad: BadRecordPolicy) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|error| DataError::Open { path: path.to_owned(), error })?;
    read_jsonl_from(BufReader::new(file), path, format, on_bad)
}

/// [`read_jsonl`] over any reader; `path` only names the source in messages
/// and in [`Dataset::path`].
pub fn read_jsonl_from<R: BufRead>(
    mut reader: R,
    path: &Path,
    format: Option<DataFormat>,
    on_bad: BadRecordPolicy,
) -> Result<Dataset, DataError> {
    let mut state = LineParser { path, format, detected_at: None };
    let mut examples = Vec::new();
    let mut skipped = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|error| DataError::Read {
            path: path.to_owned(),
            line: line + 1,
            error,
        })?;
        if n == 0 {
            break;
        }
        line += 1;
        match state.parse_line(line, &buf) {
            Ok(None) => {}
            Ok(Some(record)) => examples.push(Example { line, record }),
            Err(e) if e.is_bad_record() && on_bad == BadRecordPolicy::Skip => skipped.push(e),
            Err(e) => return Err(e),
        }
    }

    let Some(format) = state.format.filter(|_| !examples.is_empty()) else {
        return Err(if skipped.is_empty() {
            DataError::NoRecords { path: path.to_owned() }
        } else {
            DataError::AllBad { path: path.to_owned(), skipped }
        });
    };
    Ok(Dataset {
        path: path.to_owned(),
        format,
        format_detected_at: state.detected_at,
        examples,
        skipped,
        lines_read: line,
    })
}

/// Per-file state carried from line to line: the format, once known.
struct LineParser<'a> {
    path: &'a Path,
    format: Option<DataFormat>,
    detected_at: Option<usize>,
}

/// One line's JSON value; `Ok(None)` for a blank line.
fn parse_json_line(path: &Path, line: usize, raw: &[u8]) -> Result<Option<Value>, DataError> {
    let text =
        decode_line(raw, line).map_err(|offset| DataError::InvalidUtf8 { path: path.to_owned(), line, offset })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text).map(Some).map_err(|e| {
        let (message, column) = split_json_error(&e);
        DataError::InvalidJson { path: path.to_owned(), line, message, column }
    })
}

/// Prompts for generation, one per non-blank line, each with its line number: any
/// training record (its last assistant turn becomes the reference) or a prompt-only
/// record (see [`super::parse_prompt`]). The first bad line stops the read.
pub fn read_prompts(path: &Path) -> Result<Vec<(usize, super::PromptRecord)>, DataError> {
    let file = File::open(path).map_err(|error| DataError::Open { path: path.to_owned(), error })?;
    let mut reader = BufReader::new(file);
    let (mut out, mut buf, mut line) = (Vec::new(), Vec::new(), 0usize);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|error| DataError::Read {
            path: path.to_owned(),
            line: line + 1,
            error,
        })?;
        if n == 0 {
            break;
        }
        line += 1;
        if let Some(value) = parse_json_line(path, line, &buf)? {
            let prompt = super::parse_prompt(&value).map_err(|problem| DataError::Record {
                path: path.to_owned(),
                line,
                problem,
            })?;
            out.push((line, prompt));
        }
    }
    if out.is_empty() {
        return Err(DataError::NoRecords { path: path.to_owned() });
    }
    Ok(out)
}

impl LineParser<'_> {
    /// `Ok(None)` for a blank line.
    fn parse_line(&mut self, line: usize, raw: &[u8]) -> Result<Option<super::Record>, DataError> {
        let path = || self.path.to_owned();
        let Some(value) = parse_json_line(self.path, line, raw)? else {
            return Ok(None);
        };
        let Some(obj) = value.as_object() else {
            let problem = RecordProblem::NotAnObject { got: json_kind(&value) };
            return Err(DataError::Record { path: path(), line, problem });
        };
        let format = match self.format {
            Some(f) => f,
            None => {
                let f = detect_format(&value).ok_or_else(|| DataError::Undetectable {
                    path: path(),
                    line,
                    keys: obj.keys().cloned().collect(),
                })?;
                self.format = Some(f);
                self.detected_at = Some(line);
                f
            }
        };
        parse_record(&value, format).map(Some).map_err(|mut problem| {
            if let RecordProblem::FormatMismatch { detected_at, .. } = &mut problem {
                *detected_at = self.detected_at;
            }
            DataError::Record { path: path(), line, problem }
        })
    }
}

/// Strips the line ending (LF or CRLF) and, on line 1, a UTF-8 BOM.
/// On bad UTF-8 returns the offending byte's offset in the raw line.
fn decode_line(raw: &[u8], line: usize) -> Result<&str, usize> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let mut bytes = raw.strip_suffix(b"\n").unwrap_or(raw);
    bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let mut start = 0;
    if line == 1 && bytes.starts_with(BOM) {
        start = BOM.len();
    }
    std::str::from_utf8(&bytes[start..]).map_err(|e| start + e.valid_up_to())
}

/// serde_json puts "at line L column C" at the end of its message; the line
/// is always 1 here (one record per line), so keep only the column.
fn split_json_error(e: &serde_json::Error) -> (String, usize) {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    (message, e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Role;
    use crate::data::Record;
    use std::io::Write;

    /// Writes `bytes` to a temporary `train.jsonl`; the directory must outlive the read.
    fn file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.jsonl");
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        (dir, path)
    }

    fn read(
        bytes: &[u8],
        format: Option<DataFormat>,
        on_bad: BadRecordPolicy,
    ) -> (Result<Dataset, DataError>, PathBuf, tempfile::TempDir) {
        let (dir, path) = file(bytes);
        (read_jsonl(&path, format, on_bad), path, dir)
    }

    /// The error for `bytes` under the Error policy, as displayed, with the
    /// temporary path replaced by `data/train.jsonl`.
    fn err(bytes: &[u8], format: Option<DataFormat>) -> String {
        let (r, path, _dir) = read(bytes, format, BadRecordPolicy::Error);
        let e = r.expect_err("expected an error");
        let shown = e.to_string();
        let prefix = path.display().to_string();
        assert!(shown.contains(&prefix), "message does not name the file: {shown}");
        shown.replace(&prefix, "data/train.jsonl")
    }

    #[test]
    fn policy_parses() {
        assert_eq!("skip".parse::<BadRecordPolicy>().unwrap(), BadRecordPolicy::Skip);
        assert_eq!("Error".parse::<BadRecordPolicy>().unwrap(), BadRecordPolicy::Error);
        assert!("ignore".parse::<BadRecordPolicy>().unwrap_err().contains("expected error or skip"));
        assert_eq!(BadRecordPolicy::Skip.to_string(), "skip");
        assert_eq!(BadRecordPolicy::default(), BadRecordPolicy::Error);
    }

    #[test]
    fn reads_every_format_by_detection() {
        let cases: [(&str, DataFormat); 5] = [
            (r#"{"instruction":"i","input":"x","output":"o"}"#, DataFormat::Alpaca),
            (
                r#"{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}"#,
                DataFormat::Messages,
            ),
            (r#"{"conversations":[{"from":"human","value":"u"},{"from":"gpt","value":"a"}]}"#, DataFormat::ShareGpt),
            (r#"{"prompt":"p","completion":"c"}"#, DataFormat::PromptCompletion),
            (r#"{"text":"t","id":1}"#, DataFormat::Text),
        ];
        for (line, format) in cases {
            let body = format!("{line}\n{line}\n");
            let (r, path, _dir) = read(body.as_bytes(), None, BadRecordPolicy::Error);
            let ds = r.unwrap();
            assert_eq!(ds.path, path);
            assert_eq!(ds.format, format);
            assert_eq!(ds.format_detected_at, Some(1));
            assert_eq!(ds.examples.len(), 2);
            assert_eq!(ds.examples[1].line, 2);
            assert_eq!(ds.lines_read, 2);
            assert!(ds.skipped.is_empty());
        }
    }

    #[test]
    fn record_contents_survive_reading() {
        let (r, _p, _d) = read(
            b"{\"instruction\":\"Add\",\"input\":\"1 2\",\"output\":\"3\",\"system\":\"S\"}\n",
            None,
            BadRecordPolicy::Error,
        );
        let ds = r.unwrap();
        let m = ds.examples[0].record.messages().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].role, m[0].content.as_str()), (Role::System, "S"));
        assert_eq!((m[1].role, m[1].content.as_str()), (Role::User, "Add\n\n1 2"));
        assert_eq!((m[2].role, m[2].content.as_str()), (Role::Assistant, "3"));
    }

    #[test]
    fn explicit_format_wins() {
        // Detection would say messages (it comes first); the caller says text.
        let (r, _p, _d) = read(br#"{"text":"t","messages":[]}"#, Some(DataFormat::Text), BadRecordPolicy::Error);
        let ds = r.unwrap();
        assert_eq!(ds.format, DataFormat::Text);
        assert_eq!(ds.format_detected_at, None);
        assert_eq!(ds.examples[0].record, Record::Text("t".into()));
        // An explicit format also turns other-format lines into mismatches.
        assert_eq!(
            err(b"{\"text\":\"t\"}\n", Some(DataFormat::Alpaca)),
            "data/train.jsonl:1: record looks like text but the file's format is alpaca"
        );
    }

    #[test]
    fn bom_crlf_and_blank_lines() {
        let body = b"\xEF\xBB\xBF{\"text\":\"a\"}\r\n\r\n   \n\t\r\n{\"text\":\"b\\r\"}\r\n\n{\"text\":\"c\"}";
        let (r, _p, _d) = read(body, None, BadRecordPolicy::Error);
        let ds = r.unwrap();
        let got: Vec<(usize, Record)> = ds.examples.into_iter().map(|e| (e.line, e.record)).collect();
        assert_eq!(
            got,
            vec![(1, Record::Text("a".into())), (5, Record::Text("b\r".into())), (7, Record::Text("c".into())),]
        );
        assert_eq!(ds.lines_read, 7);
        assert!(ds.skipped.is_empty());
    }

    #[test]
    fn bom_is_only_special_on_line_one() {
        let body = b"{\"text\":\"a\"}\n\xEF\xBB\xBF{\"text\":\"b\"}\n";
        let shown = err(body, None);
        assert!(shown.starts_with("data/train.jsonl:2: invalid JSON: "), "{shown}");
    }

    #[test]
    fn error_messages_name_file_and_line() {
        let alpaca = "{\"instruction\":\"i\",\"output\":\"o\"}\n";
        let cases: Vec<(String, Option<DataFormat>, &str)> = vec![
            (
                format!("{alpaca}{alpaca}\n{alpaca}{alpaca}{alpaca}{alpaca}{{\"instruction\":\"i\"}}\n"),
                None,
                "data/train.jsonl:8: field \"output\" is missing",
            ),
            (
                format!("{alpaca}\n{{\"instruction\": }}\n"),
                None,
                "data/train.jsonl:3: invalid JSON: expected value at column 17",
            ),
            (
                format!("{alpaca}{alpaca}{alpaca}{{\"instruction\":4,\"output\":\"o\"}}\n"),
                None,
                "data/train.jsonl:4: field \"instruction\" must be a string, got a number",
            ),
            (
                "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"robot\",\"content\":\"r\"}]}\n".into(),
                None,
                "data/train.jsonl:1: messages[2].role \"robot\" is not a known role (expected system, user or assistant)",
            ),
            (
                "{\"conversations\":[]}\n".into(),
                None,
                "data/train.jsonl:1: the conversation is empty",
            ),
            (
                "{\"conversations\":[{\"from\":\"human\",\"value\":\"h\"},{\"from\":\"human\",\"value\":null}]}\n".into(),
                None,
                "data/train.jsonl:1: field \"conversations[1].value\" must be a string, got null",
            ),
            (
                "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}]}\n".into(),
                None,
                "data/train.jsonl:1: conversation has no assistant turn",
            ),
            (
                format!("{alpaca}{{\"conversations\":[]}}\n"),
                None,
                "data/train.jsonl:2: record looks like sharegpt but the file's format is alpaca (detected from line 1)",
            ),
            (
                "[1,2]\n".into(),
                None,
                "data/train.jsonl:1: record must be a JSON object, got an array",
            ),
            (
                format!("{alpaca}{{\"instruction\":\"i\",\"output\":\"o\"}} x\n"),
                None,
                "data/train.jsonl:2: invalid JSON: trailing characters at column 34",
            ),
        ];
        for (body, format, want) in cases {
            assert_eq!(err(body.as_bytes(), format), want, "for body {body:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_reported_not_panicked() {
        let mut body = b"{\"text\":\"a\"}\n\n\n\n".to_vec();
        body.extend_from_slice(b"{\"text\":\"ab\xFFc\"}\n");
        assert_eq!(err(&body, None), "data/train.jsonl:5: line is not valid UTF-8 (invalid byte at offset 11)");
        // The offset counts from the raw line start, BOM included.
        assert_eq!(
            err(b"\xEF\xBB\xBF{\"text\":\"\xC3\"}\n", None),
            "data/train.jsonl:1: line is not valid UTF-8 (invalid byte at offset 12)"
        );
    }

    #[test]
    fn file_level_errors() {
        assert_eq!(err(b"", None), "data/train.jsonl: file has no records");
        assert_eq!(err(b"\n  \r\n\n", Some(DataFormat::Text)), "data/train.jsonl: file has no records");
        assert_eq!(
            err(b"\n{\"id\":1,\"question\":\"q\"}\n", None),
            "data/train.jsonl:2: could not detect the format of the first record: it has keys \"id\", \"question\"; \
             expected alpaca (instruction, output), messages (messages), sharegpt (conversations), \
             prompt_completion (prompt, completion) or text (text)"
        );
        assert!(err(b"{}\n", None).contains("first record: it has no keys;"));

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let e = read_jsonl(&missing, None, BadRecordPolicy::Error).unwrap_err();
        assert!(matches!(e, DataError::Open { .. }));
        assert!(!e.is_bad_record());
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("cannot open {}: ", missing.display())), "{shown}");
    }

    #[test]
    fn detection_is_file_level_even_when_skipping() {
        // Lines before the first object are bad records; the first object decides.
        let (r, _p, _d) = read(b"nope\n[1]\n{\"x\":1}\n{\"text\":\"t\"}\n", None, BadRecordPolicy::Skip);
        let e = r.unwrap_err();
        assert!(matches!(e, DataError::Undetectable { line: 3, .. }), "{e}");
    }

    #[test]
    fn skip_policy_collects_and_continues() {
        let body = b"nope\n{\"text\":\"a\"}\n\n{\"text\":5}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n\xFF\n{\"text\":\"b\"}\n";
        let (r, _p, _d) = read(body, None, BadRecordPolicy::Skip);
        let ds = r.unwrap();
        assert_eq!(ds.format, DataFormat::Text);
        assert_eq!(ds.format_detected_at, Some(2));
        assert_eq!(ds.examples.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 7]);
        assert_eq!(ds.skipped.iter().map(|e| e.line().unwrap()).collect::<Vec<_>>(), vec![1, 4, 5, 6]);
        assert!(ds.skipped.iter().all(DataError::is_bad_record));
        assert_eq!(ds.lines_read, 7);
        assert!(matches!(
            &ds.skipped[2],
            DataError::Record { problem: RecordProblem::FormatMismatch { detected_at: Some(2), .. }, .. }
        ));

        let report = ds.skip_report(2).unwrap();
        assert_eq!(
            report.replace(&ds.path.display().to_string(), "data/train.jsonl"),
            "skipped 4 bad records of 6 in data/train.jsonl; first reasons: \
             line 1: invalid JSON: expected ident at column 2; \
             line 4: field \"text\" must be a string, got a number (and 2 more)"
        );
        assert!(ds.skip_report(10).unwrap().ends_with("(invalid byte at offset 0)"));
    }

    #[test]
    fn error_policy_stops_at_first_bad_line() {
        let body = b"{\"text\":\"a\"}\n{\"text\":5}\nnope\n";
        assert_eq!(err(body, None), "data/train.jsonl:2: field \"text\" must be a string, got a number");
    }

    #[test]
    fn all_bad_is_an_error_even_when_skipping() {
        let (r, path, _d) = read(b"nope\n\n{\"text\":1}\n", None, BadRecordPolicy::Skip);
        let e = r.unwrap_err();
        let DataError::AllBad { skipped, .. } = &e else { panic!("{e}") };
        assert_eq!(skipped.len(), 2);
        assert_eq!(
            e.to_string().replace(&path.display().to_string(), "data/train.jsonl"),
            "data/train.jsonl: no usable records: all 2 records are bad; first, line 1: invalid JSON: expected ident at column 2"
        );
    }

    #[test]
    fn reads_from_any_reader() {
        let data = &b"{\"prompt\":\"p\",\"completion\":\"c\"}\n"[..];
        let ds = read_jsonl_from(data, Path::new("mem.jsonl"), None, BadRecordPolicy::Error).unwrap();
        assert_eq!(ds.format, DataFormat::PromptCompletion);
        assert_eq!(ds.skip_report(3), None);
    }
}
