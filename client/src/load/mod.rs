//! `atm load`: a seeded workload against a ledger, in a closed model (each
//! ATM sends when its last reply returns) or an open one (`--rate`: arrivals
//! on a fixed schedule, latency measured from the intended send time, so a
//! slow server cannot hide its queueing: no coordinated omission).
//!
//! At the end: HDR latency per method, status counts, the server's retries
//! and aborts, the audit, and a reconciliation of the client's own model of
//! every balance (from acknowledged operations) against the final balances.

pub mod cost;
pub mod workload;

use std::{
    collections::{BTreeMap, HashMap},
    io::IsTerminal,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use overdraft_proto::v1 as pb;
use overdraft_server::config::Mode;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use overdraft_history::format::Operation;

use self::cost::{CpuMeter, CpuPerOp};
use self::workload::{AccountPicker, AmountRange, Mix, Skew, account_id};
use crate::{
    connect::{ClientError, Clients},
    history::{self, Clock, Header, HistorySink, OpLine, OpenLine, Outcome},
    latency::Latency,
};

/// Longest one operation may take before its outcome counts as unknown.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Most ATMs: each is a task with one request in flight.
pub const ATMS_MAX: u32 = 4_096;

/// Most connections the ATMs share.
pub const CONNECTIONS_MAX: u32 = 256;

/// Most accounts: one Reset opens them all.
pub const ACCOUNTS_MAX: u32 = 10_000;

/// Most operations one run may send.
pub const OPS_MAX: u64 = 100_000_000;

/// Longest run: a day.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3_600);

/// The workload flags `atm load` and `atm compare` share.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct LoadArgs {
    /// Concurrent ATMs (each has one request in flight).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=i64::from(ATMS_MAX)))]
    pub atms: u32,
    /// Accounts acct-0 .. acct-(K-1), opened by a Reset before the run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(ACCOUNTS_MAX)))]
    pub accounts: u32,
    /// How long to run (e.g. 10s, 500ms, 2m). Default 10s unless --ops is given.
    #[arg(long, value_parser = parse_duration, conflicts_with = "ops")]
    #[serde(skip)]
    pub duration: Option<Duration>,
    /// How many operations to send in all.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=OPS_MAX))]
    pub ops: Option<u64>,
    /// Relative weights of the operations.
    #[arg(long, default_value = "deposit=40,withdraw=40,transfer=15,balance=5")]
    pub mix: Mix,
    /// Amount range in cents, MIN..MAX inclusive.
    #[arg(long, default_value = "100..10000")]
    pub amount_cents: AmountRange,
    /// Account choice: uniform, zipf:S (e.g. zipf:1.1) or hot:P (account 0 with probability P).
    #[arg(long, default_value = "uniform")]
    pub skew: Skew,
    /// Open model: total arrivals per second (default: closed model).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// HTTP/2 connections the ATMs share.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONNECTIONS_MAX)))]
    pub connections: u32,
    /// Seed of every random choice; the same seed sends the same operations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000_000))]
    pub opening_cents: i64,
    /// Write one JSON line per operation here (format: docs/HISTORY.md).
    #[arg(long)]
    pub history: Option<PathBuf>,
}

impl LoadArgs {
    /// The run length, when bounded by time.
    pub fn run_duration(&self) -> Option<Duration> {
        match (self.duration, self.ops) {
            (Some(duration), _) => Some(duration),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        }
    }
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 10s, 500ms or 2m, got `{text}`"))?;
    let seconds = match unit {
        "ms" => value / 1_000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3_600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`; use ms, s, m or h"
            ));
        }
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())?;
    if duration.is_zero() || duration > DURATION_MAX {
        return Err(format!("must be above zero and at most 24h, got `{text}`"));
    }
    Ok(duration)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of operations per second"))?;
    if !(rate > 0.0 && rate <= 1_000_000.0) {
        return Err(format!("must be above 0 and at most 1000000, got {rate}"));
    }
    Ok(rate)
}

/// Latency percentiles of one method, in µs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl From<&Latency> for LatencySummary {
    fn from(latency: &Latency) -> Self {
        Self {
            count: latency.count(),
            p50: latency.quantile_us(0.50),
            p90: latency.quantile_us(0.90),
            p99: latency.quantile_us(0.99),
            p999: latency.quantile_us(0.999),
            max: latency.max_us(),
        }
    }
}

/// The audit, as a load report shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditSummary {
    /// No findings.
    pub clean: bool,
    /// Overdrafts found.
    pub overdrafts: u64,
    /// Lost updates found.
    pub lost_updates: u64,
    /// Money created (+) or destroyed (-).
    pub money_delta_cents: i64,
    /// Findings in all.
    pub findings: usize,
}

/// One account whose final balance differs from the client's model.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    /// The account.
    pub account: String,
    /// What acknowledged operations say it holds.
    pub expected_cents: i64,
    /// What it holds.
    pub actual_cents: i64,
}

/// The client's model against the final balances.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reconciliation {
    /// Accounts compared.
    pub accounts: u32,
    /// Accounts that matched.
    pub matched: u32,
    /// The ones that did not.
    pub mismatched: Vec<Mismatch>,
    /// Operations whose outcome never came back (they may or may not have applied).
    pub unknown_outcomes: u64,
}

/// Everything a load run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// Format version.
    pub schema: u32,
    /// Mode the run used.
    pub mode: String,
    /// The seed.
    pub seed: u64,
    /// `closed` or `open`.
    pub model: &'static str,
    /// Open model's arrival rate.
    pub rate: Option<f64>,
    /// ATMs.
    pub atms: u32,
    /// Accounts.
    pub accounts: u32,
    /// Wall time of the run.
    pub duration_secs: f64,
    /// Operations sent.
    pub operations: u64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Latency per method, and `all`.
    pub latency_us: BTreeMap<String, LatencySummary>,
    /// Replies by gRPC code name.
    pub status_counts: BTreeMap<String, u64>,
    /// CAS retries on the server.
    pub retries: u64,
    /// Operations the server aborted.
    pub aborts: u64,
    /// Deadlocks the server detected.
    pub deadlocks: u64,
    /// The audit.
    pub audit: AuditSummary,
    /// The client's model against the final balances.
    pub reconciliation: Reconciliation,
    /// CPU this process used, as a percentage of one core over the run.
    pub client_cpu_percent: f64,
    /// CPU per operation sent, in the ledger and in this process.
    pub cpu_per_op: CpuPerOp,
    /// The ledger's resident memory when the ATMs stopped, before the audit (0 if not reported).
    pub ledger_rss_bytes: u64,
    /// Durable flushes during the run (`--durability sync`); None without any.
    pub flushes: Option<FlushSummary>,
}

/// What group commit did during a run: how often it flushed, how many
/// operations each flush acknowledged, and how long flushes took.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlushSummary {
    /// Flushes done.
    pub flushes: u64,
    /// Flushes per second of the run.
    pub flushes_per_sec: f64,
    /// Operations acknowledged per flush, on average.
    pub operations_per_flush: f64,
    /// Mean time one flush took, in µs.
    pub flush_us_mean: f64,
    /// Longest flush, in µs.
    pub flush_us_max: u64,
    /// Share of the run's wall time a flush was in progress.
    pub busy_fraction: f64,
}

impl FlushSummary {
    fn of(stats: &pb::StatsReply, elapsed: Duration) -> Option<Self> {
        let flushes = stats.flushes;
        if flushes == 0 {
            return None;
        }
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Some(Self {
            flushes,
            flushes_per_sec: flushes as f64 / seconds,
            operations_per_flush: stats.flushed_operations as f64 / flushes as f64,
            flush_us_mean: stats.flush_time_us as f64 / flushes as f64,
            flush_us_max: stats.flush_time_us_max,
            busy_fraction: stats.flush_time_us as f64 / 1e6 / seconds,
        })
    }
}

/// One ATM's share of the results.
#[derive(Debug, Default)]
struct AtmResult {
    latency: BTreeMap<Operation, Latency>,
    statuses: BTreeMap<String, u64>,
    deltas: HashMap<u32, i64>,
    unknown: u64,
}

/// Shared live counters for the progress display.
#[derive(Debug, Default)]
struct Progress {
    operations: AtomicU64,
    errors: AtomicU64,
}

/// Runs the load against `url`; switches to `mode` first when given.
pub async fn run(
    url: &str,
    args: &LoadArgs,
    mode: Option<Mode>,
    show_progress: bool,
) -> Result<LoadReport, ClientError> {
    let mut clients = Clients::connect(url).await?;
    let opening = (0..args.accounts)
        .map(|n| pb::OpenAccountRequest {
            account_id: account_id(n),
            initial_balance_cents: args.opening_cents,
        })
        .collect();
    clients.reset(opening).await?;
    if let Some(mode) = mode {
        clients.set_mode(mode).await?;
    }
    let mode = clients
        .mode()
        .await?
        .map_or_else(|| "unknown".to_owned(), |m| m.as_str().to_owned());

    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(crate::connect::channel(url).await?);
    }
    let clock = Clock::start();
    let (sink, writer) = match &args.history {
        Some(path) => {
            let header = history_header(&mut clients, url, args, &mode, &clock).await?;
            let opens: Vec<OpenLine> = (0..args.accounts)
                .map(|n| OpenLine::new(&account_id(n), args.opening_cents, 0))
                .collect();
            let (sink, writer) = history::create(path, &header, &opens)?;
            (Some(sink), Some(writer))
        }
        None => (None, None),
    };

    let meter = CpuMeter::start(&mut clients).await?;
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let ticker = show_progress
        .then(|| tokio::spawn(show(Arc::clone(&progress), args.run_duration(), args.ops)));
    let mut atms = JoinSet::new();
    for atm in 0..args.atms {
        let plan = AtmPlan::new(args, atm, started, clock);
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
    let (cpu_per_op, cpu_used, ledger_rss_bytes) = meter.finish(&mut clients, sent).await?;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let (Some(sink), Some(writer)) = (sink, writer) {
        record_final_reads(&mut clients, args, &sink, &clock).await?;
        drop(sink);
        writer.finish().await?;
    }
    let mut report = finish(&mut clients, args, mode, total, elapsed, cpu_used).await?;
    report.cpu_per_op = cpu_per_op;
    report.ledger_rss_bytes = ledger_rss_bytes;
    Ok(report)
}

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

/// A read of every account after the ATMs stopped: the state the run left.
async fn record_final_reads(
    clients: &mut Clients,
    args: &LoadArgs,
    sink: &HistorySink,
    clock: &Clock,
) -> Result<(), ClientError> {
    for n in 0..args.accounts {
        let id = account_id(n);
        let invoke_ns = clock.now();
        let state = clients.balance(&id).await?;
        let mut line = OpLine::final_read(&id, invoke_ns, state.balance_cents, state.version);
        line.complete_ns = clock.now();
        sink.record(line).await;
    }
    Ok(())
}

async fn finish(
    clients: &mut Clients,
    args: &LoadArgs,
    mode: String,
    total: AtmResult,
    elapsed: Duration,
    cpu_used: Duration,
) -> Result<LoadReport, ClientError> {
    let audit = clients.audit().await?;
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
    for n in 0..args.accounts {
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
        audit: AuditSummary {
            clean: audit.clean,
            overdrafts: audit.overdrafts,
            lost_updates: audit.lost_updates,
            money_delta_cents: audit.money_delta_cents,
            findings: audit.findings.len(),
        },
        reconciliation,
        client_cpu_percent: 100.0 * cpu_used.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
        cpu_per_op: CpuPerOp::default(),
        ledger_rss_bytes: 0,
        flushes: FlushSummary::of(&stats, elapsed),
    })
}

fn merge(total: &mut AtmResult, part: AtmResult) {
    for (method, latency) in part.latency {
        total.latency.entry(method).or_default().merge(&latency);
    }
    for (code, count) in part.statuses {
        *total.statuses.entry(code).or_default() += count;
    }
    for (account, delta) in part.deltas {
        *total.deltas.entry(account).or_default() += delta;
    }
    total.unknown += part.unknown;
}

/// What one ATM sends, and when.
#[derive(Debug)]
struct AtmPlan {
    atm: u32,
    seed: u64,
    mix: Mix,
    amounts: AmountRange,
    picker: AccountPicker,
    started: Instant,
    clock: Clock,
    deadline: Option<Instant>,
    quota: Option<u64>,
    /// Open model: this ATM's gap between intended sends.
    interval: Option<Duration>,
}

impl AtmPlan {
    fn new(args: &LoadArgs, atm: u32, started: Instant, clock: Clock) -> Self {
        let quota = args.ops.map(|ops| {
            let atms = u64::from(args.atms);
            ops / atms + u64::from(u64::from(atm) < ops % atms)
        });
        Self {
            atm,
            seed: args.seed,
            mix: args.mix.clone(),
            amounts: args.amount_cents,
            picker: AccountPicker::new(args.accounts, args.skew),
            started,
            clock,
            deadline: args.run_duration().map(|d| started + d),
            quota,
            interval: args
                .rate
                .map(|rate| Duration::from_secs_f64(f64::from(args.atms) / rate)),
        }
    }

    fn more(&self, sent: u64, now: Instant) -> bool {
        self.quota.is_none_or(|quota| sent < quota)
            && self.deadline.is_none_or(|deadline| now < deadline)
    }

    /// When operation `k` is meant to start: on the schedule (open model,
    /// staggered per ATM) or now (closed model).
    fn intended(&self, k: u64) -> Instant {
        match self.interval {
            Some(interval) => {
                let offset = interval.mul_f64(f64::from(self.atm) / 4_096.0);
                self.started + offset + interval.mul_f64(k as f64)
            }
            None => Instant::now(),
        }
    }
}

/// One operation, drawn.
#[derive(Debug)]
struct Drawn {
    method: Operation,
    first: u32,
    second: u32,
    amount_cents: i64,
}

async fn run_atm(
    channel: Channel,
    plan: AtmPlan,
    sink: Option<HistorySink>,
    progress: Arc<Progress>,
) -> AtmResult {
    let mut ledger = pb::ledger_client::LedgerClient::new(channel);
    let mut rng = StdRng::seed_from_u64(
        plan.seed
            .wrapping_mul(1_000_003)
            .wrapping_add(u64::from(plan.atm)),
    );
    let mut result = AtmResult::default();
    let mut k = 0u64;
    while plan.more(k, Instant::now()) {
        let intended = plan.intended(k);
        // Only the open model waits: a timer, even one already due, costs a
        // trip through tokio's millisecond wheel.
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let mut method = plan.mix.pick(&mut rng);
        let first = plan.picker.pick(&mut rng);
        let second = plan.picker.pick_other(&mut rng, first);
        if method == Operation::Transfer && second == first {
            method = Operation::Deposit;
        }
        let drawn = Drawn {
            method,
            first,
            second,
            amount_cents: plan.amounts.pick(&mut rng),
        };
        let request_id = format!("load-{}-{}-{k}", plan.seed, plan.atm);
        let first = account_id(drawn.first);
        let second = (drawn.method == Operation::Transfer).then(|| account_id(drawn.second));
        let request = crate::call::Request {
            operation: drawn.method,
            account: &first,
            to: second.as_deref(),
            amount_cents: drawn.amount_cents,
            request_id,
            deadline: None,
        };
        let (record, _) = crate::call::send(&mut ledger, request, OPERATION_TIMEOUT).await;
        let complete = Instant::now();
        result
            .latency
            .entry(method)
            .or_default()
            .record(complete.saturating_duration_since(intended));
        account_outcome(&mut result, &drawn, &record);
        progress.operations.fetch_add(1, Ordering::Relaxed);
        if record.outcome != Some(Outcome::Ok) {
            progress.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sink) = &sink {
            let mut line = record;
            line.atm = Some(plan.atm);
            line.invoke_ns = plan.clock.since(intended);
            line.complete_ns = plan.clock.since(complete);
            sink.record(line).await;
        }
        k += 1;
    }
    result
}

/// Folds one operation's outcome into the ATM's status counts and model.
fn account_outcome(result: &mut AtmResult, drawn: &Drawn, record: &OpLine) {
    let code = record.code.clone().unwrap_or_else(|| "Ok".to_owned());
    *result.statuses.entry(code).or_default() += 1;
    match record.outcome {
        Some(Outcome::Ok) => {
            let amount = drawn.amount_cents;
            match drawn.method {
                Operation::Deposit => *result.deltas.entry(drawn.first).or_default() += amount,
                Operation::Withdraw => {
                    let fee = record.fee_cents.unwrap_or_default();
                    *result.deltas.entry(drawn.first).or_default() -= amount + fee;
                }
                Operation::Transfer => {
                    *result.deltas.entry(drawn.first).or_default() -= amount;
                    *result.deltas.entry(drawn.second).or_default() += amount;
                }
                Operation::Balance => {}
            }
        }
        Some(Outcome::Unknown) => result.unknown += 1,
        _ => {}
    }
}

/// Prints progress: a bar on a terminal, a plain line a second otherwise.
async fn show(progress: Arc<Progress>, duration: Option<Duration>, ops: Option<u64>) {
    let started = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let length = ops.unwrap_or_else(|| duration.map_or(0, |d| d.as_secs().max(1)));
        let bar = indicatif::ProgressBar::new(length);
        let template = if ops.is_some() {
            "{bar:40} {pos}/{len} ops {msg}"
        } else {
            "{bar:40} {pos}/{len} s {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let operations = progress.operations.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let rate = operations as f64 / elapsed.max(1e-9);
        match &bar {
            Some(bar) => {
                bar.set_position(if ops.is_some() {
                    operations
                } else {
                    started.elapsed().as_secs()
                });
                bar.set_message(format!("{rate:.0} ops/s, {errors} not ok"));
            }
            None => eprintln!(
                "atm load: {elapsed:.0}s {operations} ops, {rate:.0} ops/s, {errors} not ok"
            ),
        }
    }
}
