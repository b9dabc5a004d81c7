//! `overdraft.v1.Chaos`: faults armed inside the ledger, each request validated field by field.

use std::time::Duration;

use overdraft_proto::v1::{self as pb, arm_lost_acks_request, chaos_server::Chaos};
use tonic::{Request, Response, Status};

use super::convert::*;
use crate::{
    bank::{AccountId, EntryKind, InvalidArgument},
    chaos::{self, LostAckCode},
    config::{self, RACE_WINDOW_MS_MAX},
    crash::{self, CrashPoint},
    race::{Delay, Targets, Window},
    service::{CRASH_SKIP_MAX, LedgerService, invalid, mode_from_proto},
};

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
        let chaos = &self.engine.hook().chaos;
        chaos.arm_barrier(request.parties, Duration::from_millis(request.wait_ms));
        tracing::info!(
            parties = request.parties,
            wait_ms = request.wait_ms,
            "chaos: barrier armed"
        );
        Ok(chaos_state(chaos.state(), &self.engine.hook().window()))
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
        let chaos = &self.engine.hook().chaos;
        chaos.arm_lost_acks(request.count, code);
        tracing::info!(
            count = request.count,
            ?code,
            "chaos: lost acknowledgements armed"
        );
        Ok(chaos_state(chaos.state(), &self.engine.hook().window()))
    }

    #[tracing::instrument(skip_all)]
    async fn set_race_window(
        &self,
        request: Request<pb::SetRaceWindowRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let window = race_window(request.get_ref()).map_err(invalid)?;
        let hook = &self.engine.hook();
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
        let chaos = &self.engine.hook().chaos;
        chaos.set_slow_owner(Duration::from_millis(delay_ms));
        tracing::info!(delay_ms, "chaos: slow owner set");
        Ok(chaos_state(chaos.state(), &self.engine.hook().window()))
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
        let hook = &self.engine.hook();
        Ok(chaos_state(hook.chaos.state(), &hook.window()))
    }

    async fn reset(
        &self,
        _request: Request<pb::ChaosResetRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let chaos = &self.engine.hook().chaos;
        chaos.reset();
        crash::disarm();
        tracing::info!("chaos: every fault disarmed");
        Ok(chaos_state(chaos.state(), &self.engine.hook().window()))
    }

    async fn get_state(
        &self,
        _request: Request<pb::ChaosStateRequest>,
    ) -> Result<Response<pb::ChaosState>, Status> {
        let hook = &self.engine.hook();
        Ok(chaos_state(hook.chaos.state(), &hook.window()))
    }
}

/// Reads a SetRaceWindow request, or names the field it breaks.
pub(super) fn race_window(request: &pb::SetRaceWindowRequest) -> Result<Window, InvalidArgument> {
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
