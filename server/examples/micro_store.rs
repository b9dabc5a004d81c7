//! Commits per second of each store, single-threaded: the figure behind the
//! sled store's design (commits decided in memory, written in batches).
//!
//! `cargo run --release -p overdraft-server --example micro_store`
use overdraft_server::{bank::*, config::Mode, journal::*, store::*};
use std::time::Instant;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    let memory = MemoryStore::new();
    for (name, store) in [
        ("sled", &sled as &dyn Store),
        ("memory", &memory as &dyn Store),
    ] {
        let n = 100_000u64;
        let started = Instant::now();
        for i in 0..n {
            let account = AccountId::parse("a", &format!("acct-{}", i % 64)).unwrap();
            let new = Account {
                balance_cents: i as i64,
                version: i,
            };
            let commit = Commit {
                reads: Vec::new(),
                writes: vec![Write {
                    account: account.clone(),
                    guard: Guard::Blind,
                    new,
                }],
                entry: JournalEntry {
                    seq: 0,
                    kind: EntryKind::Deposit,
                    request_id: Some(RequestId::internal(format!("r{i}"))),
                    transfer_id: None,
                    counterparty: None,
                    mode: Mode::Cas,
                    amount_cents: 1,
                    fee_cents: 0,
                    legs: vec![Leg {
                        account,
                        read: new,
                        written: new,
                        delta_cents: 1,
                    }],
                    time_unix_ns: 0,
                },
                request: Some((
                    RequestId::internal(format!("r{i}")),
                    RequestRecord::Done(StoredReply {
                        fingerprint: "x".into(),
                        accounts: vec![],
                        fee_cents: 0,
                    }),
                )),
                replace_request: false,
            };
            runtime.block_on(store.commit(&commit)).unwrap().unwrap();
        }
        // Include the writer's work: wait until everything is in sled (no fsync for memory).
        if name == "sled" {
            store.flush().unwrap();
        }
        println!(
            "{name}: {:.0} commits/s",
            n as f64 / started.elapsed().as_secs_f64()
        );
    }
}
