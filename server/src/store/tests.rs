//! The store contract, checked against both implementations with the same
//! random commits, and sled's contents across a reopen.

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;
use crate::{
    bank::{EntryKind, Leg},
    config::Mode,
    journal::StoredReply,
};

fn id(n: u32) -> AccountId {
    AccountId::parse("account_id", &format!("acct-{n}")).unwrap()
}

fn commit_for(account: AccountId, guard: Guard, new: Account, request: Option<&str>) -> Commit {
    let read = Account {
        balance_cents: 0,
        version: new.version.saturating_sub(1),
    };
    Commit {
        reads: Vec::new(),
        writes: vec![Write {
            account: account.clone(),
            guard,
            new,
        }],
        entry: JournalEntry {
            seq: 0,
            kind: EntryKind::Deposit,
            request_id: request.map(|r| RequestId::internal(r.to_owned())),
            transfer_id: None,
            counterparty: None,
            mode: Mode::Cas,
            amount_cents: 1,
            fee_cents: 0,
            legs: vec![Leg {
                account,
                read,
                written: new,
                delta_cents: 1,
            }],
            time_unix_ns: 0,
        },
        request: request.map(|r| {
            (
                RequestId::internal(r.to_owned()),
                RequestRecord::Done(StoredReply {
                    fingerprint: r.to_owned(),
                    accounts: Vec::new(),
                    fee_cents: 0,
                }),
            )
        }),
        replace_request: false,
    }
}

/// Random guarded commits give the same outcomes, accounts and journal on
/// sled and in memory: the two stores keep one contract.
#[test]
fn sled_and_memory_agree_on_random_commits() {
    let sled = SledStore::temporary().unwrap();
    let memory = MemoryStore::new();
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        for step in 0..300u32 {
            let account = id(rng.random_range(0..5));
            let guard = match rng.random_range(0..3) {
                0 => Guard::Blind,
                1 => Guard::Absent,
                _ => Guard::Version(rng.random_range(0..4)),
            };
            let new = Account {
                balance_cents: rng.random_range(-100..100),
                version: rng.random_range(0..5),
            };
            let request = format!("r-{}", rng.random_range(0..50u32));
            let request = (step % 2 == 0).then_some(request.as_str());
            let commit = commit_for(account.clone(), guard, new, request);
            let left = sled.commit(&commit).unwrap().map(|_| ());
            let right = memory.commit(&commit).unwrap().map(|_| ());
            assert_eq!(left, right, "seed {seed} step {step}");
        }
        assert_eq!(sled.accounts().unwrap(), memory.accounts().unwrap());
        let strip = |journal: Vec<JournalEntry>| -> Vec<_> {
            journal
                .into_iter()
                .map(|e| (e.legs, e.request_id))
                .collect()
        };
        assert_eq!(
            strip(sled.journal().unwrap()),
            strip(memory.journal().unwrap())
        );
        sled.clear().unwrap();
        memory.clear().unwrap();
    }
}

/// What sled committed and flushed is there after the database is reopened.
#[test]
fn sled_keeps_commits_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let account = id(1);
    {
        let store = sled_store::open_when_unlocked(dir.path()).unwrap();
        let new = Account {
            balance_cents: 42,
            version: 1,
        };
        store
            .commit(&commit_for(
                account.clone(),
                Guard::Blind,
                new,
                Some("once"),
            ))
            .unwrap()
            .unwrap();
        store.flush().unwrap();
    }
    let store = sled_store::open_when_unlocked(dir.path()).unwrap();
    assert_eq!(
        store.account(&account).unwrap().map(|a| a.balance_cents),
        Some(42)
    );
    assert_eq!(store.journal().unwrap().len(), 1);
    assert!(
        store
            .request(&RequestId::internal("once".into()))
            .unwrap()
            .is_some()
    );
}
