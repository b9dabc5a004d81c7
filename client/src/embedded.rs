//! An embedded ledger for `atm demo` and `atm scenario` without `--target`:
//! the real server on a loopback port, over a temporary sled database.

use overdraft_server::{Config, RunningLedger};

use crate::connect::ClientError;

/// Starts a ledger on 127.0.0.1 with a free port, seeded with `seed`.
pub async fn start(seed: u64) -> Result<RunningLedger, ClientError> {
    let mut config = Config::defaults();
    config.listen = ([127, 0, 0, 1], 0).into();
    config.data_dir = None;
    config.seed = seed;
    overdraft_server::spawn(config)
        .await
        .map_err(|e| ClientError::Internal(format!("cannot start the embedded ledger: {e:#}")))
}

/// The ledger a command runs against: the one at `--target`, or one embedded
/// in this process for as long as the command runs.
#[derive(Debug)]
pub struct Ledger {
    embedded: Option<RunningLedger>,
    /// The URL to connect to.
    pub url: String,
    /// `embedded` or the target, for reports.
    pub label: String,
}

impl Ledger {
    /// Uses `target` when given; otherwise starts an embedded ledger seeded with `seed`.
    pub async fn target_or_embedded(
        target: Option<String>,
        seed: u64,
    ) -> Result<Self, ClientError> {
        match target {
            Some(target) => Ok(Self {
                embedded: None,
                url: target.clone(),
                label: target,
            }),
            None => {
                let embedded = start(seed).await?;
                Ok(Self {
                    url: embedded.url(),
                    label: "embedded".to_owned(),
                    embedded: Some(embedded),
                })
            }
        }
    }

    /// Stops the embedded ledger, if any.
    pub async fn stop(self) -> Result<(), ClientError> {
        match self.embedded {
            Some(embedded) => embedded
                .stop()
                .await
                .map_err(|e| ClientError::Internal(e.to_string())),
            None => Ok(()),
        }
    }
}

/// Starts `replicas.count` ledgers in this process on the PostgreSQL
/// database at `database_url`, as `run` sets them: its mode, and its lock
/// scope, fencing or isolation. They are named `SCENARIO-0`, `SCENARIO-1`,
/// ... in the journal, so a rerun takes back its own replicas' leases.
pub async fn replicas(
    database_url: &str,
    scenario: &str,
    replicas: &crate::scenario::Replicas,
    run: crate::scenario::Run,
    seed: u64,
) -> Result<Vec<RunningLedger>, ClientError> {
    use crate::scenario::Setting;
    use overdraft_server::config::StoreKind;
    let url: overdraft_server::config::DatabaseUrl = database_url
        .parse()
        .unwrap_or_else(|never: std::convert::Infallible| match never {});
    let mut started = Vec::new();
    for n in 0..replicas.count {
        let mut config = Config::defaults();
        config.listen = ([127, 0, 0, 1], 0).into();
        config.data_dir = None;
        config.store = StoreKind::Postgres;
        config.database_url = Some(url.clone());
        config.replica = Some(format!("{scenario}-{n}"));
        config.pool_size = 8;
        config.mode = run.mode;
        config.seed = seed.wrapping_mul(31).wrapping_add(u64::from(n));
        if let Some(ttl) = replicas.lease_ttl_ms {
            config.lease_ttl_ms = ttl;
        }
        match run.setting {
            Some(Setting::LockScope(scope)) => config.lock_scope = scope,
            Some(Setting::Fencing(fencing)) => config.fencing = fencing,
            Some(Setting::Isolation(level)) => config.isolation = level,
            None => {}
        }
        match overdraft_server::spawn(config).await {
            Ok(ledger) => started.push(ledger),
            Err(error) => {
                for ledger in started {
                    let _ = ledger.stop().await;
                }
                return Err(ClientError::Usage(format!(
                    "cannot start replica {n} on the PostgreSQL database given (--database-url): {error:#}"
                )));
            }
        }
    }
    Ok(started)
}
