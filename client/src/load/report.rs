//! What a load run measured, as `atm load --json` prints it (schema 1).

use std::{collections::BTreeMap, time::Duration};

use overdraft_proto::v1 as pb;
use serde::Serialize;

use super::cost::CpuPerOp;
use crate::latency::Latency;

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
    /// The audit (None for a crowd member: the referee audits the crowd).
    pub audit: Option<AuditSummary>,
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
    /// The crowd member's name when the run joined a crowd (`--join`): its
    /// reconciliation is left to `atm referee`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
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
    pub(super) fn of(stats: &pb::StatsReply, elapsed: Duration) -> Option<Self> {
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
