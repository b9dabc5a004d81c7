//! `atm check`: one or more history files (ATMs on several machines), with
//! the ledger's journal and the chaos fault log when given, judged by the
//! checker of `overdraft-history`; a verdict a person reads or a versioned
//! JSON report.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use comfy_table::{Table, presets::NOTHING};
use overdraft_history::{
    Report, Verdict,
    check::{Anomaly, Evidence, Witness, check},
    evidence::{FaultLog, Journal},
    read_files,
};

use crate::connect::ClientError;

/// Anomalies printed in full by default; `--json` lists up to the report's cap.
const ANOMALIES_SHOWN_DEFAULT: usize = 20;

/// `atm check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// History files (JSON lines, format 1 or 2); several merge into one run.
    #[arg(required = true)]
    pub histories: Vec<PathBuf>,
    /// The ledger's journal (`atm journal -o FILE`): resolves unknown outcomes.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// The chaos fault log (`chaos run --fault-log FILE`): faults active at each anomaly.
    #[arg(long)]
    pub fault_log: Option<PathBuf>,
    /// Print the versioned JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Longest a search (gaps, histories without versions) may take; past it the verdict is unknown.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub time_budget: Duration,
    /// Anomalies printed in full (text output).
    #[arg(long, default_value_t = ANOMALIES_SHOWN_DEFAULT)]
    pub show: usize,
}

/// A run read back with the evidence beside it: what `atm check` and
/// `atm postmortem` both start from.
#[derive(Debug)]
pub struct Loaded {
    /// The merged histories.
    pub run: overdraft_history::Run,
    /// The ledger's journal, when given.
    pub journal: Option<Journal>,
    /// The fault log, when given.
    pub faults: Option<FaultLog>,
}

impl Loaded {
    /// Reads `histories` and the optional journal and fault log; an
    /// unreadable one is a usage error naming the file, line and field.
    pub fn read(
        histories: &[PathBuf],
        journal: Option<&std::path::Path>,
        fault_log: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let usage = |e: overdraft_history::read::ReadError| ClientError::Usage(e.to_string());
        Ok(Self {
            run: read_files(histories).map_err(usage)?,
            journal: journal.map(Journal::read).transpose().map_err(usage)?,
            faults: fault_log.map(FaultLog::read).transpose().map_err(usage)?,
        })
    }

    /// The checker's report on the run, with the evidence.
    pub fn check(&self, time_budget: Duration) -> Report {
        let evidence = Evidence {
            journal: self.journal.as_ref(),
            faults: self.faults.as_ref(),
        };
        check(&self.run, &evidence, time_budget)
    }
}

/// Reads the evidence and checks the run.
pub fn load_and_check(args: &CheckArgs) -> Result<Report, ClientError> {
    let loaded = Loaded::read(
        &args.histories,
        args.journal.as_deref(),
        args.fault_log.as_deref(),
    )?;
    Ok(loaded.check(args.time_budget))
}

/// `atm check`: prints the verdict and returns it.
pub fn run(args: &CheckArgs) -> Result<Verdict, ClientError> {
    let report = load_and_check(args)?;
    if args.json {
        println!("{}", crate::report::to_json(&report));
    } else {
        print!("{}", text(&report, args.show));
    }
    Ok(report.verdict)
}

/// The report as text: the verdict, counts by kind, money, each anomaly.
pub fn text(report: &Report, show: usize) -> String {
    let mut out = String::new();
    let verdict = match report.verdict {
        Verdict::Valid => "VALID: every operation fits the bank model",
        Verdict::Anomalies => "ANOMALIES",
        Verdict::Unknown => "UNKNOWN: the check could not decide (see below); no anomaly found",
    };
    let c = &report.counts;
    out.push_str(&format!(
        "{verdict}\n{} operations ({} ok, {} failed, {} unknown: {} resolved by the journal, {} \
         found applied), {} replays, {} account(s); mode {}, seed {}; checked in {} ms\n",
        c.operations,
        c.ok,
        c.failed,
        c.unknown,
        c.unknown_resolved_by_journal,
        c.unknown_inferred_applied,
        c.replays,
        c.accounts,
        report.mode.as_deref().unwrap_or("not stated"),
        report
            .seed
            .map_or_else(|| "not stated".to_owned(), |s| s.to_string()),
        report.elapsed_ms,
    ));
    let m = &report.money;
    out.push_str(&format!(
        "money: opening {} + deposits {} - withdrawals {} - fees {}{} = {}; final reads {} ({}){}\n",
        m.opening_cents,
        m.deposits_cents,
        m.withdrawals_cents,
        m.fees_cents,
        if m.transfers_net_cents == 0 {
            String::new()
        } else {
            format!(" + transfers from unjudged accounts {}", m.transfers_net_cents)
        },
        m.final_cents - m.delta_cents,
        m.final_cents,
        signed(m.delta_cents),
        if m.accounts_unknown > 0 {
            format!(
                "; {} account(s) without an opening or a final read not judged",
                m.accounts_unknown
            )
        } else {
            String::new()
        }
    ));
    let kinds: Vec<_> = report
        .counts_by_kind
        .iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    if !kinds.is_empty() {
        let mut table = Table::new();
        table.load_preset(NOTHING).set_header(["anomaly", "count"]);
        for (kind, count) in kinds {
            table.add_row([kind.as_str().to_owned(), count.to_string()]);
        }
        out.push_str(&format!("{table}\n"));
    }
    for anomaly in report.anomalies.iter().take(show) {
        out.push_str(&anomaly_text(anomaly));
    }
    if report.anomalies.len() > show {
        out.push_str(&format!(
            "... {} more anomalies (--show N, or --json)\n",
            report.anomalies.len() - show
        ));
    }
    for reason in &report.undecided {
        out.push_str(&format!("undecided: {reason}\n"));
    }
    for warning in &report.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

fn anomaly_text(anomaly: &Anomaly) -> String {
    let mut out = format!(
        "\n{} on {} ({} cents)\n  {}\n",
        anomaly.kind,
        anomaly.accounts.join(", "),
        signed(i128::from(anomaly.cents)),
        anomaly.detail
    );
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header([
        "  operation",
        "atm",
        "op",
        "accounts",
        "cents",
        "from ms",
        "to ms",
        "outcome",
        "reply",
        "role",
    ]);
    for witness in &anomaly.operations {
        table.add_row(witness_row(witness));
    }
    out.push_str(&format!("{table}\n"));
    for fault in &anomaly.faults {
        out.push_str(&format!(
            "  fault active: {} ({}{})\n",
            fault.fault_id,
            fault.kind,
            fault
                .phase
                .as_ref()
                .map_or_else(String::new, |p| format!(", phase {p}"))
        ));
    }
    out
}

fn witness_row(w: &Witness) -> Vec<String> {
    let reply = match (w.balance_cents, w.version) {
        (Some(b), Some(v)) => format!("{b} @ v{v}"),
        (Some(b), None) => b.to_string(),
        _ => String::new(),
    };
    vec![
        format!("  {}", w.label),
        w.atm.clone(),
        w.op.as_str().to_owned(),
        w.accounts.join(" -> "),
        w.amount_cents.to_string(),
        format!("{:.3}", w.invoke_ns as f64 / 1e6),
        format!("{:.3}", w.complete_ns as f64 / 1e6),
        w.outcome.as_str().to_owned(),
        reply,
        serde_json::to_string(&w.role)
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned(),
    ]
}

fn signed(cents: i128) -> String {
    if cents > 0 {
        format!("+{cents}")
    } else {
        cents.to_string()
    }
}
