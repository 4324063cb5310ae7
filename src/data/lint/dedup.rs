//! `loratune data dedup`: a copy of a data file without the duplicates the lint reports.
//! Of each exact group and each near-duplicate cluster the first line stays; every other
//! line is copied byte for byte, in order (blank and bad lines included: they are the
//! lint's business, not dedup's).

use std::collections::BTreeSet;
use std::path::Path;

use super::duplicates::{self, NearSearch};
use super::{read_jsonl, BadRecordPolicy, DataError, DataFormat, Record};

#[derive(Debug, Clone)]
pub struct DedupOptions {
    pub format: Option<DataFormat>,
    pub threshold: f64,
    pub shingle_words: usize,
    /// Remove exact duplicates only.
    pub exact_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupOutcome {
    /// Physical lines of the input.
    pub lines: usize,
    /// 1-based lines removed as exact duplicates of an earlier line.
    pub exact: Vec<usize>,
    /// 1-based lines removed as near duplicates of an earlier line.
    pub near: Vec<usize>,
    /// Lines that are not records, kept as they are.
    pub bad_records: usize,
}

/// Reads `input`, decides which lines go, and writes the rest to `output` atomically.
pub fn dedup(input: &Path, output: &Path, opts: &DedupOptions) -> Result<DedupOutcome, DedupError> {
    let ds = read_jsonl(input, opts.format, BadRecordPolicy::Skip)?;
    let records: Vec<&Record> = ds.examples.iter().map(|e| &e.record).collect();
    let group = duplicates::exact_groups(&records);
    let exact: BTreeSet<usize> = (0..records.len()).filter(|&i| group[i] != i).collect();
    let mut near = BTreeSet::new();
    if !opts.exact_only {
        let reps: Vec<usize> = (0..records.len()).filter(|&i| group[i] == i).collect();
        let search = NearSearch { threshold: opts.threshold, shingle_words: opts.shingle_words };
        for c in duplicates::clusters(&search.pairs(&records, &reps, |_, _| false)) {
            near.extend(c.members[1..].iter().copied());
        }
    }
    let line_of = |set: &BTreeSet<usize>| -> Vec<usize> { set.iter().map(|&i| ds.examples[i].line).collect() };
    let outcome = DedupOutcome {
        lines: ds.lines_read,
        exact: line_of(&exact),
        near: line_of(&near),
        bad_records: ds.skipped.len(),
    };

    let bytes = std::fs::read(input).map_err(|e| DedupError::Io(format!("reading {}: {e}", input.display())))?;
    let removed: BTreeSet<usize> = outcome.exact.iter().chain(&outcome.near).copied().collect();
    let mut kept = Vec::with_capacity(bytes.len());
    for (n, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if !removed.contains(&(n + 1)) {
            kept.extend_from_slice(line);
        }
    }
    crate::atomic::write_bytes(output, &kept)
        .map_err(|e| DedupError::Io(format!("writing {}: {e}", output.display())))?;
    Ok(outcome)
}

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_of_each_group_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
        let long: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let mut near = long.clone();
        near[20] = "other".into();
        let lines = [
            format!("{{\"text\": \"{}\"}}\n", long.join(" ")),
            "{\"text\": \"Hello   World\"}\r\n".to_string(),
            "\n".to_string(),
            "{\"text\": \"hello world\", \"id\": 3}\n".to_string(),
            "not json\n".to_string(),
            format!("{{\"text\": \"{}\"}}\n", near.join(" ")),
            "{\"text\": \"unrelated\"}".to_string(),
        ];
        std::fs::write(&input, lines.concat()).unwrap();
        let opts = DedupOptions { format: None, threshold: 0.8, shingle_words: 2, exact_only: false };
        let out = dedup(&input, &output, &opts).unwrap();
        assert_eq!(out, DedupOutcome { lines: 7, exact: vec![4], near: vec![6], bad_records: 1 });
        let want: String = [0, 1, 2, 4, 6].iter().map(|&i| lines[i].as_str()).collect();
        assert_eq!(std::fs::read_to_string(&output).unwrap(), want);

        let out = dedup(&input, &output, &DedupOptions { exact_only: true, ..opts }).unwrap();
        assert_eq!((out.exact, out.near), (vec![4], vec![]));
        let want: String = [0, 1, 2, 4, 5, 6].iter().map(|&i| lines[i].as_str()).collect();
        assert_eq!(std::fs::read_to_string(&output).unwrap(), want);
    }
}
