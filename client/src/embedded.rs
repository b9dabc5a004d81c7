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
