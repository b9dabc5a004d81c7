//! Ledger faults: arming and disarming the ledger's Chaos service (race
//! window, barrier, lost acknowledgements, slow owner, crash points).

use std::time::Duration;

use overdraft_proto::v1::{self as pb, chaos_client::ChaosClient};
use tonic::transport::{Channel, Endpoint};

use crate::fault::{Distribution, Fault, FaultKind, StatusCode};

/// The environment variable holding the ledger's admin token.
pub const ADMIN_TOKEN_ENV: &str = "OVERDRAFT_ADMIN_TOKEN";

/// How long one Chaos call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one ledger's Chaos service.
#[derive(Clone, Debug)]
pub struct LedgerFaults {
    client: ChaosClient<Channel>,
    token: Option<String>,
}

impl LedgerFaults {
    /// Connects to the ledger at `target`; `token` is its admin token.
    pub async fn connect(target: &str, token: Option<String>) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(target.to_owned())
            .map_err(|e| anyhow::anyhow!("--target {target:?} is not a URL: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the ledger at {target}: {e}"))?;
        Ok(Self {
            client: ChaosClient::new(channel),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        if let Some(token) = &self.token {
            overdraft_proto::admin_token::attach(&mut request, token);
        }
        request
    }

    /// Arms `fault` in the ledger.
    pub async fn apply(&mut self, fault: &Fault) -> anyhow::Result<pb::ChaosState> {
        let state = match &fault.kind {
            FaultKind::RaceWindow { .. } => {
                let request = self.request(race_window(fault)?);
                self.client.set_race_window(request).await
            }
            FaultKind::Barrier { parties, wait_ms } => {
                let request = self.request(pb::ArmBarrierRequest {
                    parties: *parties,
                    wait_ms: *wait_ms,
                });
                self.client.arm_barrier(request).await
            }
            FaultKind::LostAcks { count, code } => {
                let code = match code {
                    StatusCode::DeadlineExceeded => {
                        pb::arm_lost_acks_request::Code::DeadlineExceeded
                    }
                    _ => pb::arm_lost_acks_request::Code::Unavailable,
                };
                let request = self.request(pb::ArmLostAcksRequest {
                    count: *count,
                    code: code.into(),
                });
                self.client.arm_lost_acks(request).await
            }
            FaultKind::SlowOwner { delay_ms } => {
                let request = self.request(pb::SetSlowOwnerRequest {
                    delay_ms: *delay_ms,
                });
                self.client.set_slow_owner(request).await
            }
            FaultKind::Crash { point, skip } => {
                let point = match point.as_str() {
                    "journal-before-balances" => pb::CrashPoint::JournalBeforeBalances,
                    "between-transfer-legs" => pb::CrashPoint::BetweenTransferLegs,
                    _ => pb::CrashPoint::BeforeAck,
                };
                let request = self.request(pb::ArmCrashRequest {
                    point: point.into(),
                    skip: *skip,
                });
                self.client.arm_crash(request).await
            }
            _ => anyhow::bail!(
                "{} is a proxy fault: add it with `chaos fault add` or a schedule with --proxy",
                fault.kind.name()
            ),
        };
        state
            .map(tonic::Response::into_inner)
            .map_err(|status| refused(fault, &status))
    }

    /// Disarms `fault`; `others` are the ledger faults that stay armed. A race
    /// window goes back to none; anything else is disarmed by a Chaos reset,
    /// after which `others` are armed again.
    pub async fn remove(&mut self, fault: &Fault, others: &[Fault]) -> anyhow::Result<()> {
        if matches!(fault.kind, FaultKind::RaceWindow { .. }) {
            let request = self.request(pb::SetRaceWindowRequest {
                delay: Some(pb::set_race_window_request::Delay::FixedMs(0)),
                ..Default::default()
            });
            self.client
                .set_race_window(request)
                .await
                .map_err(|status| refused(fault, &status))?;
            return Ok(());
        }
        self.reset().await?;
        for other in others {
            if !matches!(other.kind, FaultKind::RaceWindow { .. }) {
                self.apply(other).await?;
            }
        }
        Ok(())
    }

    /// Disarms every ledger fault but the race window.
    pub async fn reset(&mut self) -> anyhow::Result<pb::ChaosState> {
        let request = self.request(pb::ChaosResetRequest {});
        Ok(self
            .client
            .reset(request)
            .await
            .map_err(|status| anyhow::anyhow!("Chaos.Reset refused: {status}"))?
            .into_inner())
    }

    /// What is armed.
    pub async fn state(&mut self) -> anyhow::Result<pb::ChaosState> {
        let request = self.request(pb::ChaosStateRequest {});
        Ok(self
            .client
            .get_state(request)
            .await
            .map_err(|status| anyhow::anyhow!("Chaos.GetState refused: {status}"))?
            .into_inner())
    }
}

fn refused(fault: &Fault, status: &tonic::Status) -> anyhow::Error {
    let hint = if status.code() == tonic::Code::Unauthenticated {
        format!(" (set {ADMIN_TOKEN_ENV} or --admin-token to the ledger's token)")
    } else {
        String::new()
    };
    anyhow::anyhow!(
        "the ledger refused {} {:?}: {}{hint}",
        fault.kind.name(),
        status.code(),
        status.message()
    )
}

fn race_window(fault: &Fault) -> anyhow::Result<pb::SetRaceWindowRequest> {
    use pb::set_race_window_request::Delay;
    let FaultKind::RaceWindow {
        distribution,
        fixed_ms,
        min_ms,
        max_ms,
        mean_ms,
        stddev_ms,
        scale_ms,
        shape,
        account_id,
        mode,
    } = &fault.kind
    else {
        anyhow::bail!("not a race window");
    };
    let delay = match distribution {
        Distribution::Fixed => Delay::FixedMs(*fixed_ms),
        Distribution::Uniform => Delay::Uniform(pb::UniformDelay {
            min_ms: *min_ms,
            max_ms: *max_ms,
        }),
        Distribution::Normal => Delay::Normal(pb::NormalDelay {
            mean_ms: *mean_ms,
            stddev_ms: *stddev_ms,
        }),
        Distribution::Pareto => Delay::Pareto(pb::ParetoDelay {
            scale_ms: *scale_ms,
            shape: *shape,
        }),
    };
    let mode = match mode.as_deref() {
        None => pb::Mode::Unspecified,
        Some("unsafe") => pb::Mode::Unsafe,
        Some("mutex") => pb::Mode::Mutex,
        Some("cas") => pb::Mode::Cas,
        Some("actor") => pb::Mode::Actor,
        Some(other) => {
            anyhow::bail!("race_window mode: must be unsafe, mutex, cas or actor (got {other:?})")
        }
    };
    Ok(pb::SetRaceWindowRequest {
        delay: Some(delay),
        probability: fault.probability,
        method: fault
            .method
            .as_deref()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default(),
        account_id: account_id.clone().unwrap_or_default(),
        mode: mode.into(),
    })
}
