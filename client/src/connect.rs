//! Connecting to a ledger, with errors that say what to do, and a thin typed
//! wrapper over the Admin calls the ATM makes.

use std::time::Duration;

use overdraft_proto::{
    transport::Channel,
    v1::{
        self as pb, admin_client::AdminClient, chaos_client::ChaosClient,
        ledger_client::LedgerClient,
    },
};
use overdraft_server::config::Mode;

/// The environment variable holding the ledger's admin token, sent with
/// Admin calls (a ledger listening beyond loopback requires it).
pub const ADMIN_TOKEN_ENV: &str = "OVERDRAFT_ADMIN_TOKEN";

/// How long a connection attempt may take before the target counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest an Admin call may take: an audit of a long history is the slowest.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the ATM could not do its work. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The target is not a usable URL.
    #[error("--target {target:?} is not a valid URL ({reason}); use e.g. http://127.0.0.1:50051")]
    BadTarget {
        /// What was given.
        target: String,
        /// Why it is not usable.
        reason: String,
    },
    /// Nothing answered at the target.
    #[error(
        "cannot reach the ledger at {target}: {reason}; is `ledger` running there? (start one with `cargo run --release --bin ledger`)"
    )]
    Unreachable {
        /// The target.
        target: String,
        /// The transport's complaint.
        reason: String,
    },
    /// The ledger answered an Admin call with an error.
    #[error("the ledger refused {call}: {status}")]
    Refused {
        /// Which call.
        call: &'static str,
        /// Its status.
        status: String,
    },
    /// The command line or a scenario file is wrong; the message says where.
    #[error("{0}")]
    Usage(String),
    /// A bug or a broken invariant in the ATM itself.
    #[error("internal: {0}")]
    Internal(String),
}

/// `host:port` becomes `http://host:port`; a URL is kept.
pub fn normalize(target: &str) -> String {
    if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    }
}

/// Most ledgers one `--target` may name (replicas of one ledger).
pub const TARGETS_MAX: usize = 16;

/// The ledgers behind `--target`: one address, or the replicas of one ledger
/// as `URL1,URL2,...` (ledgers sharing a PostgreSQL database).
pub fn targets(target: &str) -> Result<Vec<String>, ClientError> {
    let targets: Vec<String> = target.split(',').map(|t| t.trim().to_owned()).collect();
    if targets.iter().any(String::is_empty) {
        return Err(ClientError::BadTarget {
            target: target.to_owned(),
            reason: "an empty address in the list".into(),
        });
    }
    if targets.len() > TARGETS_MAX {
        return Err(ClientError::BadTarget {
            target: target.to_owned(),
            reason: format!("{} addresses; at most {TARGETS_MAX}", targets.len()),
        });
    }
    Ok(targets)
}

/// `per_target` connections to each of `targets`, interleaved: channel `i`
/// goes to `targets[i % targets.len()]`, so ATM `i` on channel `i` keeps to
/// one replica and the ATMs spread evenly over them.
pub async fn spread(targets: &[String], per_target: u32) -> Result<Vec<Channel>, ClientError> {
    let mut channels = Vec::new();
    for _ in 0..per_target.max(1) {
        for target in targets {
            channels.push(channel(target).await?);
        }
    }
    Ok(channels)
}

/// A connected channel to `target`.
pub async fn channel(target: &str) -> Result<Channel, ClientError> {
    let url = normalize(target);
    let channel = Channel::lazy(&url, CONNECT_TIMEOUT).map_err(|e| ClientError::BadTarget {
        target: target.to_owned(),
        reason: e.to_string(),
    })?;
    channel
        .ready()
        .await
        .map_err(|status| ClientError::Unreachable {
            target: url,
            reason: status.message().to_owned(),
        })?;
    Ok(channel)
}

/// Ledger and Admin clients on one connection.
#[derive(Clone, Debug)]
pub struct Clients {
    /// The Ledger service.
    pub ledger: LedgerClient<Channel>,
    /// The Admin service.
    pub admin: AdminClient<Channel>,
    /// The Chaos service.
    pub chaos: ChaosClient<Channel>,
    /// The channel, for other services (health).
    pub channel: Channel,
    /// Sent with Admin calls: a ledger listening beyond loopback requires it.
    admin_token: Option<String>,
}

fn refused(call: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    move |status| ClientError::Refused {
        call,
        status: format!("{:?}: {}", status.code(), status.message()),
    }
}

impl Clients {
    /// Connects to `target`.
    pub async fn connect(target: &str) -> Result<Self, ClientError> {
        let channel = channel(target).await?;
        Ok(Self {
            ledger: LedgerClient::new(channel.clone()),
            admin: AdminClient::new(channel.clone()),
            chaos: ChaosClient::new(channel.clone()),
            channel,
            admin_token: std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }

    fn admin_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(ADMIN_TIMEOUT);
        if let Some(token) = &self.admin_token {
            overdraft_proto::admin_token::attach(&mut request, token);
        }
        request
    }

    /// Admin.Reset.
    pub async fn reset(
        &mut self,
        accounts: Vec<pb::OpenAccountRequest>,
    ) -> Result<(), ClientError> {
        {
            let request = self.admin_request(pb::ResetRequest { accounts });
            self.admin.reset(request).await
        }
        .map_err(refused("Reset"))?;
        Ok(())
    }

    /// Admin.Configure.
    pub async fn configure(
        &mut self,
        request: pb::ConfigureRequest,
    ) -> Result<pb::Settings, ClientError> {
        Ok({
            let request = self.admin_request(request);
            self.admin.configure(request).await
        }
        .map_err(refused("Configure"))?
        .into_inner())
    }

    /// Connects to each of `targets` (the replicas of one ledger).
    pub async fn connect_each(targets: &[String]) -> Result<Vec<Self>, ClientError> {
        let mut connected = Vec::with_capacity(targets.len());
        for target in targets {
            connected.push(Self::connect(target).await?);
        }
        Ok(connected)
    }

    /// Admin.SetMode on every ledger in `targets`: each replica keeps its own
    /// mode, and an operation finishes in the mode it started in.
    pub async fn set_mode_everywhere(targets: &[String], mode: Mode) -> Result<(), ClientError> {
        for mut ledger in Self::connect_each(targets).await? {
            ledger.set_mode(mode).await?;
        }
        Ok(())
    }

    /// Admin.SetMode.
    pub async fn set_mode(&mut self, mode: Mode) -> Result<(), ClientError> {
        let request = pb::SetModeRequest {
            mode: pb::Mode::from(mode).into(),
        };
        {
            let request = self.admin_request(request);
            self.admin.set_mode(request).await
        }
        .map_err(refused("SetMode"))?;
        Ok(())
    }

    /// Chaos.ArmBarrier: hold the next `parties` operations at the race hook.
    pub async fn arm_barrier(&mut self, parties: u32, wait_ms: u64) -> Result<(), ClientError> {
        let request = self.admin_request(pb::ArmBarrierRequest { parties, wait_ms });
        self.chaos
            .arm_barrier(request)
            .await
            .map_err(refused("ArmBarrier"))?;
        Ok(())
    }

    /// Chaos.ArmLostAcks: the next `count` mutations apply, then their reply is lost (UNAVAILABLE).
    pub async fn arm_lost_acks(&mut self, count: u32) -> Result<(), ClientError> {
        let request = self.admin_request(pb::ArmLostAcksRequest {
            count,
            code: pb::arm_lost_acks_request::Code::Unavailable.into(),
        });
        self.chaos
            .arm_lost_acks(request)
            .await
            .map_err(refused("ArmLostAcks"))?;
        Ok(())
    }

    /// Chaos.SetSlowOwner: actor owners wait `delay_ms` before each message.
    pub async fn set_slow_owner(&mut self, delay_ms: u64) -> Result<(), ClientError> {
        let request = self.admin_request(pb::SetSlowOwnerRequest { delay_ms });
        self.chaos
            .set_slow_owner(request)
            .await
            .map_err(refused("SetSlowOwner"))?;
        Ok(())
    }

    /// Chaos.ArmCrash: the ledger aborts when an operation next reaches `point`.
    pub async fn arm_crash(&mut self, point: pb::CrashPoint) -> Result<(), ClientError> {
        let request = self.admin_request(pb::ArmCrashRequest {
            point: point.into(),
            skip: 0,
        });
        self.chaos
            .arm_crash(request)
            .await
            .map_err(refused("ArmCrash"))?;
        Ok(())
    }

    /// Chaos.Reset: disarm every fault.
    pub async fn reset_chaos(&mut self) -> Result<(), ClientError> {
        let request = self.admin_request(pb::ChaosResetRequest {});
        self.chaos
            .reset(request)
            .await
            .map_err(refused("Chaos.Reset"))?;
        Ok(())
    }

    /// Admin.GetMode.
    pub async fn mode(&mut self) -> Result<Option<Mode>, ClientError> {
        let request = self.admin_request(pb::GetModeRequest {});
        let reply = self
            .admin
            .get_mode(request)
            .await
            .map_err(refused("GetMode"))?;
        Ok(Mode::from_proto(reply.into_inner().mode))
    }

    /// Admin.Audit.
    pub async fn audit(&mut self) -> Result<pb::AuditReply, ClientError> {
        Ok({
            let request = self.admin_request(pb::AuditRequest {});
            self.admin.audit(request).await
        }
        .map_err(refused("Audit"))?
        .into_inner())
    }

    /// Admin.ExportJournal: the journal as a stream, with no deadline (it
    /// may hold millions of entries).
    pub async fn export_journal(
        &mut self,
    ) -> Result<tonic::Streaming<pb::JournalRecord>, ClientError> {
        let mut request = tonic::Request::new(pb::ExportJournalRequest {});
        if let Some(token) = &self.admin_token {
            overdraft_proto::admin_token::attach(&mut request, token);
        }
        Ok(self
            .admin
            .export_journal(request)
            .await
            .map_err(refused("ExportJournal"))?
            .into_inner())
    }

    /// Admin.Stats.
    pub async fn stats(&mut self) -> Result<pb::StatsReply, ClientError> {
        Ok({
            let request = self.admin_request(pb::StatsRequest {});
            self.admin.stats(request).await
        }
        .map_err(refused("Stats"))?
        .into_inner())
    }

    /// Ledger.GetBalance.
    pub async fn balance(&mut self, account_id: &str) -> Result<pb::AccountState, ClientError> {
        Ok(self
            .ledger
            .get_balance(pb::GetBalanceRequest {
                account_id: account_id.to_owned(),
            })
            .await
            .map_err(refused("GetBalance"))?
            .into_inner())
    }
}
