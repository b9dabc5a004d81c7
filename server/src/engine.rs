//! The engine: what every gRPC call lands on. It owns the current mode and
//! the switch between modes, the idempotency fast path and durable acks, and
//! builds the shared context ([`Core`], in `context.rs`) the modes run with.
//!
//! Every operation holds a read lock on the mode for its whole life, so
//! `SetMode` (a write lock) waits for operations in flight to finish in the
//! mode they started in, and no two modes ever touch an account at once.
//! Across replicas, actor mode holds it only while it applies something
//! here, never across a call to a peer (see `modes/actor.rs`).

use std::collections::HashSet;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use tokio::sync::RwLock;

use crate::{
    audit::{self, AuditReport, Recovery},
    bank::{Account, AccountId, EntryKind, Leg, RequestId},
    config::{Config, Durability, Idempotency, Mode, Settings},
    context::{Core, ModeGuard},
    crash::CrashPoint,
    durability::GroupCommit,
    error::LedgerError,
    journal::{JournalEntry, OpenTransfers, RequestRecord},
    modes::{
        Applied, Request, actor, cas, legs::LegWork, mutex::MutexMode, ownership::Ownership,
        replay, unprotected,
    },
    race::RaceHook,
    stats::{Method, Stats},
    store::{Commit, Guard, Store, StoreError, Write},
};

/// The ledger's engine.
#[derive(Debug)]
pub struct Engine {
    core: Arc<Core>,
    mode: Arc<RwLock<Mode>>,
    // The mode's index, mirrored for readers that must not wait on the lock.
    mode_index: AtomicUsize,
    mutex: MutexMode,
    actor: Arc<actor::ActorMode>,
    durable: Option<GroupCommit>,
    /// What start repaired, reported with every audit.
    recovery: Recovery,
    /// Request ids of unsafe transfers the last run left half-applied,
    /// found at start; cleared by Reset.
    half_applied: std::sync::Mutex<HashSet<RequestId>>,
}

impl Engine {
    /// Builds the engine over `store`, finishes any transfer left in flight,
    /// and starts the actor owners and the group-commit task. Must run inside
    /// a tokio runtime.
    pub async fn start(config: &Config, store: Arc<dyn Store>) -> Result<Arc<Self>, LedgerError> {
        let core = Arc::new(Core::new(config, Arc::clone(&store)));
        // One pass over the journal, holding only the transfers left open:
        // reading it whole took a reopened ledger past 1 GB at 2.7M entries.
        // On a blocking thread, as every whole-journal read (Store's contract).
        let scanned = Arc::clone(&store);
        let open = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut open = OpenTransfers::default();
            scanned.scan_journal(&mut |entry| {
                open.push(&entry);
                std::ops::ControlFlow::Continue(())
            })?;
            Ok(open)
        })
        .await
        .map_err(|e| LedgerError::Invariant(format!("journal scan task failed: {e}")))??;
        let transfers_finished = actor::recover_in_flight(&core, &open).await?;
        let half_applied = unprotected::half_applied(&open);
        if transfers_finished > 0 {
            tracing::warn!(
                transfers_finished,
                "finished actor transfers left in flight by the last run"
            );
        }
        let recovery = Recovery {
            rolled_forward_commits: store.rolled_forward_commits(),
            transfers_finished: u64::try_from(transfers_finished).unwrap_or(u64::MAX),
        };
        if config.durability == Durability::Sync {
            store.flush()?;
        }
        let durable =
            (config.durability == Durability::Sync).then(|| GroupCommit::start(Arc::clone(&core)));
        let ownership = ownership(config, &store);
        Ok(Arc::new(Self {
            actor: Arc::new(actor::ActorMode::start(&core, ownership)),
            core,
            mode: Arc::new(RwLock::new(config.mode)),
            mode_index: AtomicUsize::new(config.mode.index()),
            mutex: MutexMode::default(),
            durable,
            recovery,
            half_applied: std::sync::Mutex::new(half_applied),
        }))
    }

    /// The race hook, where the Chaos service arms its faults.
    pub fn hook(&self) -> &RaceHook {
        &self.core.hook
    }

    /// The store, for the journal export.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    /// The counters and distributions, for Admin.Stats and `/metrics`.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Applies one mutation in the current mode; acknowledges only once it is
    /// durable when durability is `sync`.
    pub async fn execute(&self, request: Request) -> Result<Applied, LedgerError> {
        self.execute_from(request, false).await
    }

    /// [`Self::execute`] for a call another replica forwarded here as the
    /// account's owner (actor mode across replicas): not forwarded again.
    pub async fn execute_forwarded(&self, request: Request) -> Result<Applied, LedgerError> {
        self.execute_from(request, true).await
    }

    async fn execute_from(
        &self,
        request: Request,
        forwarded: bool,
    ) -> Result<Applied, LedgerError> {
        let started = Instant::now();
        let method = Method::of(&request.op);
        let guard = Arc::clone(&self.mode).read_owned().await;
        let mode = *guard;
        let outcome = self.execute_in(mode, request, guard, forwarded).await;
        // A call forwarded here is counted where it entered, once: summed
        // over replicas, the counters are the clients' calls.
        if !forwarded {
            let code = outcome
                .as_ref()
                .map_or_else(LedgerError::code, |_| tonic::Code::Ok);
            self.core
                .stats
                .observe(mode, method, code, started.elapsed());
        }
        outcome
    }

    async fn execute_in(
        &self,
        mode: Mode,
        request: Request,
        guard: ModeGuard,
        forwarded: bool,
    ) -> Result<Applied, LedgerError> {
        let outcome = match self.replay_if_known(&request).await? {
            Some(applied) => Ok(applied),
            None => self.run_in(mode, request, guard, forwarded).await,
        };
        if !forwarded {
            self.count(mode, &outcome);
        }
        let applied = outcome?;
        self.wait_durable().await?;
        crate::crash::reached(CrashPoint::BeforeAck, self.core.store.as_ref());
        // Lost acknowledgements are for mutations that applied: a replay
        // applies nothing, and one that took the fault would leave a first
        // attempt racing behind it acknowledged (a keyed retry overtaking a
        // keyless first try, once replies stopped waiting out Nagle).
        if !applied.replayed
            && let Some(code) = self.core.hook.chaos.take_lost_ack()
        {
            return Err(LedgerError::LostAck(code));
        }
        Ok(applied)
    }

    async fn run_in(
        &self,
        mode: Mode,
        request: Request,
        guard: ModeGuard,
        forwarded: bool,
    ) -> Result<Applied, LedgerError> {
        match mode {
            Mode::Unsafe => unprotected::execute(&self.core, &request).await,
            Mode::Mutex => self.mutex.execute(&self.core, &request).await,
            Mode::Cas => cas::execute(&self.core, &request).await,
            Mode::Actor => {
                self.actor
                    .execute(&self.core, request, (guard, &self.mode), forwarded)
                    .await
            }
        }
    }

    /// Applies a transfer's credit (or refund) leg that another replica
    /// handed over, on an account this replica owns (actor mode across
    /// replicas). Waits until it is durable, like an operation.
    pub(crate) async fn receive_leg(&self, leg: LegWork) -> Result<Applied, LedgerError> {
        let guard = Arc::clone(&self.mode).read_owned().await;
        if *guard != Mode::Actor {
            return Err(LedgerError::Unsupported(format!(
                "this replica is in {} mode and a transfer leg is actor mode's; set every replica's mode together (atm load --target A,B,C does)",
                *guard
            )));
        }
        let applied = self.actor.receive_leg(&self.core, leg, guard).await?;
        self.wait_durable().await?;
        Ok(applied)
    }

    async fn replay_if_known(&self, request: &Request) -> Result<Option<Applied>, LedgerError> {
        let Some(id) = request
            .request_id
            .as_ref()
            .filter(|_| self.core.settings().idempotency == Idempotency::On)
        else {
            return Ok(None);
        };
        let fingerprint = request.op.fingerprint();
        match self.core.store.request(id).await? {
            Some(RequestRecord::InFlight {
                fingerprint: original,
            }) if original == fingerprint && self.was_half_applied(id) => {
                Err(LedgerError::HalfApplied {
                    request_id: id.as_str().to_owned(),
                    fingerprint,
                })
            }
            Some(record) => replay(record, &fingerprint).map(Some),
            None => Ok(None),
        }
    }

    fn was_half_applied(&self, id: &RequestId) -> bool {
        self.half_applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn count(&self, mode: Mode, outcome: &Result<Applied, LedgerError>) {
        let counters = self.core.stats.mode(mode);
        match outcome {
            Ok(applied) if applied.replayed => Stats::bump(&self.core.stats.replays),
            Ok(_) => Stats::bump(&counters.operations),
            Err(LedgerError::Refused(_)) => Stats::bump(&counters.refusals),
            // Refused by the owning replica this call was forwarded to.
            Err(LedgerError::Peer(status)) if status.code() == tonic::Code::FailedPrecondition => {
                Stats::bump(&counters.refusals);
            }
            Err(_) => {}
        }
    }

    async fn wait_durable(&self) -> Result<(), LedgerError> {
        match &self.durable {
            Some(group) => group.wait().await,
            None => Ok(()),
        }
    }

    /// Opens an account with an opening balance; journaled as an `open` entry.
    pub async fn open_account(
        &self,
        account: AccountId,
        initial_balance_cents: i64,
    ) -> Result<Account, LedgerError> {
        let guard = self.mode.read().await;
        let opened = self.open_in(*guard, account, initial_balance_cents).await?;
        drop(guard);
        self.wait_durable().await?;
        Ok(opened)
    }

    async fn open_in(
        &self,
        mode: Mode,
        account: AccountId,
        initial_balance_cents: i64,
    ) -> Result<Account, LedgerError> {
        let new = Account {
            balance_cents: initial_balance_cents,
            version: 0,
        };
        let commit = Commit {
            reads: Vec::new(),
            writes: vec![Write {
                account: account.clone(),
                guard: Guard::Absent,
                new,
            }],
            request: None,
            replace_request: false,
            entry: JournalEntry {
                seq: 0,
                kind: EntryKind::Open,
                request_id: None,
                transfer_id: None,
                counterparty: None,
                mode,
                amount_cents: initial_balance_cents,
                fee_cents: 0,
                legs: vec![Leg {
                    account: account.clone(),
                    read: Account {
                        balance_cents: 0,
                        version: 0,
                    },
                    written: new,
                    delta_cents: initial_balance_cents,
                }],
                time_unix_ns: 0,
            },
        };
        match self.core.commit(commit).await? {
            Ok(_) => Ok(new),
            Err(_) => Err(LedgerError::AlreadyExists(account)),
        }
    }

    /// An account's balance and version.
    pub async fn balance(&self, account: &AccountId) -> Result<Account, LedgerError> {
        let started = Instant::now();
        let read = crate::modes::read_account(&self.core, account).await;
        let code = read
            .as_ref()
            .map_or_else(LedgerError::code, |_| tonic::Code::Ok);
        self.core
            .stats
            .observe(self.mode_now(), Method::Balance, code, started.elapsed());
        read
    }

    /// Messages queued in the actor owners' mailboxes: in all, and in the fullest.
    pub fn mailbox_depth(&self) -> (usize, usize) {
        self.actor.mailbox_depth()
    }

    /// The mode new operations start in, without waiting for a switch in
    /// progress: for labelling a read, which takes no hold on the mode.
    pub fn mode_now(&self) -> Mode {
        Mode::ALL[self.mode_index.load(Ordering::Relaxed) % Mode::ALL.len()]
    }

    /// The mode new operations start in.
    pub async fn mode(&self) -> Mode {
        *self.mode.read().await
    }

    /// Switches mode once every operation in flight has finished in its own.
    pub async fn set_mode(&self, mode: Mode) -> Result<(), LedgerError> {
        let mut current = self.mode.write().await;
        if *current != mode {
            tracing::info!(from = %*current, to = %mode, "mode switched");
        }
        *current = mode;
        self.mode_index.store(mode.index(), Ordering::Relaxed);
        Ok(())
    }

    /// Changes the run-time settings and the race window once operations in
    /// flight have finished. `change` sees the values in force and returns
    /// the new ones (a window of `None` keeps it); it runs under the mode's
    /// write lock, so two Configure calls cannot interleave. A request that
    /// changes nothing (an ATM joining a crowd reads the settings so) is
    /// answered at once: it has no reason to hold the ledger still.
    pub async fn configure<E>(
        &self,
        change: impl Fn(Settings, (u64, u64)) -> Result<(Settings, Option<(u64, u64)>), E>,
    ) -> Result<(Settings, (u64, u64)), E> {
        let in_force = (self.core.settings(), self.core.hook.window_ms());
        let (settings, window) = change(in_force.0, in_force.1)?;
        if settings == in_force.0 && window.is_none_or(|window| window == in_force.1) {
            return Ok(in_force);
        }
        let _quiet = self.mode.write().await;
        let (settings, window) = change(self.core.settings(), self.core.hook.window_ms())?;
        self.core.set_settings(settings);
        if let Some((min, max)) = window {
            self.core.hook.set_window_ms(min, max);
        }
        tracing::info!(?settings, window_ms = ?self.core.hook.window_ms(), "settings changed");
        Ok((self.core.settings(), self.core.hook.window_ms()))
    }

    /// Wipes everything (accounts, journal, idempotency table, counters) and
    /// opens `accounts`. Waits for operations in flight first.
    pub async fn reset(&self, accounts: Vec<(AccountId, i64)>) -> Result<usize, LedgerError> {
        let guard = self.mode.write().await;
        self.core.store.clear().await?;
        self.half_applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.mutex.clear();
        for (account, balance_cents) in &accounts {
            self.open_in(*guard, account.clone(), *balance_cents)
                .await?;
        }
        drop(guard);
        self.wait_durable().await?;
        // Zeroed once the openings are durable, so the counters a run reads
        // afterwards (flushes among them) are the run's own.
        self.core.stats.reset();
        Ok(accounts.len())
    }

    /// Audits the journal against the balances. Waits for operations in
    /// flight and holds new ones back while it reads, so the two agree.
    pub async fn audit(&self) -> Result<AuditReport, LedgerError> {
        let _quiet = self.mode.write().await;
        let store = Arc::clone(&self.core.store);
        let policy = self.core.settings().policy;
        // A fold over the journal: memory per account, not per entry.
        let mut report = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut auditor = audit::Auditor::new(policy);
            let accounts = store.scan_then_accounts(&mut |entry| {
                auditor.push(&entry);
                std::ops::ControlFlow::Continue(())
            })?;
            Ok(auditor.finish(&accounts))
        })
        .await
        .map_err(|e| LedgerError::Invariant(format!("audit task failed: {e}")))??;
        report.recovery = self.recovery;
        self.core.stats.record_audit(&report);
        Ok(report)
    }

    /// Gives up the actor leases this replica holds; used at shutdown,
    /// once no call is in flight.
    pub async fn release_leases(&self) -> Result<u64, LedgerError> {
        self.actor.release_leases().await
    }

    /// Makes everything acknowledged so far durable; used at shutdown.
    pub fn flush(&self) -> Result<(), LedgerError> {
        self.core.store.flush()?;
        Ok(())
    }
}

/// Actor ownership across replicas, when the store is shared and has leases.
fn ownership(config: &Config, store: &Arc<dyn Store>) -> Option<Ownership> {
    store.leases()?;
    let holder = store.replica().unwrap_or("ledger").to_owned();
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen));
    Some(Ownership::new(
        Arc::clone(store),
        holder,
        address,
        std::time::Duration::from_millis(config.lease_ttl_ms),
        config.fencing,
        config.admin_token.clone(),
    ))
}
