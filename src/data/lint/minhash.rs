//! Near-duplicate search: word shingles, MinHash signatures, LSH banding, and the exact
//! Jaccard that confirms each candidate pair.
//!
//! Written here rather than taken from a crate: of the MinHash/LSH crates on crates.io,
//! gaoya (the most complete) has had no release since 2023 and pulls in a dozen older
//! dependencies (itertools 0.10, sha-1 0.9, ...), datasketch-minhash-lsh is a 0.0.1 "use at
//! your own risk" port, and lshdedup-core and minhash-rs are young single-author crates
//! without the pair verification we need. What we need is small: one signature per
//! example, banding, and candidate pairs, all of which fit in this file and run under rayon.
//!
//! - A *word* is a maximal run of alphanumeric characters, case-folded; punctuation and
//!   spacing do not count. A *shingle* is `k` consecutive words (a text of fewer than `k`
//!   words is one shingle). Shingles are hashed to 64 bits.
//! - The signature holds, for each of `num_perm` hash functions `h_i(x) = (a_i x + b_i) >> 32`
//!   (multiply-shift with fixed random odd `a_i`), the minimum over the example's shingles.
//!   Two signatures agree at a position with probability equal to the Jaccard index.
//! - LSH cuts the signature into `bands` bands of `rows` values; examples that agree on a
//!   whole band become a candidate pair. A pair of Jaccard `j` becomes a candidate with
//!   probability `1 - (1 - j^rows)^bands`; [`LshParams::for_threshold`] picks the banding
//!   so that this is at least 0.995 at the threshold.
//! - Candidates are only candidates: the caller confirms each with [`jaccard`] on the
//!   shingle sets, so no reported pair is a false positive.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Signature length. 128 keeps the estimate's standard error near 0.035 at J = 0.8.
pub const NUM_PERM: usize = 128;

/// Buckets larger than this are not expanded into all their pairs (which would be
/// quadratic when much of a data set shares a band): each member is paired with the
/// bucket's first member and with its predecessor instead, which still links every member
/// of a bucket of mutually similar examples.
const FULL_PAIRS_UP_TO: usize = 32;

/// Hashes of the case-folded words of `segments`, in order.
pub fn word_hashes<'a>(segments: impl IntoIterator<Item = &'a str>) -> Vec<u64> {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut out = Vec::new();
    for text in segments {
        let mut h = FNV_OFFSET;
        let mut in_word = false;
        for c in text.chars() {
            if c.is_alphanumeric() {
                in_word = true;
                for l in c.to_lowercase() {
                    h = (h ^ u64::from(l)).wrapping_mul(FNV_PRIME);
                }
            } else if in_word {
                out.push(mix(h));
                h = FNV_OFFSET;
                in_word = false;
            }
        }
        if in_word {
            out.push(mix(h));
        }
    }
    out
}

/// The sorted, de-duplicated shingle hashes of a word-hash sequence: every window of `k`
/// words, or the whole sequence when it is shorter. Empty for no words.
pub fn shingles(words: &[u64], k: usize) -> Vec<u64> {
    let k = k.max(1);
    let mut out: Vec<u64> = if words.is_empty() {
        Vec::new()
    } else if words.len() <= k {
        vec![combine(words)]
    } else {
        words.windows(k).map(combine).collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Order-sensitive hash of a window of word hashes.
fn combine(words: &[u64]) -> u64 {
    words.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &w| mix(h.rotate_left(23) ^ w))
}

/// splitmix64's finaliser: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Exact Jaccard index of two sorted, de-duplicated sets; 0 when both are empty.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        0.0
    } else {
        both as f64 / union as f64
    }
}

/// The `num_perm` hash functions of a signature, fixed by a seed so that signatures are
/// reproducible from run to run.
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHasher {
    pub fn new(num_perm: usize, seed: u64) -> MinHasher {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = (0..num_perm).map(|_| rng.gen::<u64>() | 1).collect();
        let b = (0..num_perm).map(|_| rng.gen::<u64>()).collect();
        MinHasher { a, b }
    }

    /// The signature of a shingle set; `None` for an empty set, which has no meaningful
    /// similarity to anything.
    pub fn signature(&self, shingles: &[u64]) -> Option<Vec<u32>> {
        if shingles.is_empty() {
            return None;
        }
        let mut sig = vec![u32::MAX; self.a.len()];
        for &x in shingles {
            for ((s, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                let h = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
                *s = (*s).min(h);
            }
        }
        Some(sig)
    }
}

/// The fraction of positions where two signatures agree: an estimate of their Jaccard.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// How a signature is cut into bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LshParams {
    pub bands: usize,
    pub rows: usize,
}

impl LshParams {
    /// The banding with the most rows per band (the fewest chance candidates) whose
    /// probability of proposing a pair of Jaccard exactly `threshold` is at least 0.995.
    pub fn for_threshold(threshold: f64, num_perm: usize) -> LshParams {
        let mut best = LshParams { bands: num_perm, rows: 1 };
        for rows in 1..=num_perm {
            let p = LshParams { bands: num_perm / rows, rows };
            if p.candidate_probability(threshold) >= 0.995 {
                best = p;
            }
        }
        best
    }

    /// Probability that a pair of Jaccard `j` shares at least one band.
    pub fn candidate_probability(&self, j: f64) -> f64 {
        1.0 - (1.0 - j.powi(self.rows as i32)).powi(self.bands as i32)
    }
}

/// Candidate pairs `(i, j)`, `i < j`, of items that agree on at least one band, sorted
/// and without repeats. Items without a signature take no part.
pub fn candidate_pairs(signatures: &[Option<Vec<u32>>], params: LshParams) -> Vec<(u32, u32)> {
    let mut pairs: Vec<(u32, u32)> = (0..params.bands)
        .into_par_iter()
        .flat_map_iter(|band| {
            let range = band * params.rows..(band + 1) * params.rows;
            let mut keyed: Vec<(u64, u32)> = signatures
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (band_key(&s[range.clone()]), i as u32)))
                .collect();
            keyed.sort_unstable();
            let mut out = Vec::new();
            for bucket in keyed.chunk_by(|x, y| x.0 == y.0).filter(|b| b.len() > 1) {
                if bucket.len() <= FULL_PAIRS_UP_TO {
                    for (n, &(_, i)) in bucket.iter().enumerate() {
                        out.extend(bucket[n + 1..].iter().map(|&(_, j)| (i, j)));
                    }
                } else {
                    let first = bucket[0].1;
                    for w in bucket.windows(2) {
                        out.push((w[0].1, w[1].1));
                        if w[0].1 != first {
                            out.push((first, w[1].1));
                        }
                    }
                }
            }
            out
        })
        .collect();
    pairs.par_sort_unstable();
    pairs.dedup();
    pairs
}

fn band_key(values: &[u32]) -> u64 {
    values.iter().fold(0x2545_f491_4f6c_dd1du64, |h, &v| mix(h ^ u64::from(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` distinct pseudo-random words from a seed.
    fn text(n: usize, seed: u64) -> Vec<String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| format!("w{}", rng.gen_range(0..1_000_000u32))).collect()
    }

    fn set(words: &[String], k: usize) -> Vec<u64> {
        shingles(&word_hashes(words.iter().map(String::as_str)), k)
    }

    #[test]
    fn words_fold_case_and_ignore_punctuation() {
        assert_eq!(word_hashes(["Hello, WORLD!  hello world"]).len(), 4);
        let a = word_hashes(["Hello, WORLD!"]);
        let b = word_hashes(["hello world"]);
        assert_eq!(a, b);
        // Segments are word boundaries: "ab" is not "a" + "b".
        assert_ne!(word_hashes(["ab"]), word_hashes(["a", "b"]));
        assert_eq!(word_hashes(["a", "b"]).len(), 2);
        assert_eq!(word_hashes(["Ünïcode"]), word_hashes(["üNÏCODE"]));
        assert!(word_hashes(["  ... --- "]).is_empty());
    }

    #[test]
    fn shingles_are_windows_of_k_words() {
        let w = word_hashes(["a b c a b"]);
        // bigrams: ab, bc, ca, ab -> 3 distinct
        assert_eq!(shingles(&w, 2).len(), 3);
        assert_eq!(shingles(&w, 1).len(), 3);
        assert_eq!(shingles(&w, 5).len(), 1);
        assert_eq!(shingles(&w, 9).len(), 1, "shorter than k: one shingle");
        assert!(shingles(&[], 2).is_empty());
        // Order matters inside a shingle.
        assert_ne!(shingles(&word_hashes(["a b"]), 2), shingles(&word_hashes(["b a"]), 2));
    }

    #[test]
    fn jaccard_counts_shared_over_union() {
        assert_eq!(jaccard(&[1, 2, 3, 4], &[3, 4, 5]), 2.0 / 5.0);
        assert_eq!(jaccard(&[1, 2], &[1, 2]), 1.0);
        assert_eq!(jaccard(&[1], &[2]), 0.0);
        assert_eq!(jaccard(&[], &[]), 0.0);
        // Against a set-based computation on real shingles.
        let a = set(&text(60, 1), 2);
        let mut bw = text(60, 1);
        bw[10] = "changed".into();
        bw[40] = "again".into();
        let b = set(&bw, 2);
        let sa: std::collections::HashSet<_> = a.iter().collect();
        let sb: std::collections::HashSet<_> = b.iter().collect();
        let want = sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64;
        assert_eq!(jaccard(&a, &b), want);
        assert!(want > 0.8 && want < 1.0, "{want}");
    }

    #[test]
    fn signature_agreement_estimates_jaccard() {
        let h = MinHasher::new(NUM_PERM, 7);
        assert!(h.signature(&[]).is_none());
        let base = text(200, 3);
        for changed in [0usize, 20, 60, 120] {
            let mut other = base.clone();
            for w in other.iter_mut().take(changed) {
                *w = format!("{w}x");
            }
            let (a, b) = (set(&base, 2), set(&other, 2));
            let exact = jaccard(&a, &b);
            let est = estimated_jaccard(&h.signature(&a).unwrap(), &h.signature(&b).unwrap());
            // 128 hashes: standard error <= 0.045; allow four of them.
            assert!((est - exact).abs() < 0.18, "changed {changed}: exact {exact:.3}, estimate {est:.3}");
        }
    }

    #[test]
    fn banding_for_threshold() {
        let p = LshParams::for_threshold(0.8, NUM_PERM);
        assert!(p.bands * p.rows <= NUM_PERM);
        assert!(p.candidate_probability(0.8) >= 0.995);
        // One more row per band would miss the target.
        let tighter = LshParams { rows: p.rows + 1, bands: NUM_PERM / (p.rows + 1) };
        assert!(tighter.candidate_probability(0.8) < 0.995);
        // Unrelated pairs rarely collide.
        assert!(p.candidate_probability(0.2) < 0.05, "{p:?}");
    }

    /// The planted cases of the brief: a 100-word text with 5 words changed is found at
    /// 0.8; an unrelated text is not, and its exact Jaccard would reject it anyway.
    #[test]
    fn lsh_finds_planted_near_duplicates_and_not_unrelated_texts() {
        let h = MinHasher::new(NUM_PERM, 0);
        let params = LshParams::for_threshold(0.8, NUM_PERM);
        let mut found = 0;
        let trials = 200;
        for t in 0..trials {
            let base = text(100, 1000 + t);
            let mut near = base.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(t);
            // Five distinct positions, spread apart so each costs two bigrams.
            let mut pos: Vec<usize> = (0..5).map(|i| i * 20 + rng.gen_range(0..18)).collect();
            pos.dedup();
            for &p in &pos {
                near[p] = format!("changed{p}");
            }
            let unrelated = text(100, 5000 + t);
            let sets = [set(&base, 2), set(&near, 2), set(&unrelated, 2)];
            assert!(jaccard(&sets[0], &sets[1]) >= 0.8, "trial {t}: {}", jaccard(&sets[0], &sets[1]));
            assert!(jaccard(&sets[0], &sets[2]) < 0.1);
            let sigs: Vec<Option<Vec<u32>>> = sets.iter().map(|s| h.signature(s)).collect();
            let pairs = candidate_pairs(&sigs, params);
            found += usize::from(pairs.contains(&(0, 1)));
            assert!(!pairs.contains(&(0, 2)) && !pairs.contains(&(1, 2)), "trial {t}: unrelated text proposed");
        }
        // Each trial is found with probability >= 0.995 at J = 0.8 (and these are above it).
        assert!(found >= trials as usize - 3, "found {found} of {trials}");
    }

    #[test]
    fn large_buckets_still_link_every_member() {
        // 100 identical signatures: one bucket per band, expanded as a chain plus a star.
        let sigs: Vec<Option<Vec<u32>>> = (0..100).map(|_| Some(vec![5u32; NUM_PERM])).collect();
        let pairs = candidate_pairs(&sigs, LshParams { bands: 4, rows: 32 });
        assert!(pairs.len() < 200, "{} pairs: not quadratic", pairs.len());
        for j in 1..100u32 {
            assert!(pairs.contains(&(0, j)));
        }
        // A small bucket gets all its pairs; absent signatures take no part.
        let mut sigs: Vec<Option<Vec<u32>>> = (0..4).map(|_| Some(vec![1u32; NUM_PERM])).collect();
        sigs.push(None);
        let pairs = candidate_pairs(&sigs, LshParams { bands: 2, rows: 64 });
        assert_eq!(pairs, vec![(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]);
    }
}
