//! The audit's memory on a long journal: commits N deposits (over 1,000
//! accounts) to a sled store, reopens it, then audits it the way
//! Admin.Audit does (a fold over a journal scan), printing the time and
//! the process's resident memory before and at the peak.
//!
//! `cargo run --release -p overdraft-server --example audit_bench -- 10000000`
use std::{ops::ControlFlow, time::Instant};

use overdraft_server::{
    audit::Auditor, bank::*, config::Mode, config::OverdraftPolicy, journal::*, store::*,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Accounts the deposits spread over.
const ACCOUNTS: usize = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("audit") {
        audit(std::path::Path::new(&args[2]));
        return;
    }
    let entries: u64 = args
        .get(1)
        .map(|a| a.parse().expect("the number of journal entries"))
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let mut accounts = vec![
            Account {
                balance_cents: 0,
                version: 0
            };
            ACCOUNTS
        ];
        for i in 0..entries {
            let slot = usize::try_from(i).unwrap() % ACCOUNTS;
            let account = AccountId::parse("a", &format!("acct-{slot}")).unwrap();
            let read = accounts[slot];
            let written = Account {
                balance_cents: read.balance_cents + 1,
                version: read.version + 1,
            };
            accounts[slot] = written;
            let guard = if read.version == 0 {
                Guard::Absent
            } else {
                Guard::Version(read.version)
            };
            let commit = Commit {
                reads: Vec::new(),
                writes: vec![Write {
                    account: account.clone(),
                    guard,
                    new: written,
                }],
                entry: JournalEntry {
                    seq: 0,
                    kind: EntryKind::Deposit,
                    request_id: None,
                    transfer_id: None,
                    counterparty: None,
                    mode: Mode::Mutex,
                    amount_cents: 1,
                    fee_cents: 0,
                    legs: vec![Leg {
                        account,
                        read,
                        written,
                        delta_cents: 1,
                    }],
                    time_unix_ns: 0,
                },
                request: None,
                replace_request: false,
            };
            store.commit(&commit).unwrap().unwrap();
            if i % 1_000_000 == 999_999 {
                eprintln!("{} entries committed", i + 1);
            }
        }
        store.flush().unwrap();
    }
    println!(
        "committed {entries} deposits over {ACCOUNTS} accounts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The audit runs in a fresh process, so that its peak memory is its own.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("audit")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
}

fn audit(dir: &std::path::Path) {
    let store = SledStore::open(dir).unwrap();
    let before = rss_kb("VmRSS:");
    let started = Instant::now();
    let mut auditor = Auditor::new(OverdraftPolicy::Reject);
    store
        .scan_journal(&mut |entry| {
            auditor.push(&entry);
            ControlFlow::Continue(())
        })
        .unwrap();
    let report = auditor.finish(&store.accounts().unwrap());
    println!(
        "audited {} entries in {:.1} s ({:.0} entries/s): clean {}, {} findings; RSS {} MB before, peak {} MB",
        report.journal_entries,
        started.elapsed().as_secs_f64(),
        report.journal_entries as f64 / started.elapsed().as_secs_f64(),
        report.clean,
        report.findings.len(),
        before / 1024,
        rss_kb("VmHWM:") / 1024,
    );
}

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}
