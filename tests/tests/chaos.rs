//! Faults inside the ledger, through the Chaos service: the barrier that
//! makes a race certain, lost acknowledgements that turn retries into double
//! charges, and the admin token that guards Admin and Chaos beyond loopback.

use overdraft_server::config::Mode;
use overdraft_tests::{TestLedger, pb};
use pb::chaos_client::ChaosClient;
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};

async fn chaos(ledger: &TestLedger) -> ChaosClient<Channel> {
    ChaosClient::new(overdraft_tests::connect(&ledger.running.url()).await)
}

/// Two concurrent $600 withdrawals from $1,000 with a barrier of two armed;
/// returns whether the audit found an overdraft.
async fn withdraw_twice_at_the_barrier(
    ledger: &mut TestLedger,
    trial: usize,
    wait_ms: u64,
) -> bool {
    ledger.reset(&[("joint", 100_000)]).await;
    chaos(ledger)
        .await
        .arm_barrier(pb::ArmBarrierRequest {
            parties: 2,
            wait_ms,
        })
        .await
        .unwrap();
    let mut atms = JoinSet::new();
    for atm in 0..2 {
        let mut client = ledger.new_ledger_client().await;
        atms.spawn(async move {
            client
                .withdraw(pb::WithdrawRequest {
                    joint_account_id: String::new(),
                    account_id: "joint".into(),
                    amount_cents: 60_000,
                    request_id: format!("t{trial}-atm{atm}"),
                })
                .await
        });
    }
    atms.join_all().await;
    let audit = ledger.audit().await;
    audit.overdrafts > 0
}

/// Goal: with the barrier, double-withdrawal overdraws in every one of 20
/// trials in unsafe mode, with no race window at all; and never in the safe
/// modes, where the barrier can only hold what the lock, the version check
/// or the owner lets through. Method: 20 trials per mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_makes_double_withdrawal_overdraw_every_time_in_unsafe_only() {
    for mode in Mode::ALL {
        let mut ledger = TestLedger::start(|c| c.mode = mode).await;
        // In the safe modes the second withdrawal cannot reach the hook while
        // the first holds it, so the barrier waits out its bound: keep it short.
        let wait_ms = if mode == Mode::Unsafe { 5_000 } else { 50 };
        let mut overdrawn = 0;
        for trial in 0..20 {
            overdrawn +=
                usize::from(withdraw_twice_at_the_barrier(&mut ledger, trial, wait_ms).await);
        }
        let expected = if mode == Mode::Unsafe { 20 } else { 0 };
        assert_eq!(
            overdrawn, expected,
            "{mode}: overdrawn in {overdrawn} of 20 trials"
        );
        let state = chaos(&ledger)
            .await
            .get_state(pb::ChaosStateRequest {})
            .await
            .unwrap()
            .into_inner();
        if mode == Mode::Unsafe {
            assert_eq!(state.barriers_released, 20, "every barrier filled");
        }
        ledger.running.stop().await.unwrap();
    }
}

/// Goal: a replay takes no lost acknowledgement: it applies nothing, and
/// one that took the fault would let a slower first attempt through
/// acknowledged. Method: arm two lost acks; a keyed withdrawal loses its
/// ack; its resend is replayed and answered; the next new withdrawal loses
/// the second ack; the state shows both taken. Negative control: before the
/// rule, the resend itself failed with the armed code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_take_no_lost_acknowledgement() {
    let mut ledger = TestLedger::start(|c| c.mode = Mode::Mutex).await;
    ledger.reset(&[("acct", 10_000)]).await;
    let mut faults = chaos(&ledger).await;
    faults
        .arm_lost_acks(pb::ArmLostAcksRequest {
            count: 2,
            code: pb::arm_lost_acks_request::Code::Unavailable.into(),
        })
        .await
        .unwrap();
    let withdraw = |id: &str| pb::WithdrawRequest {
        joint_account_id: String::new(),
        account_id: "acct".into(),
        amount_cents: 1_000,
        request_id: id.into(),
    };
    let lost = ledger.ledger.withdraw(withdraw("w-1")).await.unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable);
    let resent = ledger
        .ledger
        .withdraw(withdraw("w-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        resent.replayed,
        "the resend is answered from the idempotency table"
    );
    let state = faults
        .get_state(pb::ChaosStateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state.lost_acks, 1,
        "the replay left the second lost ack armed"
    );
    let second = ledger.ledger.withdraw(withdraw("w-2")).await.unwrap_err();
    assert_eq!(second.code(), Code::Unavailable, "a new mutation takes it");
    assert_eq!(ledger.balance("acct").await.balance_cents, 8_000);
    ledger.running.stop().await.unwrap();
}

/// Goal: a lost acknowledgement makes a retry double-apply with idempotency
/// off, and apply exactly once with it on, in every mode. Method: arm one
/// lost ack, withdraw (the RPC fails with the armed code), retry the same
/// request_id, read the balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgement_double_applies_only_without_idempotency() {
    for mode in Mode::ALL {
        for idempotency in [true, false] {
            let mut ledger = TestLedger::start(|c| c.mode = mode).await;
            ledger.reset(&[("acct", 10_000)]).await;
            ledger
                .admin
                .configure(pb::ConfigureRequest {
                    idempotency: Some(idempotency),
                    ..Default::default()
                })
                .await
                .unwrap();
            chaos(&ledger)
                .await
                .arm_lost_acks(pb::ArmLostAcksRequest {
                    count: 1,
                    code: pb::arm_lost_acks_request::Code::DeadlineExceeded.into(),
                })
                .await
                .unwrap();
            let withdraw = pb::WithdrawRequest {
                joint_account_id: String::new(),
                account_id: "acct".into(),
                amount_cents: 1_000,
                request_id: "w-1".into(),
            };
            let lost = ledger.ledger.withdraw(withdraw.clone()).await.unwrap_err();
            assert_eq!(lost.code(), Code::DeadlineExceeded, "{mode}");
            assert!(
                lost.message().contains("acknowledgement was dropped"),
                "{lost:?}"
            );
            let retry = ledger.ledger.withdraw(withdraw).await.unwrap().into_inner();
            let expected = if idempotency { 9_000 } else { 8_000 };
            assert_eq!(retry.replayed, idempotency, "{mode}");
            assert_eq!(
                ledger.balance("acct").await.balance_cents,
                expected,
                "{mode} idempotency {idempotency}"
            );
            assert!(
                ledger.audit().await.clean,
                "both applications are journaled"
            );
            ledger.running.stop().await.unwrap();
        }
    }
}

/// Goal: beyond loopback, Admin and Chaos refuse calls without the token
/// (UNAUTHENTICATED) and change nothing, accept them with it, and the Ledger
/// service stays open; without a configured token they refuse everything.
/// Method: bind 0.0.0.0:0 and call through 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_chaos_require_the_token_beyond_loopback() {
    for token in [Some("s3cret"), None] {
        let ledger = TestLedger::start(|c| {
            c.listen = "0.0.0.0:0".parse().unwrap();
            c.admin_token = token.map(str::to_owned);
        })
        .await;
        let url = format!("http://127.0.0.1:{}", ledger.running.addr.port());
        let channel = overdraft_tests::connect(&url).await;
        let mut admin = pb::admin_client::AdminClient::new(channel.clone());
        let mut chaos = ChaosClient::new(channel.clone());
        let refused = admin
            .set_mode(pb::SetModeRequest {
                mode: pb::Mode::Unsafe.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let refused = chaos
            .arm_lost_acks(pb::ArmLostAcksRequest { count: 5, code: 1 })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);

        fn with<T>(message: T) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request
                .metadata_mut()
                .insert("authorization", "Bearer s3cret".parse().unwrap());
            request
        }
        match token {
            Some(_) => {
                let mode = admin
                    .get_mode(with(pb::GetModeRequest {}))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(
                    mode.mode,
                    i32::from(pb::Mode::Mutex),
                    "the refused SetMode changed nothing"
                );
                let state = chaos
                    .get_state(with(pb::ChaosStateRequest {}))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(state.lost_acks, 0, "the refused arming changed nothing");
                let wrong = {
                    let mut request = tonic::Request::new(pb::GetModeRequest {});
                    request
                        .metadata_mut()
                        .insert("authorization", "Bearer guess".parse().unwrap());
                    admin.get_mode(request).await.unwrap_err()
                };
                assert_eq!(wrong.code(), Code::Unauthenticated);
            }
            None => {
                let refused = admin
                    .get_mode(with(pb::GetModeRequest {}))
                    .await
                    .unwrap_err();
                assert!(refused.message().contains("--admin-token"), "{refused:?}");
            }
        }
        let mut ledger_client = pb::ledger_client::LedgerClient::new(channel);
        let opened = ledger_client
            .open_account(pb::OpenAccountRequest {
                account_id: "a".into(),
                initial_balance_cents: 1,
            })
            .await;
        assert!(opened.is_ok(), "the Ledger service needs no token");
    }
}

/// Goal: a race window aimed at one account and one method delays exactly
/// those operations by at least the configured time, and a probability of 0
/// turns it off. Method: a fixed 300 ms window on withdrawals from "slow";
/// a withdrawal from "slow" takes at least 300 ms; a deposit to "slow" and a
/// withdrawal from "fast" take far less (a local call, not a timing race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_race_window_delays_only_its_targets() {
    let mut ledger = TestLedger::start(|c| c.mode = Mode::Mutex).await;
    ledger.reset(&[("slow", 10_000), ("fast", 10_000)]).await;
    let mut chaos = chaos(&ledger).await;
    let window = |probability| pb::SetRaceWindowRequest {
        delay: Some(pb::set_race_window_request::Delay::FixedMs(300)),
        probability: Some(probability),
        method: "withdraw".into(),
        account_id: "slow".into(),
        mode: 0,
    };
    let state = chaos
        .set_race_window(window(1.0))
        .await
        .unwrap()
        .into_inner();
    assert!(
        state.race_window.contains("Fixed { ms: 300 }"),
        "{}",
        state.race_window
    );
    let mut timed = async |op: &str, account: &str| {
        let started = std::time::Instant::now();
        match op {
            "withdraw" => {
                let request = pb::WithdrawRequest {
                    joint_account_id: String::new(),
                    account_id: account.into(),
                    amount_cents: 1,
                    request_id: String::new(),
                };
                ledger.ledger.withdraw(request).await.unwrap();
            }
            _ => {
                let request = pb::DepositRequest {
                    account_id: account.into(),
                    amount_cents: 1,
                    request_id: String::new(),
                };
                ledger.ledger.deposit(request).await.unwrap();
            }
        }
        started.elapsed()
    };
    let targeted = timed("withdraw", "slow").await;
    let other_method = timed("deposit", "slow").await;
    let other_account = timed("withdraw", "fast").await;
    assert!(
        targeted >= std::time::Duration::from_millis(300),
        "{targeted:?}"
    );
    assert!(
        other_method < targeted / 2,
        "{other_method:?} vs {targeted:?}"
    );
    assert!(
        other_account < targeted / 2,
        "{other_account:?} vs {targeted:?}"
    );

    chaos.set_race_window(window(0.0)).await.unwrap();
    let never = timed("withdraw", "slow").await;
    assert!(never < targeted / 2, "probability 0: {never:?}");

    let bad = chaos
        .set_race_window(pb::SetRaceWindowRequest {
            method: "teleport".into(),
            ..window(1.0)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("method"), "{bad:?}");
    let bad = chaos
        .set_race_window(pb::SetRaceWindowRequest {
            probability: Some(1.5),
            ..window(1.0)
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("probability"), "{bad:?}");
}
