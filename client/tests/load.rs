//! `atm load`: a seeded load reconciles exactly in the safe modes, and the
//! history it writes (format 2) is judged valid by the checker alone; in
//! unsafe mode the checker names the lost updates the audit names.

mod common;

use std::{collections::HashSet, time::Duration};

use overdraft_client::{
    connect::Clients,
    load::{self, LoadArgs},
};
use overdraft_history::{AnomalyKind, Verdict, check::Evidence};
use overdraft_proto::v1 as pb;
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
        ops: Some(1_500),
        mix: "deposit=30,withdraw=40,transfer=25,balance=5"
            .parse()
            .unwrap(),
        amount_cents: "100..40000".parse().unwrap(),
        skew: "zipf:1.1".parse().unwrap(),
        seed: 7,
        opening_cents: 100_000,
        history,
        ..LoadArgs::default()
    }
}

/// Goal: in each safe mode, with the race window open, the client's model
/// of every balance (from acknowledged operations) equals the final
/// balances, nothing is unknown, the audit is clean, and `atm check` finds
/// the history valid on its own. Operation: 1,500 skewed operations from 16
/// ATMs per mode; the history has a header, 12 opens, 1,500 operations and
/// 12 final reads.
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
        assert!(
            report.audit.as_ref().unwrap().clean,
            "{mode}: {:?}",
            report.audit
        );
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
        assert_eq!(lines.lines().count(), 1 + 12 + 1_500 + 12);
        let header: serde_json::Value =
            serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(header["schema"], 2);
        assert_eq!(header["mode"], mode.as_str());
        assert_eq!(header["overdraft"]["policy"], "reject");
        let checked = check_history(&history);
        assert_eq!(
            checked.verdict,
            Verdict::Valid,
            "{mode}: {:?}",
            checked.anomalies
        );
        assert_eq!(checked.counts.operations, 1_512);
        for line in lines.lines().skip(13).take(50) {
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
/// reconcile, and `atm check` on its history alone finds lost updates that
/// the ledger's audit names too, with the same money: proving the checks
/// above can fail. Operation: hot skew, 5 ms window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_load_does_not_reconcile_and_the_checker_names_the_audits_lost_updates() {
    let ledger = ledger_with_window_ms(5).await;
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("unsafe.jsonl");
    let mut args = args(Some(history.clone()));
    args.skew = "hot:0.8".parse().unwrap();
    args.ops = Some(600);
    let report = load::run(&ledger.url(), &args, Some(Mode::Unsafe), false)
        .await
        .unwrap();
    assert!(!report.reconciliation.mismatched.is_empty());
    assert!(!report.audit.as_ref().unwrap().clean);
    assert!(report.audit.as_ref().unwrap().lost_updates > 0);
    let audit = Clients::connect(&ledger.url())
        .await
        .unwrap()
        .audit()
        .await
        .unwrap();
    let checked = check_history(&history);
    assert_eq!(checked.verdict, Verdict::Anomalies);
    assert!(checked.count(AnomalyKind::LostUpdate) > 0);
    assert_eq!(
        checked.money.delta_cents,
        i128::from(audit.money_delta_cents),
        "the history alone accounts for the money the journal says was created or destroyed"
    );
    let lost_updates = || {
        checked
            .anomalies
            .iter()
            .filter(|a| a.kind == AnomalyKind::LostUpdate)
    };
    let named: HashSet<&str> = lost_updates()
        .flat_map(|a| a.operations.iter().map(|w| w.request_id.as_str()))
        .collect();
    // Accounts where a long erased branch was listed only in part: an
    // operation the audit names there may be among the unlisted ones.
    let truncated: HashSet<&str> = lost_updates()
        .filter(|a| a.operations_unlisted > 0)
        .flat_map(|a| a.accounts.iter().map(String::as_str))
        .collect();
    let audit_lost: Vec<&pb::Finding> = audit
        .findings
        .iter()
        .filter(|f| f.kind == pb::finding::Kind::LostUpdate as i32)
        .collect();
    assert!(!audit_lost.is_empty());
    let mut matched = 0;
    for finding in &audit_lost {
        if finding
            .request_ids
            .iter()
            .any(|id| named.contains(id.as_str()))
        {
            matched += 1;
            continue;
        }
        assert!(
            truncated.contains(finding.account_id.as_str()),
            "the audit's lost update {:?} on {} is among the checker's (none of its \
             lost updates there was listed in part)",
            finding.request_ids,
            finding.account_id
        );
    }
    assert!(
        matched > 0,
        "at least one of the audit's lost updates is named in full"
    );
    ledger.stop().await.unwrap();
}

fn check_history(path: &std::path::Path) -> overdraft_history::Report {
    let run = overdraft_history::read_files(&[path]).unwrap();
    overdraft_history::check(&run, &Evidence::default(), Duration::from_secs(10))
}
