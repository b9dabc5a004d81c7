//! `unsafe` mode: read, race hook, check, blind write. Nothing protects the
//! gap, so two operations that read the same version both write it: one of
//! them is lost, and a balance checked on a stale read can be overdrawn.
//! (The file is not called `unsafe.rs` because that is a Rust keyword.)

use std::{collections::HashSet, sync::Arc};

use super::{
    Applied, Attempt, Planned, Request, WriteKind, again_while_store_aborts, commit_attempt,
    commit_in, read_and_plan, replay,
};
use crate::{
    bank::{self, EntryKind, Operation, RequestId},
    config::Mode,
    context::Core,
    crash::{self, CrashPoint},
    error::LedgerError,
    journal::{JournalEntry, OpenTransfers, RequestRecord},
    store::{Commit, Rejected, StoreError, StoreTx, Write},
};

/// Runs `request` with no protection at all.
pub(crate) async fn execute(core: &Arc<Core>, request: &Request) -> Result<Applied, LedgerError> {
    let attempt = again_while_store_aborts(core, || async {
        let mut tx = core.store.begin().await?;
        let planned = read_and_plan(core, &mut tx, Mode::Unsafe, request, WriteKind::Blind).await?;
        if matches!(request.op, Operation::Transfer { .. }) {
            commit_legs_apart(core, tx, planned).await
        } else {
            commit_attempt(core, tx, planned.commit, &planned.fingerprint).await
        }
    })
    .await?;
    match attempt {
        Attempt::Applied(applied) => Ok(applied),
        // A blind write has no guard to fail.
        Attempt::Conflict(account) => Err(LedgerError::Invariant(format!(
            "blind write to {account} reported a version conflict"
        ))),
    }
}

/// The request_ids of unsafe-mode transfers whose debit is journaled without
/// its credit: the ledger stopped between the two commits. Nothing in this
/// mode finishes them (that is its lesson); a keyed retry is told so instead
/// of being asked to retry an operation that will never complete.
pub(crate) fn half_applied(open: &OpenTransfers) -> HashSet<RequestId> {
    open.debits_in(Mode::Unsafe)
        .filter_map(|debit| debit.request_id.clone())
        .collect()
}

/// The unsafe mode's transfer: the debit and the credit as two commits, the
/// way a naive ledger writes two rows. A crash between them leaves the money
/// debited and never credited; the audit reports it as a half-applied
/// transfer, and nothing at restart finishes it.
async fn commit_legs_apart(
    core: &Arc<Core>,
    tx: Option<Box<dyn StoreTx>>,
    planned: Planned,
) -> Result<Attempt, LedgerError> {
    let Planned {
        commit:
            Commit {
                writes,
                entry,
                request,
                ..
            },
        fingerprint,
    } = planned;
    let fingerprint = fingerprint.as_str();
    let (Ok([debit_write, credit_write]), Ok([debit_leg, credit_leg])) = (
        <[Write; 2]>::try_from(writes),
        <[bank::Leg; 2]>::try_from(entry.legs.clone()),
    ) else {
        return Err(LedgerError::Invariant(
            "a transfer computed other than two legs".into(),
        ));
    };
    let transfer_id = Some(core.next_transfer_id());
    let fee_cents = entry.fee_cents;
    let accounts = vec![
        (debit_write.account.clone(), debit_write.new),
        (credit_write.account.clone(), credit_write.new),
    ];
    let debit = Commit {
        reads: Vec::new(),
        request: request.as_ref().map(|(id, _)| {
            let fingerprint = fingerprint.to_owned();
            (id.clone(), RequestRecord::InFlight { fingerprint })
        }),
        replace_request: false,
        entry: JournalEntry {
            kind: EntryKind::TransferDebit,
            transfer_id: transfer_id.clone(),
            counterparty: Some(credit_write.account.clone()),
            legs: vec![debit_leg],
            ..entry.clone()
        },
        writes: vec![debit_write.clone()],
    };
    if let Err(rejected) = commit_in(core, tx, debit).await? {
        return match rejected {
            Rejected::Duplicate(record) => replay(record, fingerprint).map(Attempt::Applied),
            Rejected::Conflict { account, .. } => Ok(Attempt::Conflict(account)),
        };
    }
    crash::reached(CrashPoint::BetweenTransferLegs, core.store.as_ref());
    let credit = Commit {
        reads: Vec::new(),
        request,
        replace_request: true,
        entry: JournalEntry {
            kind: EntryKind::TransferCredit,
            transfer_id,
            counterparty: Some(debit_write.account.clone()),
            fee_cents: 0,
            legs: vec![credit_leg],
            ..entry
        },
        writes: vec![credit_write],
    };
    // The debit is committed: from here no error may send the operation
    // back to its reads (that would debit again). An abort the store could
    // not get past is reported as the failure it is.
    let credited = core.commit(credit).await.map_err(|error| match error {
        StoreError::Serialization(message) => StoreError::Postgres(message),
        other => other,
    })?;
    match credited {
        Ok(_seq) => Ok(Attempt::Applied(Applied {
            accounts,
            fee_cents,
            replayed: false,
        })),
        Err(Rejected::Conflict { account, .. }) => Ok(Attempt::Conflict(account)),
        Err(Rejected::Duplicate(record)) => replay(record, fingerprint).map(Attempt::Applied),
    }
}
