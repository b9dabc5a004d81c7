//! Who owns an account when actor mode runs on several replicas of one
//! store: the owner is the replica holding the account's lease row
//! (holder, address, expiry, fencing token). This replica remembers what it
//! learned until the lease runs out, renews its own leases halfway through
//! as calls come, and steps down when the store refuses its token.
//!
//! A lease is a promise about time, and a process can sleep through it (a
//! SIGSTOP, a frozen VM, a long pause at the race hook): it wakes still
//! believing it owns the account. Fencing is what makes that belief
//! harmless: every write carries the lease's token and the store refuses
//! one older than the last it took (Kleppmann, "How to do distributed
//! locking", 2016).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use overdraft_proto::v1 as pb;

use super::{Applied, Request, WriteKind, legs::state_from_wire};
use crate::{
    bank::{AccountId, Operation},
    config::Fencing,
    error::LedgerError,
    peers::{Answer, Forward, Peers},
    store::{Lease, Store},
};

/// Accounts whose owner this replica remembers. Past it the memory starts
/// again, which costs one lease lookup per account, not correctness.
const KNOWN_ACCOUNTS_MAX: usize = 100_000;

/// Where an account's owner is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Here, under this fencing token.
    Here { token: u64 },
    /// At another replica.
    Peer { holder: String, address: String },
}

#[derive(Clone, Debug)]
enum Known {
    Mine {
        token: u64,
        until: Instant,
    },
    Theirs {
        holder: String,
        address: String,
        until: Instant,
    },
}

/// This replica's view of the lease table, and its way to the others.
#[derive(Debug)]
pub(crate) struct Ownership {
    store: Arc<dyn Store>,
    holder: String,
    address: String,
    ttl: Duration,
    fencing: Fencing,
    // A std mutex: held to read or change one entry, never across an await.
    known: Mutex<HashMap<AccountId, Known>>,
    pub(crate) peers: Peers,
}

impl Ownership {
    /// Ownership over `store`'s leases for the replica `holder`, reachable at `address`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        holder: String,
        address: String,
        ttl: Duration,
        fencing: Fencing,
        admin_token: Option<String>,
    ) -> Self {
        Self {
            store,
            peers: Peers::new(holder.clone(), admin_token),
            holder,
            address,
            ttl,
            fencing,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Gives up this replica's leases, as it stops: the others take its
    /// accounts at once rather than when the leases run out.
    pub(crate) async fn release(&self) -> Result<u64, LedgerError> {
        self.lock().clear();
        match self.store.leases() {
            Some(leases) => Ok(leases.release_leases(&self.holder).await?),
            None => Ok(0),
        }
    }

    /// How an owner here writes under `token`: fenced, or blind.
    pub(crate) fn write_kind(&self, token: u64) -> WriteKind {
        match self.fencing {
            Fencing::On => WriteKind::Fenced(token),
            Fencing::Off => WriteKind::Blind,
        }
    }

    /// Who owns `account`: from memory while the lease surely runs (and,
    /// for our own, while more than half of it is left), else from the
    /// store, taking the lease when it is free or ran out.
    pub(crate) async fn owner(&self, account: &AccountId) -> Result<Owner, LedgerError> {
        let now = Instant::now();
        let remembered = self.lock().get(account).cloned();
        match remembered {
            Some(Known::Mine { token, until })
                if until.saturating_duration_since(now) > self.ttl / 2 =>
            {
                return Ok(Owner::Here { token });
            }
            Some(Known::Theirs {
                holder,
                address,
                until,
            }) if until > now => return Ok(Owner::Peer { holder, address }),
            _ => {}
        }
        let leases = self.store.leases().ok_or_else(|| {
            LedgerError::Invariant("actor ownership over a store without leases".into())
        })?;
        // The lease runs from the store's clock; counted here from before the
        // question was sent, this replica never thinks it runs longer than it does.
        let asked = Instant::now();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let lease = leases
            .take_lease(account, &self.holder, &self.address, ttl_ms)
            .await?;
        let (known, owner) = match lease {
            Lease::Mine { token, valid_ms } => (
                Known::Mine {
                    token,
                    until: asked + Duration::from_millis(valid_ms),
                },
                Owner::Here { token },
            ),
            Lease::Theirs {
                holder,
                address,
                valid_ms,
            } => (
                Known::Theirs {
                    holder: holder.clone(),
                    address: address.clone(),
                    until: asked + Duration::from_millis(valid_ms),
                },
                Owner::Peer { holder, address },
            ),
        };
        let mut known_accounts = self.lock();
        if known_accounts.len() >= KNOWN_ACCOUNTS_MAX {
            known_accounts.clear();
        }
        known_accounts.insert(account.clone(), known);
        Ok(owner)
    }

    /// Forgets this replica's lease on `account` under `token`: the store
    /// refused a write under it, so another replica owns the account now.
    pub(crate) fn step_down(&self, account: &AccountId, token: u64) {
        let mut known = self.lock();
        if let Some(Known::Mine { token: held, .. }) = known.get(account)
            && *held == token
        {
            known.remove(account);
            tracing::warn!(%account, token, "stepped down: the lease passed to another replica");
        }
    }

    /// Forgets what was learned of other replicas' leases on `account`: one
    /// of them said it no longer owns it.
    pub(crate) fn forget_peer(&self, account: &AccountId) {
        let mut known = self.lock();
        if let Some(Known::Theirs { .. }) = known.get(account) {
            known.remove(account);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `request` as the owning replica receives it.
pub(crate) fn forward_of(request: &Request) -> Forward {
    let request_id = request
        .request_id
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    match &request.op {
        Operation::Deposit {
            account,
            amount_cents,
        } => Forward::Deposit(pb::DepositRequest {
            account_id: account.to_string(),
            amount_cents: *amount_cents,
            request_id,
        }),
        Operation::Withdraw {
            account,
            amount_cents,
        } => Forward::Withdraw(pb::WithdrawRequest {
            account_id: account.to_string(),
            amount_cents: *amount_cents,
            request_id,
            joint_account_id: String::new(),
        }),
        Operation::JointWithdraw {
            account,
            joint,
            amount_cents,
        } => Forward::Withdraw(pb::WithdrawRequest {
            account_id: account.to_string(),
            amount_cents: *amount_cents,
            request_id,
            joint_account_id: joint.to_string(),
        }),
        Operation::Transfer {
            from,
            to,
            amount_cents,
        } => Forward::Transfer(pb::TransferRequest {
            from_account_id: from.to_string(),
            to_account_id: to.to_string(),
            amount_cents: *amount_cents,
            request_id,
        }),
    }
}

/// The owning replica's answer as this replica's own.
pub(crate) fn applied_from(answer: Answer) -> Result<Applied, LedgerError> {
    let missing = || LedgerError::Invariant("a peer answered without an account".into());
    match answer {
        Answer::Mutation(reply) => Ok(Applied {
            accounts: vec![state_from_wire(&pb::AccountState {
                account_id: reply.account_id,
                balance_cents: reply.balance_cents,
                version: reply.version,
            })?],
            fee_cents: reply.fee_cents,
            replayed: reply.replayed,
        }),
        Answer::Transfer(reply) => Ok(Applied {
            accounts: vec![
                state_from_wire(reply.from.as_ref().ok_or_else(missing)?)?,
                state_from_wire(reply.to.as_ref().ok_or_else(missing)?)?,
            ],
            fee_cents: reply.fee_cents,
            replayed: reply.replayed,
        }),
    }
}

/// Whether an error means "ask the lease table again": the replica asked no
/// longer owns the account, or lost its lease mid-write. Both apply
/// nothing, so another try cannot apply twice (an unreachable peer may
/// have applied, so it is not tried again here).
pub(crate) fn owner_moved(error: &LedgerError) -> bool {
    use overdraft_proto::error_reason::{LEASE_LOST, NOT_OWNER, of};
    match error {
        LedgerError::LeaseLost { .. } => true,
        LedgerError::Peer(status) => {
            matches!(of(status).as_deref(), Some(NOT_OWNER | LEASE_LOST))
        }
        _ => false,
    }
}
