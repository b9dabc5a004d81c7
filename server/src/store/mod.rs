//! Storage behind one small trait: balances with versions, the journal, and
//! the idempotency table, changed together by atomic commits.
//!
//! sled ([`SledStore`]) is the one-process default; [`MemoryStore`] keeps the
//! same contract in memory for unit tests and simulation; `PostgresStore`
//! is shared by replicas. The calls an operation makes are async; the
//! whole-ledger reads are synchronous and run on blocking threads.

mod memory;
#[cfg(not(feature = "shuttle"))]
mod postgres;
mod request_index;
mod sled_store;

pub use memory::MemoryStore;
#[cfg(not(feature = "shuttle"))]
pub use postgres::{POOL_SIZE_DEFAULT, PostgresStore};
pub use sled_store::SledStore;

use crate::{
    bank::{Account, AccountId, RequestId},
    journal::{JournalEntry, RequestRecord},
};

/// What a write expects to find before it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Write whatever is there (unsafe mode: the lost update is the lesson).
    Blind,
    /// The account must still be at this version (cas; an assertion in mutex and actor).
    Version(u64),
    /// The account must not exist (opening).
    Absent,
    /// The writer's lease token must be at least the account's fence, which
    /// the write raises to it (actor mode across replicas, with fencing): a
    /// stale owner, whose lease another replica has taken since, is refused.
    /// Stores one process owns keep no fence: the account must exist.
    Fence(u64),
}

impl Guard {
    /// Whether the guard holds over what the store has (`None`: no such account).
    pub fn holds(self, found: Option<Account>) -> bool {
        match self {
            Guard::Blind => true,
            Guard::Version(version) => found.map(|a| a.version) == Some(version),
            Guard::Absent => found.is_none(),
            Guard::Fence(_) => found.is_some(),
        }
    }
}

/// One account write in a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The account.
    pub account: AccountId,
    /// What must hold before writing.
    pub guard: Guard,
    /// The new state.
    pub new: Account,
}

/// Everything one operation changes, applied all or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Account writes.
    pub writes: Vec<Write>,
    /// Accounts read and not written that must still be at these versions
    /// (a joint withdrawal's household account, under a version guard):
    /// a check on one row and a write to another is write skew otherwise.
    pub reads: Vec<(AccountId, u64)>,
    /// The journal entry; its `seq` is assigned by the store.
    pub entry: JournalEntry,
    /// The idempotency record to store; the commit fails with
    /// [`Rejected::Duplicate`] if the key already holds one, unless `replace`.
    pub request: Option<(RequestId, RequestRecord)>,
    /// Overwrite an existing record under the key (an actor transfer's credit
    /// replacing its in-flight marker).
    pub replace_request: bool,
}

impl Commit {
    /// The first read guard that does not hold over `find`, with what it found.
    pub fn failed_read(&self, find: impl Fn(&AccountId) -> Option<Account>) -> Option<Rejected> {
        self.reads.iter().find_map(|(account, version)| {
            let found = find(account);
            (found.map(|a| a.version) != Some(*version)).then(|| Rejected::Conflict {
                account: account.clone(),
                found,
            })
        })
    }
}

/// Why a commit wrote nothing; expected outcomes, not faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// A guard did not hold.
    Conflict {
        /// The account whose guard failed.
        account: AccountId,
        /// What the store held (None: no such account).
        found: Option<Account>,
    },
    /// The request_id already has a record.
    Duplicate(RequestRecord),
}

/// A storage fault: the operation's outcome is unknown to the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// PostgreSQL refused a statement or could not be reached.
    #[error("postgres: {0}")]
    Postgres(String),
    /// The database cannot be reached (no connection within the bound, or
    /// the connection broke): the outcome of what was in flight is unknown.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL aborted the transaction to keep its isolation (40001) or
    /// to break a deadlock (40P01): the operation may be tried again from
    /// its reads.
    #[error("postgres aborted the transaction: {0}")]
    Serialization(String),
    /// A stored value did not decode: corruption or a format change.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
}

/// One sync as the store saw it, handed to one of the requests it covered.
#[derive(Clone, Copy, Debug)]
pub struct FlushFigures {
    /// Flush requests the sync covered.
    pub requests: usize,
    /// From the start of the write that preceded the sync to its end.
    pub took: std::time::Duration,
}

/// What [`Store::flush_then`] calls with the flush's outcome, and with the
/// sync's figures for one of the requests it covered.
pub type FlushDone = Box<dyn FnOnce(Result<(), StoreError>, Option<FlushFigures>) + Send>;

/// One operation's transaction in a store that has them (PostgreSQL): its
/// locks, its reads and its commit on one connection, at the isolation level
/// the ledger runs with. Dropped without [`StoreTx::commit`], it rolls back.
#[async_trait::async_trait]
pub trait StoreTx: Send {
    /// Takes `account`'s lock for the rest of the transaction, seen by every
    /// process on the store (`--lock-scope database`), waiting at most `wait`.
    async fn lock(
        &mut self,
        account: &AccountId,
        wait: std::time::Duration,
    ) -> Result<(), LockWait>;

    /// An account's state as this transaction sees it, or None.
    async fn account(&mut self, id: &AccountId) -> Result<Option<Account>, StoreError>;

    /// Applies `commit` and ends the transaction: the journal seq it got,
    /// or why it wrote nothing (then it rolled back).
    async fn commit(self: Box<Self>, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError>;
}

/// Why a lock in the store was not taken.
#[derive(Debug)]
pub enum LockWait {
    /// The wait ran past its bound.
    TimedOut,
    /// The store found this wait in a cycle and broke it.
    Deadlock,
    /// The store failed.
    Failed(StoreError),
}

/// Who owns an account across replicas, as the store's lease table says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lease {
    /// The caller holds the lease, under `token`, for `valid_ms` more.
    Mine {
        /// The fencing token: larger than every token granted before it.
        token: u64,
        /// How long the lease still runs, by the store's clock.
        valid_ms: u64,
    },
    /// Another replica holds it, for `valid_ms` more.
    Theirs {
        /// Its name.
        holder: String,
        /// Where it serves, for forwarding.
        address: String,
        /// How long its lease still runs, by the store's clock.
        valid_ms: u64,
    },
}

/// Owner leases on accounts, in a store replicas share: what lets actor
/// mode give each account one owner across processes.
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// Takes or renews the lease on `account` for `holder`, serving at
    /// `address`, for `ttl_ms`: granted when the account has no lease, when
    /// its lease ran out, or when `holder` holds it already (keeping its
    /// token while it runs). Otherwise, who holds it.
    async fn take_lease(
        &self,
        account: &AccountId,
        holder: &str,
        address: &str,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError>;

    /// Gives up every lease `holder` has, so the next replica to call
    /// takes them at once instead of waiting for them to run out: what a
    /// replica does as it stops. Returns how many it gave up.
    async fn release_leases(&self, holder: &str) -> Result<u64, StoreError>;
}

/// The ledger's storage.
///
/// The calls an operation makes (read an account, commit, look up a
/// request) are async: a store across the network answers them without
/// holding a worker thread. The whole-ledger reads (the journal, every
/// account) are synchronous and run on blocking threads, where a networked
/// store may block on its answer.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// An account's state, or None.
    async fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError>;

    /// Applies `commit` atomically and returns the journal seq it got, or why it wrote nothing.
    async fn commit(&self, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError>;

    /// The idempotency record under `id`, if any.
    async fn request(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError>;

    /// Removes every account, journal entry and idempotency record. Owner
    /// leases stay: ownership is about replicas, not balances.
    async fn clear(&self) -> Result<(), StoreError>;

    /// Every account, in id order.
    fn accounts(&self) -> Result<Vec<(AccountId, Account)>, StoreError>;

    /// The journal in commit order, whole: for tests and small ledgers.
    fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let mut entries = Vec::new();
        self.scan_journal(&mut |entry| {
            entries.push(entry);
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(entries)
    }

    /// Visits the journal in commit order, one entry at a time, without
    /// holding it whole: the audit and the export of millions of entries.
    /// `visit` returns `Break` to stop early.
    fn scan_journal(
        &self,
        visit: &mut dyn FnMut(JournalEntry) -> std::ops::ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// [`Store::scan_journal`] with the replica that wrote each entry, in a
    /// store replicas share (None in one ledger's own store).
    fn scan_journal_by_writer(
        &self,
        visit: &mut dyn FnMut(JournalEntry, Option<&str>) -> std::ops::ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.scan_journal(&mut |entry| visit(entry, None))
    }

    /// Whether other processes write this store too (replicas): then
    /// nothing held in this process (an actor's ownership) protects an
    /// account.
    fn shared(&self) -> bool {
        false
    }

    /// The store's owner leases, when replicas share it; None otherwise.
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// The name this process writes under, when replicas share the store.
    fn replica(&self) -> Option<&str> {
        None
    }

    /// A transaction for one operation; None when the store has none (sled
    /// and memory: one process, whose modes do their own serialising).
    async fn begin(&self) -> Result<Option<Box<dyn StoreTx>>, StoreError> {
        Ok(None)
    }

    /// Visits the journal, then returns every account, both as of one
    /// moment: what the audit reads. By default one call after the other,
    /// which is one moment for a store only this process writes (the audit
    /// holds its operations back meanwhile).
    fn scan_then_accounts(
        &self,
        visit: &mut dyn FnMut(JournalEntry) -> std::ops::ControlFlow<()>,
    ) -> Result<Vec<(AccountId, Account)>, StoreError> {
        self.scan_journal(visit)?;
        self.accounts()
    }

    /// Makes every commit so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Calls `done` once every commit so far is durable, possibly from
    /// another thread: a store with a writer thread syncs there and spares
    /// the caller a thread of its own. By default, flushes here.
    fn flush_then(&self, done: FlushDone) {
        let started = std::time::Instant::now();
        let outcome = self.flush();
        let figures = FlushFigures {
            requests: 1,
            took: started.elapsed(),
        };
        done(outcome, Some(figures));
    }

    /// Commits replayed when the store opened: their journal reached disk
    /// and the process stopped before a checkpoint wrote their balances.
    fn rolled_forward_commits(&self) -> u64 {
        0
    }
}

/// Encodes an account as 16 bytes: balance then version, big-endian.
fn encode_account(account: Account) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&account.balance_cents.to_be_bytes());
    bytes[8..].copy_from_slice(&account.version.to_be_bytes());
    bytes
}

fn decode_account(bytes: &[u8]) -> Result<Account, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "account",
        detail: format!("expected 16 bytes, found {}", bytes.len()),
    };
    let balance: [u8; 8] = bytes
        .get(..8)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    let version: [u8; 8] = bytes
        .get(8..16)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    if bytes.len() != 16 {
        return Err(corrupt());
    }
    Ok(Account {
        balance_cents: i64::from_be_bytes(balance),
        version: u64::from_be_bytes(version),
    })
}

/// Encodes a record compactly (postcard). JSON was tried first: its larger
/// values made every sled insert copy more, and the writer twice as slow.
fn encode_record<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // The serialized types hold only strings, integers, options, vectors and
    // externally tagged enums, which postcard always encodes.
    postcard::to_allocvec(value).unwrap_or_default()
}

fn decode_record<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt {
        what,
        detail: error.to_string(),
    })
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
