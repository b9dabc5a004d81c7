//! Domain values to proto replies: accounts, mutations, settings, the audit, the chaos state.

use std::time::Duration;

use overdraft_proto::v1::{self as pb, finding};
use tonic::{Response, Status};

use crate::{
    audit::{AuditReport, Finding, FindingKind},
    bank::{Account, AccountId},
    chaos::ChaosState,
    config::{Idempotency, Settings},
    crash::{self},
    error::LedgerError,
    modes::Applied,
    race::Window,
    service::status,
};

pub(super) fn state(account: &AccountId, state: Account) -> pb::AccountState {
    pb::AccountState {
        account_id: account.to_string(),
        balance_cents: state.balance_cents,
        version: state.version,
    }
}

pub(super) fn mutation_reply(applied: Applied) -> Result<pb::MutationReply, Status> {
    let (account, after) = applied.accounts.first().ok_or_else(|| {
        status(LedgerError::Invariant(
            "a mutation returned no account".into(),
        ))
    })?;
    Ok(pb::MutationReply {
        account_id: account.to_string(),
        balance_cents: after.balance_cents,
        version: after.version,
        fee_cents: applied.fee_cents,
        replayed: applied.replayed,
    })
}

pub(super) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn settings_to_proto(settings: Settings, window_ms: (u64, u64)) -> pb::Settings {
    pb::Settings {
        race_window_ms_min: window_ms.0,
        race_window_ms_max: window_ms.1,
        overdraft: Some(settings.policy.into()),
        lock_order: pb::LockOrder::from(settings.lock_order).into(),
        idempotency: settings.idempotency == Idempotency::On,
    }
}

pub(super) fn audit_reply(report: AuditReport) -> pb::AuditReply {
    pb::AuditReply {
        clean: report.clean,
        findings: report.findings.into_iter().map(finding_to_proto).collect(),
        opening_cents: report.opening_cents,
        deposits_cents: report.deposits_cents,
        withdrawals_cents: report.withdrawals_cents,
        fees_cents: report.fees_cents,
        balances_cents: report.balances_cents,
        in_flight_cents: report.in_flight_cents,
        money_delta_cents: report.money_delta_cents,
        journal_entries: report.journal_entries,
        overdrafts: report.overdrafts,
        lost_updates: report.lost_updates,
        half_applied_transfers: report.half_applied_transfers,
        recovery: Some(pb::Recovery {
            rolled_forward_commits: report.recovery.rolled_forward_commits,
            transfers_finished: report.recovery.transfers_finished,
        }),
    }
}

pub(super) fn finding_to_proto(finding: Finding) -> pb::Finding {
    let kind = match finding.kind {
        FindingKind::Overdraft => finding::Kind::Overdraft,
        FindingKind::LostUpdate => finding::Kind::LostUpdate,
        FindingKind::Conservation => finding::Kind::Conservation,
        FindingKind::JournalMismatch => finding::Kind::JournalMismatch,
        FindingKind::HalfAppliedTransfer => finding::Kind::HalfAppliedTransfer,
    };
    pb::Finding {
        kind: kind.into(),
        account_id: finding.account.map(|a| a.to_string()).unwrap_or_default(),
        request_ids: finding.request_ids,
        cents: finding.cents,
        detail: finding.detail,
    }
}

pub(super) fn chaos_state(state: ChaosState, window: &Window) -> Response<pb::ChaosState> {
    Response::new(pb::ChaosState {
        barrier_waiting_for: state.barrier_waiting_for,
        lost_acks: state.lost_acks,
        barriers_released: state.barriers_released,
        acks_lost: state.acks_lost,
        slow_owner_ms: state.slow_owner_ms,
        race_window: format!("{window:?}"),
        crash: crash::armed().map_or_else(String::new, |(point, skip)| {
            format!("{point} after {skip} more arrival(s)")
        }),
    })
}
