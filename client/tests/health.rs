//! `atm health`: the standard gRPC health check as a command, for container
//! health checks.

mod common;

/// Goal: `atm health` exits 0 and prints SERVING for a serving ledger and
/// for one of its services, 1 for a service it does not know, and 2 (naming
/// the target) when nothing listens. Method: the binary against an embedded
/// ledger, then against a port nobody holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_by_what_the_ledger_answers() {
    let ledger = common::ledger().await;
    let url = ledger.url();
    let out = |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).into_owned();

    let serving = common::atm(&["health", "--target", &url]).await;
    assert_eq!(serving.status.code(), Some(0), "{serving:?}");
    assert_eq!(out(&serving).trim(), "SERVING");

    let ledger_service = common::atm(&[
        "health",
        "--target",
        &url,
        "--service",
        "overdraft.v1.Ledger",
    ])
    .await;
    assert_eq!(ledger_service.status.code(), Some(0), "{ledger_service:?}");

    let unknown = common::atm(&["health", "--target", &url, "--service", "no.such.Service"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        out(&unknown).starts_with("UNKNOWN_SERVICE"),
        "{}",
        out(&unknown)
    );

    // A port that was bound and released: nothing listens there now.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let target = format!("http://{free}");
    let nobody = common::atm(&["health", "--target", &target, "--timeout", "2s"]).await;
    assert_eq!(nobody.status.code(), Some(2), "{nobody:?}");
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains(&target),
        "{nobody:?}"
    );

    let bad = common::atm(&["health", "--target", &url, "--timeout", "5m"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--timeout"),
        "{bad:?}"
    );
    ledger.stop().await.unwrap();
}
