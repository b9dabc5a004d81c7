//! Every built-in scenario's expectations hold in every mode it lists.

mod common;

use overdraft_client::scenario::{
    BUILTIN, Run, Scenario,
    run::{run_mode, run_mode_crashing},
};

/// Goal: the built-in catalogue is honest: each scenario meets its own
/// expectations (unsafe shows its anomaly, safe modes none, business races
/// land on a legal outcome, naive lock order is detected). Operation: run every
/// built-in in each of its modes against one embedded ledger; a scenario
/// that crashes the ledger runs against a child ledger (the atm binary's
/// `serve-ledger`), restarted after the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_scenario_meets_its_expectations_in_every_mode() {
    let ledger = common::ledger().await;
    let mut failures = Vec::new();
    for (name, text) in BUILTIN {
        let scenario = Scenario::parse(name, text).unwrap();
        if scenario.replicas.is_some() {
            // Replicas need PostgreSQL: tests/tests/replicas.rs runs these.
            continue;
        }
        for mode in scenario.modes() {
            assert!(
                scenario.expectation(Run::of(mode)).is_some(),
                "{name} has no expectation for {mode}"
            );
            let outcome = if scenario.crash.is_some() {
                let atm = env!("CARGO_BIN_EXE_atm").into();
                run_mode_crashing(&scenario, mode, 1, Some(atm), None)
                    .await
                    .unwrap()
            } else {
                run_mode(&ledger.url(), &scenario, mode, None)
                    .await
                    .unwrap()
            };
            if !outcome.passed {
                failures.push(format!("{name} in {mode}: {:?}", outcome.failures));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    ledger.stop().await.unwrap();
}
