//! An in-memory store with the same contract as sled: one std mutex makes
//! every commit atomic. A std mutex, not a tokio one, because nothing awaits
//! while it is held.
//!
//! Nothing under that mutex may take long, because every operation waits on
//! it: the journal grows in chunks and the idempotency records are sharded,
//! so no append copies the whole journal and no insert rehashes every
//! record. One `Vec` and one `HashMap` did, at each doubling: at 50,000
//! deposits a second, every operation stood still for 20-100 ms at 29k, 57k,
//! 115k... records (the p99.9 of the memory store in BENCHMARKS.md).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
};

use super::{Commit, Rejected, Store, StoreError, now_unix_ns, request_index::hash_id};
use crate::{
    bank::{Account, AccountId, RequestId},
    journal::{JournalEntry, RequestRecord},
};

/// A ledger held in memory; gone when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    accounts: BTreeMap<AccountId, Account>,
    journal: Journal,
    requests: Requests,
    next_seq: u64,
}

/// Journal entries per chunk (a few MB).
const JOURNAL_CHUNK: usize = 1 << 14;

/// The journal, in chunks that are never moved once allocated.
#[derive(Debug, Default)]
struct Journal {
    chunks: Vec<Vec<JournalEntry>>,
}

impl Journal {
    fn push(&mut self, entry: JournalEntry) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < JOURNAL_CHUNK => chunk.push(entry),
            _ => {
                let mut chunk = Vec::with_capacity(JOURNAL_CHUNK);
                chunk.push(entry);
                self.chunks.push(chunk);
            }
        }
    }

    fn len(&self) -> usize {
        self.chunks.len().saturating_sub(1) * JOURNAL_CHUNK + self.chunks.last().map_or(0, Vec::len)
    }

    /// A copy of the entries from `from` up to `end`, or to the end of the
    /// chunk holding `from` if that comes first: at most one chunk.
    fn copy(&self, from: usize, end: usize) -> Vec<JournalEntry> {
        let Some(chunk) = self.chunks.get(from / JOURNAL_CHUNK) else {
            return Vec::new();
        };
        let start = from % JOURNAL_CHUNK;
        let stop = chunk.len().min(start + end.saturating_sub(from));
        chunk.get(start..stop).map_or_else(Vec::new, <[_]>::to_vec)
    }

    #[cfg(test)]
    fn to_vec(&self) -> Vec<JournalEntry> {
        self.chunks.iter().flatten().cloned().collect()
    }
}

/// Shards of the idempotency records: a shard that doubles rehashes only
/// its own records.
const REQUEST_SHARDS: usize = 64;

/// The idempotency records by request id, sharded by the id's hash.
#[derive(Debug)]
struct Requests {
    shards: Vec<HashMap<String, RequestRecord>>,
}

impl Default for Requests {
    fn default() -> Self {
        Self {
            shards: (0..REQUEST_SHARDS).map(|_| HashMap::new()).collect(),
        }
    }
}

impl Requests {
    fn shard(&self, id: &str) -> usize {
        usize::try_from(hash_id(id) % REQUEST_SHARDS as u64).unwrap_or(0)
    }

    fn get(&self, id: &str) -> Option<&RequestRecord> {
        self.shards[self.shard(id)].get(id)
    }

    fn insert(&mut self, id: String, record: RequestRecord) {
        let shard = self.shard(&id);
        self.shards[shard].insert(id, record);
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can only come from a bug in this
        // file; the data is still consistent because every commit checks
        // before it mutates, so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The calls an operation makes, answered synchronously: the store lives in
/// this process.
impl MemoryStore {
    /// An account's state, or None.
    pub fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        Ok(self.state().accounts.get(id).copied())
    }

    /// Applies `commit` atomically: the seq it got, or why it wrote nothing.
    pub fn commit(&self, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError> {
        let mut state = self.state();
        if let Some((id, _)) = &commit.request
            && !commit.replace_request
            && let Some(existing) = state.requests.get(id.as_str())
        {
            return Ok(Err(Rejected::Duplicate(existing.clone())));
        }
        if let Some(rejected) = commit.failed_read(|id| state.accounts.get(id).copied()) {
            return Ok(Err(rejected));
        }
        for write in &commit.writes {
            let found = state.accounts.get(&write.account).copied();
            if !write.guard.holds(found) {
                return Ok(Err(Rejected::Conflict {
                    account: write.account.clone(),
                    found,
                }));
            }
        }
        for write in &commit.writes {
            state.accounts.insert(write.account.clone(), write.new);
        }
        if let Some((id, record)) = &commit.request {
            state
                .requests
                .insert(id.as_str().to_owned(), record.clone());
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let mut entry = commit.entry.clone();
        entry.seq = seq;
        entry.time_unix_ns = now_unix_ns();
        state.journal.push(entry);
        Ok(Ok(seq))
    }

    /// The idempotency record under `id`, if any.
    pub fn request(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self.state().requests.get(id.as_str()).cloned())
    }

    /// Removes every account, journal entry and idempotency record.
    pub fn clear(&self) -> Result<(), StoreError> {
        let mut state = self.state();
        let next_seq = state.next_seq;
        *state = State {
            next_seq,
            ..State::default()
        };
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        MemoryStore::account(self, id)
    }

    async fn commit(&self, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError> {
        MemoryStore::commit(self, commit)
    }

    async fn request(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        MemoryStore::request(self, id)
    }

    async fn clear(&self) -> Result<(), StoreError> {
        MemoryStore::clear(self)
    }

    fn accounts(&self) -> Result<Vec<(AccountId, Account)>, StoreError> {
        Ok(self
            .state()
            .accounts
            .iter()
            .map(|(id, account)| (id.clone(), *account))
            .collect())
    }

    fn scan_journal(
        &self,
        visit: &mut dyn FnMut(JournalEntry) -> std::ops::ControlFlow<()>,
    ) -> Result<(), StoreError> {
        // The journal as of now, one chunk's copy at a time: the lock is
        // held for one copy, and a scan adds one chunk to memory, not a
        // second journal.
        let end = self.state().journal.len();
        let mut next = 0;
        while next < end {
            let chunk = self.state().journal.copy(next, end);
            if chunk.is_empty() {
                break; // Cleared meanwhile (a Reset).
            }
            next += chunk.len();
            for entry in chunk {
                if visit(entry).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> JournalEntry {
        JournalEntry {
            seq,
            kind: crate::bank::EntryKind::Deposit,
            request_id: None,
            transfer_id: None,
            counterparty: None,
            mode: crate::config::Mode::Cas,
            amount_cents: 1,
            fee_cents: 0,
            legs: Vec::new(),
            time_unix_ns: 0,
        }
    }

    fn journal_of(entries: u64) -> Journal {
        let mut journal = Journal::default();
        for seq in 0..entries {
            journal.push(entry(seq));
        }
        journal
    }

    /// Goal: a copy never spans more than one chunk, stops at `end`, and
    /// copies from chunk after chunk put the journal back together.
    #[test]
    fn copies_go_one_chunk_at_a_time_and_stop_at_the_end() {
        let chunk = JOURNAL_CHUNK as u64;
        let journal = journal_of(2 * chunk + 5);
        assert_eq!(journal.len(), 2 * JOURNAL_CHUNK + 5);
        let first = journal.copy(3, journal.len());
        assert_eq!(
            first.len(),
            JOURNAL_CHUNK - 3,
            "to the end of the first chunk"
        );
        assert_eq!(first.first().map(|e| e.seq), Some(3));
        assert_eq!(journal.copy(JOURNAL_CHUNK + 1, JOURNAL_CHUNK + 4).len(), 3);
        assert!(journal.copy(journal.len(), journal.len() + 10).is_empty());
        let end = JOURNAL_CHUNK + 7;
        let mut seqs = Vec::new();
        let mut next = 0;
        while next < end {
            let copied = journal.copy(next, end);
            assert!(!copied.is_empty() && copied.len() <= JOURNAL_CHUNK);
            next += copied.len();
            seqs.extend(copied.iter().map(|e| e.seq));
        }
        assert_eq!(seqs, (0..end as u64).collect::<Vec<_>>());
        assert_eq!(journal.to_vec().len(), journal.len());
    }
}
