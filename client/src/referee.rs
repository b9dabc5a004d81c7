//! `atm referee`: judges a crowd of ATMs (one per container, say) once they
//! have all finished. It waits for every member's history in a shared
//! directory, takes the final reads, exports the ledger's journal, checks
//! the histories with the journal and the fault log, confirms that every
//! acknowledged operation is in the journal, writes a postmortem, and
//! passes the run when it shows what its mode should: anomalies in
//! `unsafe`, none in the safe modes.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::NOTHING};
use overdraft_history::{Report, Verdict, format::Operation, read_files};
use serde::Serialize;

use crate::{
    check::Loaded,
    connect::{ClientError, Clients},
    history::{self, Clock, Header},
    load::{PART_SUFFIX, parse_duration},
    postmortem::{Incident, write},
};

/// How often the referee says what it is waiting for.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(5);

/// How often it looks at the directory.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// Most member histories one referee reads (a crowd, not a fleet).
pub const MEMBERS_MAX: usize = 1_024;

/// Longest the final reads may take: one read per account, each a
/// millisecond or so; a ledger that does not answer fails the referee
/// instead of hanging it.
const FINAL_READS_WAIT_MAX: Duration = Duration::from_secs(60);

/// Longest first line read to tell a history by its header: a history
/// line's own bound.
const HEADER_BYTES_MAX: u64 = 64 << 10;

/// Acknowledged operations missing from the journal listed by request id.
const MISSING_LISTED_MAX: usize = 10;

/// What the run should show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// From the ledger's mode: anomalies in `unsafe`, none in the others.
    Auto,
    /// Anomalies (the unsafe mode's lesson).
    Anomalies,
    /// No anomaly.
    Clean,
}

/// `atm reset` arguments: what a crowd's run starts from.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The ledger (e.g. http://127.0.0.1:50051), or its replicas
    /// (comma-separated).
    #[arg(long)]
    pub target: String,
    /// Accounts to open.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::load::ACCOUNTS_MAX)))]
    pub accounts: u32,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000_000))]
    pub opening_cents: i64,
    /// Switch the ledger to this mode as well.
    #[arg(long, value_enum)]
    pub mode: Option<overdraft_server::config::Mode>,
    /// Remove an earlier run's histories (files whose first line is a
    /// history header, finished or not) from this directory, creating it
    /// when missing, so that the referee judges this run alone.
    #[arg(long)]
    pub fresh_histories: Option<PathBuf>,
}

/// `atm reset`: clears the histories when asked, opens the accounts, sets
/// the mode.
pub async fn reset(args: &ResetArgs) -> Result<bool, ClientError> {
    if let Some(dir) = &args.fresh_histories {
        let removed = clear_histories(dir)?;
        eprintln!(
            "atm reset: removed {removed} histories of an earlier run from {}",
            dir.display()
        );
    }
    // Replicas share their accounts (one Reset, through the first) and
    // keep a mode each (SetMode to every one).
    let targets = crate::connect::targets(&args.target)?;
    let mut clients = Clients::connect(&targets[0]).await?;
    clients
        .reset(crate::load::opening(args.accounts, args.opening_cents))
        .await?;
    if let Some(mode) = args.mode {
        Clients::set_mode_everywhere(&targets, mode).await?;
    }
    eprintln!(
        "atm reset: {} accounts opened with {} cents each at {}",
        args.accounts, args.opening_cents, args.target
    );
    Ok(true)
}

/// What the run should have shown, once `auto` is settled by the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    /// Anomalies (the unsafe mode's lesson).
    Anomalies,
    /// No anomaly, and a clean audit.
    Clean,
}

impl Expect {
    /// What `self` asks of a run in `mode`.
    pub fn settle(self, mode: &str) -> Expected {
        match self {
            Expect::Auto if mode == "unsafe" => Expected::Anomalies,
            Expect::Auto | Expect::Clean => Expected::Clean,
            Expect::Anomalies => Expected::Anomalies,
        }
    }
}

/// `atm referee` arguments.
#[derive(Debug, Args)]
pub struct RefereeArgs {
    /// The ledger the crowd ran against (final reads, journal, audit).
    #[arg(long)]
    pub target: String,
    /// The directory the members write their histories into (`atm load
    /// --join --history DIR`): NAME.jsonl each, NAME.jsonl.part while running.
    #[arg(long)]
    pub histories: PathBuf,
    /// The chaos fault log (`chaos run --fault-log FILE`), when a schedule ran.
    #[arg(long)]
    pub fault_log: Option<PathBuf>,
    /// Where the referee writes the final reads, the journal, the verdict
    /// (verdict.json) and the postmortem (postmortem.md, postmortem.html).
    /// Default: a `referee` directory inside --histories.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Members to wait for: at least this many finished histories (the
    /// crowd's size; a member creates its file only once connected).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MEMBERS_MAX as i64))]
    pub atms: u32,
    /// Longest wait for the crowd to finish (e.g. 90s, 10m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub wait: Duration,
    /// What the run should show.
    #[arg(long, value_enum, default_value = "auto")]
    pub expect: Expect,
    /// Longest the checker's search may take.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub time_budget: Duration,
    /// Anomalies printed in full.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// Print the referee's verdict as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The referee's verdict, as `--json` prints it and verdict.json keeps it.
#[derive(Debug, Serialize)]
pub struct Ruling {
    /// Format version.
    pub schema: u32,
    /// The ledger's mode.
    pub mode: String,
    /// What the run should have shown.
    pub expected: Expected,
    /// The mode the members' histories state.
    pub run_mode: Option<String>,
    /// The members' history files.
    pub members: Vec<String>,
    /// Acknowledged mutations with a request id.
    pub acknowledged: u64,
    /// Those the journal does not hold (lost acknowledgements), by request id, first few.
    pub missing_from_journal: Vec<String>,
    /// How many are missing in all.
    pub missing_count: u64,
    /// Attempts that resent a request_id sent before (no reply came back).
    pub resends: u64,
    /// Replies the ledger flagged as replays of an earlier application.
    pub replayed_replies: u64,
    /// Whether the ledger's own audit came back clean.
    pub audit_clean: bool,
    /// The checker's report.
    pub report: Report,
    /// The run showed what its mode should.
    pub held: bool,
    /// Why, in a sentence.
    pub reason: String,
    /// Where the postmortem went.
    pub postmortem: PathBuf,
}

/// Runs the referee, prints its ruling; Ok(true) when the run showed what
/// its mode should.
pub async fn run(args: &RefereeArgs) -> Result<bool, ClientError> {
    let ruling = judge(args).await?;
    if args.json {
        println!("{}", crate::report::to_json(&ruling));
    } else {
        print!("{}", text(&ruling, args.show));
    }
    Ok(ruling.held)
}

/// Waits for the crowd, gathers the evidence, checks it, and writes the
/// final reads, the journal, the verdict and the postmortem into the out
/// directory.
pub async fn judge(args: &RefereeArgs) -> Result<Ruling, ClientError> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.histories.join("referee"));
    history::create_dir(&out)?;
    let members = wait_for_crowd(&args.histories, args.atms, args.wait).await?;

    let mut clients = Clients::connect(&args.target).await?;
    let mode = clients
        .mode()
        .await?
        .map_or_else(|| "unknown".to_owned(), |m| m.as_str().to_owned());
    let expected = args.expect.settle(&mode);
    let finals = out.join("final.jsonl");
    tokio::time::timeout(
        FINAL_READS_WAIT_MAX,
        record_final_reads(&mut clients, &members, &finals),
    )
    .await
    .map_err(|_| ClientError::Unreachable {
        target: args.target.clone(),
        reason: format!(
            "the final reads took over {} s",
            FINAL_READS_WAIT_MAX.as_secs()
        ),
    })??;
    let journal = out.join("journal.jsonl");
    crate::journal::export(&args.target, &journal).await?;
    let audit = clients.audit().await?;

    let mut files = members.clone();
    files.push(finals);
    let loaded = Loaded::read(&files, Some(&journal), args.fault_log.as_deref())?;
    let report = loaded.check(args.time_budget);
    let (acknowledged, missing, missing_count) = acknowledged_in_journal(&loaded);
    let (resends, replayed_replies) = resends(&loaded.run);

    let postmortem = out.join("postmortem.md");
    let incident = Incident {
        run: &loaded.run,
        report: &report,
        journal: loaded.journal.as_ref(),
        faults: loaded.faults.as_ref(),
        resolutions: Vec::new(),
    };
    write(&incident, &postmortem, Some(&out.join("postmortem.html")))?;

    let (held, reason) = rule(&Weighed {
        expected,
        ledger_mode: &mode,
        run_mode: loaded.run.mode.as_deref(),
        verdict: report.verdict,
        acknowledged,
        missing: missing_count,
        audit_clean: audit.clean,
    });
    let ruling = Ruling {
        schema: 1,
        run_mode: loaded.run.mode.clone(),
        mode,
        expected,
        members: members.iter().map(|p| p.display().to_string()).collect(),
        acknowledged,
        missing_from_journal: missing,
        missing_count,
        resends,
        replayed_replies,
        audit_clean: audit.clean,
        report,
        held,
        reason,
        postmortem,
    };
    let verdict = out.join("verdict.json");
    std::fs::write(&verdict, format!("{}\n", crate::report::to_json(&ruling)))
        .map_err(|e| ClientError::Usage(format!("cannot write {}: {e}", verdict.display())))?;
    Ok(ruling)
}

/// Waits until at least `atms` members have finished and none is still
/// writing; returns the finished histories, sorted.
async fn wait_for_crowd(
    dir: &Path,
    atms: u32,
    wait: Duration,
) -> Result<Vec<PathBuf>, ClientError> {
    let started = Instant::now();
    let mut reported = started;
    loop {
        let (done, writing) = survey(dir)?;
        if done.len() >= atms as usize && writing == 0 {
            return Ok(done);
        }
        if started.elapsed() >= wait {
            return Err(ClientError::Usage(format!(
                "the crowd did not finish within {}: {} of at least {atms} histories finished in {}, \
                 {writing} still being written; look at the ATMs' logs, or raise --wait",
                humantime::format_duration(wait),
                done.len(),
                dir.display()
            )));
        }
        if reported.elapsed() >= WAIT_REPORT_EVERY {
            eprintln!(
                "atm referee: waiting for the crowd: {} finished, {writing} still running (need {atms})",
                done.len()
            );
            reported = Instant::now();
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// The finished histories in `dir` and how many are still being written.
fn survey(dir: &Path) -> Result<(Vec<PathBuf>, usize), ClientError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // The members have not created it yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => {
            return Err(ClientError::Usage(format!(
                "cannot read --histories {}: {e}",
                dir.display()
            )));
        }
    };
    let mut done = Vec::new();
    let mut writing = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_file() {
            continue;
        }
        if name.ends_with(&format!(".jsonl{PART_SUFFIX}")) {
            writing += 1;
        } else if name.ends_with(".jsonl") {
            done.push(path);
        }
    }
    if done.len() > MEMBERS_MAX {
        return Err(ClientError::Usage(format!(
            "{} holds {} histories; a referee reads at most {MEMBERS_MAX}",
            dir.display(),
            done.len()
        )));
    }
    done.sort();
    Ok((done, writing))
}

/// Removes the member histories (finished or not) from `dir`, creating it
/// when missing; returns how many it removed.
pub fn clear_histories(dir: &Path) -> Result<usize, ClientError> {
    history::create_dir(dir)?;
    let cannot = |e: std::io::Error| {
        ClientError::Usage(format!(
            "cannot clear the histories in {}: {e}",
            dir.display()
        ))
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let named = name.ends_with(".jsonl") || name.ends_with(&format!(".jsonl{PART_SUFFIX}"));
        if named && entry.path().is_file() && is_history(&entry.path()) {
            std::fs::remove_file(entry.path()).map_err(cannot)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `path` starts with a history header: nothing else is removed.
fn is_history(path: &Path) -> bool {
    use std::io::{BufRead, Read};
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut first = Vec::new();
    let read = std::io::BufReader::new(file)
        .take(HEADER_BYTES_MAX)
        .read_until(b'\n', &mut first);
    read.is_ok() && serde_json::from_slice::<Header>(first.trim_ascii()).is_ok()
}

/// Reads every account the members opened, once all have stopped: the
/// state the run left, in a history file of its own.
async fn record_final_reads(
    clients: &mut Clients,
    members: &[PathBuf],
    path: &Path,
) -> Result<(), ClientError> {
    let run = read_files(members).map_err(|e| ClientError::Usage(e.to_string()))?;
    let first = run
        .headers
        .first()
        .ok_or_else(|| ClientError::Usage("the members' histories have no header".to_owned()))?;
    let clock = Clock::start();
    let mut header = Header::new(
        &first.mode,
        first.seed,
        first.overdraft,
        clock.wall_unix_ns_at_zero(),
    );
    header.source = Some("atm referee".to_owned());
    header.target = first.target.clone();
    let (sink, writer) = history::create(path, &header, &[])?;
    let accounts = run.accounts.iter().map(String::as_str);
    history::record_final_reads(clients, accounts, &sink, &clock).await?;
    drop(sink);
    writer.finish().await?;
    Ok(())
}

/// Acknowledged mutations with a request id, the first few the journal
/// does not hold, and how many it does not.
fn acknowledged_in_journal(loaded: &Loaded) -> (u64, Vec<String>, u64) {
    let Some(journal) = &loaded.journal else {
        return (0, Vec::new(), 0);
    };
    let run = &loaded.run;
    let mut acknowledged = 0;
    let mut missing = Vec::new();
    let mut missing_count = 0;
    for op in &run.ops {
        let keyed = !run.request_id(op).is_empty();
        if op.operation == Operation::Balance
            || op.outcome != overdraft_history::format::Outcome::Ok
            || !keyed
        {
            continue;
        }
        acknowledged += 1;
        if journal.applied(run.request_id(op)).is_none() {
            missing_count += 1;
            if missing.len() < MISSING_LISTED_MAX {
                missing.push(run.request_id(op).to_owned());
            }
        }
    }
    (acknowledged, missing, missing_count)
}

/// Attempts that resent a request_id, and replies flagged as replays.
fn resends(run: &overdraft_history::Run) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut resends = 0;
    let mut replayed = 0;
    for op in &run.ops {
        let id = run.request_id(op);
        if !id.is_empty() && !seen.insert(id) {
            resends += 1;
        }
        replayed += u64::from(op.replayed);
    }
    (resends, replayed)
}

/// What the ruling weighs.
struct Weighed<'a> {
    expected: Expected,
    ledger_mode: &'a str,
    run_mode: Option<&'a str>,
    verdict: Verdict,
    acknowledged: u64,
    missing: u64,
    audit_clean: bool,
}

/// Whether the run showed what it should, and why. The evidence must hold
/// before the verdict counts: the histories and the ledger agree on the
/// mode, something was acknowledged, and nothing acknowledged was lost.
fn rule(w: &Weighed<'_>) -> (bool, String) {
    let mode = w.ledger_mode;
    if let Some(run_mode) = w.run_mode.filter(|m| *m != mode) {
        return (
            false,
            format!(
                "the histories ran in {run_mode} mode but the ledger is in {mode} mode now: judge a run in one mode"
            ),
        );
    }
    if w.acknowledged == 0 {
        return (
            false,
            "no operation was acknowledged: the ATMs never reached the ledger (see their logs)"
                .to_owned(),
        );
    }
    if w.missing > 0 {
        return (
            false,
            format!(
                "{} acknowledged operation(s) are not in the ledger's journal: acknowledged, then lost",
                w.missing
            ),
        );
    }
    match (w.expected, w.verdict) {
        (_, Verdict::Unknown) => (
            false,
            "the checker could not decide (see `undecided`); raise --time-budget".to_owned(),
        ),
        (Expected::Anomalies, Verdict::Anomalies) => {
            (true, format!("{mode} mode showed anomalies, as it should"))
        }
        (Expected::Anomalies, Verdict::Valid) => (
            false,
            format!(
                "{mode} mode showed no anomaly: the race did not happen (more ATMs, a longer run, or a wider race window)"
            ),
        ),
        (Expected::Clean, Verdict::Valid) if w.audit_clean => {
            (true, format!("{mode} mode came back clean, as it should"))
        }
        (Expected::Clean, Verdict::Valid) => (
            false,
            format!(
                "the histories fit the bank model, but the ledger's audit in {mode} mode has findings"
            ),
        ),
        (Expected::Clean, Verdict::Anomalies) => (
            false,
            format!("{mode} mode showed anomalies; it should show none"),
        ),
    }
}

/// The ruling as a person reads it: the crowd, the evidence, the checker's
/// verdict table, and the referee's decision.
fn text(ruling: &Ruling, show: usize) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING);
    let rows = [
        ("mode", ruling.mode.clone()),
        (
            "expected",
            match ruling.expected {
                Expected::Anomalies => "anomalies".to_owned(),
                Expected::Clean => "no anomaly".to_owned(),
            },
        ),
        ("ATM histories", ruling.members.len().to_string()),
        (
            "acknowledged, in the journal",
            format!(
                "{} of {}",
                ruling.acknowledged - ruling.missing_count,
                ruling.acknowledged
            ),
        ),
        (
            "resent (no reply), answered as replays",
            format!("{}, {}", ruling.resends, ruling.replayed_replies),
        ),
        (
            "ledger's audit",
            if ruling.audit_clean {
                "clean"
            } else {
                "findings"
            }
            .to_owned(),
        ),
        ("postmortem", ruling.postmortem.display().to_string()),
    ];
    for (name, value) in rows {
        table.add_row([name.to_owned(), value]);
    }
    let mut out = format!("== referee\n{table}\n\n");
    out.push_str(&crate::check::text(&ruling.report, show));
    if !ruling.missing_from_journal.is_empty() {
        out.push_str(&format!(
            "acknowledged but not in the journal: {}\n",
            ruling.missing_from_journal.join(", ")
        ));
    }
    out.push_str(&format!(
        "\nREFEREE: {}: {}\n",
        if ruling.held { "PASS" } else { "FAIL" },
        ruling.reason
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the referee passes exactly the outcomes a mode should show, and
    /// a lost acknowledgement fails every mode.
    #[test]
    fn rules_follow_the_mode() {
        let held = |expected, verdict, missing| {
            let weighed = Weighed {
                expected,
                ledger_mode: "m",
                run_mode: Some("m"),
                verdict,
                acknowledged: 10,
                missing,
                audit_clean: true,
            };
            rule(&weighed).0
        };
        assert!(held(Expected::Anomalies, Verdict::Anomalies, 0));
        assert!(!held(Expected::Anomalies, Verdict::Valid, 0));
        assert!(held(Expected::Clean, Verdict::Valid, 0));
        assert!(!held(Expected::Clean, Verdict::Anomalies, 0));
        assert!(!held(Expected::Clean, Verdict::Unknown, 0));
        assert!(!held(Expected::Anomalies, Verdict::Anomalies, 1));
        assert!(!held(Expected::Clean, Verdict::Valid, 3));
        assert_eq!(Expect::Auto.settle("unsafe"), Expected::Anomalies);
        assert_eq!(Expect::Auto.settle("cas"), Expected::Clean);
    }

    /// Goal: a clean verdict does not pass without evidence behind it: a
    /// run with nothing acknowledged, a ledger whose audit has findings, or
    /// histories from another mode than the ledger's all fail.
    #[test]
    fn a_clean_verdict_needs_evidence() {
        let clean = Weighed {
            expected: Expected::Clean,
            ledger_mode: "mutex",
            run_mode: Some("mutex"),
            verdict: Verdict::Valid,
            acknowledged: 10,
            missing: 0,
            audit_clean: true,
        };
        assert!(rule(&clean).0);
        assert!(
            !rule(&Weighed {
                acknowledged: 0,
                ..clean
            })
            .0
        );
        assert!(
            !rule(&Weighed {
                audit_clean: false,
                ..clean
            })
            .0
        );
        assert!(
            !rule(&Weighed {
                run_mode: Some("unsafe"),
                ..clean
            })
            .0
        );
    }

    /// Goal: a member still writing holds the referee back, a finished one
    /// counts, the referee's own directory is not taken for a member, and
    /// clearing removes histories only.
    #[test]
    fn survey_counts_finished_and_running_members() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"schema":2,"kind":"overdraft-history","mode":"cas","seed":1,"overdraft":{"policy":"reject"},"wall_unix_ns_at_zero":5}"#;
        std::fs::write(dir.path().join("a.jsonl"), format!("{header}\n")).unwrap();
        std::fs::write(dir.path().join("b.jsonl.part"), format!("{header}\n")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        std::fs::create_dir(dir.path().join("referee")).unwrap();
        let (done, writing) = survey(dir.path()).unwrap();
        assert_eq!(done, vec![dir.path().join("a.jsonl")]);
        assert_eq!(writing, 1);
        let (none, zero) = survey(&dir.path().join("absent")).unwrap();
        assert!(none.is_empty() && zero == 0);

        // A journal beside them is no history: it stays.
        std::fs::write(dir.path().join("journal.jsonl"), "{\"seq\":1}\n").unwrap();
        assert_eq!(clear_histories(dir.path()).unwrap(), 2);
        let (left, writing) = survey(dir.path()).unwrap();
        assert_eq!(left, vec![dir.path().join("journal.jsonl")]);
        assert_eq!(writing, 0);
        assert!(dir.path().join("notes.txt").is_file());
    }
}
