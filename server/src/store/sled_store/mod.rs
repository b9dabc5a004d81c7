//! The sled store: a journal of commits, and views of it (balances and the
//! index of request ids) brought up to date at checkpoints.
//!
//! A commit is decided in memory: a std mutex guards a mirror of every
//! account (balance and version), so guards are checked and seqs assigned in
//! one short critical section. The commit's record then goes to one writer
//! thread, which writes whatever is queued as one journal segment: one frame
//! appended to the journal file (`journal_file.rs`), the commit point of all
//! its commits, holding each commit's journal entry and idempotency record.
//!
//! The views are derived from the journal, so the writer does not keep them
//! up to date commit by commit: every [`CHECKPOINT_INTERVAL`] (or sooner,
//! when [`CHECKPOINT_REQUESTS`] have gathered) it writes each account touched
//! since the last checkpoint once, with its last state, adds the request ids
//! as one sorted run to the [`RequestIndex`], and then the checkpoint record:
//! the seq and journal offset up to which the views are complete, and the
//! index's runs. Until
//! then the idempotency records wait in a pending map in memory.
//!
//! Why: sled inserts cost about 5 µs each. One account key and one request
//! key per commit made the writer take 40% of a core at 37,000 deposits a
//! second, on a machine whose two cores are shared with the clients; written
//! per checkpoint, they cost a few inserts per thousand commits (BENCHMARKS.md).
//! sled transactions (about 50 µs each, under a process-wide lock) and
//! `apply_batch` (every batch seals a log buffer) were slower still.
//!
//! Durability: after a crash the journal file holds an intact synced prefix
//! (and perhaps a torn tail, which opening cuts), and sled the views of some
//! checkpoint within it (in part of the next one, if the crash cut a
//! checkpoint short: those writes are states that replaying overwrites).
//! [`SledStore::open`] replays every frame past the last checkpoint's
//! offset. [`Store::flush`] waits for the writer to drain, then fdatasyncs
//! the file; a `--durability sync` operation's request
//! ([`Store::flush_then`]) queues behind its commit and the writer syncs for
//! all the requests it finds together.
//!
//! Layout: `journal_file.rs` the journal file, `layout.rs` the trees and
//! their records, `seen.rs` the filter of request ids, `pending.rs` the
//! idempotency records a checkpoint has yet to index, `writer.rs` the
//! writer thread, `checkpoint.rs` the checkpointer thread, `recovery.rs`
//! what opening replays, `state.rs` the mirror and the lock they all share;
//! this file the committers' side.

mod checkpoint;
mod journal_file;
mod layout;
mod pending;
mod recovery;
mod seen;
mod state;
mod writer;

use std::{
    fs::File,
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, mpsc},
    thread,
};

use super::{
    Commit, FlushDone, Rejected, Store, StoreError, encode_record, now_unix_ns,
    request_index::{Lookup, RequestIndex, hash_id},
};
use crate::{
    bank::{Account, AccountId, RequestId},
    journal::{JournalEntry, RequestRecord},
};
use journal_file::{Frames, JournalFile};
use layout::{CHECKPOINT_KEY, Checkpoint, JournalRecord, Trees};
use seen::SeenIds;
use state::{Mirror, lock};
use writer::{Checkpointer, Job, Owed, Shared, WRITE_QUEUE_MAX, failed, write_batches};

/// sled's page cache size: 256 MiB, enough to keep a demo's working set in memory.
const CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

/// Attempts at an index lookup that a concurrent merge keeps making stale.
const LOOKUP_ATTEMPTS: usize = 8;

/// A ledger kept in a sled database on disk.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    trees: Trees,
    /// Commits replayed at open: their journal segment was on disk and no
    /// checkpoint covered them.
    pub(super) rolled_forward_commits: u64,
    // A std mutex: held for in-memory checks and a channel send, never across an await.
    mirror: Mutex<Mirror>,
    /// None only while dropping.
    queue: Option<mpsc::SyncSender<Job>>,
    shared: Arc<Shared>,
    /// Joined on drop, so that the database is closed when the store is.
    writer: Option<thread::JoinHandle<()>>,
    /// The data directory: sled's files and the journal file.
    dir: PathBuf,
    /// A temporary store's directory, removed after the fields above close.
    _temporary: Option<tempfile::TempDir>,
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has written what is
        // queued and a last checkpoint.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}
/// Starts one of the store's threads.
fn spawn(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> Result<thread::JoinHandle<()>, StoreError> {
    thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(|e| StoreError::Corrupt {
            what: "store thread",
            detail: format!("{name}: {e}"),
        })
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_in(dir, None)
    }

    /// A database in a temporary directory, removed when dropped.
    pub fn temporary() -> Result<Self, StoreError> {
        let temporary = tempfile::Builder::new()
            .prefix("overdraft-")
            .tempdir()
            .map_err(|e| StoreError::Corrupt {
                what: "temporary directory",
                detail: e.to_string(),
            })?;
        let dir = temporary.path().to_owned();
        Self::open_in(&dir, Some(temporary))
    }

    fn open_in(dir: &Path, temporary: Option<tempfile::TempDir>) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()?;
        let trees = Trees::open(&db)?;
        let recovery::Recovered {
            mirror,
            shared,
            rolled_forward_commits,
        } = recovery::recover(dir, &trees)?;
        let (jobs, checkpoints) = mpsc::sync_channel(checkpoint::JOBS_QUEUED_MAX);
        let checkpointer = {
            let (trees, shared) = (trees.clone(), Arc::clone(&shared));
            spawn("sled-checkpoint", move || {
                checkpoint::run(&trees, &shared, &checkpoints);
            })?
        };
        let checkpointer = Checkpointer {
            jobs,
            thread: checkpointer,
        };
        let (queue, receiver) = mpsc::sync_channel(WRITE_QUEUE_MAX);
        let writer = {
            let (trees, shared, dir) = (trees.clone(), Arc::clone(&shared), dir.to_owned());
            spawn("sled-writer", move || {
                write_batches(&dir, &trees, &shared, &receiver, checkpointer);
            })?
        };
        Ok(Self {
            db,
            trees,
            rolled_forward_commits,
            mirror: Mutex::new(mirror),
            queue: Some(queue),
            shared,
            writer: Some(writer),
            dir: dir.to_owned(),
            _temporary: temporary,
        })
    }

    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        lock(&self.mirror)
    }

    /// Waits until the writer has written every commit queued so far, and
    /// returns the journal file with the bytes those commits fill.
    fn drain(&self) -> Result<(Arc<File>, u64), StoreError> {
        let mut written = lock(&self.shared.written);
        let target = written.queued;
        written.draining += 1;
        if written.lingering {
            self.shared.wake.notify_one();
        }
        while written.applied < target && written.failure.is_none() {
            written = self
                .shared
                .progress
                .wait(written)
                .unwrap_or_else(|p| p.into_inner());
        }
        written.draining -= 1;
        match &written.failure {
            Some(failure) => Err(failed(failure)),
            None => Ok((Arc::clone(&written.journal), written.journal_end)),
        }
    }

    fn check(&self, mirror: &Mirror, commit: &Commit) -> Result<Result<(), Rejected>, StoreError> {
        if let Some((id, _)) = &commit.request
            && !commit.replace_request
            && let Some(existing) = self.request(id)?
        {
            return Ok(Err(Rejected::Duplicate(existing)));
        }
        if let Some(rejected) = commit.failed_read(|id| mirror.accounts.get(id).copied()) {
            return Ok(Err(rejected));
        }
        for write in &commit.writes {
            let found = mirror.accounts.get(&write.account).copied();
            if !write.guard.holds(found) {
                return Ok(Err(Rejected::Conflict {
                    account: write.account.clone(),
                    found,
                }));
            }
        }
        Ok(Ok(()))
    }
}
/// The calls an operation makes, answered synchronously: the store lives in
/// this process.
impl SledStore {
    /// An account's state, or None.
    pub fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        Ok(self.mirror().accounts.get(id).copied())
    }

    /// Applies `commit` atomically: the seq it got, or why it wrote nothing.
    pub fn commit(&self, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError> {
        let views_match = commit.writes.len() == commit.entry.legs.len()
            && commit
                .writes
                .iter()
                .zip(&commit.entry.legs)
                .all(|(write, leg)| write.account == leg.account && write.new == leg.written);
        if !views_match {
            return Err(StoreError::Corrupt {
                what: "commit",
                detail: "account writes differ from the journal legs".into(),
            });
        }
        let mut mirror = self.mirror();
        if let Some(failure) = &lock(&self.shared.written).failure {
            return Err(failed(failure));
        }
        if let Err(rejected) = self.check(&mirror, commit)? {
            return Ok(Err(rejected));
        }
        let seq = mirror.next_seq;
        mirror.next_seq += 1;
        for write in &commit.writes {
            mirror.accounts.insert(write.account.clone(), write.new);
        }
        let mut entry = commit.entry.clone();
        entry.seq = seq;
        entry.time_unix_ns = now_unix_ns();
        lock(&self.shared.written).queued += 1;
        // Sent under the mirror lock so that the writer sees commits in seq
        // order. A full queue blocks here: that is the back-pressure.
        self.queue
            .as_ref()
            .ok_or_else(|| failed("the store is closing"))?
            .send(Job::Commit(JournalRecord {
                entry,
                request: commit.request.clone(),
            }))
            .map_err(|_| failed("the writer thread has stopped"))?;
        // Only now may a retry find the record: a retry's durable wait is
        // a sync request, which must queue behind this commit to cover it.
        // (Commits with the same id are held off by the mirror lock.)
        if let Some((id, record)) = &commit.request {
            let mut requests = lock(&self.shared.requests);
            requests.seen.insert(hash_id(id.as_str()));
            requests
                .pending
                .insert(id.as_str().to_owned(), seq, record.clone());
        }
        Ok(Ok(seq))
    }

    /// The idempotency record under `id`, if any.
    pub fn request(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let hash = hash_id(id.as_str());
        // The answer from memory, or the index to look in. The pending map
        // and the index are read under one lock, and the writer publishes an
        // index before it drops the pending records the index holds: a
        // record is always in one or the other.
        let from_memory = || {
            let requests = lock(&self.shared.requests);
            if let Some(pending) = requests.pending.get(id.as_str()) {
                return ControlFlow::Break(Some(pending.clone()));
            }
            if !requests.seen.may_contain(hash) {
                return ControlFlow::Break(None);
            }
            ControlFlow::Continue((Arc::clone(&requests.index), Arc::clone(&requests.journal)))
        };
        for _ in 0..LOOKUP_ATTEMPTS {
            let (index, journal) = match from_memory() {
                ControlFlow::Continue(found) => found,
                ControlFlow::Break(answer) => return Ok(answer),
            };
            match index.lookup(&self.trees.request_index, hash)? {
                Lookup::Found(offsets) => {
                    for offset in offsets {
                        if let Some(record) = request_in_segment(&journal, offset, id.as_str())? {
                            return Ok(Some(record));
                        }
                    }
                    return Ok(None);
                }
                Lookup::Stale => continue,
            }
        }
        Err(StoreError::Corrupt {
            what: "request index",
            detail: format!("lookups went stale {LOOKUP_ATTEMPTS} times in a row"),
        })
    }

    /// Removes every account, journal entry and idempotency record.
    pub fn clear(&self) -> Result<(), StoreError> {
        let mut mirror = self.mirror();
        self.drain()?;
        let mut views = lock(&self.shared.views);
        // Waits out a checkpoint in progress; one handed over before this
        // is for the old epoch, and the checkpointer drops it.
        let mut checkpoints = lock(&self.shared.checkpoints);
        // The new epoch's file exists (empty) before a checkpoint names it,
        // and the old one is removed after: a crash in between reopens one
        // epoch or the other whole.
        let journal = JournalFile::create(&self.dir, views.journal.epoch() + 1)?;
        self.trees.accounts.clear()?;
        self.trees.request_index.clear()?;
        views.owed = Owed {
            covered: mirror.next_seq,
            ..Owed::default()
        };
        checkpoints.index = RequestIndex::default();
        checkpoints.epoch = journal.epoch();
        let record = Checkpoint {
            covered: mirror.next_seq,
            index: RequestIndex::default(),
            journal_epoch: journal.epoch(),
            journal_offset: 0,
        };
        self.trees
            .meta
            .insert(CHECKPOINT_KEY, encode_record(&record))?;
        self.db.flush()?;
        let seen = SeenIds::new()?;
        let mut requests = lock(&self.shared.requests);
        let old = (
            std::mem::take(&mut requests.pending),
            std::mem::replace(&mut requests.seen, seen),
            std::mem::replace(&mut requests.index, Arc::new(RequestIndex::default())),
        );
        requests.journal = journal.handle();
        drop(requests);
        // Freed outside the requests lock: tens of thousands of records and
        // the filter take milliseconds to free, and lookups wait on that lock.
        drop(old);
        {
            let mut written = lock(&self.shared.written);
            written.journal = journal.handle();
            written.journal_end = 0;
        }
        views.journal = journal;
        mirror.accounts.clear();
        // The checkpoint names the new epoch: an old file left behind is
        // removed at the next open.
        if let Err(error) = journal_file::remove_other_epochs(&self.dir, record.journal_epoch) {
            tracing::warn!(%error, "could not remove the previous journal file");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        SledStore::account(self, id)
    }

    async fn commit(&self, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError> {
        SledStore::commit(self, commit)
    }

    async fn request(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        SledStore::request(self, id)
    }

    async fn clear(&self) -> Result<(), StoreError> {
        SledStore::clear(self)
    }

    fn accounts(&self) -> Result<Vec<(AccountId, Account)>, StoreError> {
        // The mirror holds every commit decided; sled's account keys catch
        // up at the next checkpoint.
        let mut accounts: Vec<(AccountId, Account)> = self
            .mirror()
            .accounts
            .iter()
            .map(|(id, account)| (id.clone(), *account))
            .collect();
        accounts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(accounts)
    }

    fn scan_journal(
        &self,
        visit: &mut dyn FnMut(JournalEntry) -> std::ops::ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let (journal, end) = self.drain()?;
        // One segment (at most BATCH_COMMITS_MAX entries) and one read
        // buffer in memory at a time, read past any page cache of sled's.
        let mut frames = Frames::new(journal, 0, end);
        while let Some((_, segment)) = frames.next_frame()? {
            for record in segment {
                if visit(record.entry).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // The journal file is the commit point; sled's views are derived
        // from it and synced at checkpoints.
        let (journal, _) = self.drain()?;
        journal_file::sync(&journal)
    }

    fn flush_then(&self, done: FlushDone) {
        // The request joins the writer's queue behind every commit sent so
        // far, and the writer syncs once it has written them: no thread in
        // between, one fdatasync for all the requests it finds together.
        let Some(queue) = &self.queue else {
            return done(Err(failed("the store is closing")), None);
        };
        {
            let mut written = lock(&self.shared.written);
            if let Some(failure) = &written.failure {
                let error = failed(failure);
                drop(written);
                return done(Err(error), None);
            }
            written.syncs_queued += 1;
            if written.lingering {
                self.shared.wake.notify_one();
            }
        }
        if let Err(mpsc::SendError(job)) = queue.send(Job::Sync(done)) {
            lock(&self.shared.written).syncs_queued -= 1;
            if let Job::Sync(done) = job {
                done(Err(failed("the writer thread has stopped")), None);
            }
        }
    }

    fn rolled_forward_commits(&self) -> u64 {
        self.rolled_forward_commits
    }
}

/// The idempotency record written under `id` in the segment at `offset`:
/// the last one, since a later commit in a segment replaces an earlier one.
fn request_in_segment(
    journal: &File,
    offset: u64,
    id: &str,
) -> Result<Option<RequestRecord>, StoreError> {
    Ok(journal_file::read_frame(journal, offset)?
        .into_iter()
        .filter_map(|record| record.request)
        .filter(|(request, _)| request.as_str() == id)
        .map(|(_, record)| record)
        .next_back())
}

/// Opens `dir` in a test that dropped a handle on it a moment ago: sled's IO
/// threads can hold the directory's file lock a little past the drop, so a
/// lock refusal is retried for up to 5 s (any other error is returned).
#[cfg(test)]
pub(super) fn open_when_unlocked(dir: &Path) -> Result<SledStore, StoreError> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SledStore::open(dir) {
            Err(StoreError::Sled(sled::Error::Io(error)))
                if error.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
