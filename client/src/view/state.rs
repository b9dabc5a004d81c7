//! What the live page shows, gathered twice a second: the ledger's mode and
//! counters, the busiest accounts' balances, the faults the schedule has
//! applied, the ledger's audit, and the recent operations of every ATM
//! from the histories the crowd writes.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use overdraft_history::{evidence::FaultLog, format::Outcome};
use overdraft_proto::v1 as pb;
use serde::Serialize;

use super::tail::{Seen, Tail};
use crate::connect::Clients;

/// How much recent history the page keeps, in ns: the busiest accounts
/// are counted over it.
const WINDOW_NS: u64 = 10_000_000_000;

/// The swimlanes' width, in ns.
const LANE_WINDOW_NS: u64 = 5_000_000_000;

/// Most operations held for the window, all ATMs together.
const RECENT_MAX: usize = 50_000;

/// The busiest accounts shown.
const ACCOUNTS_SHOWN: usize = 8;

/// Most lanes drawn, and operations per lane.
const LANES_MAX: usize = 32;
const LANE_OPS_MAX: usize = 400;

/// Most audit findings shown (the latest), and request ids per finding: a
/// projector's worth.
const FINDINGS_SHOWN: usize = 12;
const FINDING_IDS_SHOWN: usize = 8;

/// Operations per second are counted over one second that ended this long
/// ago: a member's history reaches the disk in buffered bursts.
const RATE_LAG_NS: u64 = 500_000_000;

/// The shortest gap between two audits. An audit holds the ledger's mode
/// lock (no operation runs while it folds the journal), so one that took
/// long widens the gap to AUDIT_GAP_FACTOR times its own duration: the view
/// never stops the ledger for more than 1/20 of the time it watches.
const AUDIT_EVERY_MIN: Duration = Duration::from_secs(3);
const AUDIT_GAP_FACTOR: u32 = 20;

/// Longest the ledger may take to answer one look's calls: a paused or
/// restarting ledger leaves the rest of the page live.
const LEDGER_WAIT_MAX: Duration = Duration::from_secs(1);

/// Largest fault log read on each look.
const FAULT_LOG_MAX_BYTES: u64 = 8 << 20;

/// One account's row.
#[derive(Clone, Debug, Serialize)]
pub struct AccountRow {
    /// The account.
    pub account_id: String,
    /// Its balance now.
    pub balance_cents: i64,
    /// Its version now.
    pub version: u64,
    /// Operations on it in the window.
    pub recent_ops: u64,
}

/// One fault the schedule has applied and not removed.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRow {
    /// The fault's id.
    pub fault_id: String,
    /// Its kind.
    pub kind: String,
    /// Its phase.
    pub phase: Option<String>,
    /// Seconds since it was applied.
    pub for_secs: f64,
}

/// One finding of the ledger's audit.
#[derive(Clone, Debug, Serialize)]
pub struct FindingRow {
    /// `lost_update`, `overdraft`, ...
    pub kind: String,
    /// The account.
    pub account_id: String,
    /// Money at stake.
    pub cents: i64,
    /// The ledger's sentence.
    pub detail: String,
    /// The operations behind it.
    pub request_ids: Vec<String>,
}

/// The audit as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditView {
    /// When it ran, ms since the Unix epoch (0: not yet).
    pub at_unix_ms: u64,
    /// No finding.
    pub clean: bool,
    /// Lost updates found.
    pub lost_updates: u64,
    /// Overdrafts found.
    pub overdrafts: u64,
    /// Money created (+) or destroyed (-).
    pub money_delta_cents: i64,
    /// Findings in all.
    pub findings_total: usize,
    /// The latest findings.
    pub findings: Vec<FindingRow>,
}

/// One operation in a lane.
#[derive(Clone, Debug, Serialize)]
pub struct LaneOp {
    /// `deposit`, `withdraw`, `transfer` or `balance`.
    pub op: String,
    /// Accounts, `a` or `a -> b`.
    pub accounts: String,
    /// Amount in cents.
    pub amount_cents: i64,
    /// `ok`, `fail`, `unknown`.
    pub outcome: String,
    /// The gRPC code when not ok.
    pub code: Option<String>,
    /// Its request id.
    pub request_id: String,
    /// Sent, ms before the snapshot.
    pub from_ms_ago: f64,
    /// Answered, ms before the snapshot.
    pub to_ms_ago: f64,
}

/// One ATM's lane.
#[derive(Clone, Debug, Serialize)]
pub struct Lane {
    /// The ATM.
    pub atm: String,
    /// Its operations in the window, oldest first.
    pub ops: Vec<LaneOp>,
}

/// Everything the page shows at one moment (`/snapshot`, and each event).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Format version.
    pub schema: u32,
    /// When it was taken, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Snapshots taken since the view started.
    pub sequence: u64,
    /// The ledger watched.
    pub target: String,
    /// Its mode (`unknown` until it answers).
    pub mode: String,
    /// Operations the ledger has counted since its last Reset.
    pub operations_total: u64,
    /// Operations per second, by method and `all`.
    pub ops_per_sec: BTreeMap<String, f64>,
    /// The busiest accounts in the window.
    pub accounts: Vec<AccountRow>,
    /// Faults applied now.
    pub faults: Vec<FaultRow>,
    /// The ledger's latest audit.
    pub audit: AuditView,
    /// Recent operations per ATM.
    pub lanes: Vec<Lane>,
    /// The window the lanes cover, in ms (the latest LANE_OPS_MAX of each
    /// ATM's operations within it).
    pub window_ms: u64,
    /// What went wrong gathering this snapshot, if anything.
    pub error: Option<String>,
}

/// The files the view follows: read on a blocking thread, never on the
/// runtime's workers.
struct Files {
    tail: Option<Tail>,
    fault_log: Option<PathBuf>,
    /// The faults active at the last look that could read the log.
    faults: Vec<FaultRow>,
}

impl Files {
    /// Reads what the histories and the fault log gained since the last look.
    fn look(&mut self, now_unix_ns: u64, seen: &mut Vec<Seen>, errors: &mut Vec<String>) {
        if let Some(tail) = &mut self.tail
            && let Err(e) = tail.poll(seen)
        {
            errors.push(format!("reading the histories: {e}"));
        }
        self.read_faults(now_unix_ns, errors);
    }

    fn read_faults(&mut self, now_unix_ns: u64, errors: &mut Vec<String>) {
        let Some(path) = &self.fault_log else {
            return;
        };
        match std::fs::metadata(path) {
            Err(_) => {
                // The schedule has not started writing yet.
                self.faults.clear();
                return;
            }
            Ok(meta) if meta.len() > FAULT_LOG_MAX_BYTES => {
                errors.push(format!(
                    "the fault log {} is over {} MiB; not read",
                    path.display(),
                    FAULT_LOG_MAX_BYTES >> 20
                ));
                return;
            }
            Ok(_) => {}
        }
        // A line being written reads as an error: keep the last list.
        if let Ok(log) = FaultLog::read(path) {
            self.faults = log
                .active(now_unix_ns, now_unix_ns)
                .into_iter()
                .map(|span| FaultRow {
                    fault_id: span.fault_id,
                    kind: span.kind,
                    phase: span.phase,
                    for_secs: (now_unix_ns / 1_000_000).saturating_sub(span.from_unix_ms) as f64
                        / 1e3,
                })
                .collect();
        }
    }
}

/// What the view keeps between snapshots.
pub(super) struct Watcher {
    target: String,
    /// The ledger, or its replicas: the first answers for the shared
    /// balances and the audit, every one for its own operation counts.
    clients: Option<Vec<Clients>>,
    /// None only while a look has them on the blocking thread.
    files: Option<Files>,
    follows_histories: bool,
    recent: VecDeque<Seen>,
    audit: AuditView,
    next_audit: Instant,
    last_total: Option<(Instant, u64)>,
    sequence: u64,
}

impl Watcher {
    /// Watches `target`, following the histories in `histories` and the
    /// fault log when given.
    pub(super) fn new(
        target: &str,
        histories: Option<PathBuf>,
        fault_log: Option<PathBuf>,
    ) -> Self {
        Self {
            target: target.to_owned(),
            clients: None,
            follows_histories: histories.is_some(),
            files: Some(Files {
                tail: histories.as_deref().map(Tail::new),
                fault_log,
                faults: Vec::new(),
            }),
            recent: VecDeque::new(),
            audit: AuditView::default(),
            next_audit: Instant::now(),
            last_total: None,
            sequence: 0,
        }
    }

    /// Takes the next snapshot. Never fails: what could not be gathered is
    /// named in `error`, and the rest is shown.
    pub(super) async fn snapshot(&mut self) -> Snapshot {
        let now_unix_ns = unix_ns();
        let mut errors = Vec::new();
        let mut faults = Vec::new();
        if let Some(mut files) = self.files.take() {
            let looked = tokio::task::spawn_blocking(move || {
                let mut seen = Vec::new();
                let mut errors = Vec::new();
                files.look(now_unix_ns, &mut seen, &mut errors);
                (files, seen, errors)
            })
            .await;
            match looked {
                Ok((files, seen, look_errors)) => {
                    faults.clone_from(&files.faults);
                    self.files = Some(files);
                    self.recent.extend(seen);
                    errors.extend(look_errors);
                }
                Err(e) => errors.push(format!(
                    "reading the files failed ({e}); no longer followed"
                )),
            }
        }
        let oldest = now_unix_ns.saturating_sub(WINDOW_NS);
        while self
            .recent
            .front()
            .is_some_and(|s| s.complete_unix_ns < oldest)
            || self.recent.len() > RECENT_MAX
        {
            self.recent.pop_front();
        }

        let mut snapshot = Snapshot {
            schema: 1,
            at_unix_ms: now_unix_ns / 1_000_000,
            sequence: self.sequence,
            target: self.target.clone(),
            mode: "unknown".to_owned(),
            window_ms: LANE_WINDOW_NS / 1_000_000,
            faults,
            ..Snapshot::default()
        };
        self.sequence += 1;
        let asked = tokio::time::timeout(LEDGER_WAIT_MAX, self.ask_ledger(&mut snapshot)).await;
        let failed = match asked {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!(
                "the ledger did not answer within {} s",
                LEDGER_WAIT_MAX.as_secs()
            )),
        };
        if let Some(e) = failed {
            // Connect again on the next look (the ledger may be restarting).
            self.clients = None;
            errors.push(e);
        }
        self.rates(&mut snapshot, now_unix_ns);
        snapshot.lanes = self.lanes(now_unix_ns);
        snapshot.audit = self.audit.clone();
        if !errors.is_empty() {
            snapshot.error = Some(errors.join("; "));
        }
        snapshot
    }

    async fn ask_ledger(&mut self, snapshot: &mut Snapshot) -> Result<(), String> {
        if self.clients.is_none() {
            let targets = crate::connect::targets(&self.target).map_err(|e| e.to_string())?;
            self.clients = Some(
                Clients::connect_each(&targets)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let Some([clients, replicas @ ..]) = self.clients.as_deref_mut() else {
            return Ok(());
        };
        let stats = clients.stats().await.map_err(|e| e.to_string())?;
        let mode_of = |stats: &overdraft_proto::v1::StatsReply| {
            overdraft_server::config::Mode::from_proto(stats.mode)
                .map_or_else(|| "unknown".to_owned(), |m| m.as_str().to_owned())
        };
        snapshot.mode = mode_of(&stats);
        snapshot.operations_total = stats.modes.iter().map(|m| m.operations).sum();
        // Each replica counts what it served; each process has its own mode,
        // and a ledger scaled out with replicas in different modes says so.
        let mut modes = vec![snapshot.mode.clone()];
        for replica in replicas {
            let stats = replica.stats().await.map_err(|e| e.to_string())?;
            snapshot.operations_total += stats.modes.iter().map(|m| m.operations).sum::<u64>();
            modes.push(mode_of(&stats));
        }
        if modes.iter().any(|m| *m != snapshot.mode) {
            snapshot.mode = format!("mixed: {}", modes.join(", "));
        }
        let now = Instant::now();
        if !self.follows_histories
            && let Some((then, total)) = self.last_total
        {
            let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
            let rate = snapshot.operations_total.saturating_sub(total) as f64 / seconds;
            snapshot.ops_per_sec.insert("all".to_owned(), rate);
        }
        self.last_total = Some((now, snapshot.operations_total));

        let oldest = unix_ns().saturating_sub(WINDOW_NS);
        for (account, recent_ops) in busiest(&self.recent, oldest) {
            let state = clients.balance(&account).await.map_err(|e| e.to_string())?;
            snapshot.accounts.push(AccountRow {
                account_id: account,
                balance_cents: state.balance_cents,
                version: state.version,
                recent_ops,
            });
        }

        if now >= self.next_audit {
            let started = Instant::now();
            let audit = clients.audit().await.map_err(|e| e.to_string())?;
            let took = started.elapsed();
            self.next_audit = Instant::now() + AUDIT_EVERY_MIN.max(took * AUDIT_GAP_FACTOR);
            self.audit = audit_view(&audit);
        }
        Ok(())
    }

    /// Operations per second by method over one second that ended
    /// RATE_LAG ago, from the histories.
    fn rates(&self, snapshot: &mut Snapshot, now_unix_ns: u64) {
        if !self.follows_histories {
            return;
        }
        let until = now_unix_ns.saturating_sub(RATE_LAG_NS);
        let from = until.saturating_sub(1_000_000_000);
        let mut all = 0.0;
        for method in ["deposit", "withdraw", "transfer", "balance"] {
            snapshot.ops_per_sec.insert(method.to_owned(), 0.0);
        }
        for seen in &self.recent {
            if (from..until).contains(&seen.complete_unix_ns) {
                *snapshot.ops_per_sec.entry(seen.op.clone()).or_default() += 1.0;
                all += 1.0;
            }
        }
        snapshot.ops_per_sec.insert("all".to_owned(), all);
    }

    fn lanes(&self, now_unix_ns: u64) -> Vec<Lane> {
        let mut lanes: BTreeMap<&str, VecDeque<LaneOp>> = BTreeMap::new();
        let ago = |ns: u64| now_unix_ns.saturating_sub(ns) as f64 / 1e6;
        let oldest = now_unix_ns.saturating_sub(LANE_WINDOW_NS);
        for seen in self.recent.iter().filter(|s| s.complete_unix_ns >= oldest) {
            if lanes.len() >= LANES_MAX && !lanes.contains_key(seen.atm.as_str()) {
                continue;
            }
            let lane = lanes.entry(seen.atm.as_str()).or_default();
            if lane.len() == LANE_OPS_MAX {
                lane.pop_front();
            }
            lane.push_back(LaneOp {
                op: seen.op.clone(),
                accounts: match &seen.to {
                    Some(to) => format!("{} -> {to}", seen.account),
                    None => seen.account.clone(),
                },
                amount_cents: seen.amount_cents,
                outcome: seen.outcome.map_or("unknown", Outcome::as_str).to_owned(),
                code: seen.code.clone(),
                request_id: seen.request_id.clone(),
                from_ms_ago: ago(seen.invoke_unix_ns),
                to_ms_ago: ago(seen.complete_unix_ns),
            });
        }
        lanes
            .into_iter()
            .map(|(atm, ops)| Lane {
                atm: atm.to_owned(),
                ops: ops.into(),
            })
            .collect()
    }
}

/// The accounts touched most since `oldest`, with their counts.
fn busiest(recent: &VecDeque<Seen>, oldest: u64) -> Vec<(String, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for seen in recent.iter().filter(|s| s.complete_unix_ns >= oldest) {
        *counts.entry(seen.account.as_str()).or_default() += 1;
        if let Some(to) = &seen.to {
            *counts.entry(to.as_str()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, u64)> = counts.into_iter().filter(|(a, _)| !a.is_empty()).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(ACCOUNTS_SHOWN)
        .map(|(account, count)| (account.to_owned(), count))
        .collect()
}

fn audit_view(audit: &pb::AuditReply) -> AuditView {
    let kind_name = |kind: i32| {
        pb::finding::Kind::try_from(kind)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("KIND_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| "unknown".to_owned())
    };
    let mut seen = HashSet::new();
    let findings = audit
        .findings
        .iter()
        .rev()
        .filter(|f| seen.insert((f.kind, f.account_id.clone(), f.request_ids.clone())))
        .take(FINDINGS_SHOWN)
        .map(|f| FindingRow {
            kind: kind_name(f.kind),
            account_id: f.account_id.clone(),
            cents: f.cents,
            detail: f.detail.clone(),
            request_ids: f
                .request_ids
                .iter()
                .take(FINDING_IDS_SHOWN)
                .cloned()
                .collect(),
        })
        .collect();
    AuditView {
        at_unix_ms: unix_ns() / 1_000_000,
        clean: audit.clean,
        lost_updates: audit.lost_updates,
        overdrafts: audit.overdrafts,
        money_delta_cents: audit.money_delta_cents,
        findings_total: audit.findings.len(),
        findings,
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
