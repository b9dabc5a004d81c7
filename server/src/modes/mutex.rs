//! `mutex` mode: a tokio mutex per account held around read-check-write. A
//! transfer takes both locks, by default in one global order (account id), so
//! crossed transfers cannot deadlock. With `--lock-order naive` it takes them
//! in request order; crossed transfers then wait on each other, and a lock
//! wait past `--lock-wait-ms` aborts the operation as a detected deadlock.
//!
//! With `--lock-scope database` the locks live in the store instead
//! (PostgreSQL advisory locks), where every replica sees them; a crossed
//! transfer under the naive order then meets PostgreSQL's deadlock detector.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use foldhash::HashMap;
use tokio::sync::OwnedMutexGuard;

use super::{
    Applied, Attempt, Request, WriteKind, again_while_store_aborts, read_check_write,
    read_check_write_in,
};
use crate::{
    bank::{AccountId, EntryKind},
    config::{LockOrder, LockScope, Mode},
    context::Core,
    error::LedgerError,
    race::{HookContext, RacePoint},
    stats::Stats,
    store::{LockWait, StoreTx},
};

/// The lock table.
#[derive(Debug, Default)]
pub(crate) struct MutexMode {
    // A std mutex guards the table itself: it is held only to look up or
    // insert an entry, never across an await. The table holds one entry per
    // account ever locked, so it is bounded by the number of accounts.
    locks: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
}

impl MutexMode {
    /// Runs `request` holding the locks of every account it touches.
    pub(crate) async fn execute(
        &self,
        core: &Arc<Core>,
        request: &Request,
    ) -> Result<Applied, LedgerError> {
        let mut order: Vec<AccountId> = request.op.accounts().into_iter().cloned().collect();
        if core.settings().lock_order == LockOrder::Ordered {
            order.sort();
        }
        let attempt = match core.lock_scope {
            LockScope::Process => {
                // The transaction (if the store has them) begins once the
                // locks are held: a connection is not held while waiting.
                let _guards = self.lock_all(core, &order, request.op.kind()).await?;
                read_check_write(core, Mode::Mutex, request, WriteKind::Blind).await?
            }
            LockScope::Database => {
                // At repeatable read and above the snapshot is taken by the
                // lock statement, before its wait: a write after the wait
                // may be aborted (40001). Then the locks are taken again.
                again_while_store_aborts(core, || self.locked_in_store(core, &order, request))
                    .await?
            }
        };
        match attempt {
            Attempt::Applied(applied) => Ok(applied),
            // A blind write fails only on an account that is gone.
            Attempt::Conflict(account) => Err(LedgerError::NotFound(account)),
        }
    }

    async fn lock_all(
        &self,
        core: &Core,
        order: &[AccountId],
        kind: EntryKind,
    ) -> Result<Vec<OwnedMutexGuard<()>>, LedgerError> {
        let accounts: Vec<&AccountId> = order.iter().collect();
        let context = HookContext {
            kind,
            accounts: &accounts,
            mode: Mode::Mutex,
        };
        let mut guards = Vec::with_capacity(order.len());
        for (position, account) in order.iter().enumerate() {
            if position > 0 {
                core.hook.pause(RacePoint::BetweenLocks, &context).await;
            }
            let lock = self.lock_for(account);
            // A free lock is taken without arming a timer: most are free.
            let guard = match Arc::clone(&lock).try_lock_owned() {
                Ok(guard) => guard,
                Err(_held) => {
                    let wait = Duration::from_millis(core.lock_wait_ms);
                    let started = std::time::Instant::now();
                    let waited = tokio::time::timeout(wait, lock.lock_owned()).await;
                    core.stats
                        .distributions
                        .lock_wait_seconds
                        .observe(started.elapsed().as_secs_f64());
                    match waited {
                        Ok(guard) => guard,
                        Err(_elapsed) => return Err(self.wait_failed(core, order, position)),
                    }
                }
            };
            guards.push(guard);
        }
        Ok(guards)
    }

    /// One try with the locks in the store: a transaction, its locks, the step.
    async fn locked_in_store(
        &self,
        core: &Arc<Core>,
        order: &[AccountId],
        request: &Request,
    ) -> Result<Attempt, LedgerError> {
        let Some(mut tx) = core.store.begin().await? else {
            return Err(LedgerError::Invariant(
                "--lock-scope database over a store without transactions".into(),
            ));
        };
        self.lock_in_store(core, tx.as_mut(), order, request.op.kind())
            .await?;
        read_check_write_in(core, Some(tx), Mode::Mutex, request, WriteKind::Blind).await
    }

    /// Takes the locks in the operation's transaction, in `order`, under
    /// the same wait bound; they hold until it commits or rolls back.
    async fn lock_in_store(
        &self,
        core: &Core,
        tx: &mut dyn StoreTx,
        order: &[AccountId],
        kind: EntryKind,
    ) -> Result<(), LedgerError> {
        let accounts: Vec<&AccountId> = order.iter().collect();
        let context = HookContext {
            kind,
            accounts: &accounts,
            mode: Mode::Mutex,
        };
        let wait = Duration::from_millis(core.lock_wait_ms);
        for (position, account) in order.iter().enumerate() {
            if position > 0 {
                core.hook.pause(RacePoint::BetweenLocks, &context).await;
            }
            let started = std::time::Instant::now();
            let taken = tx.lock(account, wait).await;
            core.stats
                .distributions
                .lock_wait_seconds
                .observe(started.elapsed().as_secs_f64());
            match taken {
                Ok(()) => {}
                Err(LockWait::TimedOut) => return Err(self.wait_failed(core, order, position)),
                Err(LockWait::Deadlock) => {
                    let counters = core.stats.mode(Mode::Mutex);
                    Stats::bump(&counters.aborts);
                    Stats::bump(&counters.deadlocks_detected);
                    let (holding, waiting_for) = (order[0].clone(), order[position].clone());
                    tracing::warn!(%holding, %waiting_for, "deadlock detected by the database");
                    return Err(LedgerError::Deadlock {
                        holding,
                        waiting_for,
                        waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    });
                }
                Err(LockWait::Failed(error)) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// A lock wait ran out. Holding one lock while waiting for another is the
    /// shape of a deadlock; waiting with nothing held is plain contention.
    fn wait_failed(&self, core: &Core, order: &[AccountId], position: usize) -> LedgerError {
        let counters = core.stats.mode(Mode::Mutex);
        Stats::bump(&counters.aborts);
        let waiting_for = order[position].clone();
        if position == 0 {
            return LedgerError::LockTimeout {
                account: waiting_for,
                waited_ms: core.lock_wait_ms,
            };
        }
        Stats::bump(&counters.deadlocks_detected);
        let holding = order[0].clone();
        tracing::warn!(%holding, %waiting_for, "deadlock detected: lock wait past the bound");
        LedgerError::Deadlock {
            holding,
            waiting_for,
            waited_ms: core.lock_wait_ms,
        }
    }

    fn lock_for(&self, account: &AccountId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = locks.get(account) {
            return Arc::clone(lock);
        }
        Arc::clone(locks.entry(account.clone()).or_default())
    }

    /// Forgets every lock; called by Reset while no operation runs.
    pub(crate) fn clear(&self) {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
