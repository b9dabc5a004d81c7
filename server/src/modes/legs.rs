//! An actor transfer's legs as values: the debit, the credit that follows
//! it, the refund of a credit refused, and their form on the wire when the
//! credited account's owner is another replica.

use overdraft_proto::v1 as pb;

use super::Applied;
use crate::{
    bank::{Account, AccountId, EntryKind, InvalidArgument, RequestId},
    error::LedgerError,
};

/// One leg of a transfer across owners.
#[derive(Clone, Debug)]
pub(crate) struct LegWork {
    pub(crate) account: AccountId,
    pub(crate) counterparty: AccountId,
    pub(crate) amount_cents: i64,
    pub(crate) kind: EntryKind,
    pub(crate) transfer_id: String,
    pub(crate) request_id: Option<RequestId>,
    pub(crate) fingerprint: String,
    /// For a credit: the debited account as its leg left it, for the reply.
    pub(crate) debited: Option<(AccountId, Account)>,
    /// A refund of a debit whose credit was refused, with the refusal.
    pub(crate) refund_of: Option<String>,
}

/// The credit that follows `debit`, which left its account as `debited` says.
pub(crate) fn credit_for(debit: &LegWork, debited: &Applied) -> LegWork {
    LegWork {
        account: debit.counterparty.clone(),
        counterparty: debit.account.clone(),
        kind: EntryKind::TransferCredit,
        debited: debited.accounts.first().cloned(),
        ..debit.clone()
    }
}

/// The refund of `debit`, whose credit was refused for `reason`.
pub(crate) fn refund_for(debit: &LegWork, reason: String) -> LegWork {
    LegWork {
        kind: EntryKind::TransferCredit,
        refund_of: Some(reason),
        ..debit.clone()
    }
}

/// Most characters of a transfer id or fingerprint a peer may send: both
/// are made by a replica (tens of characters); this bounds a forged one.
const LEG_TEXT_MAX: usize = 512;

impl LegWork {
    /// The credit or refund leg as a peer receives it.
    pub(crate) fn to_wire(&self) -> pb::ApplyLegRequest {
        pb::ApplyLegRequest {
            account_id: self.account.to_string(),
            counterparty_id: self.counterparty.to_string(),
            amount_cents: self.amount_cents,
            transfer_id: self.transfer_id.clone(),
            request_id: self
                .request_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            fingerprint: self.fingerprint.clone(),
            debited: self.debited.as_ref().map(|(id, state)| pb::AccountState {
                account_id: id.to_string(),
                balance_cents: state.balance_cents,
                version: state.version,
            }),
            refund_reason: self.refund_of.clone().unwrap_or_default(),
        }
    }

    /// A credit or refund leg a peer sent, each field checked.
    pub(crate) fn from_wire(leg: pb::ApplyLegRequest) -> Result<Self, InvalidArgument> {
        let bounded = |field: &'static str, text: String| {
            if text.is_empty() || text.chars().count() > LEG_TEXT_MAX {
                Err(InvalidArgument::new(
                    field,
                    format!("must hold 1 to {LEG_TEXT_MAX} characters"),
                ))
            } else {
                Ok(text)
            }
        };
        if leg.amount_cents <= 0 {
            return Err(InvalidArgument::new(
                "amount_cents",
                format!("must be positive (got {})", leg.amount_cents),
            ));
        }
        let debited = leg
            .debited
            .map(|state| {
                Ok::<_, InvalidArgument>((
                    AccountId::parse("debited.account_id", &state.account_id)?,
                    Account {
                        balance_cents: state.balance_cents,
                        version: state.version,
                    },
                ))
            })
            .transpose()?;
        Ok(Self {
            account: AccountId::parse("account_id", &leg.account_id)?,
            counterparty: AccountId::parse("counterparty_id", &leg.counterparty_id)?,
            amount_cents: leg.amount_cents,
            kind: EntryKind::TransferCredit,
            transfer_id: bounded("transfer_id", leg.transfer_id)?,
            request_id: RequestId::parse_optional(&leg.request_id)?,
            fingerprint: bounded("fingerprint", leg.fingerprint)?,
            debited,
            refund_of: (!leg.refund_reason.is_empty()).then_some(leg.refund_reason),
        })
    }
}

/// What a leg applied, as a peer answers it.
pub(crate) fn applied_to_wire(applied: &Applied) -> pb::ApplyLegReply {
    pb::ApplyLegReply {
        accounts: applied.accounts.iter().map(wire_state).collect(),
        replayed: applied.replayed,
    }
}

/// A peer's answer to a leg.
pub(crate) fn applied_from_wire(reply: pb::ApplyLegReply) -> Result<Applied, LedgerError> {
    Ok(Applied {
        accounts: reply
            .accounts
            .iter()
            .map(state_from_wire)
            .collect::<Result<_, _>>()?,
        fee_cents: 0,
        replayed: reply.replayed,
    })
}

pub(crate) fn wire_state((id, state): &(AccountId, Account)) -> pb::AccountState {
    pb::AccountState {
        account_id: id.to_string(),
        balance_cents: state.balance_cents,
        version: state.version,
    }
}

/// An account state a peer sent back: a replica's own output, so a bad
/// one is a broken invariant, not bad input.
pub(crate) fn state_from_wire(
    state: &pb::AccountState,
) -> Result<(AccountId, Account), LedgerError> {
    let id = AccountId::parse("account_id", &state.account_id)
        .map_err(|e| LedgerError::Invariant(format!("a peer answered a bad account: {e}")))?;
    Ok((
        id,
        Account {
            balance_cents: state.balance_cents,
            version: state.version,
        },
    ))
}
