//! `atm load`: a seeded workload against a ledger, in a closed model (each
//! ATM sends when its last reply returns) or an open one (`--rate`: arrivals
//! on a fixed schedule, latency measured from the intended send time, so a
//! slow server cannot hide its queueing: no coordinated omission).
//!
//! At the end: HDR latency per method, status counts, the server's retries
//! and aborts, the audit, and a reconciliation of the client's own model of
//! every balance (from acknowledged operations) against the final balances.
//!
//! # Layout
//! - [`args`]: the flags and their bounds; [`workload`]: the seeded draws.
//! - [`plan`]: when each ATM sends (closed or open model).
//! - [`atm`]: one ATM's loop and what it makes of each reply.
//! - [`progress`]: the live display; [`cost`]: CPU per operation on both sides.
//! - [`report`]: what a run measured.
//! - this file: the run itself, from Reset to reconciliation.

mod args;
mod atm;
pub mod cost;
mod plan;
mod progress;
mod report;
pub mod workload;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use overdraft_proto::v1 as pb;
use overdraft_server::config::Mode;
use tokio::task::JoinSet;

pub use self::{
    args::{
        ACCOUNTS_MAX, ATMS_MAX, ATTEMPTS_MAX, CONNECTIONS_MAX, CrowdArgs, DURATION_MAX, LoadArgs,
        OPS_MAX, RATE_PER_SEC_MAX, RATE_PER_SEC_MIN, parse_duration, parse_name,
    },
    report::{AuditSummary, FlushSummary, LatencySummary, LoadReport, Mismatch, Reconciliation},
};
use self::{
    atm::{AtmResult, merge, run_atm},
    cost::{CpuMeter, RunCost},
    plan::AtmPlan,
    progress::{Progress, show},
    workload::account_id,
};
use crate::{
    connect::{ClientError, Clients},
    history::{self, Clock, Header, OpenLine},
    latency::Latency,
};

/// Runs the load against `url` alone: a Reset first (switching to `mode`
/// when given), a reconciliation of every balance at the end.
pub async fn run(
    url: &str,
    args: &LoadArgs,
    mode: Option<Mode>,
    show_progress: bool,
) -> Result<LoadReport, ClientError> {
    drive(url, args, None, mode, show_progress).await
}

/// Runs the load against `url` as `member` of a crowd: on the accounts
/// `atm reset` opened, with no Reset and no reconciliation (`atm referee`
/// judges the crowd once every member is done).
pub async fn join(
    url: &str,
    args: &LoadArgs,
    member: &str,
    show_progress: bool,
) -> Result<LoadReport, ClientError> {
    drive(url, args, Some(Arc::from(member)), None, show_progress).await
}

async fn drive(
    url: &str,
    args: &LoadArgs,
    member: Option<Arc<str>>,
    mode: Option<Mode>,
    show_progress: bool,
) -> Result<LoadReport, ClientError> {
    // Replicas share their state: one Reset clears it for all, through the
    // first; each keeps its own mode, so SetMode goes to every one.
    let mut targets = crate::connect::targets(url)?;
    if let Some(name) = &member {
        // A crowd member with one ATM would always take the first replica:
        // its name picks where its ATMs start, so the crowd spreads too.
        let start = plan::name_hash(name) % targets.len() as u64;
        targets.rotate_left(usize::try_from(start).unwrap_or(0));
    }
    let mut clients = Clients::connect(&targets[0]).await?;
    if member.is_none() {
        clients
            .reset(opening(args.accounts, args.opening_cents))
            .await?;
        if let Some(mode) = mode {
            Clients::set_mode_everywhere(&targets, mode).await?;
        }
    }
    let mode = clients
        .mode()
        .await?
        .map_or_else(|| "unknown".to_owned(), |m| m.as_str().to_owned());

    let channels = crate::connect::spread(&targets, args.connections).await?;
    let clock = Clock::start();
    let place = args
        .history
        .as_deref()
        .map(|path| HistoryPlace::of(path, member.as_deref(), args.seed))
        .transpose()?;
    let (sink, writer) = match &place {
        Some(place) => {
            let header = history_header(&mut clients, url, args, &mode, &clock).await?;
            let opens: Vec<OpenLine> = (0..args.accounts)
                .map(|n| OpenLine::new(&account_id(n), args.opening_cents, 0))
                .collect();
            let (sink, writer) = if member.is_some() {
                history::create_new(&place.writing, &header, &opens)?
            } else {
                history::create(&place.writing, &header, &opens)?
            };
            (Some(sink), Some(writer))
        }
        None => (None, None),
    };

    let mut meter = CpuMeter::start(&clients, &targets[1..]).await?;
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let ticker = show_progress
        .then(|| tokio::spawn(show(Arc::clone(&progress), args.run_duration(), args.ops)));
    let mut atms = JoinSet::new();
    for atm in 0..args.atms {
        let plan = AtmPlan::new(args, member.clone(), atm, started, clock);
        let channel = channels[atm as usize % channels.len()].clone();
        atms.spawn(run_atm(channel, plan, sink.clone(), Arc::clone(&progress)));
    }
    let mut total = AtmResult::default();
    while let Some(joined) = atms.join_next().await {
        merge(
            &mut total,
            joined.map_err(|e| ClientError::Internal(e.to_string()))?,
        );
    }
    let elapsed = started.elapsed();
    let sent = total.latency.values().map(Latency::count).sum();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    let mut history = sink.zip(writer).zip(place);
    if member.is_some()
        && let Some(((sink, writer), place)) = history.take()
    {
        // A member's history is whole once its ATMs stop: published before
        // any further call, so that a call failing now cannot leave the
        // referee waiting on a .part.
        drop(sink);
        writer.finish().await?;
        place.complete()?;
    }
    let cost = meter.finish(sent).await?;
    if let Some(((sink, writer), place)) = history {
        let accounts: Vec<String> = (0..args.accounts).map(account_id).collect();
        history::record_final_reads(
            &mut clients,
            accounts.iter().map(String::as_str),
            &sink,
            &clock,
        )
        .await?;
        drop(sink);
        writer.finish().await?;
        place.complete()?;
    }
    let mut report = finish(
        &mut clients,
        args,
        mode,
        total,
        elapsed,
        cost,
        member.is_none(),
    )
    .await?;
    report.member = member.map(|name| name.to_string());
    Ok(report)
}

/// The accounts a run opens: acct-0 .. acct-(K-1), each with `cents`.
pub fn opening(accounts: u32, cents: i64) -> Vec<pb::OpenAccountRequest> {
    (0..accounts)
        .map(|n| pb::OpenAccountRequest {
            account_id: account_id(n),
            initial_balance_cents: cents,
        })
        .collect()
}

/// Where a history goes: the file named, or NAME.jsonl in a directory
/// (written as NAME.jsonl.part until the run ends, so that a referee
/// waiting on the directory never reads half a history).
struct HistoryPlace {
    writing: PathBuf,
    done: PathBuf,
}

impl HistoryPlace {
    /// A member always writes into a directory (created when missing);
    /// a run of its own into one only when the path is one.
    fn of(path: &Path, member: Option<&str>, seed: u64) -> Result<Self, ClientError> {
        if member.is_some() {
            history::create_dir(path)?;
        }
        if !path.is_dir() {
            return Ok(Self {
                writing: path.to_owned(),
                done: path.to_owned(),
            });
        }
        let name = member.map_or_else(|| format!("load-{seed}"), str::to_owned);
        let done = path.join(format!("{name}.jsonl"));
        if member.is_some() && done.exists() {
            return Err(ClientError::Usage(format!(
                "{} exists: another member is named {name}, or an earlier run's history is \
                 there (`atm reset --fresh-histories {}` clears them)",
                done.display(),
                path.display()
            )));
        }
        Ok(Self {
            writing: path.join(format!("{name}.jsonl{PART_SUFFIX}")),
            done,
        })
    }

    fn complete(&self) -> Result<(), ClientError> {
        if self.writing == self.done {
            return Ok(());
        }
        std::fs::rename(&self.writing, &self.done).map_err(|e| {
            ClientError::Usage(format!(
                "cannot rename {} to {}: {e}",
                self.writing.display(),
                self.done.display()
            ))
        })
    }
}

/// What a history file is called while its run is still writing it.
pub const PART_SUFFIX: &str = ".part";

/// The history's header: what `atm check` needs to judge the file alone.
async fn history_header(
    clients: &mut Clients,
    url: &str,
    args: &LoadArgs,
    mode: &str,
    clock: &Clock,
) -> Result<Header, ClientError> {
    let settings = clients.configure(pb::ConfigureRequest::default()).await?;
    let mut header = Header::new(
        mode,
        args.seed,
        history::policy_of(&settings),
        clock.wall_unix_ns_at_zero(),
    );
    header.source = Some("atm load".to_owned());
    header.target = Some(url.to_owned());
    header.atms = Some(args.atms);
    header.idempotency = Some(settings.idempotency);
    Ok(header)
}

async fn finish(
    clients: &mut Clients,
    args: &LoadArgs,
    mode: String,
    total: AtmResult,
    elapsed: Duration,
    cost: RunCost,
    alone: bool,
) -> Result<LoadReport, ClientError> {
    // A crowd member leaves the audit to the referee: the other members
    // are still changing the ledger it would audit.
    let audit = if alone {
        Some(clients.audit().await?)
    } else {
        None
    };
    let stats = clients.stats().await?;
    let counters = stats
        .modes
        .iter()
        .find(|m| m.mode == stats.mode)
        .cloned()
        .unwrap_or_default();
    let mut reconciliation = Reconciliation {
        unknown_outcomes: total.unknown,
        ..Reconciliation::default()
    };
    for n in (0..args.accounts).filter(|_| alone) {
        let id = account_id(n);
        let actual = clients.balance(&id).await?.balance_cents;
        let expected = args.opening_cents + total.deltas.get(&n).copied().unwrap_or_default();
        reconciliation.accounts += 1;
        if actual == expected {
            reconciliation.matched += 1;
        } else {
            reconciliation.mismatched.push(Mismatch {
                account: id,
                expected_cents: expected,
                actual_cents: actual,
            });
        }
    }
    let mut all = Latency::default();
    let mut latency_us = BTreeMap::new();
    for (method, latency) in &total.latency {
        all.merge(latency);
        latency_us.insert(method.as_str().to_owned(), LatencySummary::from(latency));
    }
    latency_us.insert("all".to_owned(), LatencySummary::from(&all));
    let operations = all.count();
    Ok(LoadReport {
        schema: 1,
        mode,
        seed: args.seed,
        model: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: args.rate,
        atms: args.atms,
        accounts: args.accounts,
        duration_secs: elapsed.as_secs_f64(),
        operations,
        ops_per_sec: operations as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_us,
        status_counts: total.statuses,
        retries: counters.retries,
        aborts: counters.aborts,
        deadlocks: counters.deadlocks_detected,
        audit: audit.map(|audit| AuditSummary {
            clean: audit.clean,
            overdrafts: audit.overdrafts,
            lost_updates: audit.lost_updates,
            money_delta_cents: audit.money_delta_cents,
            findings: audit.findings.len(),
        }),
        reconciliation,
        client_cpu_percent: 100.0 * cost.atm_cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
        cpu_per_op: cost.per_op,
        ledger_rss_bytes: cost.ledger_rss_bytes,
        flushes: FlushSummary::of(&stats, elapsed),
        member: None,
    })
}
