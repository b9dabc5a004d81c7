//! The filter of request ids seen since the last Reset, and its copy
//! saved at a clean close.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::super::{StoreError, decode_record, encode_record};

/// The file a clean close saves the filter to, beside the journal.
const SAVED_FILE: &str = "seen-ids.bin";

/// The filter as saved, with the checkpoint it is complete for.
#[derive(Serialize, Deserialize)]
struct Saved {
    journal_epoch: u64,
    covered: u64,
    full: bool,
    filter: qfilter::Filter,
}

/// Request ids the filter holds at first (4.5 MB); it doubles as it fills.
pub(super) const SEEN_IDS_INITIAL: u64 = 1 << 20;

/// Request ids the filter can grow to hold: 64M, about 150 MB when full
/// (18 minutes at 60,000 operations a second without a Reset).
pub(super) const SEEN_IDS_MAX: u64 = 1 << 26;

/// The filter's false-positive rate when fully grown; lower before.
pub(super) const SEEN_FP_RATE: f64 = 0.01;

/// The hash of every request id committed since the last Reset, as a
/// quotient filter: a miss proves an id is new, which spares the index
/// lookup on almost every operation. It doubles as it fills (a pause of the
/// committing thread, O(ids), at each doubling), so its false-positive rate
/// stays at 1% or below; past [`SEEN_IDS_MAX`] it answers "maybe" for every
/// id, which costs lookups, never correctness.
#[derive(Debug)]
pub(super) struct SeenIds {
    pub(super) filter: qfilter::Filter,
    pub(super) full: bool,
}

impl SeenIds {
    pub(super) fn new() -> Result<Self, StoreError> {
        Self::sized(SEEN_IDS_INITIAL, SEEN_IDS_MAX)
    }

    pub(super) fn sized(initial: u64, max: u64) -> Result<Self, StoreError> {
        let filter = qfilter::Filter::new_resizeable(initial, max, SEEN_FP_RATE).map_err(|e| {
            StoreError::Corrupt {
                what: "request filter",
                detail: e.to_string(),
            }
        })?;
        Ok(Self {
            filter,
            full: false,
        })
    }

    pub(super) fn insert(&mut self, hash: u64) {
        if !self.full && self.filter.insert_fingerprint(false, hash).is_err() {
            self.full = true;
            tracing::warn!(
                ids = self.filter.len(),
                "the request filter is full: every request id is looked up in the index until a Reset"
            );
        }
    }

    /// Saves the filter for the next open, complete up to the checkpoint
    /// (`journal_epoch`, `covered`) just written. Why: rebuilding it means
    /// reading every pair of the request index through sled, whose page
    /// cache keeps what it reads (16 bytes an id; 1.25 GB after 78M ids).
    pub(super) fn save(
        &self,
        dir: &Path,
        journal_epoch: u64,
        covered: u64,
    ) -> Result<(), StoreError> {
        let saved = Saved {
            journal_epoch,
            covered,
            full: self.full,
            filter: self.filter.clone(),
        };
        let payload = encode_record(&saved);
        // A CRC-32 first: a filter read back wrong could say "new" for an
        // id it holds, and let that id's duplicate apply twice.
        let mut bytes = crc32fast::hash(&payload).to_le_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let temporary = dir.join(format!("{SAVED_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut &file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, dir.join(SAVED_FILE))?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| StoreError::Corrupt {
            what: "saved request filter",
            detail: e.to_string(),
        })
    }

    /// The filter a clean close saved, if it is complete for this
    /// checkpoint. The file is removed (durably) either way before the store
    /// accepts a commit: from then on it would miss ids, and a filter that
    /// misses an id lets its duplicate through.
    pub(super) fn take_saved(
        dir: &Path,
        journal_epoch: u64,
        covered: u64,
    ) -> Result<Option<Self>, StoreError> {
        let path = dir.join(SAVED_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(StoreError::Corrupt {
                    what: "saved request filter",
                    detail: error.to_string(),
                });
            }
        };
        let removed =
            std::fs::remove_file(&path).and_then(|()| std::fs::File::open(dir)?.sync_all());
        removed.map_err(|e| StoreError::Corrupt {
            what: "saved request filter",
            detail: format!("could not remove {}: {e}", path.display()),
        })?;
        let intact = bytes.split_first_chunk::<4>().and_then(|(crc, payload)| {
            (u32::from_le_bytes(*crc) == crc32fast::hash(payload)).then_some(payload)
        });
        let Some(payload) = intact else {
            tracing::warn!("ignored the saved request filter (checksum mismatch); rebuilding it");
            return Ok(None);
        };
        let saved: Saved = match decode_record("saved request filter", payload) {
            Ok(saved) => saved,
            Err(error) => {
                tracing::warn!(%error, "ignored the saved request filter; rebuilding it");
                return Ok(None);
            }
        };
        let current = saved.journal_epoch == journal_epoch && saved.covered == covered;
        Ok(current.then_some(Self {
            filter: saved.filter,
            full: saved.full,
        }))
    }

    pub(super) fn may_contain(&self, hash: u64) -> bool {
        self.full || self.filter.contains_fingerprint(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a saved filter comes back only for the checkpoint it was saved
    /// at, and only once (the file is gone after the first open). Method:
    /// save, take for another checkpoint, save, take twice for the right one.
    #[test]
    fn a_saved_filter_returns_once_and_only_for_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenIds::new().unwrap();
        seen.insert(42);
        seen.save(dir.path(), 1, 100).unwrap();
        assert!(
            SeenIds::take_saved(dir.path(), 1, 101).unwrap().is_none(),
            "stale"
        );
        assert!(
            SeenIds::take_saved(dir.path(), 1, 100).unwrap().is_none(),
            "gone"
        );
        seen.save(dir.path(), 1, 100).unwrap();
        let back = SeenIds::take_saved(dir.path(), 1, 100).unwrap().unwrap();
        assert!(back.may_contain(42));
        assert!(!back.full);
        assert!(
            SeenIds::take_saved(dir.path(), 1, 100).unwrap().is_none(),
            "once"
        );
    }

    /// Goal: the filter of seen ids never forgets one while it grows, keeps
    /// its false-positive rate near 1%, and once full answers "maybe" for
    /// everything (lookups, never a missed duplicate). Method: a filter from
    /// 1,000 to 64,000 ids; 60,000 hashes in, 100,000 others probed; then
    /// past the maximum.
    #[test]
    pub(super) fn seen_ids_grow_without_forgetting_and_say_maybe_once_full() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut seen = SeenIds::sized(1_000, 64_000).unwrap();
        let inserted: Vec<u64> = (0..60_000).map(|_| rng.random()).collect();
        for &hash in &inserted {
            seen.insert(hash);
        }
        assert!(!seen.full);
        assert!(inserted.iter().all(|&hash| seen.may_contain(hash)));
        let false_positives = (0..100_000)
            .filter(|_| seen.may_contain(rng.random()))
            .count();
        assert!(false_positives < 2_000, "{false_positives} in 100,000");
        let room = seen.filter.max_capacity() - seen.filter.len();
        for _ in 0..room + 1_000 {
            seen.insert(rng.random());
        }
        assert!(
            seen.full,
            "past its maximum of {}",
            seen.filter.max_capacity()
        );
        assert!(seen.may_contain(rng.random()));
    }
}
