//! The on-disk index of request ids: which journal seq last wrote each id's
//! idempotency record.
//!
//! One sled key per request cost the writer about 5 µs per operation, a
//! quarter of a core at the load the benchmark drives, and its B-tree never
//! stops growing. The index is instead a few sorted runs of `(hash of the id,
//! seq)` pairs, written at checkpoints in chunks of [`CHUNK_ENTRIES`] pairs
//! (one sled key each), and merged when the two newest runs are about the
//! same size, as a binary counter: there are O(log n) runs and each pair is
//! rewritten O(log n) times, a few sled inserts per thousand operations.
//!
//! The hash is not the id: a lookup yields candidate seqs, newest first, and
//! the caller reads each one's journal record to find the one whose id
//! matches. Collisions cost a journal read, never a wrong answer.
//!
//! The list of runs is part of the store's checkpoint record: a run exists
//! once a checkpoint lists it. Chunks of runs no checkpoint lists (a crash
//! during a merge, or before the checkpoint that would have listed them) are
//! swept at open.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Pairs per chunk: 16 bytes each, 4 KiB per sled value.
const CHUNK_ENTRIES: usize = 256;

/// Runs are not merged past this many pairs (16 MiB). A merge runs on the
/// writer thread, so this bounds its pause: about 0.2 s at the cap (0.66 s
/// for 4M pairs), shorter than the write queue takes to fill at 60,000
/// commits a second, so committers do not stall behind it. Past the cap runs
/// accumulate, one per 1M request ids, and a lookup reads one chunk from each
/// (lookups are rare: the store's filter of seen ids answers for new ids).
const MERGE_PAIRS_MAX: u64 = 1 << 20;

/// The index's hash of a request id. Stored on disk, so it must never change:
/// XXH3 (64 bits) is specified and stable across versions and platforms.
pub(super) fn hash_id(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// One sorted run: its chunks are keys `id ‖ chunk number` in the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Run {
    id: u64,
    /// Pairs in the run.
    len: u64,
    /// The first hash of each chunk, to find a hash's chunk without reading the others.
    fences: Vec<u64>,
}

/// The runs that make up the index, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RequestIndex {
    runs: Vec<Run>,
    next_run: u64,
}

fn chunk_key(run: u64, chunk: usize) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&run.to_be_bytes());
    key[8..].copy_from_slice(&u64::try_from(chunk).unwrap_or(u64::MAX).to_be_bytes());
    key
}

fn encode_chunk(pairs: &[(u64, u64)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(pairs.len() * 16);
    for (hash, seq) in pairs {
        bytes.extend_from_slice(&hash.to_be_bytes());
        bytes.extend_from_slice(&seq.to_be_bytes());
    }
    bytes
}

fn decode_chunk(bytes: &[u8]) -> Result<Vec<(u64, u64)>, StoreError> {
    if !bytes.len().is_multiple_of(16) {
        return Err(StoreError::Corrupt {
            what: "request index chunk",
            detail: format!(
                "{} bytes is not a whole number of 16-byte pairs",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|pair| {
            let (hash, seq) = pair.split_at(8);
            let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
            (word(hash), word(seq))
        })
        .collect())
}

/// What a lookup found.
#[derive(Debug)]
pub(super) enum Lookup {
    /// Candidate seqs, newest first.
    Found(Vec<u64>),
    /// A chunk this copy of the index lists is gone, because a merge replaced
    /// its run after the copy was taken: take a fresh copy and look again.
    Stale,
}

impl RequestIndex {
    /// Pairs in all runs.
    pub(super) fn len(&self) -> u64 {
        self.runs.iter().map(|run| run.len).sum()
    }

    /// Runs in the index.
    pub(super) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Writes `pairs` as a new run, then merges while the two newest runs are
    /// about the same size. Returns the runs merged away: the caller deletes
    /// them with [`RequestIndex::delete_runs`] once a checkpoint lists the
    /// index without them.
    pub(super) fn add(
        &mut self,
        tree: &sled::Tree,
        pairs: Vec<(u64, u64)>,
    ) -> Result<Vec<u64>, StoreError> {
        self.add_merging_up_to(tree, pairs, MERGE_PAIRS_MAX)
    }

    fn add_merging_up_to(
        &mut self,
        tree: &sled::Tree,
        mut pairs: Vec<(u64, u64)>,
        merge_pairs_max: u64,
    ) -> Result<Vec<u64>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        pairs.sort_unstable();
        let run = self.write_run(tree, &pairs)?;
        self.runs.push(run);
        let mut replaced = Vec::new();
        while let [.., older, newer] = self.runs.as_slice()
            && older.len <= 2 * newer.len
            && older.len + newer.len <= merge_pairs_max
        {
            let (older, newer) = (older.clone(), newer.clone());
            let merged = merge(&read_run(tree, &older)?, &read_run(tree, &newer)?);
            let run = self.write_run(tree, &merged)?;
            self.runs.truncate(self.runs.len() - 2);
            self.runs.push(run);
            replaced.extend([older.id, newer.id]);
        }
        Ok(replaced)
    }

    fn write_run(&mut self, tree: &sled::Tree, pairs: &[(u64, u64)]) -> Result<Run, StoreError> {
        let id = self.next_run;
        self.next_run += 1;
        let mut fences = Vec::with_capacity(pairs.len().div_ceil(CHUNK_ENTRIES));
        for (number, chunk) in pairs.chunks(CHUNK_ENTRIES).enumerate() {
            fences.push(chunk[0].0);
            tree.insert(chunk_key(id, number), encode_chunk(chunk))?;
        }
        Ok(Run {
            id,
            len: u64::try_from(pairs.len()).unwrap_or(u64::MAX),
            fences,
        })
    }

    /// Deletes the chunks of runs no longer listed.
    pub(super) fn delete_runs(tree: &sled::Tree, runs: &[u64]) -> Result<(), StoreError> {
        for run in runs {
            for key in tree.scan_prefix(run.to_be_bytes()).keys() {
                tree.remove(key?)?;
            }
        }
        Ok(())
    }

    /// Deletes every chunk of a run this index does not list.
    pub(super) fn sweep(&self, tree: &sled::Tree) -> Result<u64, StoreError> {
        let mut swept = 0;
        for key in tree.iter().keys() {
            let key = key?;
            let run = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            if !self.runs.iter().any(|listed| Some(listed.id) == run) {
                tree.remove(key)?;
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Calls `each` with every hash in the index (to rebuild a filter at open).
    pub(super) fn for_each_hash(
        &self,
        tree: &sled::Tree,
        mut each: impl FnMut(u64),
    ) -> Result<(), StoreError> {
        for run in &self.runs {
            for (hash, _) in read_run(tree, run)? {
                each(hash);
            }
        }
        Ok(())
    }

    /// The seqs stored under `hash`, newest first.
    pub(super) fn lookup(&self, tree: &sled::Tree, hash: u64) -> Result<Lookup, StoreError> {
        let mut seqs = Vec::new();
        for run in &self.runs {
            // Chunk i holds hashes from fences[i] to fences[i + 1] (both ends
            // included, as equal hashes may straddle a boundary).
            let first = run.fences.partition_point(|&fence| fence < hash);
            for number in first.saturating_sub(1)..run.fences.len() {
                if run.fences[number] > hash {
                    break;
                }
                let Some(bytes) = tree.get(chunk_key(run.id, number))? else {
                    return Ok(Lookup::Stale);
                };
                let pairs = decode_chunk(&bytes)?;
                let start = pairs.partition_point(|&(h, _)| h < hash);
                seqs.extend(
                    pairs[start..]
                        .iter()
                        .take_while(|&&(h, _)| h == hash)
                        .map(|&(_, seq)| seq),
                );
            }
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        seqs.dedup();
        Ok(Lookup::Found(seqs))
    }
}

fn read_run(tree: &sled::Tree, run: &Run) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut pairs = Vec::with_capacity(usize::try_from(run.len).unwrap_or(0));
    for number in 0..run.fences.len() {
        let bytes = tree
            .get(chunk_key(run.id, number))?
            .ok_or_else(|| StoreError::Corrupt {
                what: "request index",
                detail: format!("run {} lacks its chunk {number}", run.id),
            })?;
        pairs.extend(decode_chunk(&bytes)?);
    }
    Ok(pairs)
}

/// Merges two sorted runs into one sorted run, keeping every pair.
fn merge(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            merged.push(a[i]);
            i += 1;
        } else {
            merged.push(b[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&a[i..]);
    merged.extend_from_slice(&b[j..]);
    merged
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn found(index: &RequestIndex, tree: &sled::Tree, hash: u64) -> Vec<u64> {
        match index.lookup(tree, hash).unwrap() {
            Lookup::Found(seqs) => seqs,
            Lookup::Stale => panic!("stale lookup without a concurrent merge"),
        }
    }

    /// Goal: every pair ever added is found under its hash, newest seq first,
    /// across merges, chunk boundaries and equal hashes (collisions and
    /// replaced records); runs stay logarithmic; merged-away chunks are gone
    /// once deleted; a sweep removes chunks no index lists.
    /// Method: add 60 random batches (a small hash space forces equal hashes
    /// across chunks) and compare each lookup with a model.
    #[test]
    fn lookups_match_a_model_across_merges() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("index").unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut index = RequestIndex::default();
        let mut model: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut seq = 0;
        for _ in 0..60 {
            let batch: Vec<(u64, u64)> = (0..rng.random_range(1..700))
                .map(|_| {
                    seq += 1;
                    (rng.random_range(0..5_000), seq)
                })
                .collect();
            for &(hash, seq) in &batch {
                model.entry(hash).or_default().push(seq);
            }
            let replaced = index.add(&tree, batch).unwrap();
            RequestIndex::delete_runs(&tree, &replaced).unwrap();
            assert!(
                index.runs() <= 2 * (64 - index.len().leading_zeros() as usize),
                "{} runs for {} pairs",
                index.runs(),
                index.len()
            );
        }
        assert_eq!(index.len(), seq);
        for hash in 0..5_000 {
            let mut expected = model.remove(&hash).unwrap_or_default();
            expected.reverse();
            assert_eq!(found(&index, &tree, hash), expected, "hash {hash}");
        }
        assert_eq!(index.sweep(&tree).unwrap(), 0, "nothing unlisted");
        let chunks = tree.len();
        let mut orphan = RequestIndex {
            next_run: index.next_run,
            ..RequestIndex::default()
        };
        orphan.add(&tree, vec![(1, 1), (2, 2)]).unwrap();
        assert_eq!(index.sweep(&tree).unwrap(), 1, "the unlisted run's chunk");
        assert_eq!(tree.len(), chunks);
    }

    /// Goal: runs stop merging at the cap, and lookups still find every
    /// pair across the unmerged runs. Method: a cap of 1,000 pairs and 40
    /// batches of 100.
    #[test]
    fn runs_past_the_merge_cap_stay_apart_and_are_searched() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("index").unwrap();
        let mut index = RequestIndex::default();
        for batch in 0..40u64 {
            let pairs = (0..100).map(|i| (i * 7 + batch, batch * 100 + i)).collect();
            let replaced = index.add_merging_up_to(&tree, pairs, 1_000).unwrap();
            RequestIndex::delete_runs(&tree, &replaced).unwrap();
        }
        assert!(index.runs.iter().all(|run| run.len <= 1_000));
        assert!(index.runs() >= 4, "{} runs", index.runs());
        for batch in 0..40u64 {
            for i in 0..100 {
                assert!(
                    found(&index, &tree, i * 7 + batch).contains(&(batch * 100 + i)),
                    "batch {batch} pair {i}"
                );
            }
        }
    }

    /// Goal: a lookup through a copy of the index taken before a merge says
    /// Stale (never a wrong "absent") once the merged-away chunks are deleted.
    #[test]
    fn a_lookup_through_an_old_copy_is_stale_after_a_merge() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("index").unwrap();
        let mut index = RequestIndex::default();
        index.add(&tree, vec![(10, 1), (20, 2)]).unwrap();
        let old = index.clone();
        let replaced = index.add(&tree, vec![(30, 3), (40, 4)]).unwrap();
        assert_eq!(replaced.len(), 2, "equal sizes merge");
        RequestIndex::delete_runs(&tree, &replaced).unwrap();
        assert!(matches!(old.lookup(&tree, 10).unwrap(), Lookup::Stale));
        assert_eq!(found(&index, &tree, 10), vec![1]);
        assert_eq!(found(&index, &tree, 40), vec![4]);
        assert_eq!(found(&index, &tree, 25), Vec::<u64>::new());
    }

    /// The hash is on disk: it must not change between builds.
    #[test]
    fn the_hash_is_stable() {
        assert_eq!(hash_id(""), 0x2d06_8005_38d3_94c2);
    }
}
