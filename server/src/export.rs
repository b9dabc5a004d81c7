//! The journal on the wire: entries as `JournalRecord`s, streamed from a
//! blocking scan of the store through a bounded channel, so that exporting
//! millions of entries holds a few thousand at a time.

use std::{ops::ControlFlow, sync::Arc};

use overdraft_proto::v1 as pb;
// tokio itself, not the facade: tonic's stream is polled on the real runtime.
use real_tokio::sync::mpsc;
use tonic::Status;

use crate::{bank::EntryKind, journal::JournalEntry, store::Store};

/// Records queued between the store scan and the gRPC stream: when the
/// client reads slowly, the scan waits.
pub const EXPORT_QUEUE_MAX: usize = 4_096;

/// Starts scanning `store`; the receiver yields the records in commit order,
/// then ends (or yields one error status if the scan failed).
pub fn stream(store: Arc<dyn Store>) -> mpsc::Receiver<Result<pb::JournalRecord, Status>> {
    let (sender, receiver) = mpsc::channel(EXPORT_QUEUE_MAX);
    real_tokio::task::spawn_blocking(move || {
        let scanned = store.scan_journal_by_writer(&mut |entry, replica| {
            match sender.blocking_send(Ok(record(&entry, replica))) {
                Ok(()) => ControlFlow::Continue(()),
                // The client went away: stop reading.
                Err(_) => ControlFlow::Break(()),
            }
        });
        if let Err(error) = scanned {
            let _ = sender.blocking_send(Err(Status::internal(format!(
                "reading the journal failed: {error}"
            ))));
        }
    });
    receiver
}

/// The wire form of `entry`, written by `replica` where replicas share the store.
pub fn record(entry: &JournalEntry, replica: Option<&str>) -> pb::JournalRecord {
    pb::JournalRecord {
        seq: entry.seq,
        kind: kind_name(entry.kind).to_owned(),
        request_id: entry
            .request_id
            .as_ref()
            .map_or_else(String::new, |id| id.as_str().to_owned()),
        transfer_id: entry.transfer_id.clone().unwrap_or_default(),
        counterparty: entry
            .counterparty
            .as_ref()
            .map_or_else(String::new, |c| c.as_str().to_owned()),
        mode: pb::Mode::from(entry.mode).into(),
        amount_cents: entry.amount_cents,
        fee_cents: entry.fee_cents,
        legs: entry
            .legs
            .iter()
            .map(|leg| pb::JournalLeg {
                account_id: leg.account.as_str().to_owned(),
                read_balance_cents: leg.read.balance_cents,
                read_version: leg.read.version,
                written_balance_cents: leg.written.balance_cents,
                written_version: leg.written.version,
                delta_cents: leg.delta_cents,
            })
            .collect(),
        time_unix_ns: entry.time_unix_ns,
        replica: replica.unwrap_or_default().to_owned(),
    }
}

/// The journal's name for each kind of entry (as in `atm journal` files).
pub fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Open => "open",
        EntryKind::Deposit => "deposit",
        EntryKind::Withdraw => "withdraw",
        EntryKind::Transfer => "transfer",
        EntryKind::TransferDebit => "transfer_debit",
        EntryKind::TransferCredit => "transfer_credit",
    }
}
