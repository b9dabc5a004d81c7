//! The writer thread: journal segments, the syncs `--durability sync`
//! waits for, and handing what the views owe over to the checkpointer
//! (`checkpoint.rs`) when a checkpoint is due.

use std::{
    fs::File,
    path::Path,
    sync::{Arc, Condvar, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use foldhash::HashMap;

use super::{
    checkpoint::{self, Checkpoints},
    journal_file::{self, JournalFile},
    layout::{JournalRecord, Trees},
    pending::Pending,
    seen::SeenIds,
    state::lock,
};
use crate::{
    bank::{Account, AccountId},
    crash::{self, CrashPoint},
    store::{FlushDone, FlushFigures, StoreError, request_index::RequestIndex},
};

/// Commits queued for the writer. When it falls this far behind, committers
/// wait for room: memory stays bounded and the load slows down instead.
pub(super) const WRITE_QUEUE_MAX: usize = 16_384;

/// Most commits in one journal segment (one frame of the journal file).
/// Under load the writer finds many commits queued and writes them as one
/// segment: one write instead of one per commit. Bounded so a segment stays
/// a few tens of KiB.
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
#[derive(Debug)]
pub(super) struct Written {
    /// Commits handed to the writer.
    pub(super) queued: u64,
    /// Commits it has written to the journal.
    pub(super) applied: u64,
    /// Set when a write failed: the store refuses further commits.
    pub(super) failure: Option<String>,
    /// Callers of [`SledStore::drain`] waiting now: the writer does not linger.
    pub(super) draining: usize,
    /// Sync requests queued and not yet done: the writer does not linger either.
    pub(super) syncs_queued: usize,
    /// The writer is lingering: only then does a drain or a sync request
    /// need to wake it (a wake-up is a syscall, and a sync request comes
    /// with every `--durability sync` operation).
    pub(super) lingering: bool,
    /// The journal file being appended to, for flushes and scans.
    pub(super) journal: Arc<File>,
    /// Bytes of whole frames in it once `applied` commits are written.
    pub(super) journal_end: u64,
}

impl Written {
    /// Nothing queued yet, the journal file holding `journal_end` bytes of frames.
    pub(super) fn new(journal: Arc<File>, journal_end: u64) -> Self {
        Self {
            queued: 0,
            applied: 0,
            failure: None,
            draining: 0,
            syncs_queued: 0,
            lingering: false,
            journal,
            journal_end,
        }
    }

    /// Records the first write that failed: from then on the store refuses
    /// commits and the writer answers no sync Ok.
    pub(super) fn fail(&mut self, error: &StoreError) {
        if self.failure.is_none() {
            tracing::error!(%error, "a journal or sled write failed; the store refuses further writes");
            self.failure = Some(error.to_string());
        }
    }
}

/// What readers of request records need, under one lock so that a record is
/// always in one place or the other: pending, or in the published index.
#[derive(Debug)]
pub(super) struct Requests {
    /// Idempotency records not known to be in the index yet.
    pub(super) pending: Pending,
    /// Every request id committed, pending or indexed.
    pub(super) seen: SeenIds,
    /// The index as of the last checkpoint. Readers look through a copy, so
    /// the writer never waits for them.
    pub(super) index: Arc<RequestIndex>,
    /// The journal file the index points into.
    pub(super) journal: Arc<File>,
}

impl Requests {
    pub(super) fn new(index: RequestIndex, journal: Arc<File>) -> Result<Self, StoreError> {
        Ok(Self {
            pending: Pending::default(),
            seen: SeenIds::new()?,
            index: Arc::new(index),
            journal,
        })
    }
}

/// What the writer owes the views: commits written to the journal since the
/// last checkpoint.
#[derive(Debug, Default)]
pub(super) struct Owed {
    /// Each account touched, with its last state.
    pub(super) accounts: HashMap<AccountId, Account>,
    /// Each request record written, with its commit's seq and the offset
    /// of its segment in the journal file (what the index stores).
    pub(super) requests: Vec<(String, u64, u64)>,
    /// One past the last seq written to the journal.
    pub(super) covered: u64,
}

impl Owed {
    pub(super) fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.requests.is_empty()
    }

    /// Notes what `records`, the segment at `offset` in the journal file, change in the views.
    pub(super) fn fold(&mut self, records: &[JournalRecord], offset: u64) {
        for record in records {
            for leg in &record.entry.legs {
                self.accounts.insert(leg.account.clone(), leg.written);
            }
            if let Some((id, _)) = &record.request {
                self.requests
                    .push((id.as_str().to_owned(), record.entry.seq, offset));
            }
            self.covered = record.entry.seq + 1;
        }
    }
}

/// The writer's state, under one lock that [`Store::clear`] also takes.
#[derive(Debug)]
pub(super) struct Views {
    /// What the next checkpoint writes.
    pub(super) owed: Owed,
    /// When the last checkpoint was handed over.
    pub(super) last: Instant,
    /// The journal file: the writer appends segments to it.
    pub(super) journal: JournalFile,
}

impl Views {
    pub(super) fn due(&self) -> bool {
        self.owed.requests.len() >= CHECKPOINT_REQUESTS
            || self.owed.accounts.len() >= CHECKPOINT_ACCOUNTS
            || (!self.owed.is_empty() && self.last.elapsed() >= CHECKPOINT_INTERVAL)
    }

    /// What the views owe as of now, for a checkpoint; the writer starts
    /// owing afresh from here.
    pub(super) fn hand_over(&mut self) -> checkpoint::Job {
        self.last = Instant::now();
        let covered = self.owed.covered;
        checkpoint::Job {
            owed: std::mem::replace(
                &mut self.owed,
                Owed {
                    covered,
                    ..Owed::default()
                },
            ),
            epoch: self.journal.epoch(),
            journal_offset: self.journal.end(),
            journal: self.journal.handle(),
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
    /// Held by the checkpointer while it checkpoints, and by [`Store::clear`].
    pub(super) checkpoints: Mutex<Checkpoints>,
}
pub(super) fn failed(failure: &str) -> StoreError {
    StoreError::Corrupt {
        what: "sled writer",
        detail: format!("a write failed earlier, so the store refuses writes: {failure}"),
    }
}
/// Writes one segment of consecutive commits, the commit point of all of
/// them, and notes what they change in the views.
pub(super) fn write_segment(
    views: &mut Views,
    records: &[JournalRecord],
) -> Result<(), StoreError> {
    let offset = views.journal.append(records)?;
    crash::reached_in_writer(CrashPoint::JournalBeforeBalances, &views.journal.handle());
    views.owed.fold(records, offset);
    Ok(())
}

/// Lets commits gather for [`WRITER_LINGER`], unless someone is draining
/// or waiting for a sync.
pub(super) fn linger(shared: &Shared) {
    let mut written = lock(&shared.written);
    let idle = |written: &mut Written| written.draining == 0 && written.syncs_queued == 0;
    if idle(&mut written) {
        written.lingering = true;
        let (mut written, _) = shared
            .wake
            .wait_timeout_while(written, WRITER_LINGER, idle)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        written.lingering = false;
    }
}

/// What the writer's queue carries, in the order committers and flushers sent it.
pub(super) enum Job {
    /// A commit's journal record.
    Commit(JournalRecord),
    /// Sync the journal once every commit queued before this is written.
    Sync(FlushDone),
}

/// Takes the next batch off the queue after `first`: commits up to
/// [`BATCH_COMMITS_MAX`], and the syncs among them.
fn take_batch(
    first: Job,
    receiver: &mpsc::Receiver<Job>,
    records: &mut Vec<JournalRecord>,
    syncs: &mut Vec<FlushDone>,
) {
    let mut next = Some(first);
    while let Some(job) = next.take() {
        match job {
            Job::Commit(record) => records.push(record),
            Job::Sync(done) => syncs.push(done),
        }
        if records.len() < BATCH_COMMITS_MAX {
            next = receiver.try_recv().ok();
        }
    }
}

/// Writes a batch as one segment, syncs the journal if anyone asked (the
/// commits before each sync request are in this segment or an earlier one,
/// so one fdatasync covers every request), answers the syncs, and then
/// hands a checkpoint over when one is due.
pub(super) fn write_batch(
    shared: &Shared,
    checkpoints: &mpsc::SyncSender<checkpoint::Job>,
    records: &[JournalRecord],
    syncs: &mut Vec<FlushDone>,
) -> Result<(), StoreError> {
    // Once a write has failed, nothing more is written and no sync request
    // is answered Ok: a commit queued before the failure may be the one
    // whose frame was lost, and a later fdatasync would not cover it.
    if let Some(failure) = lock(&shared.written).failure.clone() {
        answer(syncs, Some(&failure), None);
        return Err(failed(&failure));
    }
    let started = Instant::now();
    let mut views = lock(&shared.views);
    let mut outcome = if records.is_empty() {
        Ok(())
    } else {
        write_segment(&mut views, records)
    };
    if outcome.is_ok() && !syncs.is_empty() {
        outcome = journal_file::sync(&views.journal.handle());
    }
    let figures = FlushFigures {
        requests: syncs.len(),
        took: started.elapsed(),
    };
    {
        // Under the views lock, so that a Reset (which swaps the journal
        // file under it) never sees this batch's end beside its new file.
        let mut written = lock(&shared.written);
        match &outcome {
            Ok(()) => {
                written.applied += u64::try_from(records.len()).unwrap_or(u64::MAX);
                written.journal_end = views.journal.end();
            }
            Err(error) => written.fail(error),
        }
        written.syncs_queued = written.syncs_queued.saturating_sub(syncs.len());
    }
    let due = (outcome.is_ok() && views.due()).then(|| views.hand_over());
    drop(views);
    let failure = outcome.as_ref().err().map(ToString::to_string);
    answer(syncs, failure.as_deref(), Some(figures));
    if let Some(job) = due {
        // Waits only if the checkpointer is a whole checkpoint behind.
        checkpoints
            .send(job)
            .map_err(|_| failed("the checkpoint thread has stopped"))?;
    }
    outcome
}

/// Answers every sync request in `syncs`: Ok, or refused for `failure`. The
/// first carries the figures.
fn answer(syncs: &mut Vec<FlushDone>, failure: Option<&str>, figures: Option<FlushFigures>) {
    for (n, done) in syncs.drain(..).enumerate() {
        done(
            failure.map_or(Ok(()), |failure| Err(failed(failure))),
            figures.filter(|_| n == 0),
        );
    }
}

/// The writer: takes everything queued, writes it as a segment, syncs when
/// asked, reports progress, hands checkpoints over when due. Runs until the
/// store is dropped, then waits for the checkpointer and writes a last
/// checkpoint itself.
pub(super) fn write_batches(
    dir: &Path,
    trees: &Trees,
    shared: &Shared,
    receiver: &mpsc::Receiver<Job>,
    checkpointer: Checkpointer,
) {
    let mut records = Vec::with_capacity(BATCH_COMMITS_MAX);
    let mut syncs = Vec::new();
    loop {
        let outcome = match receiver.recv_timeout(CHECKPOINT_INTERVAL) {
            Ok(first) => {
                if matches!(first, Job::Commit(_)) {
                    linger(shared);
                }
                take_batch(first, receiver, &mut records, &mut syncs);
                let outcome = write_batch(shared, &checkpointer.jobs, &records, &mut syncs);
                records.clear();
                outcome
            }
            Err(mpsc::RecvTimeoutError::Timeout) if lock(&shared.written).failure.is_some() => {
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let job = {
                    let mut views = lock(&shared.views);
                    (!views.owed.is_empty()).then(|| views.hand_over())
                };
                job.map_or(Ok(()), |job| {
                    checkpointer
                        .jobs
                        .send(job)
                        .map_err(|_| failed("the checkpoint thread has stopped"))
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                checkpointer.stop();
                close(dir, trees, shared);
                return;
            }
        };
        if let Err(error) = outcome {
            lock(&shared.written).fail(&error);
        }
        shared.progress.notify_all();
    }
}

/// The checkpointer thread, as the writer holds it.
pub(super) struct Checkpointer {
    pub(super) jobs: mpsc::SyncSender<checkpoint::Job>,
    pub(super) thread: thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Lets it finish the jobs handed over, and waits for it.
    fn stop(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

/// A clean close: a last checkpoint, then the filter of seen ids saved for
/// the next open (which otherwise rebuilds it from the whole index).
fn close(dir: &Path, trees: &Trees, shared: &Shared) {
    if lock(&shared.written).failure.is_some() {
        // Views past a failed write would not match the journal: the next
        // open replays from the last good checkpoint instead.
        return;
    }
    let job = lock(&shared.views).hand_over();
    let (epoch, covered) = (job.epoch, job.owed.covered);
    if let Err(error) = checkpoint::checkpoint(trees, shared, job) {
        tracing::error!(%error, "the last checkpoint failed; the next open replays the journal");
        return;
    }
    if let Err(error) = lock(&shared.requests).seen.save(dir, epoch, covered) {
        tracing::warn!(%error, "could not save the request filter; the next open rebuilds it");
    }
}
