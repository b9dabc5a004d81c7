//! The real `ledger` binary reports what it costs: Admin.Stats carries its
//! own CPU time and memory, and `--metrics-listen` serves them to Prometheus.
// A real process on real sockets: nothing for the modelled (shuttle) runtime.
#![cfg(not(feature = "shuttle"))]

mod common;

use std::{process::Stdio, time::Duration};

use overdraft_proto::v1::{self as pb, admin_client::AdminClient, ledger_client::LedgerClient};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

/// Goal: Admin.Stats reports the ledger process's CPU time and resident
/// memory, and the CPU grows with work done in that process (not in the
/// test's). Method: a real ledger binary with `--metrics-listen`; read
/// Stats, send 3,000 deposits, read again; scrape `/metrics` and find the
/// same process figures there. Ledgers embedded in one process share its
/// process instance, so a client summing replicas counts it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_the_ledgers_own_cpu_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the ledger binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the ledger prints within 30 s")
            .unwrap()
            .expect("a line")
    };
    let addr = next_line()
        .await
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let metrics_line = next_line().await;
    let metrics_url = metrics_line
        .strip_prefix("metrics on http://")
        .expect("the metrics address line")
        .to_owned();
    let channel = common::connect(&format!("http://{addr}")).await;
    let mut admin = AdminClient::new(channel.clone());
    let mut ledger = LedgerClient::new(channel);
    admin
        .reset(pb::ResetRequest {
            accounts: vec![pb::OpenAccountRequest {
                account_id: "acct-0".into(),
                initial_balance_cents: 0,
            }],
        })
        .await
        .unwrap();
    let before = admin.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    for n in 0..3_000 {
        ledger
            .deposit(pb::DepositRequest {
                account_id: "acct-0".into(),
                amount_cents: 1,
                request_id: format!("cpu-{n}"),
            })
            .await
            .unwrap();
    }
    let after = admin.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    let cpu = |s: &pb::StatsReply| s.cpu_user_us + s.cpu_system_us;
    assert!(cpu(&before) > 0, "{before:?}");
    assert!(
        cpu(&after) > cpu(&before) + 10_000,
        "3,000 deposits cost the ledger more than 10 ms of CPU: {} -> {} µs",
        cpu(&before),
        cpu(&after)
    );
    assert!(after.rss_bytes > 1024 * 1024, "{after:?}");

    let (host_port, path) = metrics_url.split_once('/').unwrap();
    assert_eq!(path, "metrics");
    let mut stream = tokio::net::TcpStream::connect(host_port).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let cpu_seconds: f64 = response
        .lines()
        .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
        .expect("process_cpu_seconds_total is exposed")
        .parse()
        .unwrap();
    assert!(
        cpu_seconds * 1e6 >= cpu(&after) as f64,
        "the scrape came later than Stats: {cpu_seconds} s vs {} µs",
        cpu(&after)
    );
    let deposits_ok = response
        .lines()
        .find(|line| {
            line.starts_with("overdraft_operations_total{")
                && line.contains("method=\"deposit\"")
                && line.contains("code=\"Ok\"")
        })
        .expect("the deposits are counted");
    assert!(deposits_ok.ends_with(" 3000"), "{deposits_ok}");

    // Two ledgers embedded in this test's process report its figures, and
    // say so: the same process instance, not the binary's.
    let mut embedded = Vec::new();
    for _ in 0..2 {
        let mut config = overdraft_server::Config::defaults();
        config.listen = ([127, 0, 0, 1], 0).into();
        config.store = overdraft_server::config::StoreKind::Memory;
        let running = overdraft_server::spawn(config).await.unwrap();
        let stats = AdminClient::new(common::connect(&running.url()).await)
            .stats(pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        embedded.push(stats.process_instance);
        running.stop().await.unwrap();
    }
    assert_eq!(embedded[0], embedded[1], "one process, one instance");
    assert_ne!(
        embedded[0], after.process_instance,
        "the ledger binary is another process"
    );
    assert_eq!(
        after.process_instance, before.process_instance,
        "an instance lasts the process's life"
    );
    child.kill().await.unwrap();
}
