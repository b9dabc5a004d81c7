//! The sled store: three trees (`accounts`, `journal`, `requests`), written
//! in commit order by one writer thread.
//!
//! A commit is decided in memory: a std mutex guards a mirror of every
//! account (balance and version), so guards are checked and seqs assigned in
//! one short critical section. The commit's record then goes to one writer
//! thread, which writes whatever is queued as one journal segment (one key,
//! the commit point of all its commits), then the account and request keys
//! the segment implies.
//!
//! Why not sled transactions or batches: in sled 0.34 a transaction costs
//! about 50 µs and takes a process-wide lock, and every `apply_batch` seals a
//! log buffer, which kept sled's IO threads switching 60,000 times a second
//! under load; plain inserts cost a few µs (measured with
//! `examples/micro_store.rs` and the bench, see BENCHMARKS.md).
//!
//! Durability: sled recovers a prefix of its log, so after a crash the store
//! holds a prefix of the segments, of which only the last can lack its account
//! and request keys; [`SledStore::open`] rolls that one forward.
//! [`Store::flush`] waits for the writer to drain, then fsyncs: the group
//! committer acknowledges `--durability sync` operations only after that.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard, mpsc},
    thread,
};

use serde::{Deserialize, Serialize};

use super::{
    Commit, Rejected, Store, StoreError, decode_account, decode_record, encode_account,
    encode_record, now_unix_ns,
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

/// The three trees. Separate trees keep each one's nodes small: journal
/// appends do not copy account records, and the reverse.
#[derive(Clone, Debug)]
struct Trees {
    accounts: sled::Tree,
    journal: sled::Tree,
    requests: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            accounts: db.open_tree("accounts")?,
            journal: db.open_tree("journal")?,
            requests: db.open_tree("requests")?,
        })
    }

    fn last_segment(&self) -> Result<Option<Vec<JournalRecord>>, StoreError> {
        self.journal
            .last()?
            .map(|(_, value)| decode_record("journal segment", &value))
            .transpose()
    }
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
    /// Commits it has applied to sled.
    applied: u64,
    /// Set when a batch failed: the store refuses further commits.
    failure: Option<String>,
}

/// Request ids sized for the filter: past this many the false-positive rate
/// climbs, which costs sled reads, never correctness.
const REQUEST_FILTER_ITEMS: usize = 4_000_000;

/// Target false-positive rate of the filter at [`REQUEST_FILTER_ITEMS`].
const REQUEST_FILTER_FP_RATE: f64 = 0.01;

/// What the store knows about request ids without reading sled.
#[derive(Debug)]
struct Requests {
    /// Idempotency records queued but not yet in sled, so that a duplicate
    /// arriving in between is still caught.
    pending: HashMap<String, RequestRecord>,
    /// Every request id ever committed (a Bloom filter, ~4.8 MB). A miss
    /// proves the id is new, which spares the sled read on almost every
    /// operation: reads of the requests tree were the largest sled cost left
    /// on the request path.
    seen: bloomfilter::Bloom<str>,
}

impl Requests {
    fn new() -> Result<Self, StoreError> {
        let seen =
            bloomfilter::Bloom::new_for_fp_rate(REQUEST_FILTER_ITEMS, REQUEST_FILTER_FP_RATE)
                .map_err(|e| StoreError::Corrupt {
                    what: "request filter",
                    detail: e.to_owned(),
                })?;
        Ok(Self {
            pending: HashMap::new(),
            seen,
        })
    }
}

#[derive(Debug)]
struct Shared {
    written: Mutex<Written>,
    progress: Condvar,
    requests: Mutex<Requests>,
}

/// A ledger kept in a sled database on disk.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    trees: Trees,
    /// Commits rolled forward at open: their journal segment was on disk and
    /// their balance writes were not.
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
        // Closing the queue ends the writer once it has applied what is queued.
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
        let mut mirror = Mirror::default();
        let mut rolled_forward_commits = 0;
        if let Some(segment) = trees.last_segment()? {
            if !views_match(&trees, &segment)? {
                rolled_forward_commits = u64::try_from(segment.len()).unwrap_or(u64::MAX);
                tracing::warn!(
                    rolled_forward_commits,
                    "the last journal segment's balance writes were missing (a crash cut them); rolled forward"
                );
            }
            write_segment(&trees, &segment, Writer::Recovery)?;
            mirror.next_seq = segment.last().map_or(0, |record| record.entry.seq + 1);
        }
        for item in trees.accounts.iter() {
            let (key, value) = item?;
            mirror
                .accounts
                .insert(account_id_of(&key)?, decode_account(&value)?);
        }
        let mut requests = Requests::new()?;
        for key in trees.requests.iter().keys() {
            let key = key?;
            let id = std::str::from_utf8(&key).map_err(|e| StoreError::Corrupt {
                what: "request key",
                detail: e.to_string(),
            })?;
            requests.seen.set(id);
        }
        let shared = Arc::new(Shared {
            written: Mutex::new(Written::default()),
            progress: Condvar::new(),
            requests: Mutex::new(requests),
        });
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
        // Every commit checks before it mutates, so the mirror is consistent
        // even if a holder panicked: carry on.
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the writer has applied every commit queued so far.
    fn drain(&self) -> Result<(), StoreError> {
        let mut written = self
            .shared
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let target = written.queued;
        while written.applied < target && written.failure.is_none() {
            written = self
                .shared
                .progress
                .wait(written)
                .unwrap_or_else(|p| p.into_inner());
        }
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
        detail: format!("a batch failed earlier, so the store refuses writes: {failure}"),
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

/// Who writes a segment: the writer thread, or the roll-forward at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writer {
    Live,
    Recovery,
}

/// Whether the account keys already hold what `records` imply.
fn views_match(trees: &Trees, records: &[JournalRecord]) -> Result<bool, StoreError> {
    let mut last_states: HashMap<&str, Account> = HashMap::new();
    for record in records {
        for leg in &record.entry.legs {
            last_states.insert(leg.account.as_str(), leg.written);
        }
    }
    for (account, state) in last_states {
        let stored = trees.accounts.get(account)?;
        if stored.as_deref() != Some(&encode_account(state)[..]) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes one segment of consecutive commits: the journal segment first
/// (the commit point of all of them), then the account and request keys they
/// imply, each account once with its last state. sled recovers a prefix of
/// its log, so a crash can cut only the last segment's view writes, which
/// [`SledStore::open`] rolls forward.
fn write_segment(
    trees: &Trees,
    records: &[JournalRecord],
    writer: Writer,
) -> Result<(), StoreError> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    trees
        .journal
        .insert(first.entry.seq.to_be_bytes(), encode_record(&records))?;
    if writer == Writer::Live {
        crash::reached_in_writer(CrashPoint::JournalBeforeBalances, &trees.journal);
    }
    let mut last_states: HashMap<&str, Account> = HashMap::new();
    for record in records {
        for leg in &record.entry.legs {
            last_states.insert(leg.account.as_str(), leg.written);
        }
        if let Some((id, request)) = &record.request {
            trees.requests.insert(id.as_str(), encode_record(request))?;
        }
    }
    for (account, state) in last_states {
        trees.accounts.insert(account, &encode_account(state))?;
    }
    Ok(())
}

/// The writer: takes everything queued, writes it in order, reports
/// progress. Runs until the store is dropped.
fn write_batches(trees: &Trees, shared: &Shared, receiver: &mpsc::Receiver<JournalRecord>) {
    while let Ok(first) = receiver.recv() {
        let mut records = vec![first];
        while records.len() < BATCH_COMMITS_MAX {
            match receiver.try_recv() {
                Ok(record) => records.push(record),
                Err(_) => break,
            }
        }
        let outcome = write_segment(trees, &records, Writer::Live).map_err(|e| e.to_string());
        let mut requests = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
        for record in &records {
            if let Some((id, _)) = &record.request {
                requests.pending.remove(id.as_str());
            }
        }
        drop(requests);
        let mut written = shared.written.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => written.applied += u64::try_from(records.len()).unwrap_or(u64::MAX),
            Err(error) => {
                tracing::error!(%error, "sled write failed; the store refuses further writes");
                written.failure = Some(error);
            }
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
        if let Some(failure) = &self
            .shared
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failure
        {
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
            let mut requests = self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            requests.seen.set(id.as_str());
            requests
                .pending
                .insert(id.as_str().to_owned(), record.clone());
        }
        let mut entry = commit.entry.clone();
        entry.seq = seq;
        entry.time_unix_ns = now_unix_ns();
        self.shared
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queued += 1;
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
        {
            let requests = self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(pending) = requests.pending.get(id.as_str()) {
                return Ok(Some(pending.clone()));
            }
            if !requests.seen.check(id.as_str()) {
                return Ok(None);
            }
        }
        // The writer applies a batch before it clears the batch's pending
        // records, so a record is always in one place or the other.
        self.trees
            .requests
            .get(id.as_str())?
            .map(|bytes| decode_record("request record", &bytes))
            .transpose()
    }

    fn accounts(&self) -> Result<Vec<(AccountId, Account)>, StoreError> {
        self.drain()?;
        let mut accounts = Vec::new();
        for item in self.trees.accounts.iter() {
            let (key, value) = item?;
            accounts.push((account_id_of(&key)?, decode_account(&value)?));
        }
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

    fn clear(&self) -> Result<(), StoreError> {
        let mut mirror = self.mirror();
        self.drain()?;
        self.trees.accounts.clear()?;
        self.trees.journal.clear()?;
        self.trees.requests.clear()?;
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .clear();
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
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.commit(&commit(&account, &key, after)).unwrap(), Ok(0));
            let again = store.commit(&commit(&account, &key, after)).unwrap();
            assert!(matches!(again, Err(Rejected::Duplicate(_))), "{again:?}");
            store.flush().unwrap();
            let again = store.commit(&commit(&account, &key, after)).unwrap();
            assert!(matches!(again, Err(Rejected::Duplicate(_))), "{again:?}");
        }
        let store = SledStore::open(dir.path()).unwrap();
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

    /// Goal: a crash between a journal segment (the commit point) and its
    /// account and request writes loses nothing: opening rolls the last
    /// segment forward. Method: write a segment straight into the journal
    /// tree, as if the process died right after, and reopen.
    #[test]
    fn last_segment_is_rolled_forward_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let account = AccountId::parse("account_id", "acct").unwrap();
        let key = RequestId::internal("k".into());
        let after = Account {
            balance_cents: 42,
            version: 1,
        };
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let trees = Trees::open(&db).unwrap();
            let mut entry = commit(&account, &key, after).entry;
            entry.seq = 0;
            let record = JournalRecord {
                entry,
                request: commit(&account, &key, after).request,
            };
            trees
                .journal
                .insert(
                    0u64.to_be_bytes(),
                    encode_record(&std::slice::from_ref(&record)),
                )
                .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
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
}
