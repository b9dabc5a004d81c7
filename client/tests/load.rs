//! `atm load`: a seeded load reconciles exactly in the safe modes, and the
//! history it writes has one line per operation.

mod common;

use overdraft_client::load::{self, LoadArgs};
use overdraft_server::config::Mode;

/// An embedded ledger with the race window open up to `window_ms_max`.
async fn ledger_with_window_ms(window_ms_max: u64) -> overdraft_server::RunningLedger {
    let ledger = common::ledger().await;
    let mut admin = overdraft_proto::v1::admin_client::AdminClient::connect(ledger.url())
        .await
        .unwrap();
    admin
        .configure(overdraft_proto::v1::ConfigureRequest {
            race_window_ms_max: Some(window_ms_max),
            ..Default::default()
        })
        .await
        .unwrap();
    ledger
}

fn args(history: Option<std::path::PathBuf>) -> LoadArgs {
    LoadArgs {
        atms: 16,
        accounts: 12,
        duration: None,
        ops: Some(1_500),
        mix: "deposit=30,withdraw=40,transfer=25,balance=5"
            .parse()
            .unwrap(),
        amount_cents: "100..40000".parse().unwrap(),
        skew: "zipf:1.1".parse().unwrap(),
        rate: None,
        connections: 4,
        seed: 7,
        opening_cents: 100_000,
        history,
    }
}

/// Goal: in each safe mode, with the race window open, the client's model
/// of every balance (from acknowledged operations) equals the final
/// balances, nothing is unknown, and the audit is clean. Method: 1,500
/// skewed operations from 16 ATMs per mode; the history has 1,500 lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_load_reconciles_exactly_in_safe_modes() {
    let ledger = ledger_with_window_ms(2).await;
    let dir = tempfile::tempdir().unwrap();
    for mode in [Mode::Mutex, Mode::Cas, Mode::Actor] {
        let history = dir.path().join(format!("{mode}.jsonl"));
        let report = load::run(
            &ledger.url(),
            &args(Some(history.clone())),
            Some(mode),
            false,
        )
        .await
        .unwrap();
        assert_eq!(report.mode, mode.as_str());
        assert_eq!(report.operations, 1_500);
        assert_eq!(report.reconciliation.unknown_outcomes, 0, "{mode}");
        assert!(
            report.reconciliation.mismatched.is_empty(),
            "{mode}: {:?}",
            report.reconciliation.mismatched
        );
        assert_eq!(report.reconciliation.matched, 12);
        assert!(report.audit.clean, "{mode}: {:?}", report.audit);
        assert!(
            report
                .status_counts
                .get("FailedPrecondition")
                .copied()
                .unwrap_or(0)
                > 0,
            "the mix overdraws sometimes"
        );
        let lines = std::fs::read_to_string(&history).unwrap();
        assert_eq!(lines.lines().count(), 1_500);
        for line in lines.lines().take(50) {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(
                record["complete_ns"].as_u64() >= record["invoke_ns"].as_u64(),
                "{record}"
            );
            assert!(
                ["ok", "fail"].contains(&record["outcome"].as_str().unwrap()),
                "{record}"
            );
        }
    }
    ledger.stop().await.unwrap();
}

/// Goal: the same load in unsafe mode with a wider window fails to
/// reconcile, proving the check above can fail. Method: hot skew, 5 ms window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_load_does_not_reconcile() {
    let ledger = ledger_with_window_ms(5).await;
    let mut args = args(None);
    args.skew = "hot:0.8".parse().unwrap();
    args.ops = Some(600);
    let report = load::run(&ledger.url(), &args, Some(Mode::Unsafe), false)
        .await
        .unwrap();
    assert!(!report.reconciliation.mismatched.is_empty());
    assert!(!report.audit.clean);
    assert!(report.audit.lost_updates > 0);
    ledger.stop().await.unwrap();
}
