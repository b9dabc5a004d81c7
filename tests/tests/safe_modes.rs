//! The safe modes under a seeded random mix from many concurrent clients with
//! the race window open: every acknowledged reply fits a sequential model,
//! no balance goes negative, and the audit is clean.

use overdraft_server::config::Mode;
use overdraft_tests::{Model, TestLedger};
use tokio::task::JoinSet;

const ACCOUNTS: usize = 6;
const ATMS: u64 = 12;
const OPS_PER_ATM: usize = 20;
const SEEDS: u64 = 8;
const OPENING_CENTS: i64 = 5_000;

/// Opens the accounts, runs every ATM's seeded mix, and feeds the model.
async fn run_mix(ledger: &mut TestLedger, model: &mut Model, seed: u64) -> Result<(), String> {
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i}")).collect();
    let opening: Vec<(&str, i64)> = accounts
        .iter()
        .map(|id| (id.as_str(), OPENING_CENTS))
        .collect();
    ledger.reset(&opening).await;
    for id in &accounts {
        model.open(id, OPENING_CENTS);
    }
    let mut atms = JoinSet::new();
    for n in 0..ATMS {
        atms.spawn(overdraft_tests::random_atm(
            ledger.new_ledger_client().await,
            seed,
            n,
            ACCOUNTS,
            OPS_PER_ATM,
        ));
    }
    for acks in atms.join_all().await {
        for (after, delta) in acks? {
            model.acknowledge(&after, delta);
        }
    }
    Ok(())
}

async fn random_mix_matches_model(mode: Mode) {
    let mut contended = 0;
    for seed in 0..SEEDS {
        let mut ledger = TestLedger::start(|c| {
            c.mode = mode;
            c.race_window_ms = 2;
            c.seed = seed;
        })
        .await;
        let mut model = Model::default();
        run_mix(&mut ledger, &mut model, seed)
            .await
            .unwrap_or_else(|e| panic!("{mode} seed {seed}: {e}"));
        model
            .check_chains()
            .unwrap_or_else(|e| panic!("{mode} seed {seed}: {e}"));
        for (account, expected) in model.expected_balances() {
            let found = ledger.balance(&account).await.balance_cents;
            assert_eq!(found, expected, "{mode} seed {seed}: {account}");
            assert!(found >= 0, "{mode} seed {seed}: {account} went negative");
        }
        let audit = ledger.audit().await;
        assert!(audit.clean, "{mode} seed {seed}: {:?}", audit.findings);
        assert_eq!(audit.money_delta_cents, 0);
        let counters = overdraft_tests::mode_stats(&ledger.stats().await, mode);
        assert!(counters.operations > 0);
        contended += counters.retries;
        ledger.running.stop().await.unwrap();
    }
    if mode == Mode::Cas {
        assert!(
            contended > 0,
            "the race window must make CAS conflict and retry"
        );
    }
}

/// Goal: mutex mode is serializable under a wide race window. Method: 8
/// seeds of 12 ATMs x 20 random operations over 6 accounts, checked
/// against the sequential model and the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_random_mix_matches_sequential_model() {
    random_mix_matches_model(Mode::Mutex).await;
}

/// Goal: cas mode is serializable under a wide race window; conflicts retry
/// or abort, never lose. Method: as for mutex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_random_mix_matches_sequential_model() {
    random_mix_matches_model(Mode::Cas).await;
}

/// Goal: actor mode is serializable, cross-owner transfers included. Method:
/// as for mutex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_random_mix_matches_sequential_model() {
    random_mix_matches_model(Mode::Actor).await;
}

/// Goal: the same random mix in unsafe mode breaks the model, proving the
/// check above can fail. Method: one seed, wider window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_random_mix_breaks_the_model() {
    let mut ledger = TestLedger::start(|c| {
        c.mode = Mode::Unsafe;
        c.race_window_ms = 5;
    })
    .await;
    let mut model = Model::default();
    run_mix(&mut ledger, &mut model, 99).await.unwrap();
    assert!(
        model.check_chains().is_err(),
        "unsafe mode must break the chain"
    );
    assert!(!ledger.audit().await.clean);
}

/// Crossed joint withdrawals (each spouse from their own account, the
/// household rule reading the other's) at the same moment, `trials` times
/// on one ledger: how many left the household below zero. Each trial's
/// audit must agree.
async fn crossed_joint_withdrawals(mode: Mode, trials: u32) -> u32 {
    let mut ledger = TestLedger::start(|c| {
        c.mode = mode;
        c.race_window_ms_min = 20;
        c.race_window_ms = 20;
    })
    .await;
    let mut skews = 0;
    for trial in 0..trials {
        ledger.reset(&[("alice", 10_000), ("bob", 10_000)]).await;
        let mut left = ledger.new_ledger_client().await;
        let mut right = ledger.new_ledger_client().await;
        for outcome in
            overdraft_tests::crossed_joint_withdrawals(&mut left, &mut right, trial).await
        {
            if let Err(status) = outcome {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::Aborted
                    ),
                    "{mode}: {status:?}"
                );
            }
        }
        let household =
            ledger.balance("alice").await.balance_cents + ledger.balance("bob").await.balance_cents;
        let audit = ledger.audit().await;
        assert_eq!(household < 0, !audit.clean, "{mode}: {:?}", audit.findings);
        skews += u32::from(household < 0);
    }
    ledger.running.stop().await.unwrap();
    skews
}

/// Goal: the household rule (a check on one account, a write to the other)
/// holds in every safe mode on one ledger: mutex locks both accounts, cas
/// and actor guard the account they only read. Unsafe shows the write skew,
/// proving the check can fail. Method: 5 crossed pairs of joint
/// withdrawals per mode, both reading before either writes (20 ms window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joint_withdrawals_never_skew_in_the_safe_modes() {
    for mode in [Mode::Mutex, Mode::Cas, Mode::Actor] {
        assert_eq!(crossed_joint_withdrawals(mode, 5).await, 0, "{mode}");
    }
    assert_eq!(crossed_joint_withdrawals(Mode::Unsafe, 5).await, 5);
}
