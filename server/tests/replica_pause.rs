//! The paused owner as real processes: an actor replica stopped with
//! SIGSTOP between its read and its write sleeps through its lease while
//! the other replica takes the account over; resumed with SIGCONT, it
//! writes what it computed before the pause. Unfenced, that write lands;
//! fenced, PostgreSQL refuses it. Real processes and real tokio: not built
//! under the `shuttle` feature.
#![cfg(not(feature = "shuttle"))]

use std::time::{Duration, Instant};

use overdraft_proto::v1::{
    self as pb, AuditRequest, admin_client::AdminClient, chaos_client::ChaosClient,
    ledger_client::LedgerClient,
};
use tokio::process::Child;

mod common;
// The tests crate's harness, shared by path: this crate cannot depend on
// that one (it depends on this), and only this crate's tests get the binary.
#[path = "../../tests/src/postgres.rs"]
#[allow(unreachable_pub, dead_code)]
mod postgres;
use common::{connect, open_accounts, signal, start_replica};

/// The owners' lease: the paused replica's hold at the race hook is
/// shorter, so without the pause it would write in time.
const LEASE_TTL_MS: &str = "300";
/// How long the first replica's withdrawal waits at the race hook (a
/// barrier that never fills) before writing.
const HOLD_MS: u64 = 150;
/// How long the first replica stays stopped: past its lease.
const PAUSE: Duration = Duration::from_millis(1_200);

async fn replica(url: &str, name: &str, fencing: &str) -> (Child, String) {
    start_replica(
        url,
        name,
        &[
            "--mode",
            "actor",
            "--fencing",
            fencing,
            "--lease-ttl-ms",
            LEASE_TTL_MS,
            "--race-window-ms",
            "0",
            "--pool-size",
            "4",
        ],
    )
    .await
}

fn withdrawal(n: u32) -> pb::WithdrawRequest {
    pb::WithdrawRequest {
        account_id: "acct".into(),
        amount_cents: 6_000,
        request_id: format!("paused-{n}"),
        joint_account_id: String::new(),
    }
}

struct Paused {
    /// The paused replica's withdrawal, then the other's.
    calls: [Result<pb::MutationReply, tonic::Status>; 2],
    balance: i64,
    audit: pb::AuditReply,
    fenced: u64,
}

/// Replica A takes a $100 account and starts a $60 withdrawal, held at
/// its race hook; once it is held (after the read), A is stopped for
/// [`PAUSE`] (or, without `pause`, left running). Meanwhile replica B
/// withdraws $60; then A resumes.
async fn paused_owner(fencing: &str, pause: bool) -> Paused {
    let url = postgres::cluster()
        .database(&format!("sigstop_{fencing}_{pause}"))
        .await;
    let (a, a_url) = replica(&url, "a", fencing).await;
    let (_b, b_url) = replica(&url, "b", fencing).await;
    open_accounts(&a_url, &["acct"], 10_000).await;
    let mut chaos = ChaosClient::new(connect(&a_url).await);
    chaos
        .arm_barrier(pb::ArmBarrierRequest {
            parties: 2,
            wait_ms: HOLD_MS,
        })
        .await
        .unwrap();
    let mut first = LedgerClient::new(connect(&a_url).await);
    let first = tokio::spawn(async move { first.withdraw(withdrawal(0)).await });
    // Held at the barrier: the balance is read, the write is to come.
    let asked = Instant::now();
    loop {
        let state = chaos
            .get_state(pb::ChaosStateRequest {})
            .await
            .unwrap()
            .into_inner();
        if state.barrier_waiting_for == 1 {
            break;
        }
        // Held for HOLD_MS once there, polled every 2 ms: it cannot get
        // there and away unseen. A loaded machine may take a while to get
        // it there.
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "A's withdrawal never reached the race hook: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if pause {
        signal(&a, libc::SIGSTOP);
    }
    tokio::time::sleep(PAUSE / 2).await;
    let second = LedgerClient::new(connect(&b_url).await)
        .withdraw(withdrawal(1))
        .await;
    tokio::time::sleep(PAUSE / 2).await;
    if pause {
        signal(&a, libc::SIGCONT);
    }
    let first = first.await.unwrap();
    let calls = [first, second].map(|call| call.map(tonic::Response::into_inner));
    let balance = LedgerClient::new(connect(&b_url).await)
        .get_balance(pb::GetBalanceRequest {
            account_id: "acct".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .balance_cents;
    let audit = AdminClient::new(connect(&b_url).await)
        .audit(AuditRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut fenced = 0;
    for url in [&a_url, &b_url] {
        let stats = AdminClient::new(connect(url).await)
            .stats(pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        fenced += stats
            .modes
            .iter()
            .find(|m| m.mode == pb::Mode::Actor as i32)
            .map_or(0, |m| m.stale_writes_fenced);
    }
    Paused {
        calls,
        balance,
        audit,
        fenced,
    }
}

/// Goal: the lesson of Kleppmann's "How to do distributed locking" with a
/// real process pause. Method: two `ledger` processes in actor mode on one
/// PostgreSQL database, 300 ms leases; A reads a $100 account for a $60
/// withdrawal and is stopped (SIGSTOP) at its race hook for 1.2 s; B, asked
/// for $60 in the middle of the pause, finds the lease lapsed, takes the
/// account and pays; A resumes (SIGCONT) and writes. Unfenced: both
/// withdrawals are acknowledged on a $100 account, the balance shows $40
/// and the audit finds the lost update. Fenced: the database refuses A's
/// stale token, A steps down and hands the call to B, which refuses it for
/// want of funds; the audit is clean. Unpaused (the control), A writes in
/// time and B is refused: the pause alone makes the stale write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_past_its_lease_writes_stale_unfenced_and_is_refused_fenced() {
    // The control: unpaused, A writes within its lease and B, asked later,
    // is refused for want of funds. The calls do not race by themselves.
    let running = paused_owner("off", false).await;
    assert!(running.calls[0].is_ok(), "{:?}", running.calls);
    assert_eq!(
        running.calls[1].as_ref().map_err(tonic::Status::code).err(),
        Some(tonic::Code::FailedPrecondition),
        "{:?}",
        running.calls
    );
    assert!(running.audit.clean, "{:?}", running.audit.findings);

    let unfenced = paused_owner("off", true).await;
    assert!(
        unfenced.calls.iter().all(Result::is_ok),
        "without fencing both withdrawals land: {:?}",
        unfenced.calls
    );
    assert_eq!(unfenced.balance, 4_000, "a lost update");
    assert!(!unfenced.audit.clean, "the audit finds the lost update");
    assert_eq!(unfenced.audit.money_delta_cents, 6_000);
    assert_eq!(unfenced.fenced, 0);

    let fenced = paused_owner("on", true).await;
    assert!(
        fenced.calls[1].is_ok(),
        "the new owner pays: {:?}",
        fenced.calls
    );
    let refused = fenced.calls[0].as_ref().unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "the stale owner's call is refused for want of funds: {refused:?}"
    );
    assert!(fenced.fenced >= 1, "a stale write was fenced off");
    assert_eq!(fenced.balance, 4_000);
    assert!(fenced.audit.clean, "{:?}", fenced.audit.findings);
    assert_eq!(fenced.audit.money_delta_cents, 0);
}
