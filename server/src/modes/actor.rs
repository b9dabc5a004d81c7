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

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{
    Applied, Attempt, Request, WriteKind, commit_attempt, read_check_write, read_then_decide,
    writes_for,
};
use crate::{
    bank::{self, Account, AccountId, EntryKind, Operation, RequestId},
    config::Mode,
    context::{Core, ModeGuard},
    crash::{self, CrashPoint},
    error::LedgerError,
    journal::{JournalEntry, OpenTransfers, RequestRecord, StoredReply},
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

/// The owners' mailboxes.
#[derive(Debug)]
pub(crate) struct ActorMode {
    mailboxes: Vec<mpsc::Sender<Envelope>>,
}

#[derive(Debug)]
struct Envelope {
    work: Work,
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

/// One leg of a cross-owner transfer.
#[derive(Clone, Debug)]
pub(crate) struct LegWork {
    account: AccountId,
    counterparty: AccountId,
    amount_cents: i64,
    kind: EntryKind,
    transfer_id: String,
    request_id: Option<RequestId>,
    fingerprint: String,
    /// For a credit: the debited account as its leg left it, for the reply.
    debited: Option<(AccountId, Account)>,
    /// A refund of a debit whose credit was refused, with the refusal.
    refund_of: Option<String>,
}

impl ActorMode {
    /// Spawns the owner tasks. They stop when the mode is dropped.
    pub(crate) fn start(core: &Arc<Core>) -> Self {
        let mailboxes = (0..OWNERS)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(MAILBOX_CAPACITY);
                tokio::spawn(owner(Arc::clone(core), receiver));
                sender
            })
            .collect();
        Self { mailboxes }
    }

    /// Messages queued in all the mailboxes, and in the fullest one.
    pub(crate) fn mailbox_depth(&self) -> (usize, usize) {
        self.mailboxes
            .iter()
            .map(|mailbox| mailbox.max_capacity() - mailbox.capacity())
            .fold((0, 0), |(sum, max), depth| (sum + depth, max.max(depth)))
    }

    /// Runs `request` through the owners of its accounts, holding `mode`
    /// until it is applied.
    pub(crate) async fn execute(
        self: &Arc<Self>,
        core: &Arc<Core>,
        request: Request,
        mode: ModeGuard,
    ) -> Result<Applied, LedgerError> {
        if let Operation::Transfer { from, to, .. } = &request.op
            && owner_of(from) != owner_of(to)
        {
            // A transfer across owners must not stop between its legs when
            // the client goes away and tonic drops this future, so it runs
            // in its own task, holding the mode until it is done.
            let actor = Arc::clone(self);
            let core = Arc::clone(core);
            let task = tokio::spawn(async move {
                let outcome = actor.transfer_across(&core, request).await;
                drop(mode);
                outcome
            });
            return task
                .await
                .map_err(|e| LedgerError::Invariant(format!("actor task failed: {e}")))?;
        }
        // One message to one owner: once sent, it is applied whether or not
        // this future is still polled, and the envelope carries the mode.
        let first = request.op.accounts()[0].clone();
        self.ask(owner_of(&first), Work::Whole(request), Some(mode))
            .await
    }

    async fn transfer_across(
        &self,
        core: &Arc<Core>,
        request: Request,
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
        let debited = self
            .ask(owner_of(from), Work::Leg(debit.clone()), None)
            .await?;
        if debited.replayed {
            return Ok(debited);
        }
        // A crash here leaves the money in flight; recover_in_flight credits
        // it at the next start.
        crash::reached(CrashPoint::BetweenTransferLegs, core.store.as_ref());
        let credit = credit_for(&debit, &debited);
        match self.ask(owner_of(to), Work::Leg(credit), None).await {
            Err(LedgerError::Refused(refusal)) => {
                let refund = refund_for(&debit, refusal.to_string());
                self.ask(owner_of(from), Work::Leg(refund), None).await?;
                Err(LedgerError::Refused(refusal))
            }
            other => other,
        }
    }

    async fn ask(
        &self,
        owner: usize,
        work: Work,
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
        permit.send(Envelope { work, reply, mode });
        answer.await.map_err(|_dropped| LedgerError::ShuttingDown)?
    }
}

fn credit_for(debit: &LegWork, debited: &Applied) -> LegWork {
    LegWork {
        account: debit.counterparty.clone(),
        counterparty: debit.account.clone(),
        kind: EntryKind::TransferCredit,
        debited: debited.accounts.first().cloned(),
        ..debit.clone()
    }
}

fn refund_for(debit: &LegWork, reason: String) -> LegWork {
    LegWork {
        kind: EntryKind::TransferCredit,
        refund_of: Some(reason),
        ..debit.clone()
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
    while let Some(Envelope { work, reply, mode }) = mailbox.recv().await {
        // Chaos: a slow owner falls behind its mailbox (the slow-actor story).
        let slow = core.hook.chaos.slow_owner();
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        let outcome = match work {
            Work::Whole(request) => apply_whole(&core, &request).await,
            Work::Leg(leg) => apply_leg(&core, &leg).await,
        };
        // The caller may have gone (its client disconnected); the work is done either way.
        let _ = reply.send(outcome);
        drop(mode);
    }
}

async fn apply_whole(core: &Arc<Core>, request: &Request) -> Result<Applied, LedgerError> {
    match read_check_write(core, Mode::Actor, request, WriteKind::Guarded).await? {
        Attempt::Applied(applied) => Ok(applied),
        // A joint withdrawal's household account may belong to another
        // owner, who wrote it after this one read it: refused, to try again.
        Attempt::Conflict(account) if request.op.joint() == Some(&account) => {
            Err(LedgerError::Contention {
                account,
                attempts: 1,
            })
        }
        // Only this owner writes these accounts.
        Attempt::Conflict(account) => Err(LedgerError::Invariant(format!(
            "account {account} changed under its owner"
        ))),
    }
}

/// Applies one transfer leg: read, race hook, check, write, like every mode.
async fn apply_leg(core: &Arc<Core>, work: &LegWork) -> Result<Applied, LedgerError> {
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
        writes: writes_for(std::slice::from_ref(&leg), WriteKind::Guarded),
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
        Attempt::Conflict(account) => {
            return Err(LedgerError::Invariant(format!(
                "account {account} changed under its owner"
            )));
        }
    };
    if work.kind == EntryKind::TransferCredit && !applied.replayed {
        applied.accounts = work.debited.iter().cloned().chain([written]).collect();
    }
    Ok(applied)
}

/// Finishes every actor transfer whose debit is journaled without its
/// credit: the server stopped between the legs. Runs at start, before
/// serving. The unsafe mode's half-applied transfers are left as they are:
/// nothing in that mode knows to finish them, which is its lesson.
pub(crate) async fn recover_in_flight(
    core: &Arc<Core>,
    open: &OpenTransfers,
) -> Result<usize, LedgerError> {
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
        match apply_leg(core, &credit_for(&debit, &debited)).await {
            Err(LedgerError::Refused(refusal)) => {
                apply_leg(core, &refund_for(&debit, refusal.to_string())).await?;
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
