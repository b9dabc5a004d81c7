//! `--durability sync`: concurrent operations share a flush (group commit)
//! rather than paying one fsync each.

use overdraft_server::config::Durability;
use overdraft_tests::{TestLedger, pb};
use tokio::task::JoinSet;

/// Goal: with 16 ATMs depositing concurrently under `--durability sync`,
/// every operation is acknowledged after a flush that covers it, and flushes
/// are shared: fewer flushes than operations. Method: 16 x 25 deposits on a
/// sled directory, then the Stats counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_durability_shares_flushes_between_concurrent_operations() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_owned();
    let mut ledger = TestLedger::start(move |c| {
        c.durability = Durability::Sync;
        c.data_dir = Some(data_dir);
    })
    .await;
    ledger.reset(&[("acct", 0)]).await;
    let mut atms = JoinSet::new();
    for atm in 0..16 {
        let mut client = ledger.new_ledger_client().await;
        atms.spawn(async move {
            for op in 0..25 {
                client
                    .deposit(pb::DepositRequest {
                        account_id: "acct".into(),
                        amount_cents: 1,
                        request_id: format!("atm{atm}-{op}"),
                    })
                    .await
                    .unwrap();
            }
        });
    }
    atms.join_all().await;
    let stats = ledger.stats().await;
    assert_eq!(ledger.balance("acct").await.balance_cents, 400);
    assert!(
        stats.flushed_operations >= 400,
        "every acknowledged operation waited for a flush: {stats:?}"
    );
    assert!(
        stats.flushes < 400,
        "flushes must be shared: {} flushes for 400 operations",
        stats.flushes
    );
    ledger.running.stop().await.unwrap();
}
