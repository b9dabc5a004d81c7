//! The filter of request ids seen since the last Reset.

use super::super::StoreError;

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

    pub(super) fn may_contain(&self, hash: u64) -> bool {
        self.full || self.filter.contains_fingerprint(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
