//! What the ledger says of itself: `/metrics` (Prometheus text) counts what
//! the ATMs counted.

use std::{collections::BTreeMap, time::Duration};

use overdraft_client::load::{self, LoadArgs, LoadReport};
use overdraft_server::{Config, RunningLedger, config::Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A ledger on 127.0.0.1:0 with `/metrics` on another free port.
async fn ledger_with_metrics() -> RunningLedger {
    let mut config = Config::defaults();
    config.listen = ([127, 0, 0, 1], 0).into();
    config.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    overdraft_server::spawn(config)
        .await
        .expect("the ledger starts")
}

/// GET /metrics over a plain HTTP/1.1 connection; the body.
async fn scrape(ledger: &RunningLedger) -> String {
    let addr = ledger.metrics_addr.expect("--metrics-listen was given");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// Sums every sample of `name` whose labels include each of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

fn args() -> LoadArgs {
    LoadArgs {
        atms: 8,
        accounts: 10,
        duration: Some(Duration::from_millis(1_500)),
        mix: "deposit=30,withdraw=40,transfer=20,balance=10"
            .parse()
            .unwrap(),
        // Withdrawals up to twice the opening balance: many are refused.
        amount_cents: "100..20000".parse().unwrap(),
        connections: 2,
        seed: 11,
        opening_cents: 10_000,
        ..LoadArgs::default()
    }
}

/// Goal: the operation counters agree exactly with what the ATMs counted,
/// per method and per gRPC code, and they move during the load. Method: a
/// 1.5 s mutex-mode load with refusals; scrape once mid-load (counters
/// present, above zero, CPU and memory reported) and once after; compare
/// with the load's own per-method counts and status counts. A wrong label,
/// a missed or double count fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_counters_match_the_atms_counts() {
    let ledger = ledger_with_metrics().await;
    let url = ledger.url();
    let load =
        tokio::spawn(async move { load::run(&url, &args(), Some(Mode::Mutex), false).await });
    // Mid-load: poll until the ATMs' first operations are counted (the
    // load first resets the ledger), for at most 1 s of the 1.5 s run.
    let polled = std::time::Instant::now();
    let (during, mid_load) = loop {
        let text = scrape(&ledger).await;
        let counted = sum(&text, "overdraft_operations_total", &[("mode", "mutex")]);
        if counted > 0.0 || polled.elapsed() > Duration::from_secs(1) {
            break (text, counted);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(mid_load > 0.0, "no operations counted mid-load:\n{during}");
    assert!(!load.is_finished(), "the scrape came while the load ran");
    assert!(
        sum(&during, "process_cpu_seconds_total", &[]) > 0.0,
        "{during}"
    );
    assert!(
        sum(&during, "process_resident_memory_bytes", &[]) > 1e6,
        "{during}"
    );
    assert_eq!(
        sum(&during, "overdraft_mode", &[("mode", "mutex")]),
        1.0,
        "{during}"
    );

    let report: LoadReport = load.await.unwrap().expect("the load runs");
    let after = scrape(&ledger).await;
    assert!(
        sum(&after, "overdraft_operations_total", &[]) > mid_load,
        "counters grew after the mid-load scrape"
    );
    assert!(
        report.status_counts.len() >= 2,
        "the load saw refusals: {:?}",
        report.status_counts
    );
    // After the ATMs stop, the load reads every account once to reconcile:
    // those reads are balance calls that end Ok.
    let final_reads = f64::from(report.accounts);
    for (method, latency) in &report.latency_us {
        if method == "all" {
            continue;
        }
        let extra = if method == "balance" {
            final_reads
        } else {
            0.0
        };
        let counted = sum(&after, "overdraft_operations_total", &[("method", method)]);
        assert_eq!(
            counted,
            latency.count as f64 + extra,
            "{method}: ledger vs ATMs"
        );
        let timed = sum(
            &after,
            "overdraft_operation_duration_seconds_count",
            &[("method", method)],
        );
        assert_eq!(
            timed,
            latency.count as f64 + extra,
            "{method}: histogram count"
        );
    }
    for (code, count) in &report.status_counts {
        let extra = if code == "Ok" { final_reads } else { 0.0 };
        let counted = sum(&after, "overdraft_operations_total", &[("code", code)]);
        assert_eq!(
            counted,
            *count as f64 + extra,
            "code {code}: ledger vs ATMs"
        );
    }
    let by_mode: BTreeMap<&str, f64> = Mode::ALL
        .iter()
        .map(|mode| {
            let counted = sum(
                &after,
                "overdraft_operations_total",
                &[("mode", mode.as_str())],
            );
            (mode.as_str(), counted)
        })
        .collect();
    assert_eq!(
        by_mode["mutex"],
        report.operations as f64 + final_reads,
        "{by_mode:?}"
    );
    assert_eq!(
        by_mode["unsafe"] + by_mode["cas"] + by_mode["actor"],
        0.0,
        "{by_mode:?}"
    );
    ledger.stop().await.unwrap();
}
