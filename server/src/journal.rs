//! The append-only journal's records and the replies kept for idempotency.
//! Both are stored compactly with postcard; the audit and `--history` give
//! the readable views.

use serde::{Deserialize, Serialize};

use crate::{
    bank::{Account, AccountId, EntryKind, Leg, RequestId},
    config::Mode,
};

/// One applied mutation: what it read and what it wrote, per account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Commit order, assigned by the store. Unique and increasing.
    pub seq: u64,
    /// What happened.
    pub kind: EntryKind,
    /// The idempotency key, when the request carried one.
    pub request_id: Option<RequestId>,
    /// For the two legs of a transfer written as two commits: the id they share.
    pub transfer_id: Option<String>,
    /// For a transfer leg: the other account.
    pub counterparty: Option<AccountId>,
    /// The mode the operation ran in.
    pub mode: Mode,
    /// The operation's amount (the opening balance for `open`).
    pub amount_cents: i64,
    /// Overdraft fee charged, zero when none.
    pub fee_cents: i64,
    /// One leg per account touched.
    pub legs: Vec<Leg>,
    /// Wall-clock time of the commit, ns since the Unix epoch.
    pub time_unix_ns: u64,
}

impl JournalEntry {
    /// A name for the entry in findings: its request_id, or `seq:N` without one.
    pub fn label(&self) -> String {
        match &self.request_id {
            Some(id) => id.as_str().to_owned(),
            None => format!("seq:{}", self.seq),
        }
    }
}

/// The reply to a mutation, as kept under its request_id and replayed to retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    /// The operation's arguments; a retry with other arguments is refused.
    pub fingerprint: String,
    /// Each touched account as the operation left it, in request order.
    pub accounts: Vec<(AccountId, Account)>,
    /// Overdraft fee charged.
    pub fee_cents: i64,
}

/// What the idempotency table holds under a request_id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestRecord {
    /// Applied: replay this reply.
    Done(StoredReply),
    /// An actor transfer whose debit is applied and whose credit is on its way.
    InFlight {
        /// The operation's arguments.
        fingerprint: String,
    },
    /// An actor transfer whose credit was refused after its debit; the debit
    /// was refunded. Retries get the same refusal.
    Failed {
        /// The operation's arguments.
        fingerprint: String,
        /// The refusal, as first reported.
        reason: String,
    },
}
