//! `atm postmortem`: a checked run written up in the usual incident template
//! (after the Google SRE book's example postmortem): summary, impact, root
//! cause with the interleaving one column per ATM, trigger, detection,
//! resolution, timeline, action items and lessons. Markdown here; the HTML
//! page with the swimlanes is in [`html`].
//!
//! Every figure comes from the checker's report or the run itself, so a
//! trainee can trace each one back to a line of the history.

pub mod html;

use std::fmt::Write as _;

use overdraft_history::{
    AnomalyKind, Report, Run,
    check::{Anomaly, Witness},
    evidence::{FaultLog, Journal},
};

/// Most anomalies written up in full; the counts cover all of them.
pub const ANOMALIES_WRITTEN_MAX: usize = 5;

/// Most rows of the interleaving table.
const INTERLEAVING_ROWS_MAX: usize = 40;

/// Most timeline entries.
const TIMELINE_ROWS_MAX: usize = 30;

/// How a replay in a safe mode came out, when one was run.
#[derive(Clone, Debug)]
pub struct Resolution {
    /// The mode replayed in.
    pub mode: String,
    /// Whether it met its expectations (and what `atm check` said of it).
    pub verdict: String,
}

/// Everything one postmortem is written from.
#[derive(Debug)]
pub struct Incident<'a> {
    /// The run.
    pub run: &'a Run,
    /// The checker's report on it.
    pub report: &'a Report,
    /// The ledger's journal, when given (what each operation read).
    pub journal: Option<&'a Journal>,
    /// The fault log, when given.
    pub faults: Option<&'a FaultLog>,
    /// Replays in safe modes, when a ledger was at hand.
    pub resolutions: Vec<Resolution>,
}

impl Incident<'_> {
    /// The anomaly the write-up leads with: money first, then the rest.
    fn lead(&self) -> Option<&Anomaly> {
        let rank = |kind: AnomalyKind| match kind {
            AnomalyKind::Overdraft => 0,
            AnomalyKind::DoubleApplication => 1,
            AnomalyKind::LostUpdate => 2,
            AnomalyKind::WrongRefusal => 3,
            AnomalyKind::BalanceMismatch => 4,
            _ => 5,
        };
        self.report
            .anomalies
            .iter()
            .min_by_key(|a| (rank(a.kind), a.from_ns))
    }

    fn mode(&self) -> &str {
        self.report.mode.as_deref().unwrap_or("an unstated")
    }

    fn scenario(&self) -> Option<&str> {
        self.run.headers.first().and_then(|h| h.scenario.as_deref())
    }

    /// The wall clock of a time on the run's clock, as UTC text.
    fn utc(&self, at_ns: u64) -> String {
        match self.run.wall_unix_ns_at_zero {
            Some(zero) => humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(zero.saturating_add(at_ns)),
            )
            .to_string(),
            None => format!("+{:.3} ms", at_ns as f64 / 1e6),
        }
    }

    /// The title: what happened, where, in which mode.
    pub fn title(&self) -> String {
        match self.lead() {
            None => format!(
                "No anomaly: {} operations in {} mode fit the bank model",
                self.report.counts.operations,
                self.mode()
            ),
            Some(lead) => format!(
                "{} on {} in {} mode{}",
                kind_title(lead.kind),
                lead.accounts.join(", "),
                self.mode(),
                self.scenario()
                    .map_or_else(String::new, |s| format!(" ({s})"))
            ),
        }
    }
}

fn kind_title(kind: AnomalyKind) -> &'static str {
    match kind {
        AnomalyKind::LostUpdate => "Lost update",
        AnomalyKind::Overdraft => "Overdraft",
        AnomalyKind::MoneyCreated => "Money created",
        AnomalyKind::MoneyDestroyed => "Money destroyed",
        AnomalyKind::DoubleApplication => "Customer charged twice",
        AnomalyKind::StaleRead => "Stale balance shown",
        AnomalyKind::RealTimeViolation => "Operations applied out of order",
        AnomalyKind::WrongRefusal => "Withdrawal wrongly refused",
        AnomalyKind::BalanceMismatch => "Balance no operation explains",
    }
}

/// Dollars and cents from cents, signed.
pub fn dollars(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}${}.{:02}", abs / 100, abs % 100)
}

/// One step of an ATM's column in the interleaving.
pub(crate) struct Step {
    pub(crate) at_ns: u64,
    pub(crate) atm: String,
    pub(crate) text: String,
}

/// The steps of the anomaly's operations: the call, what it read, what it
/// wrote (from the journal when given; otherwise derived from the reply:
/// a mutation that returned version v read version v - 1).
pub(crate) fn interleaving(incident: &Incident<'_>, anomaly: &Anomaly) -> Vec<Step> {
    let mut steps = Vec::new();
    for w in &anomaly.operations {
        steps.push(Step {
            at_ns: w.invoke_ns,
            atm: w.atm.clone(),
            text: format!("sends {} {}", w.op, call_text(w)),
        });
        if let Some((read, wrote)) = effect(incident, w) {
            steps.push(Step {
                at_ns: w.invoke_ns.saturating_add(1),
                atm: w.atm.clone(),
                text: read,
            });
            steps.push(Step {
                at_ns: w.complete_ns,
                atm: w.atm.clone(),
                text: wrote,
            });
        } else {
            steps.push(Step {
                at_ns: w.complete_ns,
                atm: w.atm.clone(),
                text: format!("gets {}", w.outcome.as_str()),
            });
        }
    }
    steps.sort_by_key(|s| s.at_ns);
    steps.truncate(INTERLEAVING_ROWS_MAX);
    steps
}

fn call_text(w: &Witness) -> String {
    match w.op {
        overdraft_history::format::Operation::Transfer => format!(
            "{} from {}",
            dollars(i128::from(w.amount_cents)),
            w.accounts.join(" to ")
        ),
        overdraft_history::format::Operation::Balance => format!("of {}", w.accounts.join("")),
        _ => format!(
            "{} on {}",
            dollars(i128::from(w.amount_cents)),
            w.accounts.join("")
        ),
    }
}

/// ("reads B at vN", "writes B' at vN+1") for one operation on its first account.
fn effect(incident: &Incident<'_>, w: &Witness) -> Option<(String, String)> {
    if let Some(entry) = incident
        .journal
        .and_then(|j| j.applied(&w.request_id))
        .and_then(|entries| entries.first())
        && let Some(leg) = entry.legs.first()
    {
        return Some((
            format!(
                "reads {} at v{}",
                dollars(i128::from(leg.read_balance_cents)),
                leg.read_version
            ),
            format!(
                "writes {} at v{} (journal seq {})",
                dollars(i128::from(leg.written_balance_cents)),
                leg.written_version,
                entry.seq
            ),
        ));
    }
    let op = &incident.run.ops[w.index as usize];
    let balance = w.balance_cents?;
    let version = w.version?;
    if !op.operation.is_mutation() {
        return Some((
            "reads the account".to_owned(),
            format!("sees {} at v{version}", dollars(i128::from(balance))),
        ));
    }
    let change = op.legs().next().map_or(0, |(_, delta)| delta);
    Some((
        format!(
            "reads {} at v{}",
            dollars(i128::from(balance) - i128::from(change)),
            version.saturating_sub(1)
        ),
        format!("writes {} at v{version}", dollars(i128::from(balance))),
    ))
}

/// The write-up in Markdown.
pub fn markdown(incident: &Incident<'_>) -> String {
    let mut out = String::new();
    let report = incident.report;
    let _ = writeln!(out, "# Postmortem: {}\n", incident.title());
    let date = incident.utc(0);
    let _ = writeln!(
        out,
        "**Date:** {date}  \n**Status:** draft for training; root cause identified by `atm check`  \n**Run:** {} (mode {}, seed {})\n",
        report.files.join(", "),
        incident.mode(),
        report
            .seed
            .map_or_else(|| "not stated".to_owned(), |s| s.to_string()),
    );
    for section in sections(incident) {
        let _ = writeln!(out, "## {}\n\n{}\n", section.heading, section.body);
    }
    out
}

/// One section of the template.
pub(crate) struct Section {
    pub(crate) heading: &'static str,
    pub(crate) body: String,
}

pub(crate) fn sections(incident: &Incident<'_>) -> Vec<Section> {
    vec![
        Section {
            heading: "Summary",
            body: summary(incident),
        },
        Section {
            heading: "Impact",
            body: impact(incident),
        },
        Section {
            heading: "Root cause",
            body: root_cause(incident),
        },
        Section {
            heading: "Trigger",
            body: trigger(incident),
        },
        Section {
            heading: "Detection",
            body: detection(incident),
        },
        Section {
            heading: "Resolution",
            body: resolution(incident),
        },
        Section {
            heading: "Timeline (UTC)",
            body: timeline(incident),
        },
        Section {
            heading: "Action items",
            body: action_items(incident),
        },
        Section {
            heading: "Lessons learned",
            body: lessons(incident),
        },
    ]
}

fn kinds_text(report: &Report) -> String {
    let kinds: Vec<String> = report
        .counts_by_kind
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if kinds.is_empty() {
        "none".to_owned()
    } else {
        kinds.join(", ")
    }
}

fn summary(incident: &Incident<'_>) -> String {
    let r = incident.report;
    let mut text = format!(
        "{} ATM(s) made {} operations on {} account(s) against a ledger in {} mode. The \
         checker holds every operation against a sequential bank model that respects real \
         time; it found {}.",
        incident.run.atms.len(),
        r.counts.operations,
        r.counts.accounts,
        incident.mode(),
        kinds_text(r)
    );
    if r.money.delta_cents != 0 {
        let verb = if r.money.delta_cents > 0 {
            "created"
        } else {
            "destroyed"
        };
        let _ = write!(
            text,
            " The bank's books are off by {}: money was {verb}.",
            dollars(r.money.delta_cents.abs())
        );
    }
    if let Some(lead) = incident.lead() {
        let _ = write!(text, "\n\nThe leading finding: {}", lead.detail);
    }
    text
}

fn impact(incident: &Incident<'_>) -> String {
    let r = incident.report;
    let mut accounts: Vec<&str> = r
        .anomalies
        .iter()
        .flat_map(|a| a.accounts.iter().map(String::as_str))
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    let mut customers: Vec<&str> = r
        .anomalies
        .iter()
        .flat_map(|a| a.operations.iter().map(|w| w.atm.as_str()))
        .collect();
    customers.sort_unstable();
    customers.dedup();
    let deepest = r
        .anomalies
        .iter()
        .filter(|a| a.kind == AnomalyKind::Overdraft)
        .map(|a| a.cents)
        .min();
    let double: i64 = r
        .anomalies
        .iter()
        .filter(|a| a.kind == AnomalyKind::DoubleApplication)
        .map(|a| a.cents)
        .sum();
    let wrong_fees = r
        .anomalies
        .iter()
        .filter(|a| a.kind == AnomalyKind::BalanceMismatch && a.detail.contains("fee"))
        .count();
    let mut lines = vec![format!(
        "- **Money:** {} ({} on the final reads against the flows)",
        if r.money.delta_cents > 0 {
            format!("{} created", dollars(r.money.delta_cents))
        } else if r.money.delta_cents < 0 {
            format!("{} destroyed", dollars(-r.money.delta_cents))
        } else {
            "conserved".to_owned()
        },
        dollars(r.money.delta_cents)
    )];
    lines.push(format!(
        "- **Accounts affected:** {} ({})",
        accounts.len(),
        accounts
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    ));
    lines.push(format!(
        "- **Overdrafts:** {}{}",
        r.count(AnomalyKind::Overdraft),
        deepest.map_or_else(String::new, |d| format!(
            ", the deepest {} below the floor",
            dollars(i128::from(d).abs())
        ))
    ));
    lines.push(format!(
        "- **Lost updates:** {} (acknowledged changes that no later state includes)",
        r.count(AnomalyKind::LostUpdate)
    ));
    lines.push(format!(
        "- **Customers charged twice:** {}{}",
        r.count(AnomalyKind::DoubleApplication),
        if double == 0 {
            String::new()
        } else {
            format!(
                ", {} taken or given in excess",
                dollars(i128::from(double).abs())
            )
        }
    ));
    lines.push(format!("- **Fees charged wrongly:** {wrong_fees}"));
    lines.push(format!(
        "- **ATMs involved:** {} ({})",
        customers.len(),
        customers
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    ));
    lines.join("\n")
}

fn mode_story(mode: &str) -> &'static str {
    match mode {
        "unsafe" => {
            "reads the balance, waits at the race window, checks, then writes blindly: nothing protects the gap between the read and the write, so two operations can check the same balance and the later write erases the earlier"
        }
        "mutex" => "locks each account around its read, check and write, so the gap is protected",
        "cas" => {
            "reads the balance with its version and writes only if the version is unchanged, retrying otherwise"
        }
        "actor" => {
            "lets one owner task apply every operation of an account in turn, so the gap is protected"
        }
        _ => "is not stated in the history",
    }
}

fn root_cause(incident: &Incident<'_>) -> String {
    let mut text = format!(
        "The ledger ran in **{}** mode, which {}.",
        incident.mode(),
        mode_story(incident.mode())
    );
    let Some(lead) = incident.lead() else {
        text.push_str(" Nothing went wrong in this run.");
        return text;
    };
    if lead.kind == AnomalyKind::DoubleApplication {
        text.push_str(
            " But this incident is not about the mode: a retry reached the ledger as a new \
             request (no idempotency key, or idempotency off), so the ledger applied the \
             customer's one intent twice. Locks do not help; the request itself was duplicated.",
        );
    }
    let steps = interleaving(incident, lead);
    let mut atms: Vec<&str> = Vec::new();
    for step in &steps {
        if !atms.contains(&step.atm.as_str()) {
            atms.push(&step.atm);
        }
    }
    let _ = write!(
        text,
        "\n\nHow it happened ({}, step by step, one column per ATM{}):\n\n| t (ms) | {} |\n|---|{}\n",
        lead.kind,
        if incident.journal.is_some() {
            "; reads and writes from the journal"
        } else {
            "; reads derived from the versions returned"
        },
        atms.join(" | "),
        "---|".repeat(atms.len())
    );
    for step in &steps {
        let cells: Vec<&str> = atms
            .iter()
            .map(|atm| {
                if *atm == step.atm {
                    step.text.as_str()
                } else {
                    ""
                }
            })
            .collect();
        let _ = writeln!(
            text,
            "| {:.3} | {} |",
            step.at_ns as f64 / 1e6,
            cells.join(" | ")
        );
    }
    let _ = write!(text, "\n{}", lead.detail);
    for anomaly in incident
        .report
        .anomalies
        .iter()
        .filter(|a| !std::ptr::eq(*a, lead))
        .take(ANOMALIES_WRITTEN_MAX - 1)
    {
        let _ = write!(
            text,
            "\n\n- **{}** on {}: {}",
            anomaly.kind,
            anomaly.accounts.join(", "),
            anomaly.detail
        );
    }
    text
}

fn trigger(incident: &Incident<'_>) -> String {
    let faults: Vec<String> = incident
        .report
        .anomalies
        .iter()
        .flat_map(|a| a.faults.iter())
        .map(|f| format!("{} ({})", f.fault_id, f.kind))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !faults.is_empty() {
        return format!(
            "Faults active while the anomalies happened (from the fault log): {}.",
            faults.join(", ")
        );
    }
    let concurrent = incident.lead().map_or(0, |lead| lead.operations.len());
    format!(
        "{}The trigger is concurrency itself: {} operations on the same account overlapped in \
         time{}.",
        if incident.faults.is_some() {
            "No fault in the log overlaps the anomalies. "
        } else {
            "No fault log was given. "
        },
        concurrent,
        incident.scenario().map_or_else(String::new, |s| format!(
            " (scenario {s} releases them together)"
        ))
    )
}

fn detection(incident: &Incident<'_>) -> String {
    let r = incident.report;
    if r.anomalies.is_empty() {
        return "Every check passed: versions, real time, refusals, conservation, double application.".to_owned();
    }
    let mut lines = vec![format!("`atm check` fired: {}.", kinds_text(r))];
    if r.count(AnomalyKind::Overdraft) > 0 && r.money.delta_cents == 0 {
        lines.push(
            "A conservation-only audit (openings plus deposits minus withdrawals equals the \
             balances) **passes** here: the money is all accounted for while a balance is \
             negative. Only the non-negative check catches it (the blind auditor)."
                .to_owned(),
        );
    }
    if r.count(AnomalyKind::LostUpdate) > 0 {
        lines.push(
            "Every ATM got OK: checking each reply alone misses it. Reconciling the final \
             balances against the acknowledged operations (conservation) catches the money; \
             the versions name the operations."
                .to_owned(),
        );
    }
    if r.count(AnomalyKind::DoubleApplication) > 0 {
        lines.push(
            "Conservation passes: the money went where the ledger says it went. Only counting \
             applications per customer intent (or request_id) catches the double charge."
                .to_owned(),
        );
    }
    if r.count(AnomalyKind::StaleRead) + r.count(AnomalyKind::RealTimeViolation) > 0 {
        lines.push(
            "Balances reconcile; only the real-time order of the versions catches it.".to_owned(),
        );
    }
    lines.join("\n\n")
}

fn resolution(incident: &Incident<'_>) -> String {
    if !incident.resolutions.is_empty() {
        let rows: Vec<String> = incident
            .resolutions
            .iter()
            .map(|r| format!("| {} | {} |", r.mode, r.verdict))
            .collect();
        return format!(
            "The same scenario replayed in the other modes:\n\n| mode | verdict |\n|---|---|\n{}",
            rows.join("\n")
        );
    }
    let replay = incident
        .run
        .headers
        .first()
        .and_then(|h| h.replay.clone())
        .unwrap_or_else(|| "atm load --target URL ... --history run.jsonl".to_owned());
    format!(
        "No ledger was at hand to replay the run. To verify the fix: `{replay}` in a safe mode \
         (`--mode mutex`, `cas` or `actor`), then `atm check` its history: it must come back valid."
    )
}

fn timeline(incident: &Incident<'_>) -> String {
    let mut rows: Vec<(u64, String)> = Vec::new();
    let ops = &incident.run.ops;
    if let Some(first) = ops.iter().map(|o| o.invoke_ns).min() {
        rows.push((first, "first operation sent".to_owned()));
    }
    for anomaly in incident.report.anomalies.iter().take(TIMELINE_ROWS_MAX / 3) {
        rows.push((
            anomaly.from_ns,
            format!(
                "**anomaly starts**: {} on {}",
                anomaly.kind,
                anomaly.accounts.join(", ")
            ),
        ));
        rows.push((
            anomaly.until_ns,
            format!(
                "**anomaly ends**: {} ({} cents)",
                anomaly.kind, anomaly.cents
            ),
        ));
    }
    if let (Some(log), Some(zero)) = (incident.faults, incident.run.wall_unix_ns_at_zero) {
        for span in log.spans.iter().take(TIMELINE_ROWS_MAX / 3) {
            let at = span
                .from_unix_ms
                .saturating_mul(1_000_000)
                .saturating_sub(zero);
            rows.push((
                at,
                format!("fault {} ({}) applied", span.fault_id, span.kind),
            ));
            if let Some(until) = span.until_unix_ms {
                rows.push((
                    until.saturating_mul(1_000_000).saturating_sub(zero),
                    format!("fault {} removed", span.fault_id),
                ));
            }
        }
    }
    if let Some(last) = ops
        .iter()
        .filter(|o| !o.final_read)
        .map(|o| o.complete_ns)
        .max()
    {
        rows.push((last, "last operation completed".to_owned()));
    }
    if let Some(at) = ops
        .iter()
        .filter(|o| o.final_read)
        .map(|o| o.complete_ns)
        .max()
    {
        rows.push((at, "final balances read".to_owned()));
    }
    rows.sort_by_key(|(at, _)| *at);
    rows.truncate(TIMELINE_ROWS_MAX);
    let lines: Vec<String> = rows
        .into_iter()
        .map(|(at, what)| format!("| {} | {what} |", incident.utc(at)))
        .collect();
    format!("| time | event |\n|---|---|\n{}", lines.join("\n"))
}

fn action_items(incident: &Incident<'_>) -> String {
    let r = incident.report;
    let mut items: Vec<(&str, &str)> = Vec::new();
    if incident.mode() == "unsafe" && !r.anomalies.is_empty() {
        items.push((
            "Switch every account operation to a safe mode (mutex, cas or actor)",
            "mitigate",
        ));
        items.push(("Make each read-check-write one atomic step: lock the account, or compare-and-swap on its version", "prevent"));
    }
    if r.count(AnomalyKind::DoubleApplication) > 0 {
        items.push((
            "Refund the customers charged twice (see Impact)",
            "mitigate",
        ));
        items.push((
            "Send the same request_id on every retry, and keep the ledger's idempotency on",
            "prevent",
        ));
    }
    if r.count(AnomalyKind::Overdraft) > 0 {
        items.push((
            "Audit with a non-negative check, not conservation alone",
            "process",
        ));
    }
    if r.count(AnomalyKind::LostUpdate) > 0 {
        items.push((
            "Reconcile the ledger against the acknowledged operations after each run",
            "process",
        ));
    }
    items.push((
        "Run `atm check` on the history of every load test and scenario in CI",
        "process",
    ));
    let rows: Vec<String> = items
        .into_iter()
        .map(|(item, kind)| format!("| {item} | {kind} |"))
        .collect();
    format!("| item | type |\n|---|---|\n{}", rows.join("\n"))
}

fn lessons(incident: &Incident<'_>) -> String {
    let r = incident.report;
    let mut well = vec!["The history was complete enough to judge without the ledger.".to_owned()];
    if r.counts.unknown_resolved_by_journal > 0 {
        well.push(format!(
            "The journal resolved {} unknown outcome(s).",
            r.counts.unknown_resolved_by_journal
        ));
    }
    if r.counts.unknown_inferred_applied > 0 {
        well.push(format!(
            "{} reply(ies) were lost, yet the versions after them showed they had applied.",
            r.counts.unknown_inferred_applied
        ));
    }
    let wrong = if r.anomalies.is_empty() {
        "Nothing, in this run.".to_owned()
    } else {
        format!("{} in {} mode.", kinds_text(r), incident.mode())
    };
    let lucky = if r.money.delta_cents != 0 {
        format!(
            "The run was short: {} moved wrongly in {:.1} ms; the same race under a day's load grows with every operation.",
            dollars(r.money.delta_cents.abs()),
            incident
                .run
                .ops
                .iter()
                .map(|o| o.complete_ns)
                .max()
                .unwrap_or(0) as f64
                / 1e6
        )
    } else if !r.anomalies.is_empty() {
        "The books balance, so no reconciliation alarm would have rung: only the checker saw it."
            .to_owned()
    } else {
        "No race was exposed; that proves nothing about the next run. Keep the race window open in tests.".to_owned()
    };
    format!(
        "### What went well\n\n{}\n\n### What went wrong\n\n{wrong}\n\n### Where we got lucky\n\n{lucky}",
        well.iter()
            .map(|w| format!("- {w}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// `atm postmortem` arguments.
#[derive(Debug, clap::Args)]
pub struct PostmortemArgs {
    /// History files; several merge into one run.
    #[arg(required = true)]
    pub histories: Vec<std::path::PathBuf>,
    /// The ledger's journal (`atm journal -o FILE`): what each operation read and wrote.
    #[arg(long)]
    pub journal: Option<std::path::PathBuf>,
    /// The chaos fault log: the trigger.
    #[arg(long)]
    pub fault_log: Option<std::path::PathBuf>,
    /// Write the report here (Markdown).
    #[arg(short = 'o', long = "output")]
    pub output: std::path::PathBuf,
    /// Also write the page with the swimlanes here.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
    /// Longest the checker's search may take.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub time_budget: std::time::Duration,
}

/// Checks the run, writes the report (and page); returns the verdict.
pub fn run(
    args: &PostmortemArgs,
) -> Result<overdraft_history::Verdict, crate::connect::ClientError> {
    let loaded = crate::check::Loaded::read(
        &args.histories,
        args.journal.as_deref(),
        args.fault_log.as_deref(),
    )?;
    let report = loaded.check(args.time_budget);
    let incident = Incident {
        run: &loaded.run,
        report: &report,
        journal: loaded.journal.as_ref(),
        faults: loaded.faults.as_ref(),
        resolutions: Vec::new(),
    };
    write(&incident, &args.output, args.html.as_deref())?;
    Ok(report.verdict)
}

/// Writes `incident` as Markdown to `output` and, when asked, as a page.
pub fn write(
    incident: &Incident<'_>,
    output: &std::path::Path,
    page: Option<&std::path::Path>,
) -> Result<(), crate::connect::ClientError> {
    let cannot = |path: &std::path::Path, e: std::io::Error| {
        crate::connect::ClientError::Usage(format!("cannot write {}: {e}", path.display()))
    };
    std::fs::write(output, markdown(incident)).map_err(|e| cannot(output, e))?;
    if let Some(path) = page {
        std::fs::write(path, html::page(incident)).map_err(|e| cannot(path, e))?;
    }
    Ok(())
}
