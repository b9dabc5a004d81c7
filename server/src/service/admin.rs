//! `overdraft.v1.Admin`: the mode, Reset, the audit, the journal export, Stats and Configure.

use overdraft_proto::v1::{self as pb, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::convert::*;
use crate::{
    bank::{self, AccountId, InvalidArgument},
    config::{self, Idempotency, LockOrder, Mode, OverdraftPolicy, Settings},
    service::{LedgerService, RESET_ACCOUNTS_MAX, invalid, mode_from_proto, status},
    stats::Stats,
};

#[tonic::async_trait]
impl Admin for LedgerService {
    async fn get_mode(
        &self,
        _request: Request<pb::GetModeRequest>,
    ) -> Result<Response<pb::ModeReply>, Status> {
        let mode = self.engine.mode().await;
        Ok(Response::new(pb::ModeReply {
            mode: pb::Mode::from(mode).into(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(mode = request.get_ref().mode))]
    async fn set_mode(
        &self,
        request: Request<pb::SetModeRequest>,
    ) -> Result<Response<pb::ModeReply>, Status> {
        let mode = mode_from_proto(request.get_ref().mode)?;
        self.engine.set_mode(mode).await.map_err(status)?;
        Ok(Response::new(pb::ModeReply {
            mode: pb::Mode::from(mode).into(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(accounts = request.get_ref().accounts.len()))]
    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetReply>, Status> {
        let request = request.into_inner();
        if request.accounts.len() > RESET_ACCOUNTS_MAX {
            return Err(invalid(InvalidArgument::new(
                "accounts",
                format!(
                    "must list at most {RESET_ACCOUNTS_MAX} accounts (got {})",
                    request.accounts.len()
                ),
            )));
        }
        let mut accounts = Vec::with_capacity(request.accounts.len());
        let mut seen = std::collections::HashSet::new();
        for open in &request.accounts {
            let id = AccountId::parse("accounts.account_id", &open.account_id).map_err(invalid)?;
            let balance = bank::parse_opening_balance(
                "accounts.initial_balance_cents",
                open.initial_balance_cents,
            )
            .map_err(invalid)?;
            if !seen.insert(id.clone()) {
                return Err(invalid(InvalidArgument::new(
                    "accounts.account_id",
                    format!("lists {id} twice"),
                )));
            }
            accounts.push((id, balance));
        }
        let opened = self.engine.reset(accounts).await.map_err(status)?;
        Ok(Response::new(pb::ResetReply {
            accounts_opened: u32::try_from(opened).unwrap_or(u32::MAX),
        }))
    }

    async fn audit(
        &self,
        _request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditReply>, Status> {
        let report = self.engine.audit().await.map_err(status)?;
        Ok(Response::new(audit_reply(report)))
    }

    type ExportJournalStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::JournalRecord, Status>>;

    async fn export_journal(
        &self,
        _request: Request<pb::ExportJournalRequest>,
    ) -> Result<Response<Self::ExportJournalStream>, Status> {
        let store = std::sync::Arc::clone(self.engine.store());
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            crate::export::stream(store),
        )))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn configure(
        &self,
        request: Request<pb::ConfigureRequest>,
    ) -> Result<Response<pb::Settings>, Status> {
        let request = request.into_inner();
        let (settings, window) = self
            .engine
            .configure(|settings, window| configure(&request, settings, window))
            .await
            .map_err(invalid)?;
        Ok(Response::new(settings_to_proto(settings, window)))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsReply>, Status> {
        let stats = &self.engine.stats();
        let cpu = crate::process::cpu_time();
        let modes = Mode::ALL
            .iter()
            .map(|mode| {
                let counters = stats.mode(*mode);
                pb::ModeStats {
                    mode: pb::Mode::from(*mode).into(),
                    operations: Stats::read(&counters.operations),
                    refusals: Stats::read(&counters.refusals),
                    retries: Stats::read(&counters.retries),
                    aborts: Stats::read(&counters.aborts),
                    deadlocks_detected: Stats::read(&counters.deadlocks_detected),
                    forwarded: Stats::read(&counters.forwarded),
                    stale_writes_fenced: Stats::read(&counters.stale_writes_fenced),
                }
            })
            .collect();
        Ok(Response::new(pb::StatsReply {
            mode: pb::Mode::from(self.engine.mode().await).into(),
            modes,
            replays: Stats::read(&stats.replays),
            flushes: Stats::read(&stats.flushes),
            flushed_operations: Stats::read(&stats.flushed_operations),
            cpu_user_us: micros(cpu.user),
            cpu_system_us: micros(cpu.system),
            rss_bytes: crate::process::rss_bytes().unwrap_or(0),
            flush_time_us: Stats::read(&stats.flush_time_us),
            flush_time_us_max: Stats::read(&stats.flush_time_us_max),
            process_instance: crate::process::instance(),
        }))
    }
}

/// Applies a Configure request to the settings in force, or names the field it breaks.
pub(super) fn configure(
    request: &pb::ConfigureRequest,
    mut settings: Settings,
    window_ms: (u64, u64),
) -> Result<(Settings, Option<(u64, u64)>), InvalidArgument> {
    let window = match (request.race_window_ms_min, request.race_window_ms_max) {
        (None, None) => None,
        (min, max) => {
            let window = (min.unwrap_or(window_ms.0), max.unwrap_or(window_ms.1));
            config::check_race_window(window.0, window.1)
                .map_err(|rule| InvalidArgument::new("race_window_ms", rule))?;
            Some(window)
        }
    };
    if let Some(overdraft) = &request.overdraft {
        settings.policy = if overdraft.allow {
            config::check_overdraft(overdraft.fee_cents, overdraft.limit_cents)
                .map_err(|rule| InvalidArgument::new("overdraft", rule))?;
            OverdraftPolicy::Fee {
                fee_cents: overdraft.fee_cents,
                limit_cents: overdraft.limit_cents,
            }
        } else {
            OverdraftPolicy::Reject
        };
    }
    if let Some(raw) = request.lock_order {
        settings.lock_order = match pb::LockOrder::try_from(raw) {
            Ok(pb::LockOrder::Ordered) => LockOrder::Ordered,
            Ok(pb::LockOrder::Naive) => LockOrder::Naive,
            _ => {
                return Err(InvalidArgument::new(
                    "lock_order",
                    format!("must be LOCK_ORDER_ORDERED or LOCK_ORDER_NAIVE (got {raw})"),
                ));
            }
        };
    }
    if let Some(on) = request.idempotency {
        settings.idempotency = if on {
            Idempotency::On
        } else {
            Idempotency::Off
        };
    }
    Ok((settings, window))
}
