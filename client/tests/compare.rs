//! `atm compare`: the JSON schema, and an HTML page that headless Chromium renders.

mod common;

use serde_json::Value;

/// Goal: compare prints the versioned JSON schema with a measured ceiling and
/// one run per mode, and its HTML renders in headless Chromium with the
/// three charts and a bar per mode and series. Operation: a short seeded load
/// against an embedded ledger through the real binary; Chromium's DOM dump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_json_schema_and_html_renders_in_chromium() {
    let ledger = common::ledger().await;
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("compare.html");
    let url = ledger.url();
    let output = common::atm(&[
        "compare",
        "--target",
        &url,
        "--modes",
        "unsafe,mutex,cas,actor",
        "--ops",
        "800",
        "--atms",
        "8",
        "--accounts",
        "20",
        "--json",
        "--html",
        html.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["schema"], 1);
    let ceiling = report["ceiling_ops_per_sec"].as_f64().unwrap();
    let bracket: Vec<f64> = report["ceiling_runs_ops_per_sec"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_f64().unwrap())
        .collect();
    assert_eq!(bracket.len(), 2, "measured before and after the modes");
    assert!(bracket.iter().all(|c| *c > 0.0), "{bracket:?}");
    assert!(
        (ceiling - (bracket[0] + bracket[1]) / 2.0).abs() < 1e-6,
        "{ceiling} is the mean of {bracket:?}"
    );
    // The ceiling's own measurements: its tail, and what an empty call costs
    // each side (embedded here: one process, so both figures are its CPU).
    let ceiling_runs = report["ceiling_runs"].as_array().unwrap();
    assert_eq!(ceiling_runs.len(), 2);
    for run in ceiling_runs {
        assert!(
            run["latency_us"]["p999"].as_u64().unwrap()
                >= run["latency_us"]["p50"].as_u64().unwrap(),
            "{run}"
        );
        assert!(
            run["cpu_per_op"]["ledger_us"].as_f64().unwrap() > 0.0,
            "{run}"
        );
        assert!(run["cpu_per_op"]["atm_us"].as_f64().unwrap() > 0.0, "{run}");
    }
    let ceiling_cpu = report["ceiling_ledger_cpu_us_per_op"].as_f64().unwrap();
    assert!(ceiling_cpu > 0.0, "{report}");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| r["mode"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["unsafe", "mutex", "cas", "actor"]
    );
    for run in runs {
        assert!(run["ops_per_sec"].as_f64().unwrap() > 0.0);
        for key in ["p50", "p99", "p999"] {
            assert!(run["latency_us"][key].as_u64().is_some(), "{run}");
        }
        for key in ["overdrafts", "lost_updates", "money_delta_cents"] {
            assert!(run["anomalies"][key].is_number(), "{run}");
        }
        assert!(run["retries"].is_number() && run["aborts"].is_number());
        let ledger_us = run["cpu_per_op"]["ledger_us"].as_f64().unwrap();
        let ratio = run["ledger_cpu_ratio"].as_f64().unwrap();
        assert!(ledger_us > 0.0, "{run}");
        assert!((ratio - ledger_us / ceiling_cpu).abs() < 1e-9, "{run}");
    }

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        !page.contains("http://")
            || page
                .matches("http://")
                .all(|_| page.contains("xmlns=\"http://www.w3.org/2000/svg\"")),
        "no network references"
    );
    let chromium = tokio::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", html.display()))
        .output()
        .await
        .expect("Debian's chromium is installed (.ci/run installs it: apt-get install chromium)");
    assert!(
        chromium.status.success(),
        "{}",
        String::from_utf8_lossy(&chromium.stderr)
    );
    let dom = String::from_utf8_lossy(&chromium.stdout);
    for id in ["throughput", "latency", "anomalies"] {
        assert!(
            dom.contains(&format!("<svg id=\"{id}\"")),
            "chart {id} missing from the rendered DOM"
        );
    }
    // 4 modes x (1 throughput + 3 latency + 2 anomaly series) bars.
    assert_eq!(dom.matches("class=\"bar\"").count(), 24);
    ledger.stop().await.unwrap();
}
