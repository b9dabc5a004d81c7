//! `unsafe` mode with the race window open: the anomalies the product exists
//! to show, and the audit naming the operations behind them.

use overdraft_server::config::Mode;
use overdraft_tests::{TestLedger, pb};
use tokio::task::JoinSet;

const JOINT: &str = "joint";

/// Goal: two concurrent $600 withdrawals from a $1,000 account both succeed in
/// `unsafe` mode, and the audit reports the overdraft and the lost update with
/// both request_ids. Method: ten trials with a 50 ms race window; every trial
/// in which both withdrawals succeed must be reported; most trials must race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_withdrawal_overdraws_and_audit_names_both() {
    let mut ledger = TestLedger::start(|c| {
        c.mode = Mode::Unsafe;
        c.race_window_ms = 50;
    })
    .await;
    let mut raced = 0;
    for trial in 0..10 {
        ledger.reset(&[(JOINT, 100_000)]).await;
        let ids = [format!("t{trial}-atm-1"), format!("t{trial}-atm-2")];
        let mut atms = JoinSet::new();
        for id in ids.clone() {
            let mut client = ledger.new_ledger_client().await;
            atms.spawn(async move {
                client
                    .withdraw(pb::WithdrawRequest {
                        joint_account_id: String::new(),
                        account_id: JOINT.into(),
                        amount_cents: 60_000,
                        request_id: id,
                    })
                    .await
            });
        }
        let succeeded = atms.join_all().await.iter().filter(|r| r.is_ok()).count();
        let audit = ledger.audit().await;
        if succeeded < 2 {
            assert!(
                audit.clean,
                "trial {trial}: one refusal must leave a clean audit: {audit:?}"
            );
            continue;
        }
        raced += 1;
        assert!(!audit.clean);
        assert_eq!(audit.overdrafts, 1, "trial {trial}: {audit:?}");
        assert_eq!(audit.lost_updates, 1, "trial {trial}: {audit:?}");
        // $1,200 left a $1,000 account that still shows $400: $600 created.
        assert_eq!(audit.money_delta_cents, 60_000);
        let overdraft = finding(&audit, pb::finding::Kind::Overdraft);
        assert_eq!(overdraft.cents, -20_000, "overdrawn by $200");
        for id in &ids {
            assert!(
                overdraft.request_ids.contains(id),
                "{overdraft:?} names {id}"
            );
            let lost = finding(&audit, pb::finding::Kind::LostUpdate);
            assert!(lost.request_ids.contains(id), "{lost:?} names {id}");
        }
    }
    assert!(
        raced >= 5,
        "only {raced} of 10 trials raced with a 50 ms window"
    );
    ledger.running.stop().await.unwrap();
}

/// Goal: 50 concurrent $1 deposits into one account lose updates in `unsafe`
/// mode, and the audit reports money destroyed equal to the shortfall, naming
/// the request_ids. Method: 20 ms race window, one connection per ATM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deposits_lose_updates_and_audit_counts_the_cost() {
    let mut ledger = TestLedger::start(|c| {
        c.mode = Mode::Unsafe;
        c.race_window_ms = 20;
    })
    .await;
    ledger.reset(&[("payroll", 0)]).await;
    let mut atms = JoinSet::new();
    for atm in 0..50 {
        let mut client = ledger.new_ledger_client().await;
        atms.spawn(async move {
            client
                .deposit(pb::DepositRequest {
                    account_id: "payroll".into(),
                    amount_cents: 100,
                    request_id: format!("pay-{atm}"),
                })
                .await
        });
    }
    let acknowledged = atms.join_all().await.iter().filter(|r| r.is_ok()).count();
    assert_eq!(acknowledged, 50, "every deposit is acknowledged");
    let balance = ledger.balance("payroll").await.balance_cents;
    assert!(
        balance < 5_000,
        "50 racing deposits must lose some; balance {balance}"
    );
    let audit = ledger.audit().await;
    assert!(audit.lost_updates > 0);
    assert_eq!(audit.money_delta_cents, balance - 5_000, "{audit:?}");
    let lost: i64 = audit
        .findings
        .iter()
        .filter(|f| f.kind == i32::from(pb::finding::Kind::LostUpdate))
        .map(|f| f.cents)
        .sum();
    assert_eq!(lost, balance - 5_000, "lost updates account for every cent");
    let conservation = finding(&audit, pb::finding::Kind::Conservation);
    assert!(
        conservation
            .request_ids
            .iter()
            .all(|id| id.starts_with("pay-"))
    );
    ledger.running.stop().await.unwrap();
}

fn finding(audit: &pb::AuditReply, kind: pb::finding::Kind) -> pb::Finding {
    audit
        .findings
        .iter()
        .find(|f| f.kind == i32::from(kind))
        .cloned()
        .unwrap_or_else(|| panic!("no {kind:?} finding in {audit:?}"))
}
