//! Crossed transfers in mutex mode: with locks taken in request order they
//! deadlock, and the lock wait bound detects it; with the global order they
//! never do.

use overdraft_server::config::{LockOrder, Mode};
use overdraft_tests::{TestLedger, mode_stats, pb};
use tonic::Code;

async fn crossed_transfers(ledger: &TestLedger, trial: usize) -> [Result<(), tonic::Status>; 2] {
    let mut alice = ledger.new_ledger_client().await;
    let mut bob = ledger.new_ledger_client().await;
    let a_to_b = alice.transfer(pb::TransferRequest {
        from_account_id: "alice".into(),
        to_account_id: "bob".into(),
        amount_cents: 1_000,
        request_id: format!("a-to-b-{trial}"),
    });
    let b_to_a = bob.transfer(pb::TransferRequest {
        from_account_id: "bob".into(),
        to_account_id: "alice".into(),
        amount_cents: 2_000,
        request_id: format!("b-to-a-{trial}"),
    });
    let (left, right) = tokio::join!(a_to_b, b_to_a);
    [left.map(|_| ()), right.map(|_| ())]
}

/// Goal: with `--lock-order naive`, crossed transfers deadlock and the bound
/// turns the deadlock into ABORTED naming both accounts, counted in Stats,
/// with nothing half-applied. Method: 5 trials, 50 ms window between locks,
/// 200 ms lock wait bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_lock_order_deadlock_is_detected_and_aborted() {
    let mut ledger = TestLedger::start(|c| {
        c.mode = Mode::Mutex;
        c.lock_order = LockOrder::Naive;
        c.race_window_ms = 50;
        c.lock_wait_ms = 200;
    })
    .await;
    ledger.reset(&[("alice", 10_000), ("bob", 10_000)]).await;
    let mut deadlocks = 0;
    for trial in 0..5 {
        for outcome in crossed_transfers(&ledger, trial).await {
            if let Err(status) = outcome {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                assert!(status.message().contains("deadlock detected"), "{status:?}");
                assert_eq!(
                    overdraft_proto::error_reason::of(&status).as_deref(),
                    Some(overdraft_proto::error_reason::DEADLOCK),
                    "the deadlock is marked in a structured detail: {status:?}"
                );
                assert!(status.message().contains("alice") && status.message().contains("bob"));
                deadlocks += 1;
            }
        }
    }
    assert!(
        deadlocks >= 3,
        "only {deadlocks} deadlocks in 5 crossed pairs"
    );
    let stats = mode_stats(&ledger.stats().await, Mode::Mutex);
    assert_eq!(stats.deadlocks_detected, deadlocks);
    let audit = ledger.audit().await;
    assert!(
        audit.clean,
        "aborted transfers apply nothing: {:?}",
        audit.findings
    );
}

/// Goal: with the default global lock order, crossed transfers never
/// deadlock. Method: 20 trials with the same window; every transfer succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_locks_never_deadlock_on_crossed_transfers() {
    let mut ledger = TestLedger::start(|c| {
        c.mode = Mode::Mutex;
        c.race_window_ms = 50;
        c.lock_wait_ms = 1_000;
    })
    .await;
    ledger.reset(&[("alice", 100_000), ("bob", 100_000)]).await;
    for trial in 0..20 {
        for outcome in crossed_transfers(&ledger, trial).await {
            outcome.unwrap_or_else(|s| panic!("trial {trial}: {s:?}"));
        }
    }
    let stats = mode_stats(&ledger.stats().await, Mode::Mutex);
    assert_eq!(stats.deadlocks_detected, 0);
    assert_eq!(stats.operations, 40);
    assert_eq!(
        ledger.balance("alice").await.balance_cents,
        100_000 + 20 * 1_000
    );
    assert!(ledger.audit().await.clean);
}
