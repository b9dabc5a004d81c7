//! `atm demo`: the one command people meet first.

mod common;

use serde_json::Value;

/// Goal: `atm demo --json` against its embedded ledger exits 0 and shows what
/// it promises: unsafe overdraws in double-withdrawal and loses deposits in
/// lost-deposit, while mutex, cas and actor show no anomaly anywhere.
/// Operation: run the real binary, parse its JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_unsafe_anomalies_and_clean_safe_modes() {
    let output = common::atm(&["demo", "--json"]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["schema"], 1);
    assert_eq!(report["passed"], true);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 20, "five scenarios in four modes");
    let row = |scenario: &str, mode: &str| {
        runs.iter()
            .find(|r| r["scenario"] == scenario && r["mode"] == mode)
            .unwrap_or_else(|| panic!("no row for {scenario} in {mode}"))
    };
    assert!(
        row("double-withdrawal", "unsafe")["overdrafts"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(
        row("lost-deposit", "unsafe")["lost_updates"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(
        row("lost-deposit", "unsafe")["money_delta_cents"]
            .as_i64()
            .unwrap()
            < 0
    );
    for run in runs.iter().filter(|r| r["mode"] != "unsafe") {
        assert_eq!(run["findings"].as_array().unwrap().len(), 0, "{run}");
        assert_eq!(run["money_delta_cents"], 0, "{run}");
    }
}
