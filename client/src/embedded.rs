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
