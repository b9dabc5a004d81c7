//! The four consistency modes and the one step they share.
//!
//! Every mode runs the same sequence, [`read_check_write`]: read the accounts,
//! pause at the race hook, apply the bank's rules, commit. What differs is only
//! what surrounds it (nothing, locks, retries, an owner task) and whether the
//! write is blind (`unsafe`, and `mutex`, which trusts its lock) or guarded
//! by the version it read (`cas`, and `actor` as an assertion).

pub mod actor;
pub mod cas;
pub(crate) mod legs;
pub mod mutex;
pub(crate) mod ownership;
pub mod unprotected;

use std::sync::Arc;

use crate::{
    bank::{self, Account, AccountId, EntryKind, Operation, RequestId},
    config::{Idempotency, Mode},
    context::Core,
    crash::{self, CrashPoint},
    error::LedgerError,
    journal::{JournalEntry, RequestRecord, StoredReply},
    race::{HookContext, RacePoint},
    store::{Commit, Guard, Rejected, StoreError, StoreTx, Write},
};

/// A mutation as the engine hands it to a mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub op: Operation,
    /// The idempotency key, if the client sent one.
    pub request_id: Option<RequestId>,
}

impl Request {
    /// The key under which the reply is kept, if idempotency applies.
    fn idempotency_key(&self, core: &Core) -> Option<&RequestId> {
        match core.settings().idempotency {
            Idempotency::On => self.request_id.as_ref(),
            Idempotency::Off => None,
        }
    }
}

/// What an applied (or replayed) mutation returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Each touched account after the operation, in request order.
    pub accounts: Vec<(AccountId, Account)>,
    /// Overdraft fee charged.
    pub fee_cents: i64,
    /// True when answered from the idempotency table.
    pub replayed: bool,
}

impl Applied {
    fn from_stored(reply: StoredReply) -> Self {
        Self {
            accounts: reply.accounts,
            fee_cents: reply.fee_cents,
            replayed: true,
        }
    }
}

/// One try at an operation.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Written (or replayed).
    Applied(Applied),
    /// A version guard failed: someone wrote the account after we read it.
    Conflict(AccountId),
}

/// Whether the write checks the versions it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// Write regardless: the unsafe mode's lost update, and a mutex that
    /// trusts its lock (which holds in one process, not across replicas).
    Blind,
    /// Write only if every account is still at the version read.
    Guarded,
    /// Write only if the account's fence is not past this lease token, and
    /// raise it to the token: an actor owner across replicas, fenced.
    Fenced(u64),
}

/// Read, race hook, check, write: the sequence every mode runs. A transfer's
/// two legs go in one commit, so there is no point between them.
pub(crate) async fn read_check_write(
    core: &Arc<Core>,
    mode: Mode,
    request: &Request,
    write_kind: WriteKind,
) -> Result<Attempt, LedgerError> {
    again_while_store_aborts(core, || async {
        let tx = core.store.begin().await?;
        read_check_write_in(core, tx, mode, request, write_kind).await
    })
    .await
}

/// Tries of a step whose transaction the store aborted (PostgreSQL's 40001
/// at repeatable read and serializable, 40P01): each starts again from the
/// reads, so it decides on what is there now. Past this, ABORTED.
const STORE_ABORT_TRIES_MAX: u32 = 8;

/// Runs `attempt` again while the store aborts its transaction, up to
/// [`STORE_ABORT_TRIES_MAX`] tries in all, waiting between tries a full
/// jitter up to 1 ms doubling to 16 ms (from the seeded generator), so that
/// the transactions that collided do not collide again at once. Each
/// attempt must begin its own transaction.
pub(crate) async fn again_while_store_aborts<T, Fut>(
    core: &Core,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, LedgerError>
where
    Fut: Future<Output = Result<T, LedgerError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(error) if aborted_by_store(&error) && tries < STORE_ABORT_TRIES_MAX => {
                tracing::debug!(%error, tries, "the store aborted the transaction; again from the reads");
                let ceiling_us = 1_000u64 << tries.min(4);
                let wait = std::time::Duration::from_micros(core.random_up_to(ceiling_us));
                tokio::time::sleep(wait).await;
            }
            outcome => return outcome,
        }
    }
}

/// Whether `error` is a transaction the store aborted, worth another try.
fn aborted_by_store(error: &LedgerError) -> bool {
    matches!(error, LedgerError::Store(StoreError::Serialization(_)))
}

/// [`read_check_write`] in a transaction the caller began (and may have
/// taken locks in), or with none on a store that has none.
pub(crate) async fn read_check_write_in(
    core: &Arc<Core>,
    mut tx: Option<Box<dyn StoreTx>>,
    mode: Mode,
    request: &Request,
    write_kind: WriteKind,
) -> Result<Attempt, LedgerError> {
    let planned = read_and_plan(core, &mut tx, mode, request, write_kind).await?;
    if matches!(request.op, Operation::Transfer { .. }) {
        // A crash here, before the commit, loses the whole transfer and the
        // client was never told it succeeded. All or nothing.
        crash::reached(CrashPoint::BetweenTransferLegs, core.store.as_ref());
    }
    commit_attempt(core, tx, planned.commit, &planned.fingerprint).await
}

/// What an operation read and decided: the commit it is about to make.
#[derive(Debug)]
pub(crate) struct Planned {
    /// Every write, the journal entry and the idempotency record, together.
    pub(crate) commit: Commit,
    /// The operation's fingerprint, to tell a replay from a reused request_id.
    pub(crate) fingerprint: String,
}

/// The first half of [`read_check_write`]: read, race hook, the bank's rules.
pub(crate) async fn read_and_plan(
    core: &Arc<Core>,
    tx: &mut Option<Box<dyn StoreTx>>,
    mode: Mode,
    request: &Request,
    write_kind: WriteKind,
) -> Result<Planned, LedgerError> {
    let ids = request.op.accounts();
    let (effect, joint_version) =
        read_then_decide(core, tx, mode, request.op.kind(), &ids, |reads| {
            let effect = bank::apply(&request.op, reads, &core.settings().policy)?;
            // A leg per account written: every account read, but a joint
            // withdrawal's household account, which is only read.
            let written = ids.len() - usize::from(request.op.joint().is_some());
            if effect.legs.len() != written {
                return Err(LedgerError::Invariant(format!(
                    "{written} accounts to write but {} legs computed",
                    effect.legs.len()
                )));
            }
            // The household account is the last read: its version, for a guard.
            let joint_version = request
                .op
                .joint()
                .and_then(|_| reads.last())
                .map(|a| a.version);
            Ok((effect, joint_version))
        })
        .await?;
    let writes = writes_for(&effect.legs, write_kind);
    // A guarded write also guards what it only read: the rule checked the
    // household account, which must not have changed by the commit. So does
    // an actor owner, who owns the account it writes and not the household.
    let guards_reads = write_kind != WriteKind::Blind || mode == Mode::Actor;
    let read_guards = match (guards_reads, request.op.joint(), joint_version) {
        (true, Some(joint), Some(version)) => vec![(joint.clone(), version)],
        _ => Vec::new(),
    };
    let accounts = effect
        .legs
        .iter()
        .map(|leg| (leg.account.clone(), leg.written))
        .collect();
    let fingerprint = request.op.fingerprint();
    let key = request.idempotency_key(core).cloned();
    let commit = Commit {
        writes,
        reads: read_guards,
        request: key.map(|id| {
            let reply = StoredReply {
                fingerprint: fingerprint.clone(),
                accounts,
                fee_cents: effect.fee_cents,
            };
            (id, RequestRecord::Done(reply))
        }),
        replace_request: false,
        entry: JournalEntry {
            seq: 0,
            kind: request.op.kind(),
            request_id: request.request_id.clone(),
            transfer_id: None,
            // A joint withdrawal names the household account it checked.
            counterparty: request.op.joint().cloned(),
            mode,
            amount_cents: request.op.amount_cents(),
            fee_cents: effect.fee_cents,
            legs: effect.legs,
            time_unix_ns: 0,
        },
    };
    Ok(Planned {
        commit,
        fingerprint,
    })
}

/// Reads `ids`, pauses at the race hook (the window every race needs), and
/// hands the reads to `decide`. Each mode's step, and the actor's transfer
/// legs, start here.
pub(crate) async fn read_then_decide<T>(
    core: &Arc<Core>,
    tx: &mut Option<Box<dyn StoreTx>>,
    mode: Mode,
    kind: EntryKind,
    ids: &[&AccountId],
    decide: impl FnOnce(&[Account]) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    let mut reads = Vec::with_capacity(ids.len());
    for id in ids {
        let found = match tx {
            Some(tx) => tx.account(id).await?,
            None => core.store.account(id).await?,
        };
        reads.push(found.ok_or_else(|| LedgerError::NotFound((*id).clone()))?);
    }
    let context = HookContext {
        kind,
        accounts: ids,
        mode,
    };
    core.hook.pause(RacePoint::ReadToWrite, &context).await;
    decide(&reads)
}

/// The writes that put `legs` in the store, guarded or blind.
pub(crate) fn writes_for(legs: &[bank::Leg], write_kind: WriteKind) -> Vec<Write> {
    legs.iter()
        .map(|leg| Write {
            account: leg.account.clone(),
            guard: match write_kind {
                WriteKind::Blind => Guard::Blind,
                WriteKind::Guarded => Guard::Version(leg.read.version),
                WriteKind::Fenced(token) => Guard::Fence(token),
            },
            new: leg.written,
        })
        .collect()
}

/// Reads one account, or NOT_FOUND.
pub(crate) async fn read_account(core: &Core, id: &AccountId) -> Result<Account, LedgerError> {
    core.store
        .account(id)
        .await?
        .ok_or_else(|| LedgerError::NotFound(id.clone()))
}

/// Commits in `tx` when there is one, else on its own.
pub(crate) async fn commit_in(
    core: &Arc<Core>,
    tx: Option<Box<dyn StoreTx>>,
    commit: Commit,
) -> Result<Result<u64, Rejected>, StoreError> {
    match tx {
        Some(tx) => tx.commit(&commit).await,
        None => core.commit(commit).await,
    }
}

/// Commits (in `tx` when there is one) and sorts the outcome into an attempt.
pub(crate) async fn commit_attempt(
    core: &Arc<Core>,
    tx: Option<Box<dyn StoreTx>>,
    commit: Commit,
    fingerprint: &str,
) -> Result<Attempt, LedgerError> {
    let replied = commit
        .request
        .as_ref()
        .and_then(|(_, record)| match record {
            RequestRecord::Done(reply) => Some(reply.clone()),
            RequestRecord::InFlight { .. } | RequestRecord::Failed { .. } => None,
        });
    let accounts_written = commit
        .writes
        .iter()
        .map(|write| (write.account.clone(), write.new))
        .collect();
    let fee_cents = commit.entry.fee_cents;
    match commit_in(core, tx, commit).await? {
        Ok(_seq) => Ok(Attempt::Applied(Applied {
            accounts: replied.map_or(accounts_written, |reply| reply.accounts),
            fee_cents,
            replayed: false,
        })),
        Err(Rejected::Conflict { account, .. }) => Ok(Attempt::Conflict(account)),
        Err(Rejected::Duplicate(record)) => replay(record, fingerprint).map(Attempt::Applied),
    }
}

/// The reply to a request whose key already has a record.
pub(crate) fn replay(record: RequestRecord, fingerprint: &str) -> Result<Applied, LedgerError> {
    let original = match &record {
        RequestRecord::Done(reply) => &reply.fingerprint,
        RequestRecord::InFlight { fingerprint } | RequestRecord::Failed { fingerprint, .. } => {
            fingerprint
        }
    };
    if original != fingerprint {
        return Err(LedgerError::RequestIdReused {
            original: original.clone(),
        });
    }
    match record {
        RequestRecord::Done(reply) => Ok(Applied::from_stored(reply)),
        RequestRecord::InFlight { .. } => Err(LedgerError::InFlight(fingerprint.to_owned())),
        RequestRecord::Failed { reason, .. } => Err(LedgerError::Replayed(reason)),
    }
}
