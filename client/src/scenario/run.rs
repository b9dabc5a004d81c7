//! Runs one scenario in one mode against a ledger: reset, configure, start
//! the ATMs (each on its own connection, released together at the barrier),
//! then audit and hold the outcome against the scenario's expectations.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use overdraft_proto::{transport::Channel, v1 as pb};
use overdraft_server::config::Mode;
use serde::Serialize;
use tokio::{sync::Barrier, task::JoinSet};
use tonic::Code;

use overdraft_server::config::OverdraftPolicy;

use overdraft_history::format::Operation;

use crate::history::{Clock, Header, HistoryFile, HistorySink, OpLine, OpenLine};

use super::{Expect, Presence, Run, Scenario, Step};
use crate::{
    child::ChildLedger,
    connect::{ClientError, Clients},
    latency::Latency,
};

/// Longest a scenario's single operation may take before it counts as an
/// error: far beyond any race window, short enough not to hang a demo.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server-side barrier waits in unsafe mode: long enough for
/// every ATM's first operation to arrive on a loaded machine.
const SERVER_BARRIER_WAIT_MS_UNSAFE: u64 = 5_000;

/// How long it waits in the safe modes, where only the first operation can
/// reach the hook while it holds the lock, the version or the owner.
const SERVER_BARRIER_WAIT_MS_SAFE: u64 = 100;

/// What one mode's run of a scenario did, and whether it met expectations.
#[derive(Clone, Debug, Serialize)]
pub struct ModeOutcome {
    /// Scenario name.
    pub scenario: String,
    /// The mode.
    pub mode: Mode,
    /// The run's label: the mode, or over replicas `MODE/SETTING`.
    pub run: String,
    /// True when every expectation held (or none was set).
    pub passed: bool,
    /// Each expectation that did not hold, as a sentence.
    pub failures: Vec<String>,
    /// Operations sent.
    pub operations: u64,
    /// Operations acknowledged.
    pub succeeded: u64,
    /// Refused by the bank's rules (FAILED_PRECONDITION).
    pub refused: u64,
    /// Aborted (ABORTED: CAS contention or a deadlock).
    pub aborted: u64,
    /// Aborts that reported a detected deadlock.
    pub deadlocks: u64,
    /// Other errors.
    pub errors: u64,
    /// Requests resent after a lost reply.
    pub resends: u64,
    /// Operations whose last reply was lost or late (they may have applied).
    pub unknown_outcomes: u64,
    /// CAS retries the server made.
    pub retries: u64,
    /// Overdrafts the audit found.
    pub overdrafts: u64,
    /// Lost updates the audit found.
    pub lost_updates: u64,
    /// Money created (+) or destroyed (-).
    pub money_delta_cents: i64,
    /// Operations per second over the run.
    pub ops_per_sec: f64,
    /// Median latency.
    pub latency_p50_us: u64,
    /// 99th percentile latency.
    pub latency_p99_us: u64,
    /// Final balances.
    pub balances: BTreeMap<String, i64>,
    /// The audit's findings.
    pub findings: Vec<FindingView>,
}

impl ModeOutcome {
    /// True when the audit found anything.
    pub fn anomalous(&self) -> bool {
        !self.findings.is_empty()
    }
}

/// An audit finding, as reports show it.
#[derive(Clone, Debug, Serialize)]
pub struct FindingView {
    /// `overdraft`, `lost_update`, `conservation` or `journal_mismatch`.
    pub kind: String,
    /// The account, if any.
    pub account: String,
    /// The operations behind it.
    pub request_ids: Vec<String>,
    /// Money at stake.
    pub cents: i64,
    /// The audit's sentence.
    pub detail: String,
}

impl From<&pb::Finding> for FindingView {
    fn from(finding: &pb::Finding) -> Self {
        let kind = match pb::finding::Kind::try_from(finding.kind) {
            Ok(pb::finding::Kind::Overdraft) => "overdraft",
            Ok(pb::finding::Kind::LostUpdate) => "lost_update",
            Ok(pb::finding::Kind::Conservation) => "conservation",
            Ok(pb::finding::Kind::JournalMismatch) => "journal_mismatch",
            Ok(pb::finding::Kind::HalfAppliedTransfer) => "half_applied_transfer",
            _ => "unknown",
        };
        Self {
            kind: kind.to_owned(),
            account: finding.account_id.clone(),
            request_ids: finding.request_ids.clone(),
            cents: finding.cents,
            detail: finding.detail.clone(),
        }
    }
}

/// Tallies of one ATM's operations.
#[derive(Debug, Default)]
struct Tally {
    latency: Latency,
    operations: u64,
    succeeded: u64,
    refused: u64,
    aborted: u64,
    deadlocks: u64,
    errors: u64,
    resends: u64,
    unknown: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latency.merge(&other.latency);
        self.operations += other.operations;
        self.succeeded += other.succeeded;
        self.refused += other.refused;
        self.aborted += other.aborted;
        self.deadlocks += other.deadlocks;
        self.errors += other.errors;
        self.resends += other.resends;
        self.unknown += other.unknown;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    fn record(&mut self, outcome: Result<(), tonic::Status>, started: Instant) {
        self.latency.record(started.elapsed());
        self.operations += 1;
        match outcome {
            Ok(()) => self.succeeded += 1,
            Err(status) => match status.code() {
                Code::FailedPrecondition => self.refused += 1,
                // The reply was lost or came too late: the operation may or
                // may not have applied. That is the story, not a failure.
                Code::Unavailable | Code::DeadlineExceeded => self.unknown += 1,
                Code::Aborted => {
                    self.aborted += 1;
                    let reason = overdraft_proto::error_reason::of(&status);
                    if reason.as_deref() == Some(overdraft_proto::error_reason::DEADLOCK) {
                        self.deadlocks += 1;
                    }
                }
                _ => {
                    self.errors += 1;
                    self.first_error.get_or_insert_with(|| {
                        format!("{:?}: {}", status.code(), status.message())
                    });
                }
            },
        }
    }
}

/// Runs `scenario` in `mode` against the ledger at `url`; with `history`,
/// writes what the ATMs saw there (format 2).
pub async fn run_mode(
    url: &str,
    scenario: &Scenario,
    mode: Mode,
    history: Option<&Path>,
) -> Result<ModeOutcome, ClientError> {
    if scenario.crash.is_some() {
        return Err(ClientError::Usage(format!(
            "scenario {} crashes the ledger, so it runs with a ledger process of its own: drop --target",
            scenario.name
        )));
    }
    let mut clients = Clients::connect(url).await?;
    let previous = clients.configure(pb::ConfigureRequest::default()).await?;
    let targets = [url.to_owned()];
    let run = Run::of(mode);
    let outcome = run_configured(&targets, &mut clients, scenario, run, None, history).await;
    // Leave a shared ledger as we found it, whatever happened.
    clients.configure(restore_request(&previous)).await?;
    outcome
}

/// Runs a scenario with a `crash` in `mode`: starts a ledger child process,
/// arms the crash point, runs the ATMs (their calls fail as the ledger
/// dies), restarts the child on the same data, then audits.
/// `program` is the atm binary to run the child with (default: this one).
pub async fn run_mode_crashing(
    scenario: &Scenario,
    mode: Mode,
    seed: u64,
    program: Option<std::path::PathBuf>,
    history: Option<&Path>,
) -> Result<ModeOutcome, ClientError> {
    let mut child = ChildLedger::start(program, mode, seed).await?;
    let url = child.url.clone();
    let mut clients = Clients::connect(&url).await?;
    let outcome = run_configured(
        std::slice::from_ref(&url),
        &mut clients,
        scenario,
        Run::of(mode),
        Some(&mut child),
        history,
    )
    .await;
    child.stop().await;
    outcome
}

/// Runs a scenario with `replicas` as `run`: starts its replicas in this
/// process on the PostgreSQL database at `database_url` (their shared
/// tables are reset), runs the ATMs over them, then stops them.
pub async fn run_replicated(
    database_url: &str,
    scenario: &Scenario,
    run: Run,
    seed: u64,
    history: Option<&Path>,
) -> Result<ModeOutcome, ClientError> {
    let Some(replicas) = &scenario.replicas else {
        return Err(ClientError::Usage(format!(
            "scenario {} runs on one ledger: use run_mode",
            scenario.name
        )));
    };
    let ledgers =
        crate::embedded::replicas(database_url, &scenario.name, replicas, run, seed).await?;
    let targets: Vec<String> = ledgers.iter().map(|l| l.url()).collect();
    let outcome = match Clients::connect(&targets[0]).await {
        Ok(mut clients) => {
            run_configured(&targets, &mut clients, scenario, run, None, history).await
        }
        Err(error) => Err(error),
    };
    for ledger in ledgers {
        if let Err(error) = ledger.stop().await {
            tracing::warn!(%error, "a scenario replica did not stop cleanly");
        }
    }
    outcome
}

/// The race window replica `n` of `targets` runs with.
fn window_of(scenario: &Scenario, n: usize) -> [u64; 2] {
    scenario
        .replicas
        .as_ref()
        .and_then(|r| r.race_window_ms.get(n).copied())
        .unwrap_or(scenario.race_window_ms)
}

async fn run_configured(
    targets: &[String],
    clients: &mut Clients,
    scenario: &Scenario,
    run: Run,
    child: Option<&mut ChildLedger>,
    history: Option<&Path>,
) -> Result<ModeOutcome, ClientError> {
    let mode = run.mode;
    // The other replicas, for what each keeps its own: settings, mode, stats.
    let mut others = Clients::connect_each(&targets[1..]).await?;
    let crash = prepare(clients, &mut others, scenario, mode, child.is_some()).await?;
    let atm_total: usize = scenario.atms.iter().map(|atm| atm.count as usize).sum();
    let clock = Clock::start();
    let recorder = match history {
        Some(path) => Some(open_history(clients, path, scenario, mode, atm_total, &clock).await?),
        None => None,
    };
    let sink = recorder.as_ref().map(|(sink, _)| sink.clone());
    let mut atms = spawn_atms(targets, scenario, sink.as_ref(), clock).await?;
    let started = Instant::now();
    let mut tally = Tally::default();
    while let Some(joined) = atms.join_next().await {
        tally.merge(joined.map_err(|e| ClientError::Internal(e.to_string()))?);
    }
    let elapsed = started.elapsed();
    match child {
        Some(child) => {
            let ended = child.crashed_then_restarted().await?;
            tracing::info!(%ended, "ledger crashed and restarted on the same data");
            *clients = Clients::connect(&child.url).await?;
        }
        None => clients.reset_chaos().await?,
    }

    let audit = clients.audit().await?;
    let retries = retries_over(clients, &mut others, mode).await?;
    let balances = final_reads(clients, scenario, sink.as_ref(), clock).await?;
    drop(sink);
    if let Some((sink, file)) = recorder {
        drop(sink);
        file.finish().await?;
    }
    let mut outcome = ModeOutcome {
        scenario: scenario.name.clone(),
        mode,
        run: run.label(),
        passed: true,
        failures: Vec::new(),
        operations: tally.operations,
        succeeded: tally.succeeded,
        refused: tally.refused,
        aborted: tally.aborted,
        deadlocks: tally.deadlocks,
        errors: tally.errors,
        resends: tally.resends,
        unknown_outcomes: tally.unknown,
        retries,
        overdrafts: audit.overdrafts,
        lost_updates: audit.lost_updates,
        money_delta_cents: audit.money_delta_cents,
        ops_per_sec: tally.operations as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_p50_us: tally.latency.quantile_us(0.50),
        latency_p99_us: tally.latency.quantile_us(0.99),
        balances,
        findings: audit.findings.iter().map(FindingView::from).collect(),
    };
    judge(&mut outcome, scenario, run, &tally, crash.is_some());
    Ok(outcome)
}

/// Holds `outcome` to the scenario's expectations for `run`, and to no
/// call failing unless the ledger was crashed on purpose.
fn judge(outcome: &mut ModeOutcome, scenario: &Scenario, run: Run, tally: &Tally, crashed: bool) {
    if let Some(error) = tally.first_error.as_ref().filter(|_| !crashed) {
        outcome.failures.push(format!(
            "{} operation(s) failed unexpectedly, first: {error}",
            tally.errors
        ));
    }
    if let Some(expect) = scenario.expectation(run) {
        let failures = check(expect, outcome);
        outcome.failures.extend(failures);
    }
    outcome.passed = outcome.failures.is_empty();
}

/// Readies the ledger (`clients`, and `others` for its other replicas) for
/// the scenario in `mode`: its accounts, settings and faults. Returns the
/// crash point armed, if any (only with a child ledger to restart).
async fn prepare(
    clients: &mut Clients,
    others: &mut [Clients],
    scenario: &Scenario,
    mode: Mode,
    restartable: bool,
) -> Result<Option<pb::CrashPoint>, ClientError> {
    let accounts = scenario
        .accounts
        .iter()
        .map(|a| pb::OpenAccountRequest {
            account_id: a.id.clone(),
            initial_balance_cents: a.opening_cents,
        })
        .collect();
    clients.reset(accounts).await?;
    let replicas = std::iter::once(&mut *clients).chain(others.iter_mut());
    for (n, replica) in replicas.enumerate() {
        replica
            .configure(configure_request(scenario, window_of(scenario, n)))
            .await?;
        replica.set_mode(mode).await?;
    }
    if scenario.barrier && others.is_empty() {
        // Also hold the first operations at the server's race hook until all
        // have read: the race becomes certain in unsafe mode, whatever the
        // scheduling of this machine. In the safe modes they cannot all get
        // there together (that is the point), so the barrier gives up soon.
        let wait_ms = if mode == Mode::Unsafe {
            SERVER_BARRIER_WAIT_MS_UNSAFE
        } else {
            SERVER_BARRIER_WAIT_MS_SAFE
        };
        let atm_total: u64 = scenario.atms.iter().map(|atm| u64::from(atm.count)).sum();
        let parties = u32::try_from(atm_total).unwrap_or(u32::MAX);
        clients.arm_barrier(parties, wait_ms).await?;
    }
    if scenario.lost_acks > 0 {
        clients.arm_lost_acks(scenario.lost_acks).await?;
    }
    if scenario.slow_owner_ms > 0 {
        clients.set_slow_owner(scenario.slow_owner_ms).await?;
    }
    let crash = scenario.crash.as_deref().and_then(super::crash_point);
    if let Some(point) = crash {
        if !restartable {
            return Err(ClientError::Usage(format!(
                "scenario {} crashes the ledger; run it with run_mode_crashing",
                scenario.name
            )));
        }
        clients.arm_crash(point).await?;
    }
    Ok(crash)
}

/// Connects and starts every ATM: ATM *i* on replica *i* mod their count
/// unless its spec names one.
async fn spawn_atms(
    targets: &[String],
    scenario: &Scenario,
    sink: Option<&HistorySink>,
    clock: Clock,
) -> Result<JoinSet<Tally>, ClientError> {
    let atm_total: usize = scenario.atms.iter().map(|atm| atm.count as usize).sum();
    let barrier = Arc::new(Barrier::new(atm_total));
    let mut atms = JoinSet::new();
    let mut atm_index = 0u32;
    for spec in &scenario.atms {
        for copy in 0..spec.count {
            let replica = spec.replica.map_or(atm_index as usize, |n| n as usize) % targets.len();
            let channel = crate::connect::channel(&targets[replica]).await?;
            let name = if spec.count == 1 {
                spec.name.clone()
            } else {
                format!("{}#{copy}", spec.name)
            };
            let barrier = scenario.barrier.then(|| Arc::clone(&barrier));
            let recording = sink.cloned().map(|sink| Recording {
                sink,
                clock,
                atm: atm_index,
            });
            atm_index += 1;
            atms.spawn(run_atm(
                channel,
                name,
                spec.script.clone(),
                spec.repeat,
                barrier,
                Duration::from_millis(spec.start_ms),
                recording,
            ));
        }
    }
    Ok(atms)
}

/// The store retries in `mode` over every replica.
async fn retries_over(
    clients: &mut Clients,
    others: &mut [Clients],
    mode: Mode,
) -> Result<u64, ClientError> {
    let mut retries = 0;
    for replica in std::iter::once(clients).chain(others.iter_mut()) {
        let stats = replica.stats().await?;
        retries += stats
            .modes
            .iter()
            .find(|m| m.mode == i32::from(pb::Mode::from(mode)))
            .map_or(0, |m| m.retries);
    }
    Ok(retries)
}

/// Every account's final balance, recorded as the history's final reads.
async fn final_reads(
    clients: &mut Clients,
    scenario: &Scenario,
    sink: Option<&HistorySink>,
    clock: Clock,
) -> Result<BTreeMap<String, i64>, ClientError> {
    let mut balances = BTreeMap::new();
    for account in &scenario.accounts {
        let invoke_ns = clock.now();
        let state = clients.balance(&account.id).await?;
        if let Some(sink) = sink {
            let mut line =
                OpLine::final_read(&account.id, invoke_ns, state.balance_cents, state.version);
            line.complete_ns = clock.now();
            sink.record(line).await;
        }
        balances.insert(account.id.clone(), state.balance_cents);
    }
    Ok(balances)
}

/// Where one ATM records what it saw.
struct Recording {
    sink: HistorySink,
    clock: Clock,
    atm: u32,
}

async fn run_atm(
    channel: Channel,
    name: String,
    script: Vec<Step>,
    repeat: u32,
    barrier: Option<Arc<Barrier>>,
    start: Duration,
    recording: Option<Recording>,
) -> Tally {
    let mut tally = Tally::default();
    if let Some(barrier) = barrier {
        barrier.wait().await;
    }
    if !start.is_zero() {
        tokio::time::sleep(start).await;
    }
    for round in 0..repeat {
        for (index, step) in script.iter().enumerate() {
            let request_id = match step.request_id.as_deref() {
                None | Some("auto") => format!("{name}-{round}-{index}"),
                Some("none") => String::new(),
                Some(fixed) => fixed.to_owned(),
            };
            // Every attempt of this step is one customer intent: a resend
            // without a key that applies twice is a double application.
            let intent = format!("{name}#{round}-{index}");
            let started = Instant::now();
            let mut outcome =
                send_once(&channel, step, &request_id, &name, &intent, &recording).await;
            for _ in 0..step.retries {
                match &outcome {
                    // A lost or late reply, or an ABORTED (CAS contention,
                    // a detected deadlock): what a real ATM retries.
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted
                        ) =>
                    {
                        tally.resends += 1;
                        outcome =
                            send_once(&channel, step, &request_id, &name, &intent, &recording)
                                .await;
                    }
                    _ => break,
                }
            }
            tally.record(outcome, started);
        }
    }
    tally
}

async fn send_once(
    ledger: &Channel,
    step: &Step,
    request_id: &str,
    atm_name: &str,
    intent: &str,
    recording: &Option<Recording>,
) -> Result<(), tonic::Status> {
    let (account, to) = match step.op {
        Operation::Transfer => (step.from.clone().unwrap_or_default(), step.to.clone()),
        _ => (step.account.clone().unwrap_or_default(), None),
    };
    let request = crate::call::Request {
        operation: step.op,
        account: &account,
        to: to.as_deref(),
        joint: step.joint.as_deref(),
        amount_cents: step.amount_cents.unwrap_or_default(),
        request_id: request_id.to_owned(),
        deadline: step.timeout_ms.map(Duration::from_millis),
    };
    let invoke_ns = recording.as_ref().map(|r| r.clock.now());
    let (mut line, outcome) = crate::call::send(ledger, request, OPERATION_TIMEOUT).await;
    if let (Some(recording), Some(invoke_ns)) = (recording, invoke_ns) {
        line.atm = Some(recording.atm);
        line.atm_name = Some(atm_name.to_owned());
        line.intent = Some(intent.to_owned());
        line.invoke_ns = invoke_ns;
        line.complete_ns = recording.clock.now();
        recording.sink.record(line).await;
    }
    outcome
}

/// The history file of one scenario run, with its header and openings.
async fn open_history(
    clients: &mut Clients,
    path: &Path,
    scenario: &Scenario,
    mode: Mode,
    atms: usize,
    clock: &Clock,
) -> Result<(HistorySink, HistoryFile), ClientError> {
    let settings = clients.configure(pb::ConfigureRequest::default()).await?;
    let mut header = Header::new(
        mode.as_str(),
        0,
        crate::history::policy_of(&settings),
        clock.wall_unix_ns_at_zero(),
    );
    header.source = Some("atm scenario".to_owned());
    header.scenario = Some(scenario.name.clone());
    header.atms = u32::try_from(atms).ok();
    header.idempotency = Some(settings.idempotency);
    header.replay = Some(format!("atm scenario {}", scenario.name));
    let opens: Vec<OpenLine> = scenario
        .accounts
        .iter()
        .map(|a| OpenLine::new(&a.id, a.opening_cents, 0))
        .collect();
    crate::history::create(path, &header, &opens)
}

fn configure_request(scenario: &Scenario, [min, max]: [u64; 2]) -> pb::ConfigureRequest {
    pb::ConfigureRequest {
        race_window_ms_min: Some(min),
        race_window_ms_max: Some(max),
        overdraft: Some(OverdraftPolicy::from(scenario.overdraft).into()),
        lock_order: Some(pb::LockOrder::from(scenario.lock_order).into()),
        idempotency: Some(scenario.idempotency),
    }
}

fn restore_request(previous: &pb::Settings) -> pb::ConfigureRequest {
    pb::ConfigureRequest {
        race_window_ms_min: Some(previous.race_window_ms_min),
        race_window_ms_max: Some(previous.race_window_ms_max),
        overdraft: previous.overdraft,
        lock_order: Some(previous.lock_order),
        idempotency: Some(previous.idempotency),
    }
}

/// Every expectation in `expect` that `outcome` breaks, as sentences.
fn check(expect: &Expect, outcome: &ModeOutcome) -> Vec<String> {
    let mut failures = Vec::new();
    match (expect.anomalies, outcome.anomalous()) {
        (Some(Presence::None), true) => failures.push(format!(
            "expected no anomalies; the audit found {} ({} overdrafts, {} lost updates, {} cents)",
            outcome.findings.len(),
            outcome.overdrafts,
            outcome.lost_updates,
            outcome.money_delta_cents
        )),
        (Some(Presence::Some), false) => {
            failures.push("expected anomalies; the audit found none".to_owned());
        }
        _ => {}
    }
    match (expect.deadlocks, outcome.deadlocks) {
        (Some(Presence::None), n) if n > 0 => {
            failures.push(format!("expected no deadlocks; {n} detected"))
        }
        (Some(Presence::Some), 0) => {
            failures.push("expected a deadlock to be detected; none was".to_owned())
        }
        _ => {}
    }
    if let Some(refusals) = expect.refusals.filter(|r| *r != outcome.refused) {
        failures.push(format!(
            "expected {refusals} refusal(s); got {}",
            outcome.refused
        ));
    }
    for (account, allowed) in &expect.balances {
        let found = outcome.balances.get(account).copied().unwrap_or_default();
        if !allowed.contains(&found) {
            failures.push(format!(
                "expected {account} to hold one of {allowed:?} cents; it holds {found}"
            ));
        }
    }
    if let Some(total) = expect.total_cents {
        let found: i64 = outcome.balances.values().sum();
        if found != total {
            failures.push(format!(
                "expected balances to total {total} cents; they total {found}"
            ));
        }
    }
    failures
}
