//! The writer thread: journal segments, and checkpoints of the views.

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex, mpsc},
    time::{Duration, Instant},
};

use super::{
    layout::{CHECKPOINT_KEY, Checkpoint, JournalRecord, Trees},
    lock,
    seen::SeenIds,
};
use crate::{
    bank::{Account, AccountId},
    crash::{self, CrashPoint},
    journal::RequestRecord,
    store::{
        StoreError, encode_account, encode_record,
        request_index::{RequestIndex, hash_id},
    },
};

/// Commits queued for the writer. When it falls this far behind, committers
/// wait for room: memory stays bounded and the load slows down instead.
pub(super) const WRITE_QUEUE_MAX: usize = 16_384;

/// Most commits in one journal segment (one sled key). Under load the writer
/// finds many commits queued and writes them as one segment: one insert
/// instead of one per commit. Bounded so a segment stays a few tens of KiB.
pub(super) const BATCH_COMMITS_MAX: usize = 256;

/// How long the writer lets commits gather after the first one arrives,
/// unless someone is waiting for it to drain. Fewer, larger segments cost
/// the writer less than a wake-up per commit, and no operation waits for the
/// writer except a `--durability sync` flush, which cuts the linger short.
pub(super) const WRITER_LINGER: Duration = Duration::from_millis(1);

/// Longest time between checkpoints while commits arrive: also the most
/// journal a restart after a crash replays, at the rate commits came.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Request ids written since the last checkpoint that make the writer
/// checkpoint early. Bounds the pending map: its records wait there until a
/// checkpoint puts them in the index.
pub(super) const CHECKPOINT_REQUESTS: usize = 65_536;

/// Accounts touched since the last checkpoint that make the writer checkpoint early.
pub(super) const CHECKPOINT_ACCOUNTS: usize = 65_536;

/// Progress of the writer, for those waiting on it.
#[derive(Debug, Default)]
pub(super) struct Written {
    /// Commits handed to the writer.
    pub(super) queued: u64,
    /// Commits it has written to the journal.
    pub(super) applied: u64,
    /// Set when a write failed: the store refuses further commits.
    pub(super) failure: Option<String>,
    /// Callers of [`SledStore::drain`] waiting now: the writer does not linger.
    pub(super) draining: usize,
}
/// What readers of request records need, under one lock so that a record is
/// always in one place or the other: pending, or in the published index.
#[derive(Debug)]
pub(super) struct Requests {
    /// Idempotency records not yet in the index, with the seq that wrote each.
    pub(super) pending: HashMap<String, (u64, RequestRecord)>,
    /// Every request id committed, pending or indexed.
    pub(super) seen: SeenIds,
    /// The index as of the last checkpoint. Readers look through a copy, so
    /// the writer never waits for them.
    pub(super) index: Arc<RequestIndex>,
}

impl Requests {
    pub(super) fn new(index: RequestIndex) -> Result<Self, StoreError> {
        Ok(Self {
            pending: HashMap::new(),
            seen: SeenIds::new()?,
            index: Arc::new(index),
        })
    }
}

/// What the writer owes the views: commits written to the journal since the
/// last checkpoint.
#[derive(Debug)]
pub(super) struct Views {
    /// Each account touched, with its last state.
    pub(super) accounts: HashMap<AccountId, Account>,
    /// Each request record written, with its commit's seq.
    pub(super) requests: Vec<(String, u64)>,
    /// One past the last seq written to the journal.
    pub(super) covered: u64,
    /// The writer's copy of the index, published to readers at each checkpoint.
    pub(super) index: RequestIndex,
    /// When the last checkpoint finished.
    pub(super) last: Instant,
}

impl Views {
    pub(super) fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.requests.is_empty()
    }

    pub(super) fn due(&self) -> bool {
        self.requests.len() >= CHECKPOINT_REQUESTS
            || self.accounts.len() >= CHECKPOINT_ACCOUNTS
            || (!self.is_empty() && self.last.elapsed() >= CHECKPOINT_INTERVAL)
    }

    /// Notes what `records` change in the views.
    pub(super) fn fold(&mut self, records: &[JournalRecord]) {
        for record in records {
            for leg in &record.entry.legs {
                self.accounts.insert(leg.account.clone(), leg.written);
            }
            if let Some((id, _)) = &record.request {
                self.requests
                    .push((id.as_str().to_owned(), record.entry.seq));
            }
            self.covered = record.entry.seq + 1;
        }
    }
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) written: Mutex<Written>,
    pub(super) progress: Condvar,
    /// Wakes a lingering writer when someone starts to drain.
    pub(super) wake: Condvar,
    pub(super) requests: Mutex<Requests>,
    /// Held by the writer while it writes, and by [`Store::clear`].
    pub(super) views: Mutex<Views>,
}
pub(super) fn failed(failure: &str) -> StoreError {
    StoreError::Corrupt {
        what: "sled writer",
        detail: format!("a write failed earlier, so the store refuses writes: {failure}"),
    }
}
pub(super) fn checkpoint_views(
    trees: &Trees,
    shared: &Shared,
    views: &mut Views,
) -> Result<(), StoreError> {
    if views.is_empty() {
        views.last = Instant::now();
        return Ok(());
    }
    let pairs = views
        .requests
        .iter()
        .map(|(id, seq)| (hash_id(id), *seq))
        .collect();
    let replaced = views.index.add(&trees.request_index, pairs)?;
    for (account, state) in views.accounts.drain() {
        trees
            .accounts
            .insert(account.as_str(), &encode_account(state))?;
    }
    let record = Checkpoint {
        covered: views.covered,
        index: views.index.clone(),
    };
    trees.meta.insert(CHECKPOINT_KEY, encode_record(&record))?;
    {
        let mut requests = lock(&shared.requests);
        requests.index = Arc::new(record.index);
        for (id, seq) in views.requests.drain(..) {
            // A later commit may have replaced the record: that one stays.
            if requests
                .pending
                .get(&id)
                .is_some_and(|(pending, _)| *pending == seq)
            {
                requests.pending.remove(&id);
            }
        }
    }
    RequestIndex::delete_runs(&trees.request_index, &replaced)?;
    tracing::debug!(
        covered = views.covered,
        index_runs = views.index.runs(),
        index_pairs = views.index.len(),
        merged_runs = replaced.len(),
        "checkpoint"
    );
    views.last = Instant::now();
    Ok(())
}

/// Writes one segment of consecutive commits: one journal key, the commit
/// point of all of them.
pub(super) fn write_segment(trees: &Trees, records: &[JournalRecord]) -> Result<(), StoreError> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    trees
        .journal
        .insert(first.entry.seq.to_be_bytes(), encode_record(&records))?;
    crash::reached_in_writer(CrashPoint::JournalBeforeBalances, &trees.journal);
    Ok(())
}

/// Lets commits gather for [`WRITER_LINGER`], unless someone is draining.
pub(super) fn linger(shared: &Shared) {
    let written = lock(&shared.written);
    if written.draining == 0 {
        let _ = shared
            .wake
            .wait_timeout_while(written, WRITER_LINGER, |written| written.draining == 0);
    }
}

/// The writer: takes everything queued, writes it as a segment, reports
/// progress, checkpoints when due. Runs until the store is dropped, then
/// writes a last checkpoint.
pub(super) fn write_batches(
    trees: &Trees,
    shared: &Shared,
    receiver: &mpsc::Receiver<JournalRecord>,
) {
    loop {
        let outcome = match receiver.recv_timeout(CHECKPOINT_INTERVAL) {
            Ok(first) => {
                linger(shared);
                let mut records = vec![first];
                while records.len() < BATCH_COMMITS_MAX {
                    match receiver.try_recv() {
                        Ok(record) => records.push(record),
                        Err(_) => break,
                    }
                }
                let mut views = lock(&shared.views);
                let outcome = write_segment(trees, &records).and_then(|()| {
                    views.fold(&records);
                    if views.due() {
                        checkpoint_views(trees, shared, &mut views)?;
                    }
                    Ok(())
                });
                drop(views);
                let mut written = lock(&shared.written);
                if outcome.is_ok() {
                    written.applied += u64::try_from(records.len()).unwrap_or(u64::MAX);
                }
                outcome
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                checkpoint_views(trees, shared, &mut lock(&shared.views))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(error) = checkpoint_views(trees, shared, &mut lock(&shared.views)) {
                    tracing::error!(%error, "the last checkpoint failed; the next open replays the journal");
                }
                return;
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "sled write failed; the store refuses further writes");
            lock(&shared.written).failure = Some(error.to_string());
        }
        shared.progress.notify_all();
    }
}
