//! Schedule exploration: the real engine and modes, on Shuttle's modelled
//! tokio (mutex, RwLock, mpsc, oneshot, spawn; the race hook's sleep is a
//! scheduling point), over the in-memory store. Shuttle chooses which task
//! runs at every point; random and PCT schedulers explore the interleavings.
//!
//! Run with `cargo test -p overdraft-server --features shuttle --test schedules`;
//! without the feature this file compiles to nothing, because the real tokio
//! cannot be steered.
#![cfg(feature = "shuttle")]

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use overdraft_server::{
    Config,
    bank::{AccountId, Operation, RequestId},
    config::Mode,
    engine::Engine,
    modes::Request,
    store::MemoryStore,
};

const SAFE_MODES: [Mode; 3] = [Mode::Mutex, Mode::Cas, Mode::Actor];

/// Shuttle runs each task on its own small stack; the engine's futures
/// (tonic-sized request paths, the actor's owners) need more than the default.
const TASK_STACK_BYTES: usize = 8 * 1024 * 1024;

fn config() -> shuttle::Config {
    let mut config = shuttle::Config::new();
    config.stack_size = TASK_STACK_BYTES;
    config
}

fn random(f: impl Fn() + Send + Sync + 'static, seed: u64, iterations: usize) {
    let scheduler = shuttle::scheduler::RandomScheduler::new_from_seed(seed, iterations);
    shuttle::Runner::new(scheduler, config()).run(f);
}

fn pct(f: impl Fn() + Send + Sync + 'static, iterations: usize, depth: usize) {
    let scheduler = shuttle::scheduler::PctScheduler::new(depth, iterations);
    shuttle::Runner::new(scheduler, config()).run(f);
}

fn id(text: &str) -> AccountId {
    AccountId::parse("account_id", text).expect("a valid literal id")
}

/// Two withdrawals of $600 and a $300 transfer race on a $1,000 account.
/// Whatever the schedule, a safe mode must refuse enough to stay at or above
/// zero, and the audit must be clean.
fn double_withdrawal(mode: Mode) {
    shuttle::future::block_on(async move {
        let mut config = Config::defaults();
        config.mode = mode;
        // A fixed 1 ms window: the hook always sleeps, so it is always a
        // scheduling point between read and write.
        config.race_window_ms_min = 1;
        config.race_window_ms = 1;
        let engine = Engine::start(&config, Arc::new(MemoryStore::new()))
            .await
            .expect("the engine starts");
        engine
            .open_account(id("joint"), 100_000)
            .await
            .expect("open");
        engine.open_account(id("savings"), 0).await.expect("open");
        let operations = [
            Operation::Withdraw {
                account: id("joint"),
                amount_cents: 60_000,
            },
            Operation::Withdraw {
                account: id("joint"),
                amount_cents: 60_000,
            },
            Operation::Transfer {
                from: id("joint"),
                to: id("savings"),
                amount_cents: 30_000,
            },
        ];
        let mut tasks = Vec::new();
        for (n, op) in operations.into_iter().enumerate() {
            let engine = Arc::clone(&engine);
            let request = Request {
                op,
                request_id: Some(RequestId::internal(format!("op-{n}"))),
            };
            tasks.push(tokio::spawn(async move {
                engine.execute(request).await.is_ok()
            }));
        }
        let mut applied = Vec::new();
        for task in tasks {
            applied.push(task.await.expect("the task finishes"));
        }
        let joint = engine
            .balance(&id("joint"))
            .await
            .expect("balance")
            .balance_cents;
        let savings = engine
            .balance(&id("savings"))
            .await
            .expect("balance")
            .balance_cents;
        let audit = engine.audit().await.expect("audit");
        drop(engine);
        let withdrawals = i64::from(u8::from(applied[0]) + u8::from(applied[1]));
        let transfers = i64::from(u8::from(applied[2]));
        assert!(audit.clean, "{mode}: audit found {:?}", audit.findings);
        assert!(
            withdrawals <= 1,
            "{mode}: both $600 withdrawals applied to $1,000"
        );
        assert_eq!(
            joint,
            100_000 - 60_000 * withdrawals - 30_000 * transfers,
            "{mode}: joint"
        );
        assert_eq!(savings, 30_000 * transfers, "{mode}: savings");
        assert!(joint >= 0, "{mode}: joint overdrawn to {joint}");
    });
}

/// Goal: the safe modes hold under random schedules. Method: 300 random
/// schedules per mode, seeded.
#[test]
fn safe_modes_pass_random_schedules() {
    for mode in SAFE_MODES {
        random(move || double_withdrawal(mode), 7, 300);
    }
}

/// Goal: the safe modes hold under PCT schedules, which find bugs of small
/// depth with known probability. Method: 300 schedules of depth 3 per mode.
#[test]
fn safe_modes_pass_pct_schedules() {
    for mode in SAFE_MODES {
        pct(move || double_withdrawal(mode), 300, 3);
    }
}

/// Goal: unsafe mode fails under schedule exploration, and the failing seed
/// replays: the same seed fails again, deterministically. Method: try seeds
/// until one fails, then run it twice more.
#[test]
fn unsafe_fails_with_a_seed_that_replays() {
    let fails = |seed: u64| {
        catch_unwind(AssertUnwindSafe(|| {
            random(|| double_withdrawal(Mode::Unsafe), seed, 1);
        }))
        .is_err()
    };
    let seed = (0..200)
        .find(|seed| fails(*seed))
        .expect("some schedule of 200 overdraws");
    eprintln!("unsafe mode breaks under schedule seed {seed}; replaying it");
    assert!(fails(seed), "seed {seed} must fail again");
    assert!(fails(seed), "and again");
    for mode in SAFE_MODES {
        random(move || double_withdrawal(mode), seed, 1);
    }
}
