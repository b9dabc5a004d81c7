//! `atm scenario --history`: what the ATMs of an incident saw, judged by
//! `atm check` alone, names the culprits and the money.

mod common;

use std::time::Duration;

use overdraft_client::scenario::{Scenario, run::run_mode};
use overdraft_history::{AnomalyKind, Report, Verdict, check::Evidence};
use overdraft_server::config::Mode;

async fn checked(url: &str, name: &str, mode: Mode, dir: &std::path::Path) -> Report {
    let scenario = Scenario::load(name).unwrap();
    let path = dir.join(format!("{name}-{mode}.jsonl"));
    let outcome = run_mode(url, &scenario, mode, Some(&path)).await.unwrap();
    assert!(outcome.passed, "{name} in {mode}: {:?}", outcome.failures);
    let run = overdraft_history::read_files(&[&path]).unwrap();
    assert_eq!(run.mode.as_deref(), Some(mode.as_str()));
    overdraft_history::check(&run, &Evidence::default(), Duration::from_secs(10))
}

/// Goal: the double-withdrawal history convicts both ATMs in unsafe mode (a
/// lost update and an overdraft, $600 created) and acquits every safe mode.
/// Method: the built-in scenario (barrier at the race hook) in each mode
/// against an embedded ledger, its history checked without the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_withdrawal_history_names_both_atms_in_unsafe_mode_only() {
    let ledger = common::ledger().await;
    let dir = tempfile::tempdir().unwrap();
    let report = checked(&ledger.url(), "double-withdrawal", Mode::Unsafe, dir.path()).await;
    assert_eq!(report.verdict, Verdict::Anomalies);
    assert_eq!(report.count(AnomalyKind::LostUpdate), 1);
    assert_eq!(report.count(AnomalyKind::Overdraft), 1);
    assert_eq!(report.money.delta_cents, 60_000);
    let overdraft = report
        .anomalies
        .iter()
        .find(|a| a.kind == AnomalyKind::Overdraft)
        .unwrap();
    let mut atms: Vec<&str> = overdraft
        .operations
        .iter()
        .map(|w| w.atm.as_str())
        .collect();
    atms.sort_unstable();
    assert_eq!(atms.len(), 2, "{overdraft:?}");
    assert_ne!(atms[0], atms[1], "both ATMs are named: {overdraft:?}");
    assert_eq!(overdraft.cents, -20_000);
    for mode in [Mode::Mutex, Mode::Cas, Mode::Actor] {
        let report = checked(&ledger.url(), "double-withdrawal", mode, dir.path()).await;
        assert_eq!(
            report.verdict,
            Verdict::Valid,
            "{mode}: {:?}",
            report.anomalies
        );
        assert_eq!(report.counts.failed, 1, "{mode}: one withdrawal is refused");
    }
    ledger.stop().await.unwrap();
}

/// Goal: the retry-double-charge history shows the customer without a key
/// charged twice ($100 extra) in every mode, and the keyed customer once.
/// Method: the built-in scenario (lost replies, one retry each) in each
/// mode; the first attempts' outcomes are unknown, and the checker must find
/// the keyless one applied from the gap it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_double_charge_history_shows_the_keyless_customer_charged_twice() {
    let ledger = common::ledger().await;
    let dir = tempfile::tempdir().unwrap();
    for mode in Mode::ALL {
        let report = checked(&ledger.url(), "retry-double-charge", mode, dir.path()).await;
        assert_eq!(
            report.count(AnomalyKind::DoubleApplication),
            1,
            "{mode}: {:?}",
            report.anomalies
        );
        let double = &report.anomalies[0];
        assert_eq!(double.kind, AnomalyKind::DoubleApplication);
        assert_eq!(double.accounts, vec!["no-key".to_owned()]);
        assert_eq!(double.cents, -10_000);
        assert_eq!(double.operations.len(), 2);
        assert!(double.operations.iter().all(|w| w.atm == "atm-without-key"));
        assert_eq!(
            report.money.delta_cents, 0,
            "{mode}: charged twice, yet conserved"
        );
    }
    ledger.stop().await.unwrap();
}
