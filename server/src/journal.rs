//! The append-only journal's records and the replies kept for idempotency.
//! Both are stored compactly with postcard; the audit and `--history` give
//! the readable views.

use std::collections::BTreeMap;

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

/// Two-commit transfers whose debit has no credit yet: the one fold, over
/// the journal in commit order, behind the audit's half-applied findings and
/// money in flight, the actor mode's recovery at start, and the unsafe
/// mode's refusal to retry a transfer cut in half. It holds the open debits
/// only, so its memory grows with the transfers in flight, never with the
/// journal's length.
#[derive(Debug, Default)]
pub struct OpenTransfers {
    // Keyed by transfer id (empty for a debit that lacks one), so the open
    // debits come out in one order every run.
    open: BTreeMap<String, JournalEntry>,
}

impl OpenTransfers {
    /// Takes the next entry: a debit opens its transfer, a credit closes it.
    pub fn push(&mut self, entry: &JournalEntry) {
        let key = || entry.transfer_id.clone().unwrap_or_default();
        match entry.kind {
            EntryKind::TransferDebit => {
                self.open.insert(key(), entry.clone());
            }
            EntryKind::TransferCredit => {
                self.open.remove(entry.transfer_id.as_deref().unwrap_or(""));
            }
            _ => {}
        }
    }

    /// The debits still open, with their transfer ids, by transfer id.
    pub fn debits(&self) -> impl Iterator<Item = (&str, &JournalEntry)> {
        self.open.iter().map(|(id, entry)| (id.as_str(), entry))
    }

    /// The open debits of transfers that ran in `mode`.
    pub fn debits_in(&self, mode: Mode) -> impl Iterator<Item = &JournalEntry> {
        self.open.values().filter(move |entry| entry.mode == mode)
    }

    /// Money that left an account and reached none yet.
    pub fn in_flight_cents(&self) -> i128 {
        self.open
            .values()
            .map(|entry| i128::from(entry.amount_cents))
            .sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(
        kind: EntryKind,
        transfer: &str,
        mode: Mode,
        seq: u64,
        amount_cents: i64,
    ) -> JournalEntry {
        JournalEntry {
            seq,
            kind,
            request_id: None,
            transfer_id: Some(transfer.to_owned()),
            counterparty: None,
            mode,
            amount_cents,
            fee_cents: 0,
            legs: Vec::new(),
            time_unix_ns: 0,
        }
    }

    /// Goal: a debit stays open until its credit arrives, whatever lies
    /// between; what is open is summed and split by mode. Method: three
    /// transfers, one closed, two left open in different modes, and an
    /// ordinary deposit in between.
    #[test]
    fn open_transfers_keep_debits_without_credits() {
        let mut open = OpenTransfers::default();
        open.push(&leg(EntryKind::TransferDebit, "t1", Mode::Unsafe, 1, 500));
        open.push(&leg(EntryKind::TransferDebit, "t2", Mode::Actor, 2, 700));
        open.push(&leg(EntryKind::Deposit, "", Mode::Unsafe, 3, 9_999));
        open.push(&leg(EntryKind::TransferCredit, "t1", Mode::Unsafe, 4, 500));
        open.push(&leg(EntryKind::TransferDebit, "t3", Mode::Unsafe, 5, 40));
        let ids: Vec<&str> = open.debits().map(|(id, _)| id).collect();
        assert_eq!(ids, ["t2", "t3"]);
        assert_eq!(open.in_flight_cents(), 740);
        let unsafe_seqs: Vec<u64> = open.debits_in(Mode::Unsafe).map(|d| d.seq).collect();
        assert_eq!(unsafe_seqs, [5]);
        assert_eq!(open.debits_in(Mode::Actor).count(), 1);
        assert_eq!(open.debits_in(Mode::Mutex).count(), 0);
    }
}
