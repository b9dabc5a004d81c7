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
        .env_remove("OVERDRAFT_DATABASE_URL")
        .output()
        .await
        .expect("the atm binary runs")
}

/// A ledger in `mode` with the race window open up to 3 ms and `accounts`
/// opened with `opening_cents` each, as `atm reset --mode` leaves it for a
/// crowd.
pub async fn bank(
    mode: overdraft_server::config::Mode,
    accounts: u32,
    opening_cents: i64,
) -> RunningLedger {
    use overdraft_client::{connect::Clients, load};
    let ledger = ledger().await;
    let mut clients = Clients::connect(&ledger.url()).await.unwrap();
    clients
        .configure(overdraft_proto::v1::ConfigureRequest {
            race_window_ms_max: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    clients
        .reset(load::opening(accounts, opening_cents))
        .await
        .unwrap();
    clients.set_mode(mode).await.unwrap();
    ledger
}
