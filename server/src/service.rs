//! The gRPC services, `overdraft.v1.Ledger`, `Admin` and `Chaos`: turn
//! requests into validated domain values, call the engine, turn its answers
//! into replies. This is the one place a [`LedgerError`] becomes a `Status`.

use std::{sync::Arc, time::Duration};

use overdraft_proto::v1::{
    self as pb, admin_server::Admin, arm_lost_acks_request, chaos_server::Chaos, finding,
    ledger_server::Ledger,
};
use tonic::{Code, Request, Response, Status};

use crate::{
    audit::{AuditReport, Finding, FindingKind},
    bank::{self, Account, AccountId, EntryKind, InvalidArgument, Operation, RequestId},
    chaos::{self, ChaosState, LostAckCode},
    config::{self, Idempotency, LockOrder, Mode, OverdraftPolicy, RACE_WINDOW_MS_MAX, Settings},
    crash::{self, CrashPoint},
    engine::Engine,
    error::LedgerError,
    modes::{self, Applied},
    race::{Delay, Targets, Window},
    stats::Stats,
};

/// Most arrivals a crash point may let pass first: enough to crash deep into
/// a load run, small enough that a typo does not arm a crash for next week.
pub const CRASH_SKIP_MAX: u32 = 1_000_000;

/// Most accounts one Reset may open: keeps a Reset request under the message size bound.
pub const RESET_ACCOUNTS_MAX: usize = 10_000;

/// Both services, sharing one engine.
#[derive(Clone, Debug)]
pub struct LedgerService {
    engine: Arc<Engine>,
}

impl LedgerService {
    /// Services over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

/// The one mapping from ledger errors to gRPC statuses.
pub fn status(error: LedgerError) -> Status {
    let code = error.code();
    if code == Code::Internal {
        tracing::error!(%error, "internal error");
    }
    use overdraft_proto::error_reason as reason;
    let reason = match &error {
        LedgerError::Deadlock { .. } => Some(reason::DEADLOCK),
        LedgerError::LockTimeout { .. } => Some(reason::LOCK_TIMEOUT),
        LedgerError::Contention { .. } => Some(reason::CAS_CONTENTION),
        LedgerError::Refused(_) => Some(reason::REFUSED),
        _ => None,
    };
    match reason {
        Some(reason) => reason::status(code, error.to_string(), reason),
        None => Status::new(code, error.to_string()),
    }
}

fn invalid(error: InvalidArgument) -> Status {
    status(LedgerError::Invalid(error))
}

fn mode_from_proto(raw: i32) -> Result<Mode, Status> {
    Mode::from_proto(raw).ok_or_else(|| {
        invalid(InvalidArgument::new(
            "mode",
            format!("must be MODE_UNSAFE, MODE_MUTEX, MODE_CAS or MODE_ACTOR (got {raw})"),
        ))
    })
}

fn state(account: &AccountId, state: Account) -> pb::AccountState {
    pb::AccountState {
        account_id: account.to_string(),
        balance_cents: state.balance_cents,
        version: state.version,
    }
}

fn mutation_reply(applied: Applied) -> Result<pb::MutationReply, Status> {
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

#[tonic::async_trait]
impl Ledger for LedgerService {
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountReply>, Status> {
        let request = request.into_inner();
        let account = AccountId::parse("account_id", &request.account_id).map_err(invalid)?;
        let initial =
            bank::parse_opening_balance("initial_balance_cents", request.initial_balance_cents)
                .map_err(invalid)?;
        let opened = self
            .engine
            .open_account(account.clone(), initial)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::OpenAccountReply {
            account: Some(state(&account, opened)),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id, request_id = %request.get_ref().request_id))]
    async fn deposit(
        &self,
        request: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::MutationReply>, Status> {
        let request = request.into_inner();
        let op = Operation::Deposit {
            account: AccountId::parse("account_id", &request.account_id).map_err(invalid)?,
            amount_cents: bank::parse_amount("amount_cents", request.amount_cents)
                .map_err(invalid)?,
        };
        let applied = self.run(op, &request.request_id).await?;
        Ok(Response::new(mutation_reply(applied)?))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id, request_id = %request.get_ref().request_id))]
    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::MutationReply>, Status> {
        let request = request.into_inner();
        let op = Operation::Withdraw {
            account: AccountId::parse("account_id", &request.account_id).map_err(invalid)?,
            amount_cents: bank::parse_amount("amount_cents", request.amount_cents)
                .map_err(invalid)?,
        };
        let applied = self.run(op, &request.request_id).await?;
        Ok(Response::new(mutation_reply(applied)?))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(from = %request.get_ref().from_account_id, to = %request.get_ref().to_account_id, request_id = %request.get_ref().request_id))]
    async fn transfer(
        &self,
        request: Request<pb::TransferRequest>,
    ) -> Result<Response<pb::TransferReply>, Status> {
        let request = request.into_inner();
        let from =
            AccountId::parse("from_account_id", &request.from_account_id).map_err(invalid)?;
        let to = AccountId::parse("to_account_id", &request.to_account_id).map_err(invalid)?;
        if from == to {
            return Err(invalid(InvalidArgument::new(
                "to_account_id",
                "must differ from from_account_id",
            )));
        }
        let amount_cents =
            bank::parse_amount("amount_cents", request.amount_cents).map_err(invalid)?;
        let op = Operation::Transfer {
            from,
            to,
            amount_cents,
        };
        let applied = self.run(op, &request.request_id).await?;
        let [(from_id, from_state), (to_id, to_state)] = applied.accounts.as_slice() else {
            return Err(status(LedgerError::Invariant(
                "a transfer returned other than two accounts".into(),
            )));
        };
        Ok(Response::new(pb::TransferReply {
            from: Some(state(from_id, *from_state)),
            to: Some(state(to_id, *to_state)),
            replayed: applied.replayed,
            fee_cents: applied.fee_cents,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::AccountState>, Status> {
        let account =
            AccountId::parse("account_id", &request.get_ref().account_id).map_err(invalid)?;
        let found = self.engine.balance(&account).await.map_err(status)?;
        Ok(Response::new(state(&account, found)))
    }
}

impl LedgerService {
    async fn run(&self, op: Operation, request_id: &str) -> Result<Applied, Status> {
        let request_id = RequestId::parse_optional(request_id).map_err(invalid)?;
        self.engine
            .execute(modes::Request { op, request_id })
            .await
            .map_err(status)
    }
}

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
        self.engine.set_mode(mode).await;
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
        let store = std::sync::Arc::clone(&self.engine.core().store);
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
        let stats = &self.engine.core().stats;
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
        }))
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn settings_to_proto(settings: Settings, window_ms: (u64, u64)) -> pb::Settings {
    pb::Settings {
        race_window_ms_min: window_ms.0,
        race_window_ms_max: window_ms.1,
        overdraft: Some(settings.policy.into()),
        lock_order: pb::LockOrder::from(settings.lock_order).into(),
        idempotency: settings.idempotency == Idempotency::On,
    }
}

/// Applies a Configure request to the settings in force, or names the field it breaks.
fn configure(
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

fn chaos_state(state: ChaosState, window: &Window) -> Response<pb::ChaosState> {
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

/// Reads a SetRaceWindow request, or names the field it breaks.
fn race_window(request: &pb::SetRaceWindowRequest) -> Result<Window, InvalidArgument> {
    use pb::set_race_window_request::Delay as Wire;
    let max = RACE_WINDOW_MS_MAX as f64;
    let in_range = |field: &'static str, value: f64, low: f64| {
        if value.is_finite() && (low..=max).contains(&value) {
            Ok(value)
        } else {
            Err(InvalidArgument::new(
                field,
                format!("must be a number between {low} and {max} (got {value})"),
            ))
        }
    };
    let delay = match request.delay {
        None => {
            return Err(InvalidArgument::new(
                "delay",
                "set one of fixed_ms, uniform, normal, pareto",
            ));
        }
        Some(Wire::FixedMs(ms)) => {
            in_range("fixed_ms", ms as f64, 0.0)?;
            Delay::Fixed { ms }
        }
        Some(Wire::Uniform(pb::UniformDelay { min_ms, max_ms })) => {
            config::check_race_window(min_ms, max_ms)
                .map_err(|rule| InvalidArgument::new("uniform", rule))?;
            Delay::Uniform { min_ms, max_ms }
        }
        Some(Wire::Normal(pb::NormalDelay { mean_ms, stddev_ms })) => Delay::Normal {
            mean_ms: in_range("normal.mean_ms", mean_ms, 0.0)?,
            stddev_ms: in_range("normal.stddev_ms", stddev_ms, 0.0)?,
        },
        Some(Wire::Pareto(pb::ParetoDelay { scale_ms, shape })) => Delay::Pareto {
            scale_ms: in_range("pareto.scale_ms", scale_ms, f64::MIN_POSITIVE)?,
            shape: in_range("pareto.shape", shape, f64::MIN_POSITIVE)?,
        },
    };
    let probability = request.probability.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&probability) {
        return Err(InvalidArgument::new(
            "probability",
            format!("must be between 0 and 1 (got {probability})"),
        ));
    }
    let kind = match request.method.as_str() {
        "" => None,
        "deposit" => Some(EntryKind::Deposit),
        "withdraw" => Some(EntryKind::Withdraw),
        "transfer" => Some(EntryKind::Transfer),
        other => {
            return Err(InvalidArgument::new(
                "method",
                format!("must be deposit, withdraw, transfer or empty (got {other:?})"),
            ));
        }
    };
    let account = match request.account_id.as_str() {
        "" => None,
        raw => Some(AccountId::parse("account_id", raw)?),
    };
    let mode = match request.mode {
        0 => None,
        raw => Some(mode_from_proto(raw).map_err(|_| {
            InvalidArgument::new(
                "mode",
                format!("must be a mode or MODE_UNSPECIFIED (got {raw})"),
            )
        })?),
    };
    Ok(Window {
        delay,
        probability,
        targets: Targets {
            kind,
            account,
            mode,
        },
    })
}

#[tonic::async_trait]
impl Chaos for LedgerService {
    #[tracing::instrument(skip_all, fields(parties = request.get_ref().parties))]
    async fn arm_barrier(
        &self,
        request: Request<pb::ArmBarrierRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let request = request.into_inner();
        if !(2..=chaos::BARRIER_PARTIES_MAX).contains(&request.parties) {
            return Err(invalid(InvalidArgument::new(
                "parties",
                format!(
                    "must be between 2 and {} (got {})",
                    chaos::BARRIER_PARTIES_MAX,
                    request.parties
                ),
            )));
        }
        if !(1..=chaos::BARRIER_WAIT_MS_MAX).contains(&request.wait_ms) {
            return Err(invalid(InvalidArgument::new(
                "wait_ms",
                format!(
                    "must be between 1 and {} (got {})",
                    chaos::BARRIER_WAIT_MS_MAX,
                    request.wait_ms
                ),
            )));
        }
        let chaos = &self.engine.core().hook.chaos;
        chaos.arm_barrier(request.parties, Duration::from_millis(request.wait_ms));
        tracing::info!(
            parties = request.parties,
            wait_ms = request.wait_ms,
            "chaos: barrier armed"
        );
        Ok(chaos_state(
            chaos.state(),
            &self.engine.core().hook.window(),
        ))
    }

    #[tracing::instrument(skip_all, fields(count = request.get_ref().count))]
    async fn arm_lost_acks(
        &self,
        request: Request<pb::ArmLostAcksRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let request = request.into_inner();
        if request.count > chaos::LOST_ACKS_MAX {
            return Err(invalid(InvalidArgument::new(
                "count",
                format!(
                    "must be at most {} (got {})",
                    chaos::LOST_ACKS_MAX,
                    request.count
                ),
            )));
        }
        let code = match arm_lost_acks_request::Code::try_from(request.code) {
            Ok(arm_lost_acks_request::Code::Unavailable) => LostAckCode::Unavailable,
            Ok(arm_lost_acks_request::Code::DeadlineExceeded) => LostAckCode::DeadlineExceeded,
            _ => {
                return Err(invalid(InvalidArgument::new(
                    "code",
                    format!(
                        "must be CODE_UNAVAILABLE or CODE_DEADLINE_EXCEEDED (got {})",
                        request.code
                    ),
                )));
            }
        };
        let chaos = &self.engine.core().hook.chaos;
        chaos.arm_lost_acks(request.count, code);
        tracing::info!(
            count = request.count,
            ?code,
            "chaos: lost acknowledgements armed"
        );
        Ok(chaos_state(
            chaos.state(),
            &self.engine.core().hook.window(),
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn set_race_window(
        &self,
        request: Request<pb::SetRaceWindowRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let window = race_window(request.get_ref()).map_err(invalid)?;
        let hook = &self.engine.core().hook;
        tracing::info!(?window, "chaos: race window set");
        hook.set_window(window);
        Ok(chaos_state(hook.chaos.state(), &hook.window()))
    }

    #[tracing::instrument(skip_all, fields(delay_ms = request.get_ref().delay_ms))]
    async fn set_slow_owner(
        &self,
        request: Request<pb::SetSlowOwnerRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let delay_ms = request.get_ref().delay_ms;
        if delay_ms > chaos::SLOW_OWNER_MS_MAX {
            return Err(invalid(InvalidArgument::new(
                "delay_ms",
                format!(
                    "must be at most {} (got {delay_ms})",
                    chaos::SLOW_OWNER_MS_MAX
                ),
            )));
        }
        let chaos = &self.engine.core().hook.chaos;
        chaos.set_slow_owner(Duration::from_millis(delay_ms));
        tracing::info!(delay_ms, "chaos: slow owner set");
        Ok(chaos_state(
            chaos.state(),
            &self.engine.core().hook.window(),
        ))
    }

    #[tracing::instrument(skip_all, fields(point = request.get_ref().point, skip = request.get_ref().skip))]
    async fn arm_crash(
        &self,
        request: Request<pb::ArmCrashRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let request = request.into_inner();
        let Some(point) = CrashPoint::from_proto(request.point) else {
            return Err(invalid(InvalidArgument::new(
                "point",
                format!(
                    "must be CRASH_POINT_JOURNAL_BEFORE_BALANCES, \
                     CRASH_POINT_BETWEEN_TRANSFER_LEGS or CRASH_POINT_BEFORE_ACK (got {})",
                    request.point
                ),
            )));
        };
        if request.skip > CRASH_SKIP_MAX {
            return Err(invalid(InvalidArgument::new(
                "skip",
                format!("must be at most {CRASH_SKIP_MAX} (got {})", request.skip),
            )));
        }
        crash::arm(point, request.skip);
        tracing::warn!(%point, skip = request.skip, "chaos: crash point armed");
        let hook = &self.engine.core().hook;
        Ok(chaos_state(hook.chaos.state(), &hook.window()))
    }

    async fn reset(
        &self,
        _request: Request<pb::ChaosResetRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let chaos = &self.engine.core().hook.chaos;
        chaos.reset();
        crash::disarm();
        tracing::info!("chaos: every fault disarmed");
        Ok(chaos_state(
            chaos.state(),
            &self.engine.core().hook.window(),
        ))
    }

    async fn get_state(
        &self,
        _request: Request<pb::ChaosStateRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let hook = &self.engine.core().hook;
        Ok(chaos_state(hook.chaos.state(), &hook.window()))
    }
}

fn audit_reply(report: AuditReport) -> pb::AuditReply {
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

fn finding_to_proto(finding: Finding) -> pb::Finding {
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
