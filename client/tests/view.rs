//! `atm view`: the live page, loaded in headless Chromium while a crowd of
//! ATMs runs, moves between two looks and shows an unsafe run's anomalies
//! with the operations behind them; a mutex run shows none.

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use overdraft_client::{
    load::{self, LoadArgs},
    view::{self, ViewArgs},
};
use overdraft_server::{RunningLedger, config::Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACCOUNTS: u32 = 6;

async fn bank(mode: Mode) -> RunningLedger {
    common::bank(mode, ACCOUNTS, 100_000).await
}

/// Three crowd members for `seconds`, writing into `histories`.
fn crowd(ledger: &RunningLedger, histories: &Path, seconds: u64) -> tokio::task::JoinSet<()> {
    let mut members = tokio::task::JoinSet::new();
    for n in 0..3 {
        let url = ledger.url();
        let args = LoadArgs {
            atms: 1,
            accounts: ACCOUNTS,
            duration: Some(Duration::from_secs(seconds)),
            mix: "deposit=35,withdraw=35,transfer=20,balance=10"
                .parse()
                .unwrap(),
            amount_cents: "100..20000".parse().unwrap(),
            connections: 1,
            seed: 3,
            opening_cents: 100_000,
            history: Some(histories.to_owned()),
            ..LoadArgs::default()
        };
        members.spawn(async move {
            load::join(&url, &args, &format!("atm-{n}"), false)
                .await
                .unwrap();
        });
    }
    members
}

/// Serves the view of `ledger` on a free loopback port.
async fn serve_view(ledger: &RunningLedger, histories: &Path) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let args = ViewArgs {
        target: ledger.url(),
        http: address,
        histories: Some(histories.to_owned()),
        fault_log: None,
    };
    tokio::spawn(async move { view::serve(listener, &args).await });
    address
}

/// The page's DOM after `updates` pushed updates (the page stops listening
/// then, so headless Chromium's virtual time can run out).
async fn dom(address: SocketAddr, updates: u32) -> String {
    let output = chromium(&["--dump-dom".to_owned()], address, updates).await;
    String::from_utf8_lossy(&output).into_owned()
}

async fn screenshot(address: SocketAddr, updates: u32, path: &Path) -> Vec<u8> {
    chromium(
        &[
            "--window-size=1280,1000".to_owned(),
            format!("--screenshot={}", path.display()),
        ],
        address,
        updates,
    )
    .await;
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    pixels.truncate(info.buffer_size());
    pixels
}

async fn chromium(extra: &[String], address: SocketAddr, updates: u32) -> Vec<u8> {
    let run = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--virtual-time-budget=3000",
        ])
        .args(extra)
        .arg(format!("http://{address}/?updates={updates}"))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .expect("Debian's chromium is installed (.ci/run installs it)");
    assert!(output.status.success(), "{output:?}");
    output.stdout
}

/// The number in the element with `id`, commas dropped.
fn number(dom: &str, id: &str) -> u64 {
    let start = dom
        .find(&format!("id=\"{id}\">"))
        .unwrap_or_else(|| panic!("#{id} in the page"))
        + id.len()
        + 6;
    let digits: String = dom[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("#{id} holds a number: {}", &dom[start..start + 40]))
}

async fn snapshot(address: SocketAddr) -> serde_json::Value {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /snapshot HTTP/1.1\r\nhost: view\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

/// Goal: during an unsafe crowd's load the page is pushed updates, its
/// numbers and its picture change between two looks, the swimlanes show
/// every ATM, and the audit's anomalies appear with the operations behind
/// them. Operation: three members for 16 s on six accounts with the race
/// window open; two looks a few seconds apart (DOM and screenshot, each after two
/// pushed updates), a third after the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_moves_and_shows_an_unsafe_runs_anomalies() {
    let ledger = bank(Mode::Unsafe).await;
    let dir = tempfile::tempdir().unwrap();
    let histories = dir.path().join("histories");
    let address = serve_view(&ledger, &histories).await;
    let mut members = crowd(&ledger, &histories, 16);
    // Rates are counted over a second that ended half a second ago: wait
    // (bounded) until the view has one and every ATM's lane.
    let started = std::time::Instant::now();
    loop {
        let state = snapshot(address).await;
        let lanes = state["lanes"].as_array().map_or(0, Vec::len);
        if state["ops_per_sec"]["all"].as_f64().unwrap_or(0.0) > 0.0 && lanes == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the view saw the crowd within 6 s: {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let first = dom(address, 2).await;
    let first_shot = screenshot(address, 2, &dir.path().join("first.png")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = dom(address, 2).await;
    let second_shot = screenshot(address, 2, &dir.path().join("second.png")).await;

    for page in [&first, &second] {
        assert!(page.contains("data-updates=\"2\""), "two pushed updates");
        assert!(page.contains("class=\"mode unsafe\" id=\"mode\">unsafe<"));
        assert!(
            number(page, "rate-all") > 0,
            "operations per second shown: {}",
            snapshot(address).await["ops_per_sec"]
        );
        for atm in ["atm-0", "atm-1", "atm-2"] {
            assert!(page.contains(&format!(">{atm}</text>")), "{atm}'s lane");
        }
        assert!(
            page.matches("<rect ").count() > 10,
            "operations in the lanes"
        );
    }
    let (before, after) = (number(&first, "total"), number(&second, "total"));
    assert!(
        after > before,
        "the operation count moved: {before} -> {after}"
    );
    assert_eq!(first_shot.len(), second_shot.len());
    let changed = first_shot
        .iter()
        .zip(&second_shot)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        changed > 1_000,
        "the picture changed: {changed} bytes differ"
    );

    while members.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let last = dom(address, 1).await;
    assert!(
        last.contains("class=\"broken\""),
        "the audit summary says findings"
    );
    assert!(last.contains("class=\"anomaly\""), "anomalies listed");
    assert!(last.contains(">lost update<") || last.contains(">overdraft<"));
    assert!(
        last.contains("load-atm-"),
        "the operations behind them named"
    );
    let state = snapshot(address).await;
    assert_eq!(state["mode"], "unsafe");
    assert!(state["audit"]["findings_total"].as_u64().unwrap() > 0);
}

/// Goal: the same page over a mutex crowd shows a clean audit and no
/// anomaly (the page does not invent them). Operation: three members for
/// 4 s, one look after the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_mutex_run_clean() {
    let ledger = bank(Mode::Mutex).await;
    let dir = tempfile::tempdir().unwrap();
    let histories = dir.path().join("histories");
    let address = serve_view(&ledger, &histories).await;
    let mut members = crowd(&ledger, &histories, 4);
    while members.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let page = dom(address, 1).await;
    assert!(page.contains("class=\"mode mutex\" id=\"mode\">mutex<"));
    assert!(
        page.contains("class=\"clean\""),
        "the audit summary is clean"
    );
    assert!(!page.contains("class=\"anomaly\""));
    assert!(number(&page, "total") > 100);
}

/// Goal: `atm view --target A,B` watches a ledger scaled out: operations
/// are counted over every replica, and replicas left in different modes
/// are shown as such. Operation: two ledgers (mutex and cas), 7 deposits
/// on the first and 5 on the second; the snapshot counts 12 and names both
/// modes; once both are in cas it says cas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_counts_every_replica() {
    use overdraft_proto::v1 as pb;
    let ledgers = [bank(Mode::Mutex).await, bank(Mode::Cas).await];
    for (ledger, deposits) in ledgers.iter().zip([7, 5]) {
        let mut client = pb::ledger_client::LedgerClient::connect(ledger.url())
            .await
            .unwrap();
        for n in 0..deposits {
            client
                .deposit(pb::DepositRequest {
                    account_id: "acct-0".into(),
                    amount_cents: 100,
                    request_id: format!("view-{n}"),
                })
                .await
                .unwrap();
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let args = ViewArgs {
        target: format!("{},{}", ledgers[0].url(), ledgers[1].url()),
        http: address,
        histories: None,
        fault_log: None,
    };
    tokio::spawn(async move { view::serve(listener, &args).await });
    tokio::time::sleep(view::EVERY * 2).await;
    let state = snapshot(address).await;
    assert_eq!(state["operations_total"], 12, "{state}");
    assert_eq!(state["mode"], "mixed: mutex, cas", "{state}");
    overdraft_client::connect::Clients::connect(&ledgers[0].url())
        .await
        .unwrap()
        .set_mode(Mode::Cas)
        .await
        .unwrap();
    tokio::time::sleep(view::EVERY * 2).await;
    assert_eq!(snapshot(address).await["mode"], "cas");
}
