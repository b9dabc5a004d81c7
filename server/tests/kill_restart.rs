//! Crash safety of `--durability sync`: the real `ledger` binary, killed with
//! SIGKILL in the middle of a load, restarted on the same data directory.
//! Lives in the server crate because only its own tests get the binary's path.
//! Real processes and real tokio: not built under the `shuttle` feature.
#![cfg(not(feature = "shuttle"))]

use std::time::Duration;

use overdraft_proto::v1::{
    self as pb, AuditRequest, admin_client::AdminClient, ledger_client::LedgerClient,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

mod common;
use common::{connect, open_accounts, sigkill, start_ledger};

const ACCOUNTS: [&str; 4] = ["a", "b", "c", "d"];
const OPENING_CENTS: i64 = 1_000_000;

/// One acknowledged operation, to be found again after the crash.
#[derive(Debug, Clone)]
enum Acked {
    Deposit(pb::DepositRequest, pb::MutationReply),
    Transfer(pb::TransferRequest, pb::TransferReply),
}

async fn load(mut client: LedgerClient<Channel>, atm: usize) -> Vec<Acked> {
    let mut acked = Vec::new();
    for op in 0.. {
        let request_id = format!("atm{atm}-op{op}");
        let outcome = if op % 3 == 2 {
            let request = pb::TransferRequest {
                from_account_id: ACCOUNTS[(atm + op) % 4].into(),
                to_account_id: ACCOUNTS[(atm + op + 1) % 4].into(),
                amount_cents: 3,
                request_id,
            };
            client
                .transfer(request.clone())
                .await
                .map(|r| Acked::Transfer(request, r.into_inner()))
        } else {
            let request = pb::DepositRequest {
                account_id: ACCOUNTS[(atm + op) % 4].into(),
                amount_cents: 5,
                request_id,
            };
            client
                .deposit(request.clone())
                .await
                .map(|r| Acked::Deposit(request, r.into_inner()))
        };
        match outcome {
            Ok(ack) => acked.push(ack),
            // The server is gone: what was acknowledged so far is the record.
            Err(_) => return acked,
        }
    }
    acked
}

async fn kill_mid_load_then_verify(mode: &str, after: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = start_ledger(dir.path(), mode, "sync").await;
    open_accounts(&url, &ACCOUNTS, OPENING_CENTS).await;
    let mut atms = JoinSet::new();
    for atm in 0..8 {
        atms.spawn(load(LedgerClient::new(connect(&url).await), atm));
    }
    tokio::time::sleep(after).await;
    sigkill(&mut child).await;
    let acked: Vec<Acked> = atms.join_all().await.into_iter().flatten().collect();
    assert!(
        acked.len() > 20,
        "{mode}: too few operations before the kill: {}",
        acked.len()
    );

    let (_child, url) = start_ledger(dir.path(), mode, "none").await;
    let channel = connect(&url).await;
    let mut ledger = LedgerClient::new(channel.clone());
    for ack in &acked {
        match ack {
            Acked::Deposit(request, reply) => {
                let again = ledger.deposit(request.clone()).await.unwrap().into_inner();
                assert!(
                    again.replayed,
                    "{mode}: acknowledged {} was lost",
                    request.request_id
                );
                assert_eq!(
                    again.version, reply.version,
                    "{mode}: {}",
                    request.request_id
                );
            }
            Acked::Transfer(request, reply) => {
                let again = ledger.transfer(request.clone()).await.unwrap().into_inner();
                assert!(
                    again.replayed,
                    "{mode}: acknowledged {} was lost",
                    request.request_id
                );
                assert_eq!(again.from, reply.from, "{mode}: {}", request.request_id);
            }
        }
    }
    let audit = AdminClient::new(channel)
        .audit(AuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(audit.clean, "{mode}: {:?}", audit.findings);
    assert_eq!(
        audit.in_flight_cents, 0,
        "{mode}: transfers are all or nothing after recovery"
    );
    let acked_deposits: i64 = acked
        .iter()
        .filter(|a| matches!(a, Acked::Deposit(..)))
        .count() as i64
        * 5;
    assert!(audit.deposits_cents >= acked_deposits, "{mode}: {audit:?}");
}

/// Goal: with `--durability sync`, every acknowledged operation survives
/// SIGKILL, in each safe mode. Method: 8 ATMs depositing and transferring,
/// SIGKILL, restart on the same directory, replay every acknowledged
/// request_id (it must come back replayed with its version), and audit.
/// The kill comes after 400 ms (before the store's first checkpoint: the
/// restart replays the whole journal) or, in cas mode, after 2.5 s (past two
/// checkpoints: request records are found in the on-disk index and in the
/// replayed tail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_sigkill_in_mutex_mode() {
    kill_mid_load_then_verify("mutex", Duration::from_millis(400)).await;
}

/// As above, in cas mode, killed after checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_sigkill_in_cas_mode() {
    kill_mid_load_then_verify("cas", Duration::from_millis(2_500)).await;
}

/// As above, in actor mode, where a kill can fall between a transfer's legs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_sigkill_in_actor_mode() {
    kill_mid_load_then_verify("actor", Duration::from_millis(400)).await;
}
