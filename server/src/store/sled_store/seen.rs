//! The filter of request ids seen since the last Reset, and its copy
//! saved at a clean close.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::super::{StoreError, decode_record, encode_record};

/// The file a clean close saves the filter to, beside the journal.
const SAVED_FILE: &str = "seen-ids-sharded.bin";

/// Where builds before the filter was sharded saved it: removed unread, so
/// that no other layout is ever decoded as this one.
const SAVED_FILE_UNSHARDED: &str = "seen-ids.bin";

/// The filter as saved, with the checkpoint it is complete for.
#[derive(Deserialize)]
struct Saved {
    journal_epoch: u64,
    covered: u64,
    shards: Vec<Shard>,
}

/// [`Saved`] as written: the same fields, the shards borrowed.
#[derive(Serialize)]
struct Saving<'a> {
    journal_epoch: u64,
    covered: u64,
    shards: &'a [Shard],
}

/// Request ids the filter holds at first (4.5 MB); it doubles as it fills.
pub(super) const SEEN_IDS_INITIAL: u64 = 1 << 20;

/// Request ids the filter can grow to hold: 64M, about 150 MB when full
/// (18 minutes at 60,000 operations a second without a Reset).
pub(super) const SEEN_IDS_MAX: u64 = 1 << 26;

/// The filter's false-positive rate when fully grown; lower before.
pub(super) const SEEN_FP_RATE: f64 = 0.01;

/// Shards of the filter, chosen by the top bits of an id's hash (the
/// filter's fingerprint uses the low ones). A filter doubles as it fills by
/// copying itself whole, under the lock every operation takes: one filter
/// of 32M ids stood every operation still for 385-448 ms at that doubling
/// (26 ms already at 2M). A shard holds 1/64 of the ids, so its doublings
/// cost 1/64 as much: at most 7 ms up to 60M ids (BENCHMARKS.md).
const SHARDS: usize = 64;

/// One shard: its filter, and whether it has filled up.
#[derive(Debug, Serialize, Deserialize)]
struct Shard {
    filter: qfilter::Filter,
    full: bool,
}

/// The hash of every request id committed since the last Reset, as
/// quotient filters: a miss proves an id is new, which spares the index
/// lookup on almost every operation. Each shard doubles as it fills (a
/// pause of the committing thread, O(its ids), at each doubling), so the
/// false-positive rate stays at 1% or below; a shard past its share of
/// [`SEEN_IDS_MAX`] answers "maybe" for each of its ids, which costs
/// lookups, never correctness.
#[derive(Debug)]
pub(super) struct SeenIds {
    shards: Vec<Shard>,
}

impl SeenIds {
    pub(super) fn new() -> Result<Self, StoreError> {
        Self::sized(SEEN_IDS_INITIAL, SEEN_IDS_MAX)
    }

    /// Room for `initial` ids at first and `max` at most, over all shards.
    pub(super) fn sized(initial: u64, max: u64) -> Result<Self, StoreError> {
        let shards = u64::try_from(SHARDS).unwrap_or(1);
        let shards = (0..SHARDS)
            .map(|_| {
                qfilter::Filter::new_resizeable(
                    initial.div_ceil(shards),
                    max.div_ceil(shards),
                    SEEN_FP_RATE,
                )
                .map(|filter| Shard {
                    filter,
                    full: false,
                })
                .map_err(|e| StoreError::Corrupt {
                    what: "request filter",
                    detail: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { shards })
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[shard_of(hash)]
    }

    pub(super) fn insert(&mut self, hash: u64) {
        let shard = &mut self.shards[shard_of(hash)];
        if !shard.full && shard.filter.insert_fingerprint(false, hash).is_err() {
            shard.full = true;
            tracing::warn!(
                ids = shard.filter.len(),
                shards = SHARDS,
                "a shard of the request filter is full: its request ids are looked up in the index until a Reset"
            );
        }
    }

    /// Shards that have filled up.
    #[cfg(test)]
    pub(super) fn full_shards(&self) -> usize {
        self.shards.iter().filter(|shard| shard.full).count()
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
        let saved = Saving {
            journal_epoch,
            covered,
            shards: &self.shards,
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
        match std::fs::remove_file(dir.join(SAVED_FILE_UNSHARDED)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt {
                    what: "saved request filter",
                    detail: format!("could not remove {SAVED_FILE_UNSHARDED}: {error}"),
                });
            }
            _ => {}
        }
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
        let current = saved.journal_epoch == journal_epoch
            && saved.covered == covered
            && saved.shards.len() == SHARDS;
        Ok(current.then_some(Self {
            shards: saved.shards,
        }))
    }

    pub(super) fn may_contain(&self, hash: u64) -> bool {
        let shard = self.shard(hash);
        shard.full || shard.filter.contains_fingerprint(hash)
    }
}

/// The shard of `hash`: its top bits.
fn shard_of(hash: u64) -> usize {
    // SHARDS is a power of two; the shift leaves a value below it.
    usize::try_from(hash >> (64 - SHARDS.trailing_zeros())).unwrap_or(0)
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
        assert_eq!(back.full_shards(), 0);
        assert!(
            SeenIds::take_saved(dir.path(), 1, 100).unwrap().is_none(),
            "once"
        );
    }

    /// Goal: a filter saved by a build before the shards is never read as
    /// sharded, and does not stay behind. Method: a file under the old name
    /// holding a valid-looking record; take_saved finds nothing and removes it.
    #[test]
    fn a_filter_saved_unsharded_is_removed_unread() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(SAVED_FILE_UNSHARDED);
        let payload = encode_record(&(1u64, 100u64, false));
        let mut bytes = crc32fast::hash(&payload).to_le_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        std::fs::write(&old, bytes).unwrap();
        assert!(SeenIds::take_saved(dir.path(), 1, 100).unwrap().is_none());
        assert!(!old.exists());
    }

    /// Goal: the filter of seen ids never forgets one while it grows, keeps
    /// its false-positive rate near 1%, and a shard once full answers
    /// "maybe" for everything (lookups, never a missed duplicate). Method: a
    /// filter from 64,000 to 256,000 ids; 200,000 hashes in, 100,000 others
    /// probed; then twice its maximum more.
    #[test]
    pub(super) fn seen_ids_grow_without_forgetting_and_say_maybe_once_full() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut seen = SeenIds::sized(64_000, 256_000).unwrap();
        let inserted: Vec<u64> = (0..200_000).map(|_| rng.random()).collect();
        for &hash in &inserted {
            seen.insert(hash);
        }
        assert_eq!(seen.full_shards(), 0);
        assert!(inserted.iter().all(|&hash| seen.may_contain(hash)));
        let false_positives = (0..100_000)
            .filter(|_| seen.may_contain(rng.random()))
            .count();
        assert!(false_positives < 2_000, "{false_positives} in 100,000");
        for _ in 0..512_000 {
            seen.insert(rng.random());
        }
        assert_eq!(seen.full_shards(), SHARDS, "past twice its maximum");
        assert!((0..1_000).all(|_| seen.may_contain(rng.random())));
        assert!(inserted.iter().all(|&hash| seen.may_contain(hash)));
    }

    /// Goal: ids spread over the shards by their hash's top bits, every
    /// shard in use. Method: 64,000 random hashes, the fullest and emptiest
    /// shard within a factor of two of the mean.
    #[test]
    fn ids_spread_over_every_shard() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut seen = SeenIds::sized(64_000, 256_000).unwrap();
        for _ in 0..64_000 {
            seen.insert(rng.random());
        }
        let lengths: Vec<u64> = seen.shards.iter().map(|s| s.filter.len()).collect();
        let mean = 64_000 / u64::try_from(SHARDS).unwrap();
        assert!(
            lengths.iter().all(|&n| n > mean / 2 && n < mean * 2),
            "{lengths:?}"
        );
    }
}
