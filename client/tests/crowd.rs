//! A crowd of `atm load --join` members on one ledger, judged by `atm
//! referee`: unsafe shows anomalies and passes, the safe modes come back
//! clean and pass, a lost acknowledgement fails, a member still writing
//! holds the referee back, and resends after lost replies apply once.

mod common;

use std::{path::Path, time::Duration};

use overdraft_client::{
    connect::Clients,
    load::{self, LoadArgs},
    referee::{self, Expect, RefereeArgs},
};
use overdraft_history::Verdict;
use overdraft_server::{RunningLedger, config::Mode};

const ACCOUNTS: u32 = 4;
const OPENING_CENTS: i64 = 50_000;
const MEMBERS: u32 = 3;

async fn bank(mode: Mode) -> RunningLedger {
    common::bank(mode, ACCOUNTS, OPENING_CENTS).await
}

fn member_args(histories: &Path, attempts: u32) -> LoadArgs {
    LoadArgs {
        atms: 2,
        accounts: ACCOUNTS,
        ops: Some(160),
        mix: "deposit=35,withdraw=40,transfer=25".parse().unwrap(),
        amount_cents: "100..20000".parse().unwrap(),
        connections: 1,
        seed: 5,
        opening_cents: OPENING_CENTS,
        history: Some(histories.to_owned()),
        deadline: Some(Duration::from_secs(5)),
        attempts,
        ..LoadArgs::default()
    }
}

/// Runs `MEMBERS` members at once, as containers would.
async fn crowd(ledger: &RunningLedger, histories: &Path, attempts: u32) {
    let mut members = tokio::task::JoinSet::new();
    for n in 0..MEMBERS {
        let url = ledger.url();
        let args = member_args(histories, attempts);
        members.spawn(async move {
            load::join(&url, &args, &format!("atm-{n}"), false)
                .await
                .unwrap()
        });
    }
    while let Some(report) = members.join_next().await {
        let report = report.unwrap();
        assert_eq!(report.operations, 160);
        assert!(
            report.audit.is_none(),
            "a member leaves the audit to the referee"
        );
    }
}

/// Every operation line of the members' histories, as JSON.
fn member_lines(histories: &Path) -> Vec<serde_json::Value> {
    (0..MEMBERS)
        .flat_map(|n| {
            std::fs::read_to_string(histories.join(format!("atm-{n}.jsonl")))
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                .filter(|line| line.get("op").is_some_and(|op| op != "open"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn referee_args(ledger: &RunningLedger, histories: &Path, expect: Expect) -> RefereeArgs {
    RefereeArgs {
        target: ledger.url(),
        histories: histories.to_owned(),
        fault_log: None,
        out: None,
        atms: MEMBERS,
        wait: Duration::from_secs(30),
        expect,
        time_budget: Duration::from_secs(60),
        show: 5,
        json: false,
    }
}

/// Goal: the referee judges the whole crowd and passes each mode on what it
/// should show: unsafe anomalies, mutex and cas none; asked to expect the
/// opposite it fails. Operation: three members of two ATMs each, 160
/// operations per member on four accounts with the race window open; the
/// referee reads all three histories, exports the journal, finds every
/// acknowledged operation in it and writes a postmortem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referee_passes_each_mode_on_what_it_should_show() {
    for mode in [Mode::Unsafe, Mode::Mutex, Mode::Cas] {
        let ledger = bank(mode).await;
        let dir = tempfile::tempdir().unwrap();
        let histories = dir.path().join("histories");
        crowd(&ledger, &histories, 1).await;

        let ruling = referee::judge(&referee_args(&ledger, &histories, Expect::Auto))
            .await
            .unwrap();
        assert_eq!(ruling.mode, mode.as_str());
        assert_eq!(ruling.members.len(), MEMBERS as usize);
        assert_eq!(ruling.report.counts.accounts, ACCOUNTS as u64);
        assert!(ruling.acknowledged > 0);
        assert_eq!(
            ruling.missing_count, 0,
            "{mode}: {:?}",
            ruling.missing_from_journal
        );
        let expected = if mode == Mode::Unsafe {
            Verdict::Anomalies
        } else {
            Verdict::Valid
        };
        assert_eq!(ruling.report.verdict, expected, "{mode}: {}", ruling.reason);
        assert!(ruling.held, "{mode}: {}", ruling.reason);
        assert!(histories.join("referee/postmortem.md").is_file());
        assert!(histories.join("referee/verdict.json").is_file());

        let opposite = if mode == Mode::Unsafe {
            Expect::Clean
        } else {
            Expect::Anomalies
        };
        let ruling = referee::judge(&referee_args(&ledger, &histories, opposite))
            .await
            .unwrap();
        assert!(!ruling.held, "{mode} judged against {opposite:?}");
    }
}

/// Goal: an operation a member saw acknowledged that the ledger's journal
/// does not hold fails the run in any mode, named by its request id.
/// Operation: a clean mutex crowd, then a forged member history claiming
/// one more acknowledged deposit the ledger never received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_operation_missing_from_the_journal_fails_the_run() {
    let ledger = bank(Mode::Mutex).await;
    let dir = tempfile::tempdir().unwrap();
    let histories = dir.path().join("histories");
    crowd(&ledger, &histories, 1).await;
    let header = std::fs::read_to_string(histories.join("atm-0.jsonl")).unwrap();
    let header = header.lines().next().unwrap();
    let forged = serde_json::json!({
        "atm": 0, "atm_name": "ghost", "op": "deposit", "account_id": "acct-0",
        "amount_cents": 100, "request_id": "ghost-1", "invoke_ns": 1, "complete_ns": 2,
        "outcome": "ok",
    });
    std::fs::write(
        histories.join("ghost.jsonl"),
        format!("{header}\n{forged}\n"),
    )
    .unwrap();
    let mut args = referee_args(&ledger, &histories, Expect::Auto);
    args.atms = MEMBERS + 1;
    let ruling = referee::judge(&args).await.unwrap();
    assert_eq!(ruling.missing_count, 1);
    assert_eq!(ruling.missing_from_journal, ["ghost-1"]);
    assert!(!ruling.held);
    assert!(
        ruling.reason.contains("not in the ledger's journal"),
        "{}",
        ruling.reason
    );
}

/// Goal: the referee does not judge while a member is still writing, and
/// says so when the wait runs out. Operation: one finished history and one
/// `.part`, a one-second wait.
#[tokio::test]
async fn the_referee_waits_for_members_still_writing() {
    let ledger = common::ledger().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jsonl"), "").unwrap();
    std::fs::write(dir.path().join("b.jsonl.part"), "").unwrap();
    let mut args = referee_args(&ledger, dir.path(), Expect::Auto);
    args.atms = 1;
    args.wait = Duration::from_secs(1);
    let error = referee::judge(&args).await.unwrap_err().to_string();
    assert!(error.contains("did not finish within 1s"), "{error}");
    assert!(error.contains("1 still being written"), "{error}");
}

/// Goal: a member resends an operation whose reply was lost with the same
/// request_id, the ledger replays its first reply, and nothing applies
/// twice, and the operations drawn are those of the same crowd with no
/// reply lost. Operation: the ledger loses the replies of its next 12 mutations
/// (applied, then UNAVAILABLE); a mutex crowd with 4 attempts per
/// operation; each resend is answered as a replay, the journal holds each
/// lost reply's operation once, and the referee passes the run clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_after_lost_replies_apply_once() {
    let ledger = bank(Mode::Mutex).await;
    let mut clients = Clients::connect(&ledger.url()).await.unwrap();
    clients.arm_lost_acks(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let histories = dir.path().join("histories");
    crowd(&ledger, &histories, 4).await;
    let ruling = referee::judge(&referee_args(&ledger, &histories, Expect::Auto))
        .await
        .unwrap();
    let counts = &ruling.report.counts;
    assert_eq!(counts.unknown, 12, "{counts:?}");
    assert_eq!(counts.unknown_resolved_by_journal, 12, "{counts:?}");
    let lines = member_lines(&histories);
    let replayed = lines.iter().filter(|l| l["replayed"] == true).count();
    assert_eq!(
        replayed, 12,
        "each lost reply's resend is answered as a replay"
    );
    // Every attempt is its own line: the unanswered one, then the resend,
    // with the same request_id and the same intent.
    for resend in lines.iter().filter(|l| l["replayed"] == true) {
        let id = resend["request_id"].as_str().unwrap();
        let attempts: Vec<_> = lines.iter().filter(|l| l["request_id"] == id).collect();
        assert_eq!(attempts.len(), 2, "{id}: {attempts:?}");
        assert_eq!(attempts[0]["outcome"], "unknown");
        assert_eq!(attempts[0]["code"], "Unavailable");
        assert_eq!(attempts[1]["outcome"], "ok");
        assert!(attempts.iter().all(|a| a["intent"] == id));
        assert!(attempts[0]["complete_ns"].as_u64() <= attempts[1]["invoke_ns"].as_u64());
    }

    // The same crowd with no reply lost sends the same operations: the
    // resends' jitter does not draw from the workload's generator.
    let calm = bank(Mode::Mutex).await;
    let calm_dir = tempfile::tempdir().unwrap();
    crowd(&calm, calm_dir.path(), 4).await;
    let drawn = |lines: &[serde_json::Value]| {
        let mut ops: Vec<String> = lines
            .iter()
            .filter(|l| l["replayed"] != true)
            .map(|l| {
                format!(
                    "{} {} {} {}",
                    l["request_id"], l["op"], l["account_id"], l["amount_cents"]
                )
            })
            .collect();
        ops.sort();
        ops.dedup();
        ops
    };
    assert_eq!(drawn(&lines), drawn(&member_lines(calm_dir.path())));
    assert_eq!(ruling.report.verdict, Verdict::Valid, "{}", ruling.reason);
    assert!(ruling.held);
}

/// Goal: `atm reset --target A,B --mode M` readies a ledger scaled out:
/// the accounts are opened through the first replica, and every replica
/// is switched to the mode (each process keeps its own). Operation: two
/// ledgers in unsafe; reset with cas; both report cas, the first holds the
/// accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_switches_every_replica() {
    let ledgers = [bank(Mode::Unsafe).await, bank(Mode::Unsafe).await];
    let args = referee::ResetArgs {
        target: format!("{},{}", ledgers[0].url(), ledgers[1].url()),
        accounts: 3,
        opening_cents: 700,
        mode: Some(Mode::Cas),
        fresh_histories: None,
    };
    assert!(referee::reset(&args).await.unwrap());
    for ledger in &ledgers {
        let mut clients = Clients::connect(&ledger.url()).await.unwrap();
        assert_eq!(clients.mode().await.unwrap(), Some(Mode::Cas));
    }
    let mut first = Clients::connect(&ledgers[0].url()).await.unwrap();
    assert_eq!(first.balance("acct-2").await.unwrap().balance_cents, 700);
}
