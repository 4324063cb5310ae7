//! Training data: files encoded once, the held-out split, and the order of micro-batches
//! (seeded per epoch, optionally packed). The order is a pure function of (seed, epoch),
//! so a resumed run only needs its position to continue exactly.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::data::{self, BadRecordPolicy, DataFormat};
use crate::digest::sha256_file;
use crate::encode::{self, EncodedExample};
use crate::tokenizer::Tokenizer;

/// What the manifest records about each data file.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DataFileStats {
    pub path: PathBuf,
    /// "train", "eval" or "regression".
    pub role: String,
    pub sha256: String,
    pub bytes: u64,
    pub format: String,
    pub records: usize,
    pub skipped: usize,
    pub truncated: usize,
    /// Examples left without any target token (after truncation); they are dropped.
    pub without_targets: usize,
    pub tokens: usize,
    pub targets: usize,
    /// With `data.weights`: how many of this file's examples the mix uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed_in: Option<usize>,
}

/// An encoded example and the record it came from (kept for the generation eval, which
/// needs the prompt and reference as text).
pub type Encoded = (EncodedExample, data::Example);

/// Reads and encodes one JSONL file. Examples without targets are dropped and counted.
pub fn encode_file(
    path: &Path,
    role: &'static str,
    format: Option<DataFormat>,
    policy: BadRecordPolicy,
    tok: &Tokenizer,
    max_seq_len: usize,
) -> anyhow::Result<(Vec<Encoded>, DataFileStats)> {
    use anyhow::Context;
    let ds = data::read_jsonl(path, format, policy)?;
    if let Some(report) = ds.skip_report(3) {
        eprintln!("{report}");
    }
    let (sha256, bytes) = sha256_file(path).with_context(|| format!("hashing {}", path.display()))?;
    let mut out = Vec::with_capacity(ds.examples.len());
    let (mut truncated, mut without, mut tokens, mut targets) = (0, 0, 0, 0);
    for ex in &ds.examples {
        let e =
            encode::encode(tok, &ex.record, max_seq_len).with_context(|| format!("{}:{}", path.display(), ex.line))?;
        truncated += usize::from(e.truncated);
        if e.num_targets() == 0 {
            without += 1;
            continue;
        }
        tokens += e.len();
        targets += e.num_targets();
        out.push((e, ex.clone()));
    }
    anyhow::ensure!(
        !out.is_empty(),
        "{}: no usable examples (all {} records have no target tokens after truncation to {max_seq_len})",
        path.display(),
        ds.examples.len()
    );
    let stats = DataFileStats {
        path: path.to_path_buf(),
        role: role.to_string(),
        sha256,
        bytes,
        format: ds.format.to_string(),
        records: ds.examples.len(),
        skipped: ds.skipped.len(),
        truncated,
        without_targets: without,
        tokens,
        targets,
        mixed_in: None,
    };
    Ok((out, stats))
}

/// Splits off `fraction` of `examples` (at least one) as a held-out set, by a seeded
/// shuffle. Returns (train, eval).
pub fn split_eval<T>(examples: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    if fraction <= 0.0 || examples.len() < 2 {
        return (examples, Vec::new());
    }
    let n_eval = ((examples.len() as f64 * fraction).round() as usize).clamp(1, examples.len() - 1);
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut is_eval = vec![false; examples.len()];
    idx[..n_eval].iter().for_each(|&i| is_eval[i] = true);
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (e, ev) in examples.into_iter().zip(is_eval) {
        if ev {
            eval.push(e)
        } else {
            train.push(e)
        }
    }
    (train, eval)
}

/// Data mixing: how many examples of each file (sizes `sizes`) a mix with these weights
/// takes. The mix is as large as it can be without repeating any file: each file gives
/// its weight's share, and the file with the fewest examples for its weight is used whole
/// (80/20 of 400 task and 10,000 general examples: 400 + 100).
pub fn mix_counts(sizes: &[usize], weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let total = sizes.iter().zip(weights).map(|(&n, &w)| n as f64 / (w / sum)).fold(f64::INFINITY, f64::min);
    sizes.iter().zip(weights).map(|(&n, &w)| ((w / sum * total).round() as usize).clamp(1, n)).collect()
}

/// The examples of each file that the mix uses: `counts[i]` of file i, chosen by a
/// seeded shuffle (the same choice for every epoch and on resume), files concatenated.
pub fn mix<T>(files: Vec<Vec<T>>, counts: &[usize], seed: u64) -> Vec<T> {
    let mut out = Vec::with_capacity(counts.iter().sum());
    for (i, (examples, &k)) in files.into_iter().zip(counts).enumerate() {
        let mut keep = vec![false; examples.len()];
        let mut idx: Vec<usize> = (0..examples.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (0x6d69_7800 + i as u64)));
        idx[..k].iter().for_each(|&j| keep[j] = true);
        out.extend(examples.into_iter().zip(keep).filter_map(|(e, k)| k.then_some(e)));
    }
    out
}

/// A micro-batch: rows of example indices (one per row, or several when packed).
pub type MicroBatch = Vec<Vec<usize>>;

/// How examples become micro-batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPlan {
    pub seed: u64,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    pub packing: bool,
    pub max_seq_len: usize,
}

impl BatchPlan {
    /// The micro-batches of `epoch`: examples shuffled by (seed, epoch); with packing,
    /// consecutive examples fill rows of up to `max_seq_len` tokens.
    pub fn epoch(&self, lens: &[usize], epoch: usize) -> Vec<MicroBatch> {
        let mut order: Vec<usize> = (0..lens.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch as u64);
        order.shuffle(&mut rng);
        let rows: Vec<Vec<usize>> = if self.packing {
            let mut rows: Vec<Vec<usize>> = Vec::new();
            let mut used = usize::MAX;
            for i in order {
                if used.saturating_add(lens[i]) > self.max_seq_len {
                    rows.push(Vec::new());
                    used = 0;
                }
                rows.last_mut().expect("a row was opened").push(i);
                used += lens[i];
            }
            rows
        } else {
            order.into_iter().map(|i| vec![i]).collect()
        };
        rows.chunks(self.micro_batch_size).map(|c| c.to_vec()).collect()
    }

    /// Optimizer steps in `epoch` (the last may accumulate fewer micro-batches).
    pub fn steps_in_epoch(&self, lens: &[usize], epoch: usize) -> usize {
        self.epoch(lens, epoch).len().div_ceil(self.grad_accum)
    }
}

/// Where the data stream stands: the next micro-batch of an epoch. Saved in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DataPosition {
    pub epoch: usize,
    pub micro_batch: usize,
}

/// Yields the micro-batches of each optimizer step; a step never spans two epochs.
pub struct Loader {
    plan: BatchPlan,
    /// Token count of each training example.
    lens: Vec<usize>,
    pub position: DataPosition,
    current: Vec<MicroBatch>,
}

impl Loader {
    pub fn new(plan: BatchPlan, lens: Vec<usize>, position: DataPosition) -> Self {
        let current = plan.epoch(&lens, position.epoch);
        Loader { plan, lens, position, current }
    }

    pub fn next_step(&mut self) -> Vec<MicroBatch> {
        if self.position.micro_batch >= self.current.len() {
            self.position = DataPosition { epoch: self.position.epoch + 1, micro_batch: 0 };
            self.current = self.plan.epoch(&self.lens, self.position.epoch);
        }
        let start = self.position.micro_batch;
        let end = (start + self.plan.grad_accum).min(self.current.len());
        self.position.micro_batch = end;
        self.current[start..end].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(packing: bool) -> BatchPlan {
        BatchPlan { seed: 3, micro_batch_size: 2, grad_accum: 2, packing, max_seq_len: 10 }
    }

    #[test]
    fn epochs_are_seeded_permutations_and_differ() {
        let lens = vec![3; 9];
        let p = plan(false);
        let e0: Vec<usize> = p.epoch(&lens, 0).concat().concat();
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..9).collect::<Vec<_>>());
        assert_eq!(e0, p.epoch(&lens, 0).concat().concat());
        assert_ne!(e0, p.epoch(&lens, 1).concat().concat());
        assert_eq!(p.epoch(&lens, 0).len(), 5);
        assert_eq!(p.steps_in_epoch(&lens, 0), 3);
    }

    #[test]
    fn packing_fills_rows_up_to_max_len() {
        let lens = vec![4, 3, 6, 2, 5, 1, 7];
        let mbs = plan(true).epoch(&lens, 0);
        let rows: Vec<Vec<usize>> = mbs.concat();
        assert_eq!(rows.concat().len(), lens.len());
        for r in &rows {
            assert!(r.iter().map(|&i| lens[i]).sum::<usize>() <= 10);
        }
        assert!(rows.len() < lens.len());
    }

    #[test]
    fn loader_resumes_from_a_position() {
        let lens = vec![2; 11];
        let mut a = Loader::new(plan(false), lens.clone(), DataPosition { epoch: 0, micro_batch: 0 });
        let all: Vec<Vec<MicroBatch>> = (0..7).map(|_| a.next_step()).collect();
        // 6 micro-batches per epoch, 2 per step: 3 steps per epoch.
        assert_eq!(all[2].len(), 2);
        let mut b = Loader::new(plan(false), lens.clone(), DataPosition { epoch: 0, micro_batch: 0 });
        for _ in 0..4 {
            b.next_step();
        }
        let mut c = Loader::new(plan(false), lens.clone(), b.position);
        assert_eq!(c.next_step(), all[4]);
        assert_eq!(c.next_step(), all[5]);
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let ex: Vec<EncodedExample> = (0..20)
            .map(|i| EncodedExample { input_ids: vec![i, i], target_mask: vec![0, 1], truncated: false })
            .collect();
        let (t1, e1) = split_eval(ex.clone(), 0.25, 7);
        let (_, e2) = split_eval(ex.clone(), 0.25, 7);
        let (_, e3) = split_eval(ex, 0.25, 8);
        assert_eq!((t1.len(), e1.len()), (15, 5));
        assert_eq!(e1, e2);
        assert_ne!(e1, e3);
        assert!(e1.iter().all(|e| !t1.contains(e)));
    }

    #[test]
    fn mixing_takes_each_files_share_without_repeats() {
        // 80/20 of 400 task and 10,000 general examples: the task file is used whole.
        assert_eq!(mix_counts(&[400, 10_000], &[0.8, 0.2]), vec![400, 100]);
        // Weights need not sum to 1; here the general file is the scarce one.
        assert_eq!(mix_counts(&[400, 50], &[4.0, 1.0]), vec![200, 50]);
        assert_eq!(mix_counts(&[30, 30, 30], &[1.0, 1.0, 1.0]), vec![30, 30, 30]);
        let files = vec![(0..10).collect::<Vec<u32>>(), (100..200).collect()];
        let counts = mix_counts(&[10, 100], &[0.5, 0.5]);
        assert_eq!(counts, vec![10, 10]);
        let a = mix(files.clone(), &counts, 3);
        assert_eq!(a.len(), 20);
        assert_eq!(a[..10], (0..10).collect::<Vec<_>>()[..]);
        assert!(a[10..].iter().all(|x| (100..200).contains(x)));
        let mut distinct = a[10..].to_vec();
        distinct.dedup();
        assert_eq!(distinct.len(), 10, "no example repeated");
        assert_eq!(a, mix(files.clone(), &counts, 3), "seeded");
        assert_ne!(a, mix(files, &counts, 4));
    }
}
