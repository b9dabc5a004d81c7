//! `actor` mode: share nothing. Accounts are sharded over owner tasks; an
//! operation is a message to its account's owner through a bounded mailbox,
//! and each owner applies its messages one at a time, so no two operations on
//! an account ever overlap.
//!
//! A transfer whose accounts live with different owners runs as two legs: the
//! debit in `from`'s owner, then the credit in `to`'s owner. Between them the
//! money is in flight: the journal's debit entry has no credit yet, and the
//! audit counts it. If the server dies in between, [`recover_in_flight`]
//! finishes the credit at the next start, so a transfer is all or nothing.
//!
//! Across replicas of one store, an account's owner is the replica holding
//! its lease ([`Ownership`]): a call for an account owned elsewhere is
//! forwarded there once, a transfer's credit is handed to the credited
//! account's owner, and each owner writes under its lease's fencing token.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{RwLock, mpsc, oneshot};

use super::{
    Applied, Attempt, Request, WriteKind, commit_attempt,
    legs::{LegWork, applied_from_wire, credit_for, refund_for},
    ownership::{self, Owner, Ownership},
    read_check_write, read_then_decide, writes_for,
};
use crate::{
    bank::{self, AccountId, EntryKind, Operation},
    config::Mode,
    context::{Core, ModeGuard},
    crash::{self, CrashPoint},
    error::LedgerError,
    journal::{JournalEntry, OpenTransfers, RequestRecord, StoredReply},
    stats::Stats,
    store::Commit,
};

/// Owner tasks. 32 spreads uniform load over both cores many times over
/// while keeping a hot account's queue in one place, which is the lesson.
const OWNERS: usize = 32;

/// Messages an owner's mailbox holds. Bounded so that a slow owner pushes
/// back on its callers instead of growing memory.
const MAILBOX_CAPACITY: usize = 256;

/// Longest wait for room in a full mailbox before the caller gets UNAVAILABLE.
const MAILBOX_WAIT_MS_MAX: u64 = 5_000;

/// Tries of a call whose owner moved under it (a peer that no longer owns
/// the account, or this replica's lease lost mid-write): each asks the
/// lease table anew. Owners move only when a lease runs out, so a second
/// try nearly always lands; the bound stops a flapping lease.
const OWNER_TRIES_MAX: u32 = 4;

/// Wait before asking the lease table again, doubled each try: about one
/// database round trip.
const OWNER_RETRY_WAIT_MS: u64 = 2;

/// The owners' mailboxes, and across replicas who owns which account.
#[derive(Debug)]
pub(crate) struct ActorMode {
    mailboxes: Vec<mpsc::Sender<Envelope>>,
    /// With a shared store: the leases, and the way to the other replicas.
    ownership: Option<Ownership>,
}

#[derive(Debug)]
struct Envelope {
    work: Work,
    /// How the owner writes: guarded by version in one process, fenced or
    /// blind under a lease across replicas.
    write: WriteKind,
    reply: oneshot::Sender<Result<Applied, LedgerError>>,
    /// The caller's hold on the mode, when the work is a whole operation:
    /// released once the owner has applied it, even if the caller has gone,
    /// so that a mode switch waits for it.
    mode: Option<ModeGuard>,
}

#[derive(Debug)]
enum Work {
    /// An operation whose accounts share this owner.
    Whole(Request),
    /// One leg of a transfer across owners.
    Leg(LegWork),
}

impl ActorMode {
    /// Spawns the owner tasks. They stop when the mode is dropped.
    /// `ownership` is given when replicas share the store.
    pub(crate) fn start(core: &Arc<Core>, ownership: Option<Ownership>) -> Self {
        let mailboxes = (0..OWNERS)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(MAILBOX_CAPACITY);
                tokio::spawn(owner(Arc::clone(core), receiver));
                sender
            })
            .collect();
        Self {
            mailboxes,
            ownership,
        }
    }

    /// Across replicas, gives up this replica's leases (see
    /// [`Ownership::release`]); on one ledger there are none.
    pub(crate) async fn release_leases(&self) -> Result<u64, LedgerError> {
        match &self.ownership {
            Some(ownership) => ownership.release().await,
            None => Ok(0),
        }
    }

    /// Messages queued in all the mailboxes, and in the fullest one.
    pub(crate) fn mailbox_depth(&self) -> (usize, usize) {
        self.mailboxes
            .iter()
            .map(|mailbox| mailbox.max_capacity() - mailbox.capacity())
            .fold((0, 0), |(sum, max), depth| (sum + depth, max.max(depth)))
    }

    /// Runs `request` through the owners of its accounts, holding `mode`
    /// until it is applied. `forwarded`: another replica sent it here as
    /// the owner, so it is not forwarded again.
    pub(crate) async fn execute(
        self: &Arc<Self>,
        core: &Arc<Core>,
        request: Request,
        (mode, lock): (ModeGuard, &Arc<RwLock<Mode>>),
        forwarded: bool,
    ) -> Result<Applied, LedgerError> {
        if self.ownership.is_some() {
            let lock = Arc::clone(lock);
            return self
                .to_the_end(None, core, move |actor, core| async move {
                    actor
                        .execute_leased(&core, request, forwarded, (mode, lock))
                        .await
                })
                .await;
        }
        if let Operation::Transfer { from, to, .. } = &request.op
            && owner_of(from) != owner_of(to)
        {
            return self
                .to_the_end(Some(mode), core, move |actor, core| async move {
                    actor
                        .transfer_across(&core, request, WriteKind::Guarded, None)
                        .await
                })
                .await;
        }
        // One message to one owner: once sent, it is applied whether or not
        // this future is still polled, and the envelope carries the mode.
        let first = request.op.accounts()[0].clone();
        self.ask(
            owner_of(&first),
            Work::Whole(request),
            WriteKind::Guarded,
            Some(mode),
        )
        .await
    }

    /// Runs `work` in a task of its own, holding `mode` (if given) until it
    /// is done: work of several steps (a transfer's legs, a call forwarded to
    /// its owner) must not stop halfway when the client goes away and tonic
    /// drops the caller's future.
    async fn to_the_end<Work, Done>(
        self: &Arc<Self>,
        mode: Option<ModeGuard>,
        core: &Arc<Core>,
        work: Work,
    ) -> Result<Applied, LedgerError>
    where
        Work: FnOnce(Arc<Self>, Arc<Core>) -> Done + Send + 'static,
        Done: Future<Output = Result<Applied, LedgerError>> + Send + 'static,
    {
        let done = work(Arc::clone(self), Arc::clone(core));
        let task = tokio::spawn(async move {
            let outcome = done.await;
            drop(mode);
            outcome
        });
        task.await
            .map_err(|e| LedgerError::Invariant(format!("actor task failed: {e}")))?
    }

    /// [`Self::execute`] across replicas: the replica holding the lease on
    /// the operation's first account runs it (a transfer's credit goes to
    /// its own account's owner); others forward it there once.
    ///
    /// The hold on this replica's mode (`mode`, taken on `lock` when the
    /// call came in) covers only what is applied here, never a call to a
    /// peer. A switch or a change of settings waits for the operations in
    /// flight and holds back those that come after it; a peer's call can be
    /// one of those, and if that peer's own switch waits on an operation
    /// that is calling here, each waits on the other until a peer call
    /// times out.
    async fn execute_leased(
        self: &Arc<Self>,
        core: &Arc<Core>,
        request: Request,
        forwarded: bool,
        (mode, lock): (ModeGuard, Arc<RwLock<Mode>>),
    ) -> Result<Applied, LedgerError> {
        let Some(ownership) = &self.ownership else {
            return Err(LedgerError::Invariant("leased actor without leases".into()));
        };
        let mut entered = Some(mode);
        let first = request.op.accounts()[0].clone();
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = match ownership.owner(&first).await? {
                Owner::Peer { holder, .. } if forwarded => {
                    return Err(LedgerError::NotOwner {
                        account: first,
                        holder,
                    });
                }
                Owner::Peer { address, .. } => {
                    drop(entered.take());
                    Stats::bump(&core.stats.mode(Mode::Actor).forwarded);
                    ownership
                        .peers
                        .forward(&address, ownership::forward_of(&request))
                        .await
                        .and_then(ownership::applied_from)
                }
                Owner::Here { token } => {
                    let hold = match entered.take() {
                        Some(hold) => hold,
                        // Back after a try elsewhere: the mode may have switched meanwhile.
                        None => hold_actor(&lock).await?,
                    };
                    let write = ownership.write_kind(token);
                    let applied = if matches!(request.op, Operation::Transfer { .. }) {
                        // Each leg under its own account's lease: always legs.
                        self.transfer_across(core, request.clone(), write, Some((hold, &lock)))
                            .await
                    } else {
                        let work = Work::Whole(request.clone());
                        self.ask(owner_of(&first), work, write, Some(hold)).await
                    };
                    stepped_down(core, ownership, &applied);
                    applied
                }
            };
            match outcome {
                Err(error) if ownership::owner_moved(&error) && tries < OWNER_TRIES_MAX => {
                    tracing::debug!(%error, tries, account = %first, "owner moved; asking the leases again");
                    ownership.forget_peer(&first);
                    let wait = OWNER_RETRY_WAIT_MS << tries.min(6);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Applies a leg a peer handed over, if this replica owns its account.
    pub(crate) async fn receive_leg(
        &self,
        core: &Core,
        leg: LegWork,
        mode: ModeGuard,
    ) -> Result<Applied, LedgerError> {
        let Some(ownership) = &self.ownership else {
            return Err(LedgerError::Unsupported(
                "this ledger's store is not shared, so no replica hands it legs".into(),
            ));
        };
        match ownership.owner(&leg.account).await? {
            Owner::Here { token } => {
                let account = leg.account.clone();
                let applied = self
                    .ask(
                        owner_of(&account),
                        Work::Leg(leg),
                        ownership.write_kind(token),
                        Some(mode),
                    )
                    .await;
                stepped_down(core, ownership, &applied);
                applied
            }
            Owner::Peer { holder, .. } => Err(LedgerError::NotOwner {
                account: leg.account,
                holder,
            }),
        }
    }

    /// Applies a credit or refund leg wherever its account's owner is. With
    /// `lock` (across replicas), a leg applied here holds the mode while it
    /// is applied; one handed to a peer holds nothing here.
    async fn deliver(
        &self,
        core: &Core,
        leg: LegWork,
        lock: Option<&Arc<RwLock<Mode>>>,
    ) -> Result<Applied, LedgerError> {
        let Some(ownership) = &self.ownership else {
            let owner = owner_of(&leg.account);
            return self
                .ask(owner, Work::Leg(leg), WriteKind::Guarded, None)
                .await;
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = match ownership.owner(&leg.account).await? {
                Owner::Here { token } => {
                    // The debit is in: the leg is applied whatever the mode
                    // now, or the money would stay in flight.
                    let hold = match lock {
                        Some(lock) => Some(Arc::clone(lock).read_owned().await),
                        None => None,
                    };
                    let write = ownership.write_kind(token);
                    let owner = owner_of(&leg.account);
                    let applied = self.ask(owner, Work::Leg(leg.clone()), write, hold).await;
                    stepped_down(core, ownership, &applied);
                    applied
                }
                Owner::Peer { address, .. } => {
                    Stats::bump(&core.stats.mode(Mode::Actor).forwarded);
                    ownership
                        .peers
                        .apply_leg(&address, leg.to_wire())
                        .await
                        .and_then(applied_from_wire)
                }
            };
            match outcome {
                Err(error) if ownership::owner_moved(&error) && tries < OWNER_TRIES_MAX => {
                    ownership.forget_peer(&leg.account);
                    let wait = OWNER_RETRY_WAIT_MS << tries.min(6);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// A transfer as two legs. `held`, across replicas: the hold on the
    /// mode the debit is applied under, and the lock to hold again for a
    /// leg applied here; in one process the caller holds the mode throughout.
    async fn transfer_across(
        &self,
        core: &Arc<Core>,
        request: Request,
        debit_write: WriteKind,
        held: Option<(ModeGuard, &Arc<RwLock<Mode>>)>,
    ) -> Result<Applied, LedgerError> {
        let Operation::Transfer {
            from,
            to,
            amount_cents,
        } = &request.op
        else {
            return Err(LedgerError::Invariant(
                "transfer_across on a non-transfer".into(),
            ));
        };
        let debit = LegWork {
            account: from.clone(),
            counterparty: to.clone(),
            amount_cents: *amount_cents,
            kind: EntryKind::TransferDebit,
            transfer_id: core.next_transfer_id(),
            request_id: request.idempotency_key(core).cloned(),
            fingerprint: request.op.fingerprint(),
            debited: None,
            refund_of: None,
        };
        let (hold, lock) = held.map_or((None, None), |(hold, lock)| (Some(hold), Some(lock)));
        let debited = self
            .ask(owner_of(from), Work::Leg(debit.clone()), debit_write, hold)
            .await?;
        if debited.replayed {
            return Ok(debited);
        }
        // A crash here leaves the money in flight; recover_in_flight credits
        // it at the next start.
        crash::reached(CrashPoint::BetweenTransferLegs, core.store.as_ref());
        let credited = self.deliver(core, credit_for(&debit, &debited), lock).await;
        let refusal = match &credited {
            Err(LedgerError::Refused(refusal)) => refusal.to_string(),
            // The credited account's owner, another replica, refused it.
            Err(LedgerError::Peer(status))
                if overdraft_proto::error_reason::of(status).as_deref()
                    == Some(overdraft_proto::error_reason::REFUSED) =>
            {
                status.message().to_owned()
            }
            _ => return credited,
        };
        self.deliver(core, refund_for(&debit, refusal), lock)
            .await?;
        credited
    }

    async fn ask(
        &self,
        owner: usize,
        work: Work,
        write: WriteKind,
        mode: Option<ModeGuard>,
    ) -> Result<Applied, LedgerError> {
        let mailbox = &self.mailboxes[owner];
        // Room in the mailbox is taken without arming a timer: there usually is.
        let permit = match mailbox.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(LedgerError::ShuttingDown),
            Err(mpsc::error::TrySendError::Full(())) => {
                let wait = Duration::from_millis(MAILBOX_WAIT_MS_MAX);
                match tokio::time::timeout(wait, mailbox.reserve()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return Err(LedgerError::ShuttingDown),
                    Err(_elapsed) => {
                        return Err(LedgerError::Overloaded {
                            waited_ms: MAILBOX_WAIT_MS_MAX,
                        });
                    }
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        permit.send(Envelope {
            work,
            write,
            reply,
            mode,
        });
        answer.await.map_err(|_dropped| LedgerError::ShuttingDown)?
    }
}

/// A hold on the mode for work about to be applied here, refused when the
/// replica has left actor mode meanwhile (the operation is not applied).
async fn hold_actor(lock: &Arc<RwLock<Mode>>) -> Result<ModeGuard, LedgerError> {
    let hold = Arc::clone(lock).read_owned().await;
    if *hold != Mode::Actor {
        return Err(LedgerError::Unsupported(format!(
            "this replica switched to {} mode while the call was being routed; send it again",
            *hold
        )));
    }
    Ok(hold)
}

/// When `applied` failed for a lease lost under it, this replica steps
/// down from that lease, and the fenced write is counted.
fn stepped_down(core: &Core, ownership: &Ownership, applied: &Result<Applied, LedgerError>) {
    if let Err(LedgerError::LeaseLost { account, token }) = applied {
        Stats::bump(&core.stats.mode(Mode::Actor).stale_writes_fenced);
        ownership.step_down(account, *token);
    }
}

/// Which owner holds `account`. DefaultHasher with no keys is deterministic,
/// so an account keeps its owner across runs.
pub fn owner_of(account: &AccountId) -> usize {
    let mut hasher = DefaultHasher::new();
    account.hash(&mut hasher);
    let owners = u64::try_from(OWNERS).unwrap_or(1);
    // The remainder is below OWNERS, which fits usize.
    usize::try_from(hasher.finish() % owners).unwrap_or(0)
}

/// One owner: applies its messages one at a time, in arrival order.
async fn owner(core: Arc<Core>, mut mailbox: mpsc::Receiver<Envelope>) {
    while let Some(Envelope {
        work,
        write,
        reply,
        mode,
    }) = mailbox.recv().await
    {
        // Chaos: a slow owner falls behind its mailbox (the slow-actor story).
        let slow = core.hook.chaos.slow_owner();
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        let outcome = match work {
            Work::Whole(request) => apply_whole(&core, &request, write).await,
            Work::Leg(leg) => apply_leg(&core, &leg, write).await,
        };
        // The caller may have gone (its client disconnected); the work is done either way.
        let _ = reply.send(outcome);
        drop(mode);
    }
}

async fn apply_whole(
    core: &Arc<Core>,
    request: &Request,
    write: WriteKind,
) -> Result<Applied, LedgerError> {
    match read_check_write(core, Mode::Actor, request, write).await? {
        Attempt::Applied(applied) => Ok(applied),
        // A joint withdrawal's household account may belong to another
        // owner, who wrote it after this one read it: refused, to try again.
        Attempt::Conflict(account) if request.op.joint() == Some(&account) => {
            Err(LedgerError::Contention {
                account,
                attempts: 1,
            })
        }
        Attempt::Conflict(account) => Err(changed_under_owner(account, write)),
    }
}

/// A write of an owner's refused: across replicas, the fencing token (the
/// lease passed on); in one process, a broken invariant, since only this
/// owner writes its accounts.
fn changed_under_owner(account: AccountId, write: WriteKind) -> LedgerError {
    match write {
        WriteKind::Fenced(token) => LedgerError::LeaseLost { account, token },
        _ => LedgerError::Invariant(format!("account {account} changed under its owner")),
    }
}

/// Applies one transfer leg: read, race hook, check, write, like every mode.
async fn apply_leg(
    core: &Arc<Core>,
    work: &LegWork,
    write: WriteKind,
) -> Result<Applied, LedgerError> {
    let mut tx = core.store.begin().await?;
    let (leg, fee_cents) = read_then_decide(
        core,
        &mut tx,
        Mode::Actor,
        work.kind,
        &[&work.account],
        |reads| {
            let read = reads[0];
            Ok(match work.kind {
                EntryKind::TransferDebit => bank::debit(
                    &work.account,
                    read,
                    work.amount_cents,
                    &core.settings().policy,
                )?,
                _ => (bank::credit(&work.account, read, work.amount_cents)?, 0),
            })
        },
    )
    .await?;
    let written = (leg.account.clone(), leg.written);
    let request = work.request_id.clone().map(|id| {
        let record = match (&work.kind, &work.refund_of, &work.debited) {
            (EntryKind::TransferDebit, _, _) => RequestRecord::InFlight {
                fingerprint: work.fingerprint.clone(),
            },
            (_, Some(reason), _) => RequestRecord::Failed {
                fingerprint: work.fingerprint.clone(),
                reason: reason.clone(),
            },
            (_, None, debited) => RequestRecord::Done(StoredReply {
                fingerprint: work.fingerprint.clone(),
                accounts: debited.iter().cloned().chain([written.clone()]).collect(),
                fee_cents: 0,
            }),
        };
        (id, record)
    });
    let commit = Commit {
        reads: Vec::new(),
        writes: writes_for(std::slice::from_ref(&leg), write),
        replace_request: work.kind == EntryKind::TransferCredit,
        request,
        entry: JournalEntry {
            seq: 0,
            kind: work.kind,
            request_id: work.request_id.clone(),
            transfer_id: Some(work.transfer_id.clone()),
            counterparty: Some(work.counterparty.clone()),
            mode: Mode::Actor,
            amount_cents: work.amount_cents,
            fee_cents,
            legs: vec![leg],
            time_unix_ns: 0,
        },
    };
    let mut applied = match commit_attempt(core, tx, commit, &work.fingerprint).await? {
        Attempt::Applied(applied) => applied,
        Attempt::Conflict(account) => return Err(changed_under_owner(account, write)),
    };
    if work.kind == EntryKind::TransferCredit && !applied.replayed {
        applied.accounts = work.debited.iter().cloned().chain([written]).collect();
    }
    Ok(applied)
}

/// Finishes every actor transfer whose debit is journaled without its
/// credit: the server stopped between the legs. Runs at start, before
/// serving; on a store replicas share, it finishes none (see the body). The unsafe mode's half-applied transfers are left as they are:
/// nothing in that mode knows to finish them, which is its lesson.
pub(crate) async fn recover_in_flight(
    core: &Arc<Core>,
    open: &OpenTransfers,
) -> Result<usize, LedgerError> {
    if core.store.shared() {
        // Another replica may be between these legs right now, and finishing
        // them here would credit twice. They stay in flight, counted by the audit.
        let left = open.debits_in(Mode::Actor).count();
        if left > 0 {
            tracing::warn!(
                left,
                "actor transfers in flight in the shared journal are left to the replicas that began them"
            );
        }
        return Ok(0);
    }
    let mut recovered = 0;
    for entry in open.debits_in(Mode::Actor) {
        let (Some(debit_leg), Some(to)) = (entry.legs.first(), entry.counterparty.clone()) else {
            return Err(LedgerError::Invariant(format!(
                "transfer debit seq {} lacks its leg or counterparty",
                entry.seq
            )));
        };
        let fingerprint = Operation::Transfer {
            from: debit_leg.account.clone(),
            to: to.clone(),
            amount_cents: entry.amount_cents,
        }
        .fingerprint();
        let debit = LegWork {
            account: debit_leg.account.clone(),
            counterparty: to,
            amount_cents: entry.amount_cents,
            kind: EntryKind::TransferDebit,
            transfer_id: entry.transfer_id.clone().unwrap_or_default(),
            request_id: entry.request_id.clone(),
            fingerprint,
            debited: None,
            refund_of: None,
        };
        let debited = Applied {
            accounts: vec![(debit_leg.account.clone(), debit_leg.written)],
            fee_cents: entry.fee_cents,
            replayed: false,
        };
        let write = WriteKind::Guarded;
        match apply_leg(core, &credit_for(&debit, &debited), write).await {
            Err(LedgerError::Refused(refusal)) => {
                apply_leg(core, &refund_for(&debit, refusal.to_string()), write).await?;
            }
            other => {
                other?;
            }
        }
        tracing::warn!(transfer_id = %debit.transfer_id, "recovered a transfer left in flight");
        recovered += 1;
    }
    Ok(recovered)
}
