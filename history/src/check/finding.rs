//! What every step of the checker reports in: the kinds of anomaly, the
//! part an operation played, a finding by operation index, and the time
//! budget of the searches. Its own module so that the steps and the
//! orchestration import it, and not each other.

use std::time::{Duration, Instant};

use serde::Serialize;

/// What kind of anomaly a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// An acknowledged change was written over: its effect is gone.
    LostUpdate,
    /// The money in an account went below the policy's floor.
    Overdraft,
    /// The bank holds more than its flows explain.
    MoneyCreated,
    /// The bank holds less than its flows explain.
    MoneyDestroyed,
    /// One request_id (or one customer intent) applied more than once.
    DoubleApplication,
    /// A read returned a state already replaced before it began.
    StaleRead,
    /// An operation that completed before another began is ordered after it.
    RealTimeViolation,
    /// A debit was refused though every state it could have seen covered it.
    WrongRefusal,
    /// A returned balance no operation in the history explains.
    BalanceMismatch,
}

impl AnomalyKind {
    /// Every kind, in report order.
    pub const ALL: [AnomalyKind; 9] = [
        AnomalyKind::LostUpdate,
        AnomalyKind::Overdraft,
        AnomalyKind::MoneyCreated,
        AnomalyKind::MoneyDestroyed,
        AnomalyKind::DoubleApplication,
        AnomalyKind::StaleRead,
        AnomalyKind::RealTimeViolation,
        AnomalyKind::WrongRefusal,
        AnomalyKind::BalanceMismatch,
    ];

    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::LostUpdate => "lost_update",
            AnomalyKind::Overdraft => "overdraft",
            AnomalyKind::MoneyCreated => "money_created",
            AnomalyKind::MoneyDestroyed => "money_destroyed",
            AnomalyKind::DoubleApplication => "double_application",
            AnomalyKind::StaleRead => "stale_read",
            AnomalyKind::RealTimeViolation => "real_time_violation",
            AnomalyKind::WrongRefusal => "wrong_refusal",
            AnomalyKind::BalanceMismatch => "balance_mismatch",
        }
    }
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation did in an anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Its change was written over.
    Erased,
    /// It wrote over another's change.
    Overwriter,
    /// It took the balance below the floor.
    Overdrew,
    /// It read the same state as the one that overdrew.
    Racer,
    /// It saw the state in question.
    Observer,
    /// It was refused.
    Refused,
    /// It wrote a state that covered the refused debit.
    Covered,
    /// It completed before the other began.
    CompletedFirst,
    /// It began after the other completed, yet is ordered first.
    OrderedFirst,
    /// One of several applications of one request.
    Application,
}

/// A finding inside the checker: operations by index.
#[derive(Clone, Debug)]
pub(crate) struct Finding {
    pub(crate) kind: AnomalyKind,
    pub(crate) accounts: Vec<u32>,
    pub(crate) operations: Vec<(u32, Role)>,
    pub(crate) operations_unlisted: usize,
    pub(crate) cents: i64,
    pub(crate) detail: String,
}

impl Finding {
    pub(crate) fn new(kind: AnomalyKind, cents: i64) -> Self {
        Self {
            kind,
            accounts: Vec::new(),
            operations: Vec::new(),
            operations_unlisted: 0,
            cents,
            detail: String::new(),
        }
    }

    pub(crate) fn add(&mut self, op: u32, role: Role) {
        if !self.operations.iter().any(|(o, _)| *o == op) {
            self.operations.push((op, role));
        }
    }
}

/// How long a search may take before the answer is "unknown".
#[derive(Debug)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    /// A budget of `time` from now.
    pub fn new(time: Duration) -> Self {
        let now = Instant::now();
        // A budget past what the clock can hold means no deadline at all:
        // a century is as good.
        let deadline = now
            .checked_add(time)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        Self { deadline }
    }

    pub(crate) fn exhausted(&self) -> bool {
        Instant::now() >= self.deadline
    }
}
