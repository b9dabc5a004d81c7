//! The sled store's own tests: duplicates, replay after a crash, the
//! request index across checkpoints, old formats.

use std::{path::Path, sync::Arc};

use super::*;
use crate::{
    bank::{EntryKind, Leg},
    config::Mode,
    journal::StoredReply,
    store::{Guard, Write, encode_account},
};
use journal_file::JournalFile;
use layout::Trees;

fn commit(account: &AccountId, key: &RequestId, after: Account) -> Commit {
    let before = Account {
        balance_cents: 1,
        version: after.version - 1,
    };
    Commit {
        reads: Vec::new(),
        writes: vec![Write {
            account: account.clone(),
            guard: Guard::Blind,
            new: after,
        }],
        entry: JournalEntry {
            seq: 0,
            kind: EntryKind::Deposit,
            request_id: Some(key.clone()),
            transfer_id: None,
            counterparty: None,
            mode: Mode::Mutex,
            amount_cents: 41,
            fee_cents: 0,
            legs: vec![Leg {
                account: account.clone(),
                read: before,
                written: after,
                delta_cents: 41,
            }],
            time_unix_ns: 0,
        },
        request: Some((
            key.clone(),
            RequestRecord::Done(StoredReply {
                fingerprint: "f".into(),
                accounts: vec![],
                fee_cents: 0,
            }),
        )),
        replace_request: false,
    }
}

/// Goal: a duplicate request_id is caught whether its first commit is
/// still queued for the writer or already in sled, and a reopened store
/// continues the journal's seqs with its accounts in memory.
/// Method: commit, duplicate at once, flush, duplicate again, reopen.
#[test]
fn duplicates_are_caught_before_and_after_the_writer_and_reopen_continues() {
    let dir = tempfile::tempdir().unwrap();
    let account = AccountId::parse("account_id", "acct").unwrap();
    let key = RequestId::internal("k".into());
    let after = Account {
        balance_cents: 42,
        version: 1,
    };
    {
        let store = open_when_unlocked(dir.path()).unwrap();
        assert_eq!(store.commit(&commit(&account, &key, after)).unwrap(), Ok(0));
        let again = store.commit(&commit(&account, &key, after)).unwrap();
        assert!(matches!(again, Err(Rejected::Duplicate(_))), "{again:?}");
        store.flush().unwrap();
        let again = store.commit(&commit(&account, &key, after)).unwrap();
        assert!(matches!(again, Err(Rejected::Duplicate(_))), "{again:?}");
    }
    let store = open_when_unlocked(dir.path()).unwrap();
    assert_eq!(store.account(&account).unwrap(), Some(after));
    assert!(store.request(&key).unwrap().is_some());
    let other = RequestId::internal("other".into());
    let next = Account {
        balance_cents: 83,
        version: 2,
    };
    assert_eq!(
        store.commit(&commit(&account, &other, next)).unwrap(),
        Ok(1)
    );
    assert_eq!(store.journal().unwrap().len(), 2);
}

/// The state the tests below write by hand: one deposit to `acct`
/// under request id `k`.
fn deposit_k() -> (AccountId, RequestId, Account) {
    let after = Account {
        balance_cents: 42,
        version: 1,
    };
    (
        AccountId::parse("account_id", "acct").unwrap(),
        RequestId::internal("k".into()),
        after,
    )
}

/// Writes [`deposit_k`]'s journal segment as the writer would, then
/// `then` (what else the writer got done before the process died).
fn crash_after_segment(dir: &Path, then: impl FnOnce(&Trees)) {
    let (account, key, after) = deposit_k();
    let db = sled::Config::new().path(dir).open().unwrap();
    let trees = Trees::open(&db).unwrap();
    let record = JournalRecord {
        entry: commit(&account, &key, after).entry,
        request: commit(&account, &key, after).request,
    };
    let mut journal = JournalFile::open(dir, 0, 0).unwrap();
    assert_eq!(journal.append(std::slice::from_ref(&record)).unwrap(), 0);
    then(&trees);
    db.flush().unwrap();
}

/// Goal: a crash between a journal segment (the commit point) and the
/// next checkpoint loses nothing: opening replays the segment. Method:
/// write a segment straight into the journal file, as if the process
/// died right after, and reopen.
#[test]
fn a_segment_past_the_checkpoint_is_replayed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (account, key, after) = deposit_k();
    crash_after_segment(dir.path(), |_| {});
    let store = open_when_unlocked(dir.path()).unwrap();
    assert_eq!(store.rolled_forward_commits(), 1);
    assert_eq!(store.account(&account).unwrap(), Some(after));
    assert!(
        store.request(&key).unwrap().is_some(),
        "the request record is back"
    );
    let duplicate = store.commit(&commit(&account, &key, after)).unwrap();
    assert!(
        matches!(duplicate, Err(Rejected::Duplicate(_))),
        "{duplicate:?}"
    );
    assert_eq!(store.accounts().unwrap(), vec![(account, after)]);
}

/// Goal: request records reach the index at checkpoints and are found
/// there after reopens (through the index and the journal, not the
/// pending map), a clean close leaves nothing to replay, merged runs keep
/// every id, and unknown ids stay unknown.
/// Method: five rounds of open, 600 new keyed commits, a duplicate of
/// every earlier round's first key, close; then look every key up.
#[test]
fn request_records_survive_checkpoints_merges_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let account = AccountId::parse("account_id", "acct").unwrap();
    let key = |n: u64| RequestId::internal(format!("req-{n}"));
    let state = |n: u64| Account {
        balance_cents: i64::try_from(n).unwrap(),
        version: n + 1,
    };
    let mut n = 0;
    for round in 0..5u64 {
        let store = open_when_unlocked(dir.path()).unwrap();
        assert_eq!(store.rolled_forward_commits(), 0, "round {round}");
        assert!(lock(&store.shared.requests).pending.is_empty());
        for earlier in 0..round {
            let again = store
                .commit(&commit(&account, &key(earlier * 600), state(n)))
                .unwrap();
            assert!(matches!(again, Err(Rejected::Duplicate(_))), "{again:?}");
        }
        for _ in 0..600 {
            assert!(
                store
                    .commit(&commit(&account, &key(n), state(n)))
                    .unwrap()
                    .is_ok()
            );
            n += 1;
        }
    }
    let store = open_when_unlocked(dir.path()).unwrap();
    let index = Arc::clone(&lock(&store.shared.requests).index);
    assert_eq!(index.len(), n);
    assert!(
        index.runs() <= 3,
        "{} runs after 5 checkpoints",
        index.runs()
    );
    for k in 0..n {
        assert!(store.request(&key(k)).unwrap().is_some(), "req-{k}");
    }
    for k in n..n + 1_000 {
        assert_eq!(store.request(&key(k)).unwrap(), None, "req-{k}");
    }
    assert_eq!(store.account(&account).unwrap(), Some(state(n - 1)));
    assert_eq!(store.journal().unwrap().len(), usize::try_from(n).unwrap());
}

/// Goal: a checkpoint cut short (index chunks and account keys written,
/// no checkpoint record) loses nothing and leaves no orphan chunks.
/// Method: after the segment, write a run and a stale account key by
/// hand, as the writer would before dying, and reopen twice.
#[test]
fn a_checkpoint_cut_short_is_replayed_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let (account, key, after) = deposit_k();
    crash_after_segment(dir.path(), |trees| {
        let mut index = RequestIndex::default();
        index
            .add(&trees.request_index, vec![(hash_id("k"), 0)])
            .unwrap();
        let stale = Account {
            balance_cents: 7,
            version: 9,
        };
        trees
            .accounts
            .insert("acct", &encode_account(stale))
            .unwrap();
    });
    let store = open_when_unlocked(dir.path()).unwrap();
    assert_eq!(store.rolled_forward_commits(), 1);
    assert_eq!(store.account(&account).unwrap(), Some(after));
    assert!(store.request(&key).unwrap().is_some());
    drop(store);
    let store = open_when_unlocked(dir.path()).unwrap();
    assert_eq!(store.rolled_forward_commits(), 0);
    assert_eq!(
        store.trees.request_index.len(),
        1,
        "one chunk: the checkpoint's"
    );
    assert!(store.request(&key).unwrap().is_some());
    assert_eq!(store.accounts().unwrap(), vec![(account, after)]);
}

/// Goal: a data directory of the second format (the journal inside sled)
/// is refused with what to do: its journal would otherwise read as empty.
#[test]
fn a_data_directory_with_the_journal_in_sled_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree("journal")
            .unwrap()
            .insert(0u64.to_be_bytes(), &b"segment"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let error = open_when_unlocked(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("journal inside sled") && error.contains("--data-dir"),
        "{error}"
    );
}

/// Goal: a data directory in the first format (one key per request id)
/// is refused with what to do, not read as an empty index.
#[test]
fn a_data_directory_of_the_first_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree("requests")
            .unwrap()
            .insert("load-1-0-0", &b"record"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let error = open_when_unlocked(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("older overdraft") && error.contains("--data-dir"),
        "{error}"
    );
}

/// Goal: a Reset empties the journal for good: a reopen replays nothing
/// from before it, the old epoch's file is gone, and commits after it
/// survive the reopen. Method: commit, flush, clear, commit again, reopen.
#[test]
fn a_reset_starts_a_new_journal_file_that_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (account, key, after) = deposit_k();
    let other = RequestId::internal("after-reset".into());
    {
        let store = open_when_unlocked(dir.path()).unwrap();
        store
            .commit(&commit(&account, &key, after))
            .unwrap()
            .unwrap();
        store.flush().unwrap();
        store.clear().unwrap();
        assert!(store.journal().unwrap().is_empty());
        assert_eq!(store.request(&key).unwrap(), None);
        store
            .commit(&commit(&account, &other, after))
            .unwrap()
            .unwrap();
        store.flush().unwrap();
    }
    let logs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("journal-"))
        .collect();
    assert_eq!(logs, vec!["journal-1.log".to_owned()]);
    let store = open_when_unlocked(dir.path()).unwrap();
    let journal = store.journal().unwrap();
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0].request_id.as_ref(), Some(&other));
    assert_eq!(store.request(&key).unwrap(), None);
    assert!(store.request(&other).unwrap().is_some());
}

/// Goal: once a write has failed, no durable wait is answered Ok and the
/// writer appends nothing more: a commit queued before the failure may be
/// the one whose frame was lost. Method: mark a store failed as the writer
/// does, then ask through `flush_then` and hand the writer's batch step a
/// sync and a commit directly; a fresh store answers Ok (the control).
#[test]
fn after_a_failed_write_no_sync_is_answered_ok() {
    let answers = |store: &SledStore| {
        let (sender, answer) = std::sync::mpsc::channel();
        store.flush_then(Box::new(move |outcome, _| {
            sender.send(outcome.is_ok()).unwrap();
        }));
        answer.recv().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open_when_unlocked(dir.path()).unwrap();
    assert!(answers(&store), "a healthy store syncs");
    lock(&store.shared.written).failure = Some("disk full".into());
    assert!(!answers(&store));
    let end = lock(&store.shared.views).journal.end();
    let (account, key, after) = deposit_k();
    let record = JournalRecord {
        entry: commit(&account, &key, after).entry,
        request: None,
    };
    let (sender, answer) = std::sync::mpsc::channel();
    let mut syncs: Vec<crate::store::FlushDone> = vec![Box::new(move |outcome, _| {
        sender.send(outcome.is_ok()).unwrap();
    })];
    let (checkpoints, _jobs) = std::sync::mpsc::sync_channel(1);
    let outcome = writer::write_batch(&store.shared, &checkpoints, &[record], &mut syncs);
    assert!(outcome.is_err());
    assert!(!answer.recv().unwrap(), "the queued sync is refused");
    assert_eq!(
        lock(&store.shared.views).journal.end(),
        end,
        "nothing appended"
    );
    assert!(store.commit(&commit(&account, &key, after)).is_err());
}

/// Goal: a checkpoint handed over before a Reset, and run after it, changes
/// nothing (the checkpointer runs on its own thread, so that order happens):
/// the Reset's checkpoint record, its empty views and its index stand, and
/// a reopen finds the Reset's state. Control: the same job for the current
/// epoch is written.
/// Method: commit keyed deposits, take the writer's hand-over by hand,
/// clear, run the old job, check; then a job of the new epoch.
#[test]
fn a_checkpoint_handed_over_before_a_reset_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let account = AccountId::parse("account_id", "acct").unwrap();
    let state = |n: u64| Account {
        balance_cents: i64::try_from(n).unwrap(),
        version: n + 1,
    };
    let store = open_when_unlocked(dir.path()).unwrap();
    for n in 0..50 {
        let key = RequestId::internal(format!("old-{n}"));
        assert!(
            store
                .commit(&commit(&account, &key, state(n)))
                .unwrap()
                .is_ok()
        );
    }
    store.drain().unwrap();
    let stale = lock(&store.shared.views).hand_over();
    assert!(!stale.owed.is_empty());
    store.clear().unwrap();
    let after_reset = store.trees.checkpoint().unwrap();
    checkpoint::checkpoint(&store.trees, &store.shared, stale).unwrap();
    assert_eq!(store.trees.checkpoint().unwrap(), after_reset);
    assert!(
        store.trees.accounts.is_empty(),
        "the old epoch's balances came back"
    );
    assert_eq!(lock(&store.shared.requests).index.len(), 0);

    // Control: a job of the current epoch is checkpointed.
    let key = RequestId::internal("new-0".to_owned());
    assert!(
        store
            .commit(&commit(&account, &key, state(1)))
            .unwrap()
            .is_ok()
    );
    store.drain().unwrap();
    let current = lock(&store.shared.views).hand_over();
    checkpoint::checkpoint(&store.trees, &store.shared, current).unwrap();
    assert_ne!(store.trees.checkpoint().unwrap(), after_reset);
    assert_eq!(store.trees.accounts.len(), 1);
    assert_eq!(lock(&store.shared.requests).index.len(), 1);
    drop(store);
    let store = open_when_unlocked(dir.path()).unwrap();
    assert_eq!(store.rolled_forward_commits(), 0);
    assert_eq!(lock(&store.shared.requests).index.len(), 1);
}
