//! What the ledger counts and times: the counters Admin.Stats reports (per
//! mode, and for the ledger as a whole) and the distributions `/metrics`
//! exposes beside them (operations by method and code, latency, flushes,
//! lock waits). Everything is recorded here once; `service/` and
//! `metrics.rs` only read it.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
};

use crate::{
    audit::{AuditReport, FindingKind},
    bank::Operation,
    config::Mode,
};

/// Counters for one mode.
#[derive(Debug, Default)]
pub struct ModeCounters {
    /// Operations applied.
    pub operations: AtomicU64,
    /// Operations the bank's rules refused (insufficient funds, limits).
    pub refusals: AtomicU64,
    /// CAS retries after a version conflict.
    pub retries: AtomicU64,
    /// Operations aborted (CAS retries exhausted, deadlock detected).
    pub aborts: AtomicU64,
    /// Lock waits past the bound in mutex mode.
    pub deadlocks_detected: AtomicU64,
    /// Calls and transfer legs an actor replica handed to the replica
    /// owning the account.
    pub forwarded: AtomicU64,
    /// Writes the store refused for carrying a stale lease's fencing token:
    /// each one a step-down of an actor owner that had lost its lease.
    pub stale_writes_fenced: AtomicU64,
}

/// The calls that move or read money, as the metrics name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Ledger.Deposit
    Deposit,
    /// Ledger.Withdraw
    Withdraw,
    /// Ledger.Transfer
    Transfer,
    /// Ledger.GetBalance
    Balance,
}

impl Method {
    /// The method a mutation arrived as.
    pub fn of(op: &Operation) -> Self {
        match op {
            Operation::Deposit { .. } => Method::Deposit,
            Operation::Withdraw { .. } | Operation::JointWithdraw { .. } => Method::Withdraw,
            Operation::Transfer { .. } => Method::Transfer,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Deposit => "deposit",
            Method::Withdraw => "withdraw",
            Method::Transfer => "transfer",
            Method::Balance => "balance",
        }
    }
}

/// Labels of an operation counter: the mode it ran in, the method, and the
/// gRPC code it ended with (tonic's names, as `atm load` counts them: `Ok`,
/// `FailedPrecondition`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// Mode.
    pub mode: &'static str,
    /// Method.
    pub method: &'static str,
    /// gRPC code.
    pub code: &'static str,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// Mode.
    pub mode: &'static str,
    /// Method.
    pub method: &'static str,
}

/// Labels of the audit's findings gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    /// The finding's kind (`overdraft`, `lost_update`, ...).
    pub kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets, in seconds: 25 µs doubling to 0.8 s. An uncontended
/// call takes tens of µs inside the ledger; a lock wait past the bound, a
/// second.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(25e-6, 2.0, 16))
}

/// Flush buckets, in seconds: 50 µs doubling to 0.4 s (an fsync on a busy disk).
fn flush_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 14))
}

/// Lock-wait buckets, in seconds: 25 µs doubling to 105 s, past the longest
/// `--lock-wait-ms` accepted (60 s), so a wait that ran out has a bucket.
fn lock_wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(25e-6, 2.0, 23))
}

/// Batch-size buckets: 1 doubling to 4,096 (the flusher's waiter bound).
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Distributions for `/metrics`. Prometheus counters only grow, so these
/// are never reset (Admin.Reset zeroes only the [`Stats`] counters).
#[derive(Debug)]
pub struct Distributions {
    /// Operations by mode, method and code.
    pub operations: Family<OperationLabels, Counter>,
    /// Time inside the ledger (durable wait included) by mode and method.
    pub latency_seconds: HistogramFamily<LatencyLabels>,
    /// Durable flushes: how long each took.
    pub flush_seconds: Histogram,
    /// Durable flushes: how many operations each covered.
    pub flush_batch_operations: Histogram,
    /// Mutex-mode lock waits (a lock found held), and how long each took.
    pub lock_wait_seconds: Histogram,
    /// What the last audit found, by kind.
    pub audit_findings: Family<FindingLabels, Gauge>,
}

impl Default for Distributions {
    fn default() -> Self {
        Self {
            operations: Family::default(),
            latency_seconds: Family::new_with_constructor(latency_histogram),
            flush_seconds: flush_histogram(),
            flush_batch_operations: batch_histogram(),
            lock_wait_seconds: lock_wait_histogram(),
            audit_findings: Family::default(),
        }
    }
}

/// Every counter the ledger keeps.
#[derive(Debug, Default)]
pub struct Stats {
    modes: [ModeCounters; 4],
    /// Mutations answered from the idempotency table.
    pub replays: AtomicU64,
    /// Durable flushes (group commits) done.
    pub flushes: AtomicU64,
    /// Operations those flushes covered.
    pub flushed_operations: AtomicU64,
    /// Time those flushes took, in µs.
    pub flush_time_us: AtomicU64,
    /// The longest of them, in µs.
    pub flush_time_us_max: AtomicU64,
    /// What `/metrics` exposes beyond the counters.
    pub distributions: Distributions,
}

impl Stats {
    /// The counters of `mode`.
    pub fn mode(&self, mode: Mode) -> &ModeCounters {
        &self.modes[mode.index()]
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts one finished call and times it.
    pub fn observe(&self, mode: Mode, method: Method, code: tonic::Code, took: Duration) {
        let mode = mode.as_str();
        let method = method.as_str();
        self.distributions
            .operations
            .get_or_create(&OperationLabels {
                mode,
                method,
                code: code_name(code),
            })
            .inc();
        self.distributions
            .latency_seconds
            .get_or_create(&LatencyLabels { mode, method })
            .observe(took.as_secs_f64());
    }

    /// Records one durable flush that covered `operations`.
    pub fn record_flush(&self, operations: usize, took: Duration) {
        let covered = u64::try_from(operations).unwrap_or(u64::MAX);
        let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        Self::bump(&self.flushes);
        self.flushed_operations
            .fetch_add(covered, Ordering::Relaxed);
        self.flush_time_us.fetch_add(took_us, Ordering::Relaxed);
        self.flush_time_us_max.fetch_max(took_us, Ordering::Relaxed);
        self.distributions.flush_seconds.observe(took.as_secs_f64());
        self.distributions
            .flush_batch_operations
            .observe(covered as f64);
    }

    /// Sets the findings gauge to what `report` found.
    pub fn record_audit(&self, report: &AuditReport) {
        for kind in FindingKind::ALL {
            let count = i64::try_from(report.count_of(kind)).unwrap_or(i64::MAX);
            self.distributions
                .audit_findings
                .get_or_create(&FindingLabels {
                    kind: kind.as_str(),
                })
                .set(count);
        }
    }

    /// Zeroes every counter Admin.Stats reports.
    pub fn reset(&self) {
        for counters in &self.modes {
            for counter in [
                &counters.operations,
                &counters.refusals,
                &counters.retries,
                &counters.aborts,
                &counters.deadlocks_detected,
                &counters.forwarded,
                &counters.stale_writes_fenced,
            ] {
                counter.store(0, Ordering::Relaxed);
            }
        }
        for counter in [
            &self.replays,
            &self.flushes,
            &self.flushed_operations,
            &self.flush_time_us,
            &self.flush_time_us_max,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// tonic's name of a code (its `Debug`), as a static label value.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}
