//! The sled store: a journal of commits, and views of it (balances and the
//! index of request ids) brought up to date at checkpoints.
//!
//! A commit is decided in memory: a std mutex guards a mirror of every
//! account (balance and version), so guards are checked and seqs assigned in
//! one short critical section. The commit's record then goes to one writer
//! thread, which writes whatever is queued as one journal segment: one sled
//! key, the commit point of all its commits, holding each commit's journal
//! entry and idempotency record.
//!
//! The views are derived from the journal, so the writer does not keep them
//! up to date commit by commit: every [`CHECKPOINT_INTERVAL`] (or sooner,
//! when [`CHECKPOINT_REQUESTS`] have gathered) it writes each account touched
//! since the last checkpoint once, with its last state, adds the request ids
//! as one sorted run to the [`RequestIndex`], and then the checkpoint record:
//! the seq up to which the views are complete, and the index's runs. Until
//! then the idempotency records wait in a pending map in memory.
//!
//! Why: sled inserts cost about 5 µs each. One account key and one request
//! key per commit made the writer take 40% of a core at 37,000 deposits a
//! second, on a machine whose two cores are shared with the clients; written
//! per checkpoint, they cost a few inserts per thousand commits (BENCHMARKS.md).
//! sled transactions (about 50 µs each, under a process-wide lock) and
//! `apply_batch` (every batch seals a log buffer) were slower still.
//!
//! Durability: sled recovers a prefix of its log, so after a crash the store
//! holds a prefix of the segments and the views of some checkpoint before
//! them (in part of the next one, if the crash cut a checkpoint short: those
//! writes are states that replaying overwrites). [`SledStore::open`] replays
//! every commit the last checkpoint record does not cover.
//! [`Store::flush`] waits for the writer to drain, then fsyncs: the group
//! committer acknowledges `--durability sync` operations only after that.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    Commit, Rejected, Store, StoreError, decode_account, decode_record, encode_account,
    encode_record, now_unix_ns,
    request_index::{Lookup, RequestIndex, hash_id},
};
use crate::{
    bank::{Account, AccountId, RequestId},
    crash::{self, CrashPoint},
    journal::{JournalEntry, RequestRecord},
};

/// sled's page cache size: 256 MiB, enough to keep a demo's working set in memory.
const CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

/// Commits queued for the writer. When it falls this far behind, committers
/// wait for room: memory stays bounded and the load slows down instead.
const WRITE_QUEUE_MAX: usize = 16_384;

/// Most commits in one journal segment (one sled key). Under load the writer
/// finds many commits queued and writes them as one segment: one insert
/// instead of one per commit. Bounded so a segment stays a few tens of KiB.
const BATCH_COMMITS_MAX: usize = 256;

/// How long the writer lets commits gather after the first one arrives,
/// unless someone is waiting for it to drain. Fewer, larger segments cost
/// the writer less than a wake-up per commit, and no operation waits for the
/// writer except a `--durability sync` flush, which cuts the linger short.
const WRITER_LINGER: Duration = Duration::from_millis(1);

/// Longest time between checkpoints while commits arrive: also the most
/// journal a restart after a crash replays, at the rate commits came.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Request ids written since the last checkpoint that make the writer
/// checkpoint early. Bounds the pending map: its records wait there until a
/// checkpoint puts them in the index.
const CHECKPOINT_REQUESTS: usize = 65_536;

/// Accounts touched since the last checkpoint that make the writer checkpoint early.
const CHECKPOINT_ACCOUNTS: usize = 65_536;

/// Attempts at an index lookup that a concurrent merge keeps making stale.
const LOOKUP_ATTEMPTS: usize = 8;

/// The meta tree's key for the [`Checkpoint`] record.
const CHECKPOINT_KEY: &[u8] = b"checkpoint";

/// The trees. Separate trees keep each one's nodes small: journal appends do
/// not copy account records, and the reverse.
#[derive(Clone, Debug)]
struct Trees {
    accounts: sled::Tree,
    journal: sled::Tree,
    request_index: sled::Tree,
    meta: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> Result<Self, StoreError> {
        // The first format kept one key per request id in a `requests` tree.
        if db.tree_names().iter().any(|name| name == b"requests")
            && !db.open_tree("requests")?.is_empty()
        {
            return Err(StoreError::Corrupt {
                what: "data directory",
                detail: "written by an older overdraft (one key per request id); \
                         remove it or pass another --data-dir"
                    .into(),
            });
        }
        Ok(Self {
            accounts: db.open_tree("accounts")?,
            journal: db.open_tree("journal")?,
            request_index: db.open_tree("request_index")?,
            meta: db.open_tree("meta")?,
        })
    }

    fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        self.meta
            .get(CHECKPOINT_KEY)?
            .map(|bytes| decode_record("checkpoint", &bytes))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// The key and value of the segment that holds `seq`'s commit: the last
    /// one starting at or before it.
    fn segment_of(&self, seq: u64) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        Ok(self
            .journal
            .range(..=seq.to_be_bytes())
            .next_back()
            .transpose()?)
    }

    /// The idempotency record that commit `seq` wrote under `id`, if it wrote one.
    fn request_at(&self, seq: u64, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let Some((_, value)) = self.segment_of(seq)? else {
            return Ok(None);
        };
        let segment: Vec<JournalRecord> = decode_record("journal segment", &value)?;
        Ok(segment
            .into_iter()
            .find(|record| record.entry.seq == seq)
            .and_then(|record| record.request)
            .filter(|(request, _)| request.as_str() == id)
            .map(|(_, record)| record))
    }
}

/// What the views hold, written after them: a checkpoint exists once this
/// record says so.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// The views reflect every commit with a seq below this, and none above.
    covered: u64,
    /// The request index's runs.
    index: RequestIndex,
}

/// One commit in a journal segment: the entry and the idempotency record written with it.
#[derive(Debug, Serialize, Deserialize)]
struct JournalRecord {
    entry: JournalEntry,
    request: Option<(RequestId, RequestRecord)>,
}

/// The in-memory side of the store, guarded by one mutex.
#[derive(Debug, Default)]
struct Mirror {
    accounts: HashMap<AccountId, Account>,
    next_seq: u64,
}

/// Progress of the writer, for those waiting on it.
#[derive(Debug, Default)]
struct Written {
    /// Commits handed to the writer.
    queued: u64,
    /// Commits it has written to the journal.
    applied: u64,
    /// Set when a write failed: the store refuses further commits.
    failure: Option<String>,
    /// Callers of [`SledStore::drain`] waiting now: the writer does not linger.
    draining: usize,
}

/// Request ids the filter holds at first (4.5 MB); it doubles as it fills.
const SEEN_IDS_INITIAL: u64 = 1 << 20;

/// Request ids the filter can grow to hold: 64M, about 150 MB when full
/// (18 minutes at 60,000 operations a second without a Reset).
const SEEN_IDS_MAX: u64 = 1 << 26;

/// The filter's false-positive rate when fully grown; lower before.
const SEEN_FP_RATE: f64 = 0.01;

/// The hash of every request id committed since the last Reset, as a
/// quotient filter: a miss proves an id is new, which spares the index
/// lookup on almost every operation. It doubles as it fills (a pause of the
/// committing thread, O(ids), at each doubling), so its false-positive rate
/// stays at 1% or below; past [`SEEN_IDS_MAX`] it answers "maybe" for every
/// id, which costs lookups, never correctness.
#[derive(Debug)]
struct SeenIds {
    filter: qfilter::Filter,
    full: bool,
}

impl SeenIds {
    fn new() -> Result<Self, StoreError> {
        Self::sized(SEEN_IDS_INITIAL, SEEN_IDS_MAX)
    }

    fn sized(initial: u64, max: u64) -> Result<Self, StoreError> {
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

    fn insert(&mut self, hash: u64) {
        if !self.full && self.filter.insert_fingerprint(false, hash).is_err() {
            self.full = true;
            tracing::warn!(
                ids = self.filter.len(),
                "the request filter is full: every request id is looked up in the index until a Reset"
            );
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        self.full || self.filter.contains_fingerprint(hash)
    }
}

/// What readers of request records need, under one lock so that a record is
/// always in one place or the other: pending, or in the published index.
#[derive(Debug)]
struct Requests {
    /// Idempotency records not yet in the index, with the seq that wrote each.
    pending: HashMap<String, (u64, RequestRecord)>,
    /// Every request id committed, pending or indexed.
    seen: SeenIds,
    /// The index as of the last checkpoint. Readers look through a copy, so
    /// the writer never waits for them.
    index: Arc<RequestIndex>,
}

impl Requests {
    fn new(index: RequestIndex) -> Result<Self, StoreError> {
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
struct Views {
    /// Each account touched, with its last state.
    accounts: HashMap<AccountId, Account>,
    /// Each request record written, with its commit's seq.
    requests: Vec<(String, u64)>,
    /// One past the last seq written to the journal.
    covered: u64,
    /// The writer's copy of the index, published to readers at each checkpoint.
    index: RequestIndex,
    /// When the last checkpoint finished.
    last: Instant,
}

impl Views {
    fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.requests.is_empty()
    }

    fn due(&self) -> bool {
        self.requests.len() >= CHECKPOINT_REQUESTS
            || self.accounts.len() >= CHECKPOINT_ACCOUNTS
            || (!self.is_empty() && self.last.elapsed() >= CHECKPOINT_INTERVAL)
    }

    /// Notes what `records` change in the views.
    fn fold(&mut self, records: &[JournalRecord]) {
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
struct Shared {
    written: Mutex<Written>,
    progress: Condvar,
    /// Wakes a lingering writer when someone starts to drain.
    wake: Condvar,
    requests: Mutex<Requests>,
    /// Held by the writer while it writes, and by [`Store::clear`].
    views: Mutex<Views>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder checks before it mutates, so the state is consistent
    // even if a holder panicked: carry on.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A ledger kept in a sled database on disk.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    trees: Trees,
    /// Commits replayed at open: their journal segment was on disk and no
    /// checkpoint covered them.
    rolled_forward_commits: u64,
    // A std mutex: held for in-memory checks and a channel send, never across an await.
    mirror: Mutex<Mirror>,
    /// None only while dropping.
    queue: Option<mpsc::SyncSender<JournalRecord>>,
    shared: Arc<Shared>,
    /// Joined on drop, so that the database is closed when the store is.
    writer: Option<thread::JoinHandle<()>>,
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

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()?;
        Self::from_db(db)
    }

    /// A database in a temporary directory, removed when dropped.
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        let trees = Trees::open(&db)?;
        let checkpoint = trees.checkpoint()?;
        let swept = checkpoint.index.sweep(&trees.request_index)?;
        if swept > 0 {
            tracing::warn!(
                swept,
                "removed request index chunks no checkpoint lists (a crash cut a checkpoint short)"
            );
        }
        let mut mirror = Mirror::default();
        for item in trees.accounts.iter() {
            let (key, value) = item?;
            mirror
                .accounts
                .insert(account_id_of(&key)?, decode_account(&value)?);
        }
        let mut requests = Requests::new(checkpoint.index.clone())?;
        checkpoint
            .index
            .for_each_hash(&trees.request_index, |hash| requests.seen.insert(hash))?;
        let mut views = Views {
            accounts: HashMap::new(),
            requests: Vec::new(),
            covered: checkpoint.covered,
            index: checkpoint.index,
            last: Instant::now(),
        };
        // Replay what the checkpoint does not cover, from the segment that
        // holds its first uncovered seq to the last segment.
        let segments = match trees.segment_of(checkpoint.covered)? {
            Some((key, _)) => trees.journal.range(key..),
            None => trees.journal.range::<&[u8], _>(..),
        };
        let mut rolled_forward_commits = 0;
        for item in segments {
            let (_, value) = item?;
            let segment: Vec<JournalRecord> = decode_record("journal segment", &value)?;
            if let Some(last) = segment.last() {
                mirror.next_seq = last.entry.seq + 1;
            }
            let uncovered: Vec<JournalRecord> = segment
                .into_iter()
                .filter(|record| record.entry.seq >= checkpoint.covered)
                .collect();
            for record in &uncovered {
                if let Some((id, request)) = &record.request {
                    requests.seen.insert(hash_id(id.as_str()));
                    requests
                        .pending
                        .insert(id.as_str().to_owned(), (record.entry.seq, request.clone()));
                }
            }
            rolled_forward_commits += u64::try_from(uncovered.len()).unwrap_or(u64::MAX);
            views.fold(&uncovered);
        }
        // The fold kept each replayed account's last state.
        mirror.accounts.extend(views.accounts.clone());
        mirror.next_seq = mirror.next_seq.max(views.covered);
        views.covered = mirror.next_seq;
        let shared = Arc::new(Shared {
            written: Mutex::new(Written::default()),
            progress: Condvar::new(),
            wake: Condvar::new(),
            requests: Mutex::new(requests),
            views: Mutex::new(views),
        });
        if rolled_forward_commits > 0 {
            tracing::warn!(
                rolled_forward_commits,
                "replayed the journal past the last checkpoint (the process stopped without one)"
            );
            checkpoint_views(&trees, &shared, &mut lock(&shared.views))?;
        }
        let (queue, receiver) = mpsc::sync_channel(WRITE_QUEUE_MAX);
        let writer_trees = trees.clone();
        let writer_shared = Arc::clone(&shared);
        let writer = thread::Builder::new()
            .name("sled-writer".into())
            .spawn(move || write_batches(&writer_trees, &writer_shared, &receiver))
            .map_err(|e| StoreError::Corrupt {
                what: "writer thread",
                detail: e.to_string(),
            })?;
        Ok(Self {
            db,
            trees,
            rolled_forward_commits,
            mirror: Mutex::new(mirror),
            queue: Some(queue),
            shared,
            writer: Some(writer),
        })
    }

    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        lock(&self.mirror)
    }

    /// Waits until the writer has written every commit queued so far.
    fn drain(&self) -> Result<(), StoreError> {
        let mut written = lock(&self.shared.written);
        let target = written.queued;
        written.draining += 1;
        self.shared.wake.notify_one();
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
            None => Ok(()),
        }
    }

    fn check(&self, mirror: &Mirror, commit: &Commit) -> Result<Result<(), Rejected>, StoreError> {
        if let Some((id, _)) = &commit.request
            && !commit.replace_request
            && let Some(existing) = self.request(id)?
        {
            return Ok(Err(Rejected::Duplicate(existing)));
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

fn failed(failure: &str) -> StoreError {
    StoreError::Corrupt {
        what: "sled writer",
        detail: format!("a write failed earlier, so the store refuses writes: {failure}"),
    }
}

fn account_id_of(key: &[u8]) -> Result<AccountId, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "account key",
        detail,
    };
    let text = std::str::from_utf8(key).map_err(|e| corrupt(e.to_string()))?;
    AccountId::parse("account_id", text).map_err(|e| corrupt(e.to_string()))
}

/// Writes the views that commits since the last checkpoint imply, then the
/// checkpoint record that says so, then publishes the index to readers and
/// drops the pending records it now holds.
fn checkpoint_views(trees: &Trees, shared: &Shared, views: &mut Views) -> Result<(), StoreError> {
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
fn write_segment(trees: &Trees, records: &[JournalRecord]) -> Result<(), StoreError> {
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
fn linger(shared: &Shared) {
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
fn write_batches(trees: &Trees, shared: &Shared, receiver: &mpsc::Receiver<JournalRecord>) {
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

impl Store for SledStore {
    fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        Ok(self.mirror().accounts.get(id).copied())
    }

    fn commit(&self, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError> {
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
        if let Some((id, record)) = &commit.request {
            let mut requests = lock(&self.shared.requests);
            requests.seen.insert(hash_id(id.as_str()));
            requests
                .pending
                .insert(id.as_str().to_owned(), (seq, record.clone()));
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
            .send(JournalRecord {
                entry,
                request: commit.request.clone(),
            })
            .map_err(|_| failed("the writer thread has stopped"))?;
        Ok(Ok(seq))
    }

    fn request(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let hash = hash_id(id.as_str());
        // The answer from memory, or the index to look in. The pending map
        // and the index are read under one lock, and the writer publishes an
        // index before it drops the pending records the index holds: a
        // record is always in one or the other.
        let from_memory = || {
            let requests = lock(&self.shared.requests);
            if let Some((_, pending)) = requests.pending.get(id.as_str()) {
                return ControlFlow::Break(Some(pending.clone()));
            }
            if !requests.seen.may_contain(hash) {
                return ControlFlow::Break(None);
            }
            ControlFlow::Continue(Arc::clone(&requests.index))
        };
        for _ in 0..LOOKUP_ATTEMPTS {
            let index = match from_memory() {
                ControlFlow::Continue(index) => index,
                ControlFlow::Break(answer) => return Ok(answer),
            };
            match index.lookup(&self.trees.request_index, hash)? {
                Lookup::Found(seqs) => {
                    for seq in seqs {
                        if let Some(record) = self.trees.request_at(seq, id.as_str())? {
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

    fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        self.drain()?;
        // Keys are big-endian first seqs, so key order is commit order.
        let mut entries = Vec::new();
        for value in self.trees.journal.iter().values() {
            let segment: Vec<JournalRecord> = decode_record("journal segment", &value?)?;
            entries.extend(segment.into_iter().map(|record| record.entry));
        }
        Ok(entries)
    }

    fn scan_journal(
        &self,
        visit: &mut dyn FnMut(JournalEntry) -> std::ops::ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.drain()?;
        // One segment (at most BATCH_COMMITS_MAX entries) in memory at a time.
        for value in self.trees.journal.iter().values() {
            let segment: Vec<JournalRecord> = decode_record("journal segment", &value?)?;
            for record in segment {
                if visit(record.entry).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn clear(&self) -> Result<(), StoreError> {
        let mut mirror = self.mirror();
        self.drain()?;
        let mut views = lock(&self.shared.views);
        self.trees.accounts.clear()?;
        self.trees.journal.clear()?;
        self.trees.request_index.clear()?;
        views.accounts.clear();
        views.requests.clear();
        views.index = RequestIndex::default();
        views.covered = mirror.next_seq;
        let record = Checkpoint {
            covered: views.covered,
            index: RequestIndex::default(),
        };
        self.trees
            .meta
            .insert(CHECKPOINT_KEY, encode_record(&record))?;
        let mut requests = lock(&self.shared.requests);
        requests.pending.clear();
        requests.seen = SeenIds::new()?;
        requests.index = Arc::new(RequestIndex::default());
        drop(requests);
        mirror.accounts.clear();
        self.db.flush()?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.drain()?;
        self.db.flush()?;
        Ok(())
    }

    fn rolled_forward_commits(&self) -> u64 {
        self.rolled_forward_commits
    }
}

/// Opens `dir` in a test that dropped a handle on it a moment ago: sled's IO
/// threads can hold the directory's file lock a little past the drop, so a
/// lock refusal is retried for up to 5 s (any other error is returned).
#[cfg(test)]
pub(super) fn open_when_unlocked(dir: &Path) -> Result<SledStore, StoreError> {
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
mod tests {
    use super::*;
    use crate::{
        bank::{EntryKind, Leg},
        config::Mode,
        journal::StoredReply,
        store::{Guard, Write},
    };

    fn commit(account: &AccountId, key: &RequestId, after: Account) -> Commit {
        let before = Account {
            balance_cents: 1,
            version: after.version - 1,
        };
        Commit {
            writes: vec![Write {
                account: account.clone(),
                guard: Guard::Blind,
                new: after,
            }],
            entry: JournalEntry {
                seq: 0,
                kind: EntryKind::Deposit,
                request_id: Some(key.clone()),
                transfer_id: None,
                counterparty: None,
                mode: Mode::Mutex,
                amount_cents: 41,
                fee_cents: 0,
                legs: vec![Leg {
                    account: account.clone(),
                    read: before,
                    written: after,
                    delta_cents: 41,
                }],
                time_unix_ns: 0,
            },
            request: Some((
                key.clone(),
                RequestRecord::Done(StoredReply {
                    fingerprint: "f".into(),
                    accounts: vec![],
                    fee_cents: 0,
                }),
            )),
            replace_request: false,
        }
    }

    /// Goal: a duplicate request_id is caught whether its first commit is
    /// still queued for the writer or already in sled, and a reopened store
    /// continues the journal's seqs with its accounts in memory.
    /// Method: commit, duplicate at once, flush, duplicate again, reopen.
    #[test]
    fn duplicates_are_caught_before_and_after_the_writer_and_reopen_continues() {
        let dir = tempfile::tempdir().unwrap();
        let account = AccountId::parse("account_id", "acct").unwrap();
        let key = RequestId::internal("k".into());
        let after = Account {
            balance_cents: 42,
            version: 1,
        };
        {
            let store = open_when_unlocked(dir.path()).unwrap();
            assert_eq!(store.commit(&commit(&account, &key, after)).unwrap(), Ok(0));
            let again = store.commit(&commit(&account, &key, after)).unwrap();
            assert!(matches!(again, Err(Rejected::Duplicate(_))), "{again:?}");
            store.flush().unwrap();
            let again = store.commit(&commit(&account, &key, after)).unwrap();
            assert!(matches!(again, Err(Rejected::Duplicate(_))), "{again:?}");
        }
        let store = open_when_unlocked(dir.path()).unwrap();
        assert_eq!(store.account(&account).unwrap(), Some(after));
        assert!(store.request(&key).unwrap().is_some());
        let other = RequestId::internal("other".into());
        let next = Account {
            balance_cents: 83,
            version: 2,
        };
        assert_eq!(
            store.commit(&commit(&account, &other, next)).unwrap(),
            Ok(1)
        );
        assert_eq!(store.journal().unwrap().len(), 2);
    }

    /// The state the tests below write by hand: one deposit to `acct`
    /// under request id `k`.
    fn deposit_k() -> (AccountId, RequestId, Account) {
        let after = Account {
            balance_cents: 42,
            version: 1,
        };
        (
            AccountId::parse("account_id", "acct").unwrap(),
            RequestId::internal("k".into()),
            after,
        )
    }

    /// Writes [`deposit_k`]'s journal segment as the writer would, then
    /// `then` (what else the writer got done before the process died).
    fn crash_after_segment(dir: &Path, then: impl FnOnce(&Trees)) {
        let (account, key, after) = deposit_k();
        let db = sled::Config::new().path(dir).open().unwrap();
        let trees = Trees::open(&db).unwrap();
        let record = JournalRecord {
            entry: commit(&account, &key, after).entry,
            request: commit(&account, &key, after).request,
        };
        write_segment(&trees, std::slice::from_ref(&record)).unwrap();
        then(&trees);
        db.flush().unwrap();
    }

    /// Goal: a crash between a journal segment (the commit point) and the
    /// next checkpoint loses nothing: opening replays the segment. Method:
    /// write a segment straight into the journal tree, as if the process
    /// died right after, and reopen.
    #[test]
    fn a_segment_past_the_checkpoint_is_replayed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (account, key, after) = deposit_k();
        crash_after_segment(dir.path(), |_| {});
        let store = open_when_unlocked(dir.path()).unwrap();
        assert_eq!(store.rolled_forward_commits(), 1);
        assert_eq!(store.account(&account).unwrap(), Some(after));
        assert!(
            store.request(&key).unwrap().is_some(),
            "the request record is back"
        );
        let duplicate = store.commit(&commit(&account, &key, after)).unwrap();
        assert!(
            matches!(duplicate, Err(Rejected::Duplicate(_))),
            "{duplicate:?}"
        );
        assert_eq!(store.accounts().unwrap(), vec![(account, after)]);
    }

    /// Goal: request records reach the index at checkpoints and are found
    /// there after reopens (through the index and the journal, not the
    /// pending map), a clean close leaves nothing to replay, merged runs keep
    /// every id, and unknown ids stay unknown.
    /// Method: five rounds of open, 600 new keyed commits, a duplicate of
    /// every earlier round's first key, close; then look every key up.
    #[test]
    fn request_records_survive_checkpoints_merges_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let account = AccountId::parse("account_id", "acct").unwrap();
        let key = |n: u64| RequestId::internal(format!("req-{n}"));
        let state = |n: u64| Account {
            balance_cents: i64::try_from(n).unwrap(),
            version: n + 1,
        };
        let mut n = 0;
        for round in 0..5u64 {
            let store = open_when_unlocked(dir.path()).unwrap();
            assert_eq!(store.rolled_forward_commits(), 0, "round {round}");
            assert!(lock(&store.shared.requests).pending.is_empty());
            for earlier in 0..round {
                let again = store
                    .commit(&commit(&account, &key(earlier * 600), state(n)))
                    .unwrap();
                assert!(matches!(again, Err(Rejected::Duplicate(_))), "{again:?}");
            }
            for _ in 0..600 {
                assert!(
                    store
                        .commit(&commit(&account, &key(n), state(n)))
                        .unwrap()
                        .is_ok()
                );
                n += 1;
            }
        }
        let store = open_when_unlocked(dir.path()).unwrap();
        let index = Arc::clone(&lock(&store.shared.requests).index);
        assert_eq!(index.len(), n);
        assert!(
            index.runs() <= 3,
            "{} runs after 5 checkpoints",
            index.runs()
        );
        for k in 0..n {
            assert!(store.request(&key(k)).unwrap().is_some(), "req-{k}");
        }
        for k in n..n + 1_000 {
            assert_eq!(store.request(&key(k)).unwrap(), None, "req-{k}");
        }
        assert_eq!(store.account(&account).unwrap(), Some(state(n - 1)));
        assert_eq!(store.journal().unwrap().len(), usize::try_from(n).unwrap());
    }

    /// Goal: a checkpoint cut short (index chunks and account keys written,
    /// no checkpoint record) loses nothing and leaves no orphan chunks.
    /// Method: after the segment, write a run and a stale account key by
    /// hand, as the writer would before dying, and reopen twice.
    #[test]
    fn a_checkpoint_cut_short_is_replayed_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let (account, key, after) = deposit_k();
        crash_after_segment(dir.path(), |trees| {
            let mut index = RequestIndex::default();
            index
                .add(&trees.request_index, vec![(hash_id("k"), 0)])
                .unwrap();
            let stale = Account {
                balance_cents: 7,
                version: 9,
            };
            trees
                .accounts
                .insert("acct", &encode_account(stale))
                .unwrap();
        });
        let store = open_when_unlocked(dir.path()).unwrap();
        assert_eq!(store.rolled_forward_commits(), 1);
        assert_eq!(store.account(&account).unwrap(), Some(after));
        assert!(store.request(&key).unwrap().is_some());
        drop(store);
        let store = open_when_unlocked(dir.path()).unwrap();
        assert_eq!(store.rolled_forward_commits(), 0);
        assert_eq!(
            store.trees.request_index.len(),
            1,
            "one chunk: the checkpoint's"
        );
        assert!(store.request(&key).unwrap().is_some());
        assert_eq!(store.accounts().unwrap(), vec![(account, after)]);
    }

    /// Goal: a data directory in the first format (one key per request id)
    /// is refused with what to do, not read as an empty index.
    #[test]
    fn a_data_directory_of_the_first_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.open_tree("requests")
                .unwrap()
                .insert("load-1-0-0", &b"record"[..])
                .unwrap();
            db.flush().unwrap();
        }
        let error = open_when_unlocked(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("older overdraft") && error.contains("--data-dir"),
            "{error}"
        );
    }

    /// Goal: the filter of seen ids never forgets one while it grows, keeps
    /// its false-positive rate near 1%, and once full answers "maybe" for
    /// everything (lookups, never a missed duplicate). Method: a filter from
    /// 1,000 to 64,000 ids; 60,000 hashes in, 100,000 others probed; then
    /// past the maximum.
    #[test]
    fn seen_ids_grow_without_forgetting_and_say_maybe_once_full() {
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
