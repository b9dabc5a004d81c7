//! The sled store: three trees (`accounts`, `journal`, `requests`) changed
//! together in one multi-tree transaction per commit.
//!
//! sled 0.34 serialises transactions behind a process-wide lock once any has
//! run; that makes commit order a total order, which is what the journal's
//! `seq` records. Closures may re-run on conflict, so they only compute.

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{
    Commit, Guard, Rejected, Store, StoreError, decode_account, decode_json, encode_account,
    encode_json, now_unix_ns,
};
use crate::{
    bank::{Account, AccountId, RequestId},
    journal::{JournalEntry, RequestRecord},
};

/// sled's page cache size: 256 MiB, enough to keep a demo's working set in memory.
const CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

/// A ledger kept in a sled database on disk.
#[derive(Clone, Debug)]
pub struct SledStore {
    db: sled::Db,
    accounts: sled::Tree,
    journal: sled::Tree,
    requests: sled::Tree,
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
        Ok(Self {
            accounts: db.open_tree("accounts")?,
            journal: db.open_tree("journal")?,
            requests: db.open_tree("requests")?,
            db,
        })
    }
}

impl Store for SledStore {
    fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        self.accounts
            .get(id.as_str())?
            .map(|bytes| decode_account(&bytes))
            .transpose()
    }

    fn commit(&self, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError> {
        let outcome = (&self.accounts, &self.journal, &self.requests).transaction(
            |(accounts, journal, requests)| {
                let abort = ConflictableTransactionError::Abort;
                if let Some((id, record)) = &commit.request {
                    if !commit.replace_request
                        && let Some(bytes) = requests.get(id.as_str())?
                    {
                        let existing = decode_json("request record", &bytes)
                            .map_err(|e| abort(Failure::Store(e)))?;
                        return Err(abort(Failure::Rejected(Rejected::Duplicate(existing))));
                    }
                    requests.insert(id.as_str(), encode_json(record))?;
                }
                for write in &commit.writes {
                    let found = accounts
                        .get(write.account.as_str())?
                        .map(|bytes| decode_account(&bytes))
                        .transpose()
                        .map_err(|e| abort(Failure::Store(e)))?;
                    let holds = match write.guard {
                        Guard::Blind => true,
                        Guard::Version(version) => found.map(|a| a.version) == Some(version),
                        Guard::Absent => found.is_none(),
                    };
                    if !holds {
                        return Err(abort(Failure::Rejected(Rejected::Conflict {
                            account: write.account.clone(),
                            found,
                        })));
                    }
                    accounts.insert(write.account.as_str(), &encode_account(write.new))?;
                }
                let seq = journal.generate_id()?;
                let mut entry = commit.entry.clone();
                entry.seq = seq;
                entry.time_unix_ns = now_unix_ns();
                journal.insert(&seq.to_be_bytes(), encode_json(&entry))?;
                Ok(seq)
            },
        );
        match outcome {
            Ok(seq) => Ok(Ok(seq)),
            Err(TransactionError::Abort(Failure::Rejected(rejected))) => Ok(Err(rejected)),
            Err(TransactionError::Abort(Failure::Store(error))) => Err(error),
            Err(TransactionError::Storage(error)) => Err(error.into()),
        }
    }

    fn request(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        self.requests
            .get(id.as_str())?
            .map(|bytes| decode_json("request record", &bytes))
            .transpose()
    }

    fn accounts(&self) -> Result<Vec<(AccountId, Account)>, StoreError> {
        self.accounts
            .iter()
            .map(|item| {
                let (key, value) = item?;
                let id = String::from_utf8(key.to_vec()).map_err(|e| StoreError::Corrupt {
                    what: "account id",
                    detail: e.to_string(),
                })?;
                let id = AccountId::parse("account_id", &id).map_err(|e| StoreError::Corrupt {
                    what: "account id",
                    detail: e.to_string(),
                })?;
                Ok((id, decode_account(&value)?))
            })
            .collect()
    }

    fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        // Keys are big-endian seqs, so sled's key order is commit order.
        self.journal
            .iter()
            .values()
            .map(|value| decode_json("journal entry", &value?))
            .collect()
    }

    fn clear(&self) -> Result<(), StoreError> {
        self.accounts.clear()?;
        self.journal.clear()?;
        self.requests.clear()?;
        self.db.flush()?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Why a transaction closure aborted.
enum Failure {
    Rejected(Rejected),
    Store(StoreError),
}
