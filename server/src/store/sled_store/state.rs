//! What every thread of the store shares at the bottom: the committers'
//! mirror of the accounts, and the lock that carries on past a panic.
//! Here, not in mod.rs, so that the writer and recovery import downwards.

use std::sync::{Mutex, MutexGuard};

use foldhash::HashMap;

use crate::bank::{Account, AccountId};

/// The in-memory side of the store, guarded by one mutex: every account's
/// state as decided, and the next journal seq.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    pub(super) accounts: HashMap<AccountId, Account>,
    pub(super) next_seq: u64,
}

/// Locks `mutex`. Every holder checks before it mutates, so the state is
/// consistent even if a holder panicked: carry on.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
