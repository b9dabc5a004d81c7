//! `ledger --threads N`: how many runtime threads serve calls, and that one
//! thread alone serves a durable crowd.
// A real process on real sockets: nothing for the modelled (shuttle) runtime.
#![cfg(not(feature = "shuttle"))]

mod common;

use std::time::Duration;

use overdraft_proto::v1::{self as pb, admin_client::AdminClient, ledger_client::LedgerClient};
use tokio::process::{Child, Command};

/// A real ledger binary with `args` over `dir`: the child and its URL.
async fn ledger(args: &[&str], dir: &std::path::Path) -> (Child, String) {
    let dir = dir.to_str().expect("a UTF-8 temporary path");
    let args: Vec<&str> = args.iter().copied().chain(["--data-dir", dir]).collect();
    common::start_ledger_with(&args).await
}

/// CPU ticks (user + system) of a `/proc/PID/...stat` file.
fn ticks(stat: &str) -> u64 {
    let stat = std::fs::read_to_string(stat).unwrap();
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// What a crowd cost the ledger: its CPU ticks, and those of its main
/// thread (the one `--threads 1` serves calls on).
#[derive(Debug)]
struct Cost {
    process: u64,
    main_thread: u64,
}

/// 16 clients deposit 1 cent 200 times each, concurrently, into acct-0;
/// returns what that cost the ledger `pid`, after checking the balance.
async fn crowd(url: &str, pid: u32) -> Cost {
    let (process, main_thread) = (
        format!("/proc/{pid}/stat"),
        format!("/proc/{pid}/task/{pid}/stat"),
    );
    let channel = common::connect(url).await;
    AdminClient::new(channel.clone())
        .reset(pb::ResetRequest {
            accounts: vec![pb::OpenAccountRequest {
                account_id: "acct-0".into(),
                initial_balance_cents: 0,
            }],
        })
        .await
        .unwrap();
    let before = (ticks(&process), ticks(&main_thread));
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let mut ledger = LedgerClient::new(channel.clone());
            tokio::spawn(async move {
                for n in 0..200 {
                    ledger
                        .deposit(pb::DepositRequest {
                            account_id: "acct-0".into(),
                            amount_cents: 1,
                            request_id: format!("t-{client}-{n}"),
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(120), client)
            .await
            .expect("3,200 deposits within 120 s")
            .unwrap();
    }
    let cost = Cost {
        process: ticks(&process) - before.0,
        main_thread: ticks(&main_thread) - before.1,
    };
    let balance = LedgerClient::new(channel)
        .get_balance(pb::GetBalanceRequest {
            account_id: "acct-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.balance_cents, 3_200, "every deposit landed once");
    cost
}

/// Goal: `--threads 1` serves every call on the main thread, and that
/// thread alone carries a durable crowd (the courier, the flush requests
/// and the calls all on it): 16 clients' concurrent deposits under
/// `--durability sync` all land. With `--threads 3` the calls run on the
/// workers and the main thread only waits. Method: real binaries; each
/// thread's CPU read from /proc around the crowd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_serves_a_durable_crowd_on_the_main_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = ledger(
        &["--threads", "1", "--durability", "sync", "--mode", "mutex"],
        dir.path(),
    )
    .await;
    let one = crowd(&url, child.id().unwrap()).await;
    assert!(
        one.process >= 10 && one.main_thread * 2 >= one.process,
        "with one thread the main thread does most of the work: {one:?}"
    );
    drop(child);

    let dir = tempfile::tempdir().unwrap();
    let (child, url) = ledger(&["--threads", "3", "--mode", "mutex"], dir.path()).await;
    let three = crowd(&url, child.id().unwrap()).await;
    assert!(
        three.process >= 10 && three.main_thread * 10 <= three.process,
        "with workers the main thread only waits: {three:?}"
    );
}

/// Goal: a thread count outside 1..=256 is refused naming the flag and the
/// range, before anything starts. Method: the binary with `--threads 0`.
#[tokio::test]
async fn zero_threads_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["--listen", "127.0.0.1:0", "--threads", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--threads"), "{stderr}");
    assert!(stderr.contains("1..=256"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing was created"
    );
}
