//! A long journal must not make the ledger's memory grow: reopening a large
//! data directory and auditing all of it stay within a fixed bound, the
//! same for a journal eight times longer.
// A real process on real files: nothing for the modelled (shuttle) runtime.
#![cfg(not(feature = "shuttle"))]

mod common;

use std::{path::Path, time::Instant};

use overdraft_proto::v1::{self as pb, admin_client::AdminClient};
use overdraft_server::{
    bank::{Account, AccountId, EntryKind, Leg, RequestId},
    config::Mode,
    journal::{JournalEntry, RequestRecord, StoredReply},
    store::{Commit, Guard, SledStore, Store, Write},
};

/// Accounts the deposits spread over, as in the load benchmarks.
const ACCOUNTS: u64 = 1_000;

/// The ledger's peak resident memory after a reopen and a full audit, on
/// either journal. Measured here: 80 and 84 MiB (a debug build).
/// With the journal read through sled (before it had a file of its own)
/// a reopen of 2.7M entries peaked at 420 MiB and an audit after a
/// 30-minute load at 2.0 GB.
const PEAK_MIB_MAX: u64 = 256;

/// How much more the eight-times-longer journal may cost at its peak: the
/// filter of seen request ids grows with them (about 2 bytes an id), the
/// rest must not. Measured here: 4 MiB more; with the journal read through
/// sled, 23 MiB more (92 -> 115 MiB), which this bound refuses.
const PEAK_GROWTH_MIB_MAX: u64 = 12;

/// Writes `deposits` keyed deposits over [`ACCOUNTS`] accounts straight to
/// a sled store in `dir`, as the ledger's commits would.
fn write_store(dir: &Path, deposits: u64) {
    let store = SledStore::open(dir).unwrap();
    let id = |n: u64| AccountId::parse("account_id", &format!("acct-{n}")).unwrap();
    let zero = Account {
        balance_cents: 0,
        version: 0,
    };
    let mut accounts = vec![zero; usize::try_from(ACCOUNTS).unwrap()];
    for n in 0..ACCOUNTS {
        let opened = Account {
            balance_cents: 0,
            version: 1,
        };
        let entry = entry(EntryKind::Open, 0, None, leg(id(n), zero, opened, 0));
        store
            .commit(&commit(id(n), Guard::Absent, entry, None))
            .unwrap()
            .unwrap();
        accounts[usize::try_from(n).unwrap()] = opened;
    }
    for n in 0..deposits {
        let slot = usize::try_from(n % ACCOUNTS).unwrap();
        let read = accounts[slot];
        let written = Account {
            balance_cents: read.balance_cents + 1,
            version: read.version + 1,
        };
        accounts[slot] = written;
        let key = RequestId::internal(format!("deposit-{n}"));
        let account = id(n % ACCOUNTS);
        let entry = entry(
            EntryKind::Deposit,
            1,
            Some(key.clone()),
            leg(account.clone(), read, written, 1),
        );
        let record = RequestRecord::Done(StoredReply {
            fingerprint: format!("deposit:{account}:1"),
            accounts: vec![],
            fee_cents: 0,
        });
        let guard = Guard::Version(read.version);
        store
            .commit(&commit(account, guard, entry, Some((key, record))))
            .unwrap()
            .unwrap();
    }
    store.flush().unwrap();
}

fn leg(account: AccountId, read: Account, written: Account, delta_cents: i64) -> Leg {
    Leg {
        account,
        read,
        written,
        delta_cents,
    }
}

fn entry(
    kind: EntryKind,
    amount_cents: i64,
    request_id: Option<RequestId>,
    leg: Leg,
) -> JournalEntry {
    JournalEntry {
        seq: 0,
        kind,
        request_id,
        transfer_id: None,
        counterparty: None,
        mode: Mode::Mutex,
        amount_cents,
        fee_cents: 0,
        legs: vec![leg],
        time_unix_ns: 0,
    }
}

fn commit(
    account: AccountId,
    guard: Guard,
    entry: JournalEntry,
    request: Option<(RequestId, RequestRecord)>,
) -> Commit {
    let new = entry.legs[0].written;
    Commit {
        reads: Vec::new(),
        writes: vec![Write {
            account,
            guard,
            new,
        }],
        entry,
        request,
        replace_request: false,
    }
}

/// The peak resident memory of process `pid`, in MiB.
fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}

/// Starts the real ledger on `dir`, audits everything, and returns its peak
/// memory after both, with the audit's count of entries.
async fn reopen_and_audit(dir: &Path) -> (u64, u64) {
    let (child, url) = common::start_ledger(dir, "mutex", "none").await;
    let pid = child.id().expect("the ledger runs");
    let mut admin = AdminClient::new(common::connect(&url).await);
    let audit = admin
        .audit(pb::AuditRequest {})
        .await
        .expect("the audit answers")
        .into_inner();
    assert!(audit.clean, "{:?}", audit.findings);
    assert_eq!(audit.money_delta_cents, 0);
    (peak_mib(pid), audit.journal_entries)
}

/// Goal: memory does not grow with the journal's length: a reopen and a
/// full audit of 320,000 deposits peak under [`PEAK_MIB_MAX`], within
/// [`PEAK_GROWTH_MIB_MAX`] of the same for 40,000. Method: write both stores
/// through the store's own commits (keyed, so the request index and its
/// filter are rebuilt at open too), start the real ledger binary on each,
/// call Admin.Audit (a clean audit that counts every entry proves the whole
/// journal was read), and read the process's VmHWM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_and_auditing_a_long_journal_keeps_memory_flat() {
    let mut peaks = Vec::new();
    for deposits in [40_000, 320_000] {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        write_store(dir.path(), deposits);
        let written = started.elapsed();
        let (peak, entries) = reopen_and_audit(dir.path()).await;
        eprintln!(
            "{deposits} deposits: written in {:.1} s; reopen and audit peaked at {peak} MiB",
            written.as_secs_f64()
        );
        assert_eq!(entries, deposits + ACCOUNTS, "every entry audited");
        assert!(
            peak < PEAK_MIB_MAX,
            "{deposits} deposits: peak {peak} MiB, bound {PEAK_MIB_MAX}"
        );
        peaks.push(peak);
    }
    assert!(
        peaks[1] < peaks[0] + PEAK_GROWTH_MIB_MAX,
        "peaks {peaks:?} MiB: the longer journal cost {} MiB more (bound {PEAK_GROWTH_MIB_MAX})",
        peaks[1].saturating_sub(peaks[0])
    );
}
