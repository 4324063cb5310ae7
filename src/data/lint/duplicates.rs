//! Exact groups and verified near-duplicate pairs over a list of records, and the clusters
//! those pairs form. Which pairs are duplicates and which are leakage is the caller's
//! business: this file only knows records by their index.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use rayon::prelude::*;

use super::minhash::{self, LshParams, MinHasher, NUM_PERM};
use super::normalize;
use crate::data::Record;

/// Fixed so that the same file always gives the same signatures.
const MINHASH_SEED: u64 = 0x6c6f_7261_7475_6e65;

/// For each record, the index of the first record with the same exact key
/// ([`normalize::exact_key`]); a record that has no earlier twin points at itself.
pub fn exact_groups(records: &[&Record]) -> Vec<usize> {
    let hashes: Vec<u64> = records.par_iter().map(|r| hash_str(&normalize::exact_key(r))).collect();
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::with_capacity(records.len());
    for (i, h) in hashes.iter().enumerate() {
        by_hash.entry(*h).or_default().push(i);
    }
    let mut group: Vec<usize> = (0..records.len()).collect();
    for members in by_hash.values().filter(|m| m.len() > 1) {
        // Equal hashes are confirmed on the keys themselves, so a hash collision cannot
        // make a false duplicate.
        let keys: Vec<String> = members.iter().map(|&i| normalize::exact_key(records[i])).collect();
        for (n, &i) in members.iter().enumerate() {
            if let Some(first) = (0..n).find(|&m| keys[m] == keys[n]) {
                group[i] = group[members[first]];
            }
        }
    }
    group
}

pub fn hash_str(s: &str) -> u64 {
    // DefaultHasher::new() has fixed keys: the same text always gives the same hash.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// A verified near-duplicate pair: record indices `a < b` and their exact Jaccard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NearPair {
    pub a: usize,
    pub b: usize,
    pub jaccard: f64,
}

/// How near duplicates are searched for.
#[derive(Debug, Clone, Copy)]
pub struct NearSearch {
    pub threshold: f64,
    pub shingle_words: usize,
}

impl NearSearch {
    pub fn lsh(&self) -> LshParams {
        LshParams::for_threshold(self.threshold, NUM_PERM)
    }

    fn shingles(&self, record: &Record) -> Vec<u64> {
        minhash::shingles(&minhash::word_hashes(normalize::word_segments(record)), self.shingle_words)
    }

    /// Pairs among `candidates` (record indices) whose shingle sets have Jaccard >=
    /// threshold, sorted. `skip(a, b)` drops pairs the caller already knows about (exact
    /// twins) before they are verified.
    pub fn pairs(
        &self,
        records: &[&Record],
        candidates: &[usize],
        skip: impl Fn(usize, usize) -> bool + Sync,
    ) -> Vec<NearPair> {
        let hasher = MinHasher::new(NUM_PERM, MINHASH_SEED);
        let signatures: Vec<Option<Vec<u32>>> =
            candidates.par_iter().map(|&i| hasher.signature(&self.shingles(records[i]))).collect();
        // A pair whose signatures agree far less than the threshold is dropped before the
        // exact check: 0.2 below is over five standard errors of a 128-hash estimate.
        let floor = self.threshold - 0.2;
        let proposed: Vec<(usize, usize)> = minhash::candidate_pairs(&signatures, self.lsh())
            .into_par_iter()
            .filter(|&(x, y)| {
                let (sx, sy) = (signatures[x as usize].as_ref(), signatures[y as usize].as_ref());
                minhash::estimated_jaccard(sx.expect("banded"), sy.expect("banded")) >= floor
            })
            .map(|(x, y)| (candidates[x as usize], candidates[y as usize]))
            .filter(|&(a, b)| !skip(a, b))
            .collect();
        let mut involved: Vec<usize> = proposed.iter().flat_map(|&(a, b)| [a, b]).collect();
        involved.par_sort_unstable();
        involved.dedup();
        let sets: HashMap<usize, Vec<u64>> = involved.par_iter().map(|&i| (i, self.shingles(records[i]))).collect();
        let mut pairs: Vec<NearPair> = proposed
            .into_par_iter()
            .filter_map(|(a, b)| {
                let jaccard = minhash::jaccard(&sets[&a], &sets[&b]);
                let (a, b) = (a.min(b), a.max(b));
                (jaccard >= self.threshold).then_some(NearPair { a, b, jaccard })
            })
            .collect();
        pairs.sort_by_key(|p| (p.a, p.b));
        pairs
    }
}

/// A connected group of near-duplicate records.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Record indices, ascending: the first is the one a dedup keeps.
    pub members: Vec<usize>,
    /// The pairs that joined the members (a spanning tree: one per member after the first).
    pub links: Vec<NearPair>,
    /// Smallest and largest Jaccard of all verified pairs inside the cluster.
    pub jaccard_min: f64,
    pub jaccard_max: f64,
}

/// The connected components of `pairs` (pairs chain: a ~ b and b ~ c put a and c in one
/// cluster even when a and c are further apart), ordered by their first member.
pub fn clusters(pairs: &[NearPair]) -> Vec<Cluster> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    fn find(parent: &mut HashMap<usize, usize>, x: usize) -> usize {
        let p = *parent.entry(x).or_insert(x);
        if p == x {
            return x;
        }
        let root = find(parent, p);
        parent.insert(x, root);
        root
    }
    let mut links = Vec::new();
    for p in pairs {
        let (ra, rb) = (find(&mut parent, p.a), find(&mut parent, p.b));
        if ra != rb {
            // The smaller index stays the root, so a root is its cluster's first member.
            parent.insert(ra.max(rb), ra.min(rb));
            links.push(*p);
        }
    }
    let mut by_root: HashMap<usize, Cluster> = HashMap::new();
    let nodes: Vec<usize> = parent.keys().copied().collect();
    for x in nodes {
        let r = find(&mut parent, x);
        by_root
            .entry(r)
            .or_insert_with(|| Cluster {
                members: Vec::new(),
                links: Vec::new(),
                jaccard_min: f64::INFINITY,
                jaccard_max: 0.0,
            })
            .members
            .push(x);
    }
    for l in links {
        let r = find(&mut parent, l.a);
        by_root.get_mut(&r).expect("linked").links.push(l);
    }
    for p in pairs {
        let c = by_root.get_mut(&find(&mut parent, p.a)).expect("paired");
        c.jaccard_min = c.jaccard_min.min(p.jaccard);
        c.jaccard_max = c.jaccard_max.max(p.jaccard);
    }
    let mut out: Vec<Cluster> = by_root.into_values().collect();
    for c in &mut out {
        c.members.sort_unstable();
    }
    out.sort_by_key(|c| c.members[0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[&str]) -> Vec<Record> {
        v.iter().map(|t| Record::Text(t.to_string())).collect()
    }

    #[test]
    fn exact_groups_point_at_the_first_twin() {
        let recs = texts(&["A  b", "c", "a b", "C", "d", "a b "]);
        let refs: Vec<&Record> = recs.iter().collect();
        assert_eq!(exact_groups(&refs), vec![0, 1, 0, 1, 4, 0]);
    }

    #[test]
    fn near_pairs_are_verified_and_clustered() {
        let base: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
        let mut near = base.clone();
        near[30] = "other".into();
        let mut nearer = near.clone();
        nearer[5] = "again".into();
        let unrelated: Vec<String> = (0..60).map(|i| format!("zz{i}")).collect();
        let recs = texts(&[&base.join(" "), &unrelated.join(" "), &near.join(" "), &nearer.join(" "), &base.join(" ")]);
        let refs: Vec<&Record> = recs.iter().collect();
        let search = NearSearch { threshold: 0.8, shingle_words: 2 };
        let pairs = search.pairs(&refs, &[0, 1, 2, 3, 4], |a, b| (a, b) == (0, 4) || (a, b) == (4, 0));
        let got: Vec<(usize, usize)> = pairs.iter().map(|p| (p.a, p.b)).collect();
        // 4 is an exact twin of 0, and the caller said to skip that pair; 1 is unrelated.
        assert_eq!(got, vec![(0, 2), (0, 3), (2, 3), (2, 4), (3, 4)]);
        for p in &pairs {
            let a = minhash::shingles(&minhash::word_hashes(normalize::word_segments(refs[p.a])), 2);
            let b = minhash::shingles(&minhash::word_hashes(normalize::word_segments(refs[p.b])), 2);
            assert_eq!(p.jaccard, minhash::jaccard(&a, &b));
            assert!(p.jaccard >= 0.8);
        }
        let c = clusters(&pairs);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].members, vec![0, 2, 3, 4]);
        assert_eq!(c[0].links.len(), 3);
        assert_eq!(c[0].jaccard_max, pairs.iter().map(|p| p.jaccard).fold(0.0, f64::max));
        assert_eq!(c[0].jaccard_min, pairs.iter().map(|p| p.jaccard).fold(1.0, f64::min));
    }

    #[test]
    fn clusters_chain_and_stay_apart() {
        let p = |a, b| NearPair { a, b, jaccard: 0.9 };
        let c = clusters(&[p(5, 9), p(1, 2), p(2, 7), p(9, 11)]);
        assert_eq!(c.iter().map(|c| c.members.clone()).collect::<Vec<_>>(), vec![vec![1, 2, 7], vec![5, 9, 11]]);
        assert!(clusters(&[]).is_empty());
    }
}
