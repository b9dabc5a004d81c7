//! Replicas over PostgreSQL, as real processes: one `ledger` killed with
//! SIGKILL in the middle of a load loses nothing it acknowledged, and every
//! acknowledged request_id replays its first reply from another replica and
//! from the killed one restarted. Real processes and real tokio: not built
//! under the `shuttle` feature.
#![cfg(not(feature = "shuttle"))]

use std::time::Duration;

use overdraft_proto::v1::{
    self as pb, AuditRequest, admin_client::AdminClient, ledger_client::LedgerClient,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

mod common;
// The tests crate's harness, shared by path: this crate cannot depend on
// that one (it depends on this), and only this crate's tests get the binary.
#[path = "../../tests/src/postgres.rs"]
#[allow(unreachable_pub, dead_code)]
mod postgres;
use common::{connect, open_accounts, sigkill, start_replica};

const ACCOUNTS: [&str; 4] = ["a", "b", "c", "d"];
const OPENING_CENTS: i64 = 1_000_000;

/// What an ATM was told, to be asked again.
#[derive(Debug, Clone)]
struct Acked {
    request: pb::TransferRequest,
    reply: pb::TransferReply,
}

/// Transfers around the four accounts until the replica stops answering.
async fn load(mut client: LedgerClient<Channel>, atm: usize) -> Vec<Acked> {
    let mut acked = Vec::new();
    for op in 0.. {
        let request = pb::TransferRequest {
            from_account_id: ACCOUNTS[(atm + op) % 4].into(),
            to_account_id: ACCOUNTS[(atm + op + 1) % 4].into(),
            amount_cents: 3,
            request_id: format!("atm{atm}-op{op}"),
        };
        match client.transfer(request.clone()).await {
            Ok(reply) => acked.push(Acked {
                request,
                reply: reply.into_inner(),
            }),
            // The replica is gone: what it acknowledged so far is the record.
            Err(_) => return acked,
        }
    }
    acked
}

async fn replica(url: &str, name: &str, mode: &str) -> (tokio::process::Child, String) {
    start_replica(
        url,
        name,
        &["--mode", mode, "--pool-size", "8", "--race-window-ms", "2"],
    )
    .await
}

/// Goal: a replica killed with SIGKILL mid-load loses nothing it
/// acknowledged; each acknowledged transfer replays with its first reply
/// from the other replica and from the killed one restarted; the shared
/// journal audits clean. Method: cas, two `ledger` processes on one
/// database, 6 ATMs on the first transferring in a ring, SIGKILL after
/// 700 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_loses_nothing_it_acknowledged() {
    let url = postgres::cluster().database("kill").await;
    let (mut first, first_url) = replica(&url, "first", "cas").await;
    let (_second, second_url) = replica(&url, "second", "cas").await;
    open_accounts(&first_url, &ACCOUNTS, OPENING_CENTS).await;
    let mut atms = JoinSet::new();
    for atm in 0..6 {
        atms.spawn(load(LedgerClient::new(connect(&first_url).await), atm));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    sigkill(&mut first).await;
    let acked: Vec<Acked> = atms.join_all().await.into_iter().flatten().collect();
    assert!(
        acked.len() > 20,
        "too few transfers before the kill: {}",
        acked.len()
    );

    let (_restarted, restarted_url) = replica(&url, "first", "cas").await;
    for target in [&second_url, &restarted_url] {
        let mut ledger = LedgerClient::new(connect(target).await);
        for Acked { request, reply } in &acked {
            let again = ledger.transfer(request.clone()).await.unwrap().into_inner();
            assert!(
                again.replayed,
                "acknowledged {} was lost",
                request.request_id
            );
            assert_eq!(again.from, reply.from, "{}", request.request_id);
            assert_eq!(again.to, reply.to, "{}", request.request_id);
        }
    }
    let audit = AdminClient::new(connect(&second_url).await)
        .audit(AuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(audit.clean, "{:?}", audit.findings);
    assert_eq!(audit.money_delta_cents, 0);
    let total: i64 = {
        let mut ledger = LedgerClient::new(connect(&second_url).await);
        let mut total = 0;
        for account in ACCOUNTS {
            total += ledger
                .get_balance(pb::GetBalanceRequest {
                    account_id: account.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .balance_cents;
        }
        total
    };
    assert_eq!(
        total,
        OPENING_CENTS * 4,
        "transfers move money, never make it"
    );
}
