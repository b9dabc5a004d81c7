//! request_ids: a retried mutation is applied once in every mode, concurrent
//! duplicates included; with `--idempotency off` a retry applies twice.

use overdraft_server::config::{Idempotency, Mode};
use overdraft_tests::{TestLedger, pb};
use tokio::task::JoinSet;
use tonic::Code;

/// Goal: a withdrawal retried with the same request_id is applied once in
/// every mode and the retry gets the original reply, marked replayed.
/// Method: withdraw, retry sequentially, then ten concurrent copies of a new
/// request; the balance must drop by exactly one amount each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_request_id_is_applied_once_in_every_mode() {
    for mode in Mode::ALL {
        let mut ledger = TestLedger::start(|c| {
            c.mode = mode;
            c.race_window_ms = 10;
        })
        .await;
        ledger.reset(&[("acct", 10_000)]).await;
        let withdraw = |request_id: &str| pb::WithdrawRequest {
            joint_account_id: String::new(),
            account_id: "acct".into(),
            amount_cents: 1_000,
            request_id: request_id.into(),
        };
        let first = ledger
            .ledger
            .withdraw(withdraw("w-1"))
            .await
            .unwrap()
            .into_inner();
        let retry = ledger
            .ledger
            .withdraw(withdraw("w-1"))
            .await
            .unwrap()
            .into_inner();
        assert!(!first.replayed && retry.replayed, "{mode}");
        assert_eq!(
            (retry.balance_cents, retry.version),
            (first.balance_cents, first.version)
        );

        let mut copies = JoinSet::new();
        for _ in 0..10 {
            let mut client = ledger.new_ledger_client().await;
            let request = withdraw("w-2");
            copies.spawn(async move { client.withdraw(request).await });
        }
        for outcome in copies.join_all().await {
            outcome.unwrap_or_else(|s| panic!("{mode}: {s:?}"));
        }
        assert_eq!(ledger.balance("acct").await.balance_cents, 8_000, "{mode}");
        let audit = ledger.audit().await;
        assert!(audit.clean, "{mode}: {:?}", audit.findings);
        assert_eq!(audit.journal_entries, 3, "{mode}: open and two withdrawals");
        ledger.running.stop().await.unwrap();
    }
}

/// Goal: a transfer retried with its request_id is applied once, in actor
/// mode too, where its legs run in two owners. Method: 20 transfers between
/// many account pairs, each sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_transfer_is_applied_once_in_every_mode() {
    for mode in Mode::ALL {
        let mut ledger = TestLedger::start(|c| c.mode = mode).await;
        let accounts: Vec<String> = (0..8).map(|i| format!("acct-{i}")).collect();
        let opening: Vec<(&str, i64)> = accounts.iter().map(|a| (a.as_str(), 1_000)).collect();
        ledger.reset(&opening).await;
        let mut retried = 0;
        for n in 0..20 {
            let request = pb::TransferRequest {
                from_account_id: accounts[n % 8].clone(),
                to_account_id: accounts[(n * 3 + 1) % 8].clone(),
                amount_cents: 10,
                request_id: format!("t-{n}"),
            };
            if request.from_account_id == request.to_account_id {
                continue;
            }
            let first = ledger
                .ledger
                .transfer(request.clone())
                .await
                .unwrap()
                .into_inner();
            let again = ledger.ledger.transfer(request).await.unwrap().into_inner();
            assert!(again.replayed, "{mode}");
            retried += 1;
            assert_eq!(first.from, again.from, "{mode}");
            assert_eq!(first.to, again.to, "{mode}");
        }
        let audit = ledger.audit().await;
        assert!(audit.clean, "{mode}: {:?}", audit.findings);
        assert_eq!(audit.balances_cents, 8_000);
        assert_eq!(
            ledger.stats().await.replays,
            retried,
            "{mode}: one replay per retry"
        );
        ledger.running.stop().await.unwrap();
    }
}

/// Goal: with `--idempotency off`, the same retry applies twice: the
/// retry-double-charge story. Method: one withdrawal sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_off_applies_a_retry_twice() {
    for mode in Mode::ALL {
        let mut ledger = TestLedger::start(|c| {
            c.mode = mode;
            c.idempotency = Idempotency::Off;
        })
        .await;
        ledger.reset(&[("acct", 10_000)]).await;
        for _ in 0..2 {
            ledger
                .ledger
                .withdraw(pb::WithdrawRequest {
                    joint_account_id: String::new(),
                    account_id: "acct".into(),
                    amount_cents: 1_000,
                    request_id: "same".into(),
                })
                .await
                .unwrap();
        }
        assert_eq!(ledger.balance("acct").await.balance_cents, 8_000, "{mode}");
        ledger.running.stop().await.unwrap();
    }
}

/// Goal: a request_id reused for a different operation is refused with
/// INVALID_ARGUMENT naming request_id, and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_reused_for_other_arguments_is_refused() {
    let mut ledger = TestLedger::start(|_| {}).await;
    ledger.reset(&[("acct", 10_000)]).await;
    let mut withdraw = pb::WithdrawRequest {
        joint_account_id: String::new(),
        account_id: "acct".into(),
        amount_cents: 1_000,
        request_id: "k".into(),
    };
    ledger.ledger.withdraw(withdraw.clone()).await.unwrap();
    withdraw.amount_cents = 2_000;
    let status = ledger.ledger.withdraw(withdraw).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("request_id"), "{status:?}");
    assert_eq!(ledger.balance("acct").await.balance_cents, 9_000);
}
