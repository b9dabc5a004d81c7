//! Helpers for the ATM's tests: an embedded ledger and the `atm` binary.

#![allow(dead_code, unreachable_pub)]

use std::process::Output;

use overdraft_server::{Config, RunningLedger};

/// A ledger on 127.0.0.1:0 over temporary storage.
pub async fn ledger() -> RunningLedger {
    let mut config = Config::defaults();
    config.listen = ([127, 0, 0, 1], 0).into();
    config.data_dir = None;
    overdraft_server::spawn(config)
        .await
        .expect("the ledger starts")
}

/// Runs the `atm` binary with `args` to completion.
pub async fn atm(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_atm"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("the atm binary runs")
}
