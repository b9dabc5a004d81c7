//! The sled database's layout: its trees, the checkpoint record, and a
//! journal segment's records.

use serde::{Deserialize, Serialize};

use super::super::{StoreError, decode_record, request_index::RequestIndex};
use crate::{
    bank::{AccountId, RequestId},
    journal::{JournalEntry, RequestRecord},
};

/// The meta tree's key for the [`Checkpoint`] record.
pub(super) const CHECKPOINT_KEY: &[u8] = b"checkpoint";

/// The trees: the views of the journal (which lives in its own file,
/// `journal_file.rs`) and the checkpoint record that says how far they go.
#[derive(Clone, Debug)]
pub(super) struct Trees {
    pub(super) accounts: sled::Tree,
    pub(super) request_index: sled::Tree,
    pub(super) meta: sled::Tree,
}

impl Trees {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
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
        // The second kept the journal in sled, one key per segment.
        if db.tree_names().iter().any(|name| name == b"journal")
            && !db.open_tree("journal")?.is_empty()
        {
            return Err(StoreError::Corrupt {
                what: "data directory",
                detail: "written by an older overdraft (the journal inside sled); \
                         remove it or pass another --data-dir"
                    .into(),
            });
        }
        Ok(Self {
            accounts: db.open_tree("accounts")?,
            request_index: db.open_tree("request_index")?,
            meta: db.open_tree("meta")?,
        })
    }

    pub(super) fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        self.meta
            .get(CHECKPOINT_KEY)?
            .map(|bytes| decode_record("checkpoint", &bytes))
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

/// What the views hold, written after them: a checkpoint exists once this
/// record says so.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    /// The views reflect every commit with a seq below this, and none above.
    pub(super) covered: u64,
    /// The request index's runs.
    pub(super) index: RequestIndex,
    /// The journal file's epoch: a Reset starts the next one.
    pub(super) journal_epoch: u64,
    /// The journal file's bytes the views cover: replay starts here.
    pub(super) journal_offset: u64,
}

/// One commit in a journal segment: the entry and the idempotency record written with it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct JournalRecord {
    pub(super) entry: JournalEntry,
    pub(super) request: Option<(RequestId, RequestRecord)>,
}

pub(super) fn account_id_of(key: &[u8]) -> Result<AccountId, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "account key",
        detail,
    };
    let text = std::str::from_utf8(key).map_err(|e| corrupt(e.to_string()))?;
    AccountId::parse("account_id", text).map_err(|e| corrupt(e.to_string()))
}
