//! `Admin.ExportJournal` and `atm journal`: the journal streams whole, and
//! `atm check --journal` resolves the unknown outcomes a lost reply leaves.

use std::time::Duration;

use overdraft_client::{
    connect::Clients,
    journal,
    load::{self, LoadArgs},
};
use overdraft_history::{
    Verdict,
    check::{Evidence, check},
    evidence::Journal,
    read_files,
};
use overdraft_server::config::Mode;
use overdraft_tests::TestLedger;

fn load_args(history: std::path::PathBuf) -> LoadArgs {
    LoadArgs {
        atms: 8,
        accounts: 6,
        ops: Some(800),
        mix: "deposit=40,withdraw=30,transfer=30".parse().unwrap(),
        amount_cents: "100..5000".parse().unwrap(),
        connections: 2,
        seed: 11,
        opening_cents: 50_000,
        history: Some(history),
        ..LoadArgs::default()
    }
}

/// Goal: replies lost after the ledger applied them leave unknown outcomes
/// in the history; the exported journal holds every entry the audit counts
/// and resolves each of those outcomes, and the run checks valid with it
/// and without it (there, the gaps the applied ones leave are filled by the
/// search). Method: 12 lost acknowledgements armed before an 800-operation
/// load in mutex mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_journal_resolves_unknown_outcomes_of_lost_replies() {
    let ledger = TestLedger::start(|_| {}).await;
    let url = ledger.running.url();
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    // Armed faults outlive the Reset the load starts with: the load's first
    // 12 mutations apply and lose their replies.
    let mut clients = Clients::connect(&url).await.unwrap();
    clients.arm_lost_acks(12).await.unwrap();
    let report = load::run(&url, &load_args(history.clone()), Some(Mode::Mutex), false)
        .await
        .unwrap();
    assert_eq!(report.reconciliation.unknown_outcomes, 12, "{report:?}");

    let journal_path = dir.path().join("journal.jsonl");
    let written = journal::export(&url, &journal_path).await.unwrap();
    let audit = clients.audit().await.unwrap();
    assert_eq!(written, audit.journal_entries);

    let run = read_files(&[&history]).unwrap();
    let journal = Journal::read(&journal_path).unwrap();
    let with = check(
        &run,
        &Evidence {
            journal: Some(&journal),
            faults: None,
        },
        Duration::from_secs(10),
    );
    assert_eq!(with.verdict, Verdict::Valid, "{:?}", with.anomalies);
    assert_eq!(
        with.counts.unknown_resolved_by_journal,
        report.reconciliation.unknown_outcomes
    );
    let without = check(&run, &Evidence::default(), Duration::from_secs(10));
    assert_eq!(without.verdict, Verdict::Valid, "{:?}", without.anomalies);
    assert!(without.counts.unknown_inferred_applied > 0);
    ledger.running.stop().await.unwrap();
}
