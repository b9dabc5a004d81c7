//! `unsafe` mode: read, race hook, check, blind write. Nothing protects the
//! gap, so two operations that read the same version both write it: one of
//! them is lost, and a balance checked on a stale read can be overdrawn.
//! (The file is not called `unsafe.rs` because that is a Rust keyword.)

use std::{collections::HashSet, sync::Arc};

use super::{Applied, Attempt, Request, WriteKind, read_check_write};
use crate::{
    bank::RequestId, config::Mode, context::Core, error::LedgerError, journal::OpenTransfers,
};

/// Runs `request` with no protection at all.
pub(crate) async fn execute(core: &Arc<Core>, request: &Request) -> Result<Applied, LedgerError> {
    match read_check_write(core, Mode::Unsafe, request, WriteKind::Blind).await? {
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
