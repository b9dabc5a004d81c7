//! The safe modes under a seeded random mix from many concurrent clients with
//! the race window open: every acknowledged reply fits a sequential model,
//! no balance goes negative, and the audit is clean.

use overdraft_server::config::Mode;
use overdraft_tests::{Model, TestLedger, pb};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::task::JoinSet;
use tonic::Code;

const ACCOUNTS: usize = 6;
const ATMS: u64 = 12;
const OPS_PER_ATM: usize = 20;
const SEEDS: u64 = 8;
const OPENING_CENTS: i64 = 5_000;

/// One acknowledged change to feed the model.
type Acks = Vec<(pb::AccountState, i64)>;

async fn atm(
    mut client: overdraft_tests::pb::ledger_client::LedgerClient<tonic::transport::Channel>,
    seed: u64,
    atm: u64,
) -> Result<Acks, String> {
    let mut rng = StdRng::seed_from_u64(seed * 1_000 + atm);
    let mut acks = Vec::new();
    for op in 0..OPS_PER_ATM {
        let account = |rng: &mut StdRng| format!("acct-{}", rng.random_range(0..ACCOUNTS));
        let amount_cents = rng.random_range(1..=3_000);
        let request_id = format!("s{seed}-a{atm}-{op}");
        let outcome = match rng.random_range(0..10) {
            0..=2 => client
                .deposit(pb::DepositRequest {
                    account_id: account(&mut rng),
                    amount_cents,
                    request_id,
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    acks.push((state(&r), amount_cents));
                }),
            3..=5 => client
                .withdraw(pb::WithdrawRequest {
                    account_id: account(&mut rng),
                    amount_cents,
                    request_id,
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    acks.push((state(&r), -(amount_cents + r.fee_cents)));
                }),
            _ => {
                let from = account(&mut rng);
                let mut to = account(&mut rng);
                while to == from {
                    to = account(&mut rng);
                }
                client
                    .transfer(pb::TransferRequest {
                        from_account_id: from,
                        to_account_id: to,
                        amount_cents,
                        request_id,
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        acks.push((r.from.unwrap_or_default(), -amount_cents));
                        acks.push((r.to.unwrap_or_default(), amount_cents));
                    })
            }
        };
        match outcome {
            Ok(()) => {}
            // Refusals and bounded aborts are legal outcomes that apply nothing.
            Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::Aborted) => {}
            Err(status) => return Err(format!("unexpected status: {status:?}")),
        }
    }
    Ok(acks)
}

fn state(reply: &pb::MutationReply) -> pb::AccountState {
    pb::AccountState {
        account_id: reply.account_id.clone(),
        balance_cents: reply.balance_cents,
        version: reply.version,
    }
}

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
        atms.spawn(atm(ledger.new_ledger_client().await, seed, n));
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
