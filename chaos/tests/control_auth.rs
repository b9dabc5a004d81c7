//! Who may inject faults through the proxy: beyond loopback its control API
//! requires the admin token, as the ledger's Admin and Chaos services do; a
//! refused call changes nothing. Real sockets, the real control API, and
//! the real `chaos` binary as a user runs it.

use std::{process::Command, sync::Arc};

use overdraft_chaos::{
    control::ControlClient,
    fault::{Fault, FaultKind},
    log::FaultLog,
    proxy::Proxy,
    registry::Registry,
};
use tokio::{net::TcpListener, sync::oneshot};

/// A proxy whose control API listens on `control_ip` (port 0), with the
/// admin token `token`. Returns the control API's loopback URL (a listener
/// on 0.0.0.0 answers there too) and what keeps the proxy running.
async fn proxy(control_ip: &str, token: Option<&str>) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = TcpListener::bind(format!("{control_ip}:0")).await.unwrap();
    let port = control.local_addr().unwrap().port();
    // Nothing listens upstream: these tests never send a call through.
    let proxy = Proxy::new(
        "http://127.0.0.1:9",
        Arc::new(Registry::new(1, FaultLog::disabled())),
    )
    .unwrap()
    .with_admin_token(token.map(str::to_owned));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy.run(listener, control, async {
        let _ = stopped.await;
    }));
    (format!("http://127.0.0.1:{port}"), stop)
}

fn latency() -> Fault {
    Fault::new(FaultKind::Latency {
        latency_ms: 100,
        jitter_ms: 0,
    })
}

async fn faults_listed(client: &ControlClient) -> usize {
    client.list().await.unwrap().as_array().unwrap().len()
}

/// Goal: beyond loopback, a call without the token, or with a wrong one,
/// is refused (401, naming the header) and adds nothing; the right token
/// adds the fault. Method: a control API on 0.0.0.0 with token "s3cret";
/// add through clients with no token, a wrong token and the right one,
/// listing with the right one after each.
#[tokio::test]
async fn beyond_loopback_the_control_api_requires_the_admin_token() {
    let (url, _stop) = proxy("0.0.0.0", Some("s3cret")).await;
    let allowed = ControlClient::new(&url)
        .unwrap()
        .with_token(Some("s3cret".into()));
    for token in [None, Some("wrong".to_owned()), Some("s3cret-".to_owned())] {
        let client = ControlClient::new(&url).unwrap().with_token(token.clone());
        let refused = client.add(&latency()).await.unwrap_err().to_string();
        assert!(
            refused.contains("401") && refused.contains("authorization: Bearer"),
            "token {token:?}: {refused}"
        );
        let reset = client.reset().await.unwrap_err().to_string();
        assert!(reset.contains("401"), "{reset}");
        assert_eq!(
            faults_listed(&allowed).await,
            0,
            "token {token:?} added nothing"
        );
    }
    allowed.add(&latency()).await.unwrap();
    assert_eq!(faults_listed(&allowed).await, 1);
    let refused = ControlClient::new(&url).unwrap().reset().await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    assert_eq!(
        faults_listed(&allowed).await,
        1,
        "a refused reset removed nothing"
    );
}

/// Goal: beyond loopback with no token configured, the control API is
/// closed to everyone and says how to open it; on loopback it is open
/// without a token (the laptop demo), so the rule follows the address.
/// Method: one proxy on 0.0.0.0 without a token, one on 127.0.0.1.
#[tokio::test]
async fn without_a_token_only_loopback_is_open() {
    let (url, _stop) = proxy("0.0.0.0", None).await;
    let client = ControlClient::new(&url)
        .unwrap()
        .with_token(Some("anything".into()));
    let refused = client.list().await.unwrap_err().to_string();
    assert!(
        refused.contains("401") && refused.contains("--admin-token"),
        "{refused}"
    );
    let (url, _stop) = proxy("127.0.0.1", None).await;
    let open = ControlClient::new(&url).unwrap();
    open.add(&latency()).await.unwrap();
    assert_eq!(faults_listed(&open).await, 1);
}

/// Runs `chaos fault add latency` against `url`, with OVERDRAFT_ADMIN_TOKEN
/// set to `token` or unset.
fn chaos_fault_add(url: &str, token: Option<&str>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chaos"));
    command.args(["fault", "add", "latency", "latency_ms=5", "--control", url]);
    command.env_remove("OVERDRAFT_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("OVERDRAFT_ADMIN_TOKEN", token);
    }
    command.output().expect("the chaos binary runs")
}

/// Goal: `chaos fault add` sends the token from OVERDRAFT_ADMIN_TOKEN, and
/// without it the user sees the refusal and a failing exit. Method: the real
/// binary against a control API on 0.0.0.0, with and without the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_fault_sends_the_token_from_the_environment() {
    let (url, _stop) = proxy("0.0.0.0", Some("s3cret")).await;
    let without = url.clone();
    let refused = tokio::task::spawn_blocking(move || chaos_fault_add(&without, None))
        .await
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("401"), "{message}");
    let with = url.clone();
    let added = tokio::task::spawn_blocking(move || chaos_fault_add(&with, Some("s3cret")))
        .await
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let allowed = ControlClient::new(&url)
        .unwrap()
        .with_token(Some("s3cret".into()));
    assert_eq!(faults_listed(&allowed).await, 1);
}
