//! Switching modes while serving: operations in flight finish in the mode
//! they started in, and nothing is lost across the switches.

use std::time::Duration;

use overdraft_server::config::Mode;
use overdraft_tests::{Model, TestLedger, mode_stats, pb};
use tokio::task::JoinSet;
use tonic::Code;

/// Goal: cycling mutex -> cas -> actor under load loses nothing. Method: 8
/// ATMs send deposits and transfers with a 3 ms race window while the mode
/// switches every 40 ms; the sequential model, the audit and every mode's
/// counters are checked after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_under_load_loses_nothing() {
    let mut ledger = TestLedger::start(|c| {
        c.mode = Mode::Mutex;
        c.race_window_ms = 3;
    })
    .await;
    let accounts = ["a", "b", "c", "d"];
    ledger.reset(&accounts.map(|a| (a, 50_000))).await;
    let mut model = Model::default();
    for a in accounts {
        model.open(a, 50_000);
    }
    let mut atms = JoinSet::new();
    for atm in 0..8usize {
        let mut client = ledger.new_ledger_client().await;
        atms.spawn(async move {
            let mut acks = Vec::new();
            for op in 0..40usize {
                let from = accounts[(atm + op) % 4];
                let to = accounts[(atm + op + 1) % 4];
                let id = format!("atm{atm}-{op}");
                if op % 2 == 0 {
                    let r = client
                        .deposit(pb::DepositRequest {
                            account_id: from.into(),
                            amount_cents: 7,
                            request_id: id,
                        })
                        .await;
                    if let Ok(r) = r {
                        let r = r.into_inner();
                        acks.push((
                            pb::AccountState {
                                account_id: r.account_id,
                                balance_cents: r.balance_cents,
                                version: r.version,
                            },
                            7,
                        ));
                    }
                } else {
                    match client
                        .transfer(pb::TransferRequest {
                            from_account_id: from.into(),
                            to_account_id: to.into(),
                            amount_cents: 5,
                            request_id: id,
                        })
                        .await
                    {
                        Ok(r) => {
                            let r = r.into_inner();
                            acks.push((r.from.unwrap_or_default(), -5));
                            acks.push((r.to.unwrap_or_default(), 5));
                        }
                        Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
                    }
                }
            }
            acks
        });
    }
    let mut admin = ledger.admin.clone();
    let switcher = tokio::spawn(async move {
        let cycle = [Mode::Cas, Mode::Actor, Mode::Mutex];
        for i in 0..15 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            admin
                .set_mode(pb::SetModeRequest {
                    mode: pb::Mode::from(cycle[i % 3]).into(),
                })
                .await
                .expect("set mode");
        }
    });
    for acks in atms.join_all().await {
        for (after, delta) in acks {
            model.acknowledge(&after, delta);
        }
    }
    switcher.await.unwrap();
    model.check_chains().unwrap();
    for (account, expected) in model.expected_balances() {
        assert_eq!(
            ledger.balance(&account).await.balance_cents,
            expected,
            "{account}"
        );
    }
    let audit = ledger.audit().await;
    assert!(audit.clean, "{:?}", audit.findings);
    let stats = ledger.stats().await;
    for mode in [Mode::Mutex, Mode::Cas, Mode::Actor] {
        assert!(
            mode_stats(&stats, mode).operations > 0,
            "no operation ran in {mode}"
        );
    }
}

/// Goal: a Configure that changes nothing (how an ATM joining a crowd reads
/// the settings) is answered at once, while a real change still waits for
/// the operations in flight. Method: a deposit held 1.5 s in its race
/// window; an empty Configure sent meanwhile returns well before the
/// deposit does, and one that moves the window returns only after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_configure_does_not_wait_for_operations_in_flight() {
    let mut ledger = TestLedger::start(|c| {
        c.mode = Mode::Mutex;
        c.race_window_ms_min = 1_500;
        c.race_window_ms = 1_500;
    })
    .await;
    ledger.reset(&[("acct", 0)]).await;
    let mut client = ledger.new_ledger_client().await;
    let started = std::time::Instant::now();
    let deposit = tokio::spawn(async move {
        client
            .deposit(pb::DepositRequest {
                account_id: "acct".into(),
                amount_cents: 100,
                request_id: "held".into(),
            })
            .await
            .map(|_| started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = ledger
        .admin
        .configure(pb::ConfigureRequest::default())
        .await
        .unwrap()
        .into_inner();
    let read_at = started.elapsed();
    assert_eq!(read.race_window_ms_max, 1_500);
    let changed = ledger
        .admin
        .configure(pb::ConfigureRequest {
            race_window_ms_min: Some(0),
            race_window_ms_max: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let changed_at = started.elapsed();
    assert_eq!(changed.race_window_ms_max, 0);
    let deposited_at = deposit.await.unwrap().unwrap();
    assert!(
        read_at < Duration::from_millis(1_200),
        "the empty Configure took until {read_at:?}: it waited for the deposit"
    );
    assert!(
        changed_at >= deposited_at.saturating_sub(Duration::from_millis(50)),
        "the change came back at {changed_at:?}, before the deposit in flight finished at {deposited_at:?}"
    );
}
