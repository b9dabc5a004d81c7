//! Shared by the tests that run the real `ledger` binary: start it on a free
//! port over a data directory, and connect once it listens.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

/// Starts `ledger` on a free port over `dir`; returns the child and its URL.
pub(crate) async fn start_ledger(dir: &Path, mode: &str, durability: &str) -> (Child, String) {
    let dir = dir.to_str().expect("a UTF-8 temporary path");
    start_ledger_with(&[
        "--mode",
        mode,
        "--durability",
        durability,
        "--data-dir",
        dir,
    ])
    .await
}

/// Starts `ledger` on a free port with `args`; returns the child and its URL.
pub(crate) async fn start_ledger_with(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the ledger binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the ledger prints its address within 30 s")
        .expect("stdout readable")
        .expect("a first line");
    let addr = line
        .strip_prefix("listening on ")
        .expect("the address line")
        .to_owned();
    (child, format!("http://{addr}"))
}

pub(crate) async fn connect(url: &str) -> Channel {
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {url}");
}

/// Opens each of `accounts` with `cents` through the ledger at `url`.
pub(crate) async fn open_accounts(url: &str, accounts: &[&str], cents: i64) {
    let mut ledger = overdraft_proto::v1::ledger_client::LedgerClient::new(connect(url).await);
    for account in accounts {
        ledger
            .open_account(overdraft_proto::v1::OpenAccountRequest {
                account_id: (*account).into(),
                initial_balance_cents: cents,
            })
            .await
            .unwrap();
    }
}

/// Kills `child` with SIGKILL and reaps it.
pub(crate) async fn sigkill(child: &mut Child) {
    signal(child, libc::SIGKILL);
    child.wait().await.unwrap();
}

/// Sends `signal` to `child` (SIGSTOP, SIGCONT, SIGKILL).
pub(crate) fn signal(child: &Child, signal: libc::c_int) {
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: kill(2) with a pid we spawned and still own; no memory is touched.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Starts `ledger` as replica `name` on the PostgreSQL database at `url`,
/// with `args` besides; returns the child and its URL.
pub(crate) async fn start_replica(url: &str, name: &str, args: &[&str]) -> (Child, String) {
    let mut all = vec![
        "--store",
        "postgres",
        "--database-url",
        url,
        "--replica",
        name,
    ];
    all.extend_from_slice(args);
    start_ledger_with(&all).await
}
