//! The fault model: every fault the injector knows, its parameters and their
//! bounds, in one serde type shared by the control API (JSON), the CLI
//! (`key=value` words) and schedules (TOML).
//!
//! Faults come in three families, by where they act:
//! - toxics on the TCP stream between the ATMs and the proxy, after
//!   Toxiproxy's (latency, bandwidth, slow_close, timeout, reset_peer,
//!   slicer, limit_data), each in one direction and applied to a connection
//!   with a probability drawn once per connection;
//! - faults on single gRPC calls, which the proxy sees because it speaks
//!   HTTP/2 (call_delay, drop_request, drop_response, duplicate_request,
//!   return_status), each applied to a call with a probability;
//! - faults inside the ledger, armed through its Chaos service
//!   (race_window, barrier, lost_acks, slow_owner, crash);
//! - faults on a ledger process, carried out by `chaos` itself (pause: a
//!   replica stopped with SIGSTOP, or its container paused, until removed).

use serde::{Deserialize, Serialize};

/// Longest delay any fault may add: one minute. Past that a client's
/// deadline has long fired, and a typo should not hold a call for hours.
pub const DELAY_MS_MAX: u64 = 60_000;

/// Slowest bandwidth toxic: 1 KiB/s. Fastest: 1 GiB/s.
pub const RATE_KIB_PER_S_MIN: u64 = 1;
/// See [`RATE_KIB_PER_S_MIN`].
pub const RATE_KIB_PER_S_MAX: u64 = 1024 * 1024;

/// Largest slice the slicer toxic may cut: 64 KiB, a read buffer.
pub const SLICE_BYTES_MAX: u64 = 64 * 1024;

/// Largest byte budget of a limit_data toxic: 1 GiB.
pub const LIMIT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Most extra copies a duplicate_request fault sends of one call: a storm,
/// not a flood.
pub const COPIES_MAX: u32 = 16;

/// Longest message a return_status fault may carry.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 1_024;

/// Longest container name a pause fault accepts (Docker's own limit is lower).
pub const CONTAINER_NAME_BYTES_MAX: usize = 128;

/// Longest fault id: ids appear in every fault-log line.
pub const FAULT_ID_BYTES_MAX: usize = 128;

/// Which bytes a toxic acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the ATM towards the ledger.
    Upstream,
    /// From the ledger back to the ATM (Toxiproxy's default too).
    #[default]
    Downstream,
}

/// A gRPC status a return_status fault answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum StatusCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl StatusCode {
    /// The tonic code.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            StatusCode::Cancelled => Code::Cancelled,
            StatusCode::Unknown => Code::Unknown,
            StatusCode::InvalidArgument => Code::InvalidArgument,
            StatusCode::DeadlineExceeded => Code::DeadlineExceeded,
            StatusCode::NotFound => Code::NotFound,
            StatusCode::AlreadyExists => Code::AlreadyExists,
            StatusCode::PermissionDenied => Code::PermissionDenied,
            StatusCode::ResourceExhausted => Code::ResourceExhausted,
            StatusCode::FailedPrecondition => Code::FailedPrecondition,
            StatusCode::Aborted => Code::Aborted,
            StatusCode::OutOfRange => Code::OutOfRange,
            StatusCode::Unimplemented => Code::Unimplemented,
            StatusCode::Internal => Code::Internal,
            StatusCode::Unavailable => Code::Unavailable,
            StatusCode::DataLoss => Code::DataLoss,
            StatusCode::Unauthenticated => Code::Unauthenticated,
        }
    }
}

/// The delay distribution of a race_window fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Always `fixed_ms`.
    #[default]
    Fixed,
    /// Uniform in `min_ms..=max_ms`.
    Uniform,
    /// Normal with `mean_ms` and `stddev_ms`, clamped at zero.
    Normal,
    /// Pareto with `scale_ms` and `shape`: mostly short, sometimes very long.
    Pareto,
}

/// What a fault does, with its own parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Toxic: every chunk waits `latency_ms` plus a uniform draw in
    /// `-jitter_ms..=jitter_ms` (never below zero), keeping its order.
    Latency {
        /// Added delay.
        latency_ms: u64,
        /// Spread around it.
        #[serde(default)]
        jitter_ms: u64,
    },
    /// Toxic: at most `rate_kib_per_s` KiB a second.
    Bandwidth {
        /// The rate.
        rate_kib_per_s: u64,
    },
    /// Toxic: when the sending side closes, wait `delay_ms` before closing.
    SlowClose {
        /// The wait.
        delay_ms: u64,
    },
    /// Toxic: let nothing through; close the connection after `timeout_ms`
    /// (0: keep it open, silent, until the toxic is removed).
    Timeout {
        /// When to close.
        timeout_ms: u64,
    },
    /// Toxic: reset the connection (TCP RST) `timeout_ms` after data is
    /// next seen.
    ResetPeer {
        /// When to reset.
        #[serde(default)]
        timeout_ms: u64,
    },
    /// Toxic: cut data into slices of `average_size_bytes` ±
    /// `size_variation_bytes`, `delay_us` apart.
    Slicer {
        /// Mean slice.
        average_size_bytes: u64,
        /// Spread.
        #[serde(default)]
        size_variation_bytes: u64,
        /// Pause between slices.
        #[serde(default)]
        delay_us: u64,
    },
    /// Toxic: close the connection once `bytes` have passed.
    LimitData {
        /// The budget.
        bytes: u64,
    },
    /// Call: hold each call `delay_ms` before forwarding it.
    CallDelay {
        /// The hold.
        delay_ms: u64,
    },
    /// Call: never forward it; the client waits until its deadline.
    DropRequest,
    /// Call: forward it, let the ledger answer, and throw the answer away;
    /// the client waits until its deadline though the operation applied.
    DropResponse,
    /// Call: forward it `copies` more times (a retry storm); the client gets
    /// the first answer.
    DuplicateRequest {
        /// Extra copies.
        #[serde(default = "one")]
        copies: u32,
    },
    /// Call: answer at once with this status; the ledger never sees it.
    ReturnStatus {
        /// The status.
        code: StatusCode,
        /// Its message.
        #[serde(default)]
        message: String,
    },
    /// Ledger: the race window at the race hook.
    RaceWindow {
        /// The delay's distribution.
        #[serde(default)]
        distribution: Distribution,
        /// For `fixed`.
        #[serde(default)]
        fixed_ms: u64,
        /// For `uniform`.
        #[serde(default)]
        min_ms: u64,
        /// For `uniform`.
        #[serde(default)]
        max_ms: u64,
        /// For `normal`.
        #[serde(default)]
        mean_ms: f64,
        /// For `normal`.
        #[serde(default)]
        stddev_ms: f64,
        /// For `pareto`.
        #[serde(default)]
        scale_ms: f64,
        /// For `pareto`.
        #[serde(default)]
        shape: f64,
        /// Only operations touching this account.
        #[serde(default)]
        account_id: Option<String>,
        /// Only operations in this mode.
        #[serde(default)]
        mode: Option<String>,
    },
    /// Ledger: hold the next `parties` operations at the race hook and
    /// release them together.
    Barrier {
        /// How many meet.
        parties: u32,
        /// Longest hold.
        #[serde(default = "barrier_wait_ms")]
        wait_ms: u64,
    },
    /// Ledger: the next `count` mutations apply, then their RPC fails.
    LostAcks {
        /// How many.
        count: u32,
        /// `unavailable` or `deadline_exceeded`.
        #[serde(default = "unavailable")]
        code: StatusCode,
    },
    /// Ledger: actor owners wait `delay_ms` before each message.
    SlowOwner {
        /// The wait.
        delay_ms: u64,
    },
    /// Process: stop a ledger (a replica) while the fault is applied and
    /// let it go on when it is removed: SIGSTOP and SIGCONT to a local
    /// `pid`, or `docker pause` and `unpause` of a `container`. A stalled
    /// replica holds its connections and its leases; the others go on.
    Pause {
        /// A local process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        /// A Docker container, by name or id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// Ledger: abort the process at a crash point.
    Crash {
        /// `journal-before-balances`, `between-transfer-legs` or `before-ack`.
        point: String,
        /// Arrivals to let pass first.
        #[serde(default)]
        skip: u32,
    },
}

fn one() -> u32 {
    1
}

fn barrier_wait_ms() -> u64 {
    5_000
}

fn unavailable() -> StatusCode {
    StatusCode::Unavailable
}

/// Where a fault acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// On the TCP stream, in the proxy.
    Toxic,
    /// On single gRPC calls, in the proxy.
    Call,
    /// Inside the ledger.
    Ledger,
    /// On a ledger process, from outside it.
    Process,
}

/// A fault with its id and the fields common to its family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Names the fault in lists, removals and the fault log; assigned when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// What it does.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Toxics: which direction (default downstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Toxics: the chance a connection gets it; calls: the chance a call
    /// does; ledger race_window: the chance an operation waits. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Calls and race_window: only this gRPC method (e.g. `Withdraw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Calls: apply to at most this many calls, then stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Seeds the fault's own random draws (probability, jitter, slices), so
    /// a run replays; `chaos run` derives it from its seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// A fault that breaks a rule, naming the field and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Invalid {
    /// The field.
    pub field: &'static str,
    /// The rule it breaks, with the value found.
    pub rule: String,
}

fn invalid(field: &'static str, rule: impl Into<String>) -> Invalid {
    Invalid {
        field,
        rule: rule.into(),
    }
}

fn at_most(field: &'static str, value: u64, max: u64) -> Result<(), Invalid> {
    if value > max {
        return Err(invalid(
            field,
            format!("must be at most {max} (got {value})"),
        ));
    }
    Ok(())
}

fn between(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), Invalid> {
    if !(min..=max).contains(&value) {
        return Err(invalid(
            field,
            format!("must be between {min} and {max} (got {value})"),
        ));
    }
    Ok(())
}

impl FaultKind {
    /// The kind's name, as written in JSON, TOML and logs.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Latency { .. } => "latency",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::SlowClose { .. } => "slow_close",
            FaultKind::Timeout { .. } => "timeout",
            FaultKind::ResetPeer { .. } => "reset_peer",
            FaultKind::Slicer { .. } => "slicer",
            FaultKind::LimitData { .. } => "limit_data",
            FaultKind::CallDelay { .. } => "call_delay",
            FaultKind::DropRequest => "drop_request",
            FaultKind::DropResponse => "drop_response",
            FaultKind::DuplicateRequest { .. } => "duplicate_request",
            FaultKind::ReturnStatus { .. } => "return_status",
            FaultKind::RaceWindow { .. } => "race_window",
            FaultKind::Barrier { .. } => "barrier",
            FaultKind::LostAcks { .. } => "lost_acks",
            FaultKind::SlowOwner { .. } => "slow_owner",
            FaultKind::Crash { .. } => "crash",
            FaultKind::Pause { .. } => "pause",
        }
    }

    /// Where it acts.
    pub fn family(&self) -> Family {
        match self {
            FaultKind::Latency { .. }
            | FaultKind::Bandwidth { .. }
            | FaultKind::SlowClose { .. }
            | FaultKind::Timeout { .. }
            | FaultKind::ResetPeer { .. }
            | FaultKind::Slicer { .. }
            | FaultKind::LimitData { .. } => Family::Toxic,
            FaultKind::CallDelay { .. }
            | FaultKind::DropRequest
            | FaultKind::DropResponse
            | FaultKind::DuplicateRequest { .. }
            | FaultKind::ReturnStatus { .. } => Family::Call,
            FaultKind::RaceWindow { .. }
            | FaultKind::Barrier { .. }
            | FaultKind::LostAcks { .. }
            | FaultKind::SlowOwner { .. }
            | FaultKind::Crash { .. } => Family::Ledger,
            FaultKind::Pause { .. } => Family::Process,
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        match self {
            FaultKind::Latency {
                latency_ms,
                jitter_ms,
            } => {
                at_most("latency_ms", *latency_ms, DELAY_MS_MAX)?;
                at_most("jitter_ms", *jitter_ms, DELAY_MS_MAX)
            }
            FaultKind::Bandwidth { rate_kib_per_s } => between(
                "rate_kib_per_s",
                *rate_kib_per_s,
                RATE_KIB_PER_S_MIN,
                RATE_KIB_PER_S_MAX,
            ),
            FaultKind::SlowClose { delay_ms } => at_most("delay_ms", *delay_ms, DELAY_MS_MAX),
            FaultKind::Timeout { timeout_ms } | FaultKind::ResetPeer { timeout_ms } => {
                at_most("timeout_ms", *timeout_ms, DELAY_MS_MAX)
            }
            FaultKind::Slicer {
                average_size_bytes,
                size_variation_bytes,
                delay_us,
            } => {
                between(
                    "average_size_bytes",
                    *average_size_bytes,
                    1,
                    SLICE_BYTES_MAX,
                )?;
                if size_variation_bytes >= average_size_bytes {
                    return Err(invalid(
                        "size_variation_bytes",
                        format!(
                            "must be below average_size_bytes ({average_size_bytes}) (got {size_variation_bytes})"
                        ),
                    ));
                }
                at_most("delay_us", *delay_us, DELAY_MS_MAX * 1_000)
            }
            FaultKind::LimitData { bytes } => at_most("bytes", *bytes, LIMIT_BYTES_MAX),
            FaultKind::CallDelay { delay_ms } | FaultKind::SlowOwner { delay_ms } => {
                at_most("delay_ms", *delay_ms, DELAY_MS_MAX)
            }
            FaultKind::DropRequest | FaultKind::DropResponse => Ok(()),
            FaultKind::DuplicateRequest { copies } => {
                between("copies", u64::from(*copies), 1, u64::from(COPIES_MAX))
            }
            FaultKind::ReturnStatus { message, .. } => {
                if message.len() > STATUS_MESSAGE_BYTES_MAX {
                    return Err(invalid(
                        "message",
                        format!(
                            "must be at most {STATUS_MESSAGE_BYTES_MAX} bytes (got {})",
                            message.len()
                        ),
                    ));
                }
                Ok(())
            }
            FaultKind::RaceWindow { .. } => Ok(()), // the ledger checks the numbers
            FaultKind::Barrier { parties, wait_ms } => {
                between("parties", u64::from(*parties), 2, 1_024)?;
                between("wait_ms", *wait_ms, 1, DELAY_MS_MAX)
            }
            FaultKind::LostAcks { code, .. } => match code {
                StatusCode::Unavailable | StatusCode::DeadlineExceeded => Ok(()),
                other => Err(invalid(
                    "code",
                    format!("must be unavailable or deadline_exceeded (got {other:?})"),
                )),
            },
            FaultKind::Pause { pid, container } => match (pid, container) {
                (Some(_), Some(_)) | (None, None) => Err(invalid(
                    "pid",
                    "give exactly one of pid (a local process) and container (a Docker container)",
                )),
                (Some(pid), None) if *pid < 2 => Err(invalid(
                    "pid",
                    format!("must be a process other than init (got {pid})"),
                )),
                // Docker's own rule, which also keeps a name from passing
                // as an option to `docker pause`.
                (None, Some(name))
                    if name.len() > CONTAINER_NAME_BYTES_MAX
                        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
                {
                    Err(invalid(
                        "container",
                        format!(
                            "must be 1 to {CONTAINER_NAME_BYTES_MAX} characters of A-Z a-z 0-9 - _ ., \
                             starting with a letter or digit (got {name:?})"
                        ),
                    ))
                }
                _ => Ok(()),
            },
            FaultKind::Crash { point, .. } => match point.as_str() {
                "journal-before-balances" | "between-transfer-legs" | "before-ack" => Ok(()),
                other => Err(invalid(
                    "point",
                    format!(
                        "must be journal-before-balances, between-transfer-legs or before-ack (got {other:?})"
                    ),
                )),
            },
        }
    }
}

impl Fault {
    /// A fault of `kind` with every common field at its default.
    pub fn new(kind: FaultKind) -> Self {
        Self {
            id: String::new(),
            kind,
            direction: None,
            probability: None,
            method: None,
            count: None,
            seed: None,
        }
    }

    /// Checks every parameter against its bound, and that the common fields
    /// belong to the fault's family.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.id.len() > FAULT_ID_BYTES_MAX
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "id",
                format!(
                    "must be at most {FAULT_ID_BYTES_MAX} characters of A-Z a-z 0-9 - _ . (got {:?})",
                    self.id
                ),
            ));
        }
        self.kind.validate()?;
        let family = self.kind.family();
        if self.direction.is_some() && family != Family::Toxic {
            return Err(invalid(
                "direction",
                format!("applies only to toxics, not to {}", self.kind.name()),
            ));
        }
        let method_allowed =
            family == Family::Call || matches!(self.kind, FaultKind::RaceWindow { .. });
        if self.method.is_some() && !method_allowed {
            return Err(invalid(
                "method",
                format!(
                    "applies only to call faults and race_window, not to {}",
                    self.kind.name()
                ),
            ));
        }
        if self.count.is_some() && family != Family::Call {
            return Err(invalid(
                "count",
                format!("applies only to call faults, not to {}", self.kind.name()),
            ));
        }
        let probability_allowed = matches!(family, Family::Toxic | Family::Call)
            || matches!(self.kind, FaultKind::RaceWindow { .. });
        match self.probability {
            Some(_) if !probability_allowed => Err(invalid(
                "probability",
                format!("does not apply to {}", self.kind.name()),
            )),
            Some(p) if !(0.0..=1.0).contains(&p) => Err(invalid(
                "probability",
                format!("must be between 0 and 1 (got {p})"),
            )),
            _ => Ok(()),
        }
    }

    /// The direction a toxic acts in.
    pub fn direction(&self) -> Direction {
        self.direction.unwrap_or_default()
    }

    /// The probability, 1 when unset.
    pub fn probability(&self) -> f64 {
        self.probability.unwrap_or(1.0)
    }

    /// Whether a call fault applies to the gRPC `path` (`/pkg.Service/Method`).
    pub fn matches_path(&self, path: &str) -> bool {
        match &self.method {
            None => true,
            Some(method) => {
                let name = path.rsplit('/').next().unwrap_or(path);
                name.eq_ignore_ascii_case(method) || path == method
            }
        }
    }
}

/// Parses `key=value` words into a fault: `latency latency_ms=100
/// direction=upstream`. Numbers, booleans and strings are told apart as TOML
/// would; the fault is then read and validated like JSON from the API.
pub fn from_words(kind: &str, words: &[String]) -> anyhow::Result<Fault> {
    let mut table = toml::Table::new();
    table.insert("kind".into(), toml::Value::String(kind.to_owned()));
    for word in words {
        let Some((key, raw)) = word.split_once('=') else {
            anyhow::bail!("parameter {word:?} must be written key=value, e.g. latency_ms=100");
        };
        let value = raw
            .parse::<i64>()
            .map(toml::Value::Integer)
            .or_else(|_| raw.parse::<f64>().map(toml::Value::Float))
            .or_else(|_| raw.parse::<bool>().map(toml::Value::Boolean))
            .unwrap_or_else(|_| toml::Value::String(raw.to_owned()));
        table.insert(key.to_owned(), value);
    }
    let fault: Fault = toml::Value::Table(table)
        .try_into()
        .map_err(|e| anyhow::anyhow!("{kind}: {e}"))?;
    fault
        .validate()
        .map_err(|e| anyhow::anyhow!("{kind}: {e}"))?;
    Ok(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a fault reads from JSON with its defaults, and a bad parameter
    /// is refused naming the field and the rule.
    #[test]
    fn faults_read_from_json_and_refuse_bad_parameters() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"latency","latency_ms":100,"direction":"upstream"}"#)
                .unwrap();
        assert_eq!(
            fault.kind,
            FaultKind::Latency {
                latency_ms: 100,
                jitter_ms: 0
            }
        );
        assert_eq!(fault.direction(), Direction::Upstream);
        fault.validate().unwrap();

        let slow: Fault =
            serde_json::from_str(r#"{"kind":"latency","latency_ms":999999}"#).unwrap();
        let error = slow.validate().unwrap_err();
        assert_eq!(error.field, "latency_ms");
        assert!(error.rule.contains("at most 60000"), "{error}");

        let misplaced: Fault =
            serde_json::from_str(r#"{"kind":"barrier","parties":2,"direction":"upstream"}"#)
                .unwrap();
        assert_eq!(misplaced.validate().unwrap_err().field, "direction");

        let unknown = serde_json::from_str::<Fault>(r#"{"kind":"earthquake"}"#);
        assert!(unknown.is_err());
    }

    /// Goal: CLI words read as the JSON would, numbers as numbers.
    #[test]
    fn words_parse_like_json() {
        let words = ["latency_ms=100".to_owned(), "jitter_ms=5".to_owned()];
        let fault = from_words("latency", &words).unwrap();
        assert_eq!(
            fault.kind,
            FaultKind::Latency {
                latency_ms: 100,
                jitter_ms: 5
            }
        );
        let status = from_words(
            "return_status",
            &["code=unavailable".to_owned(), "method=Withdraw".to_owned()],
        )
        .unwrap();
        assert!(status.matches_path("/overdraft.v1.Ledger/Withdraw"));
        assert!(!status.matches_path("/overdraft.v1.Ledger/Deposit"));
        assert!(from_words("latency", &["latency_ms".to_owned()]).is_err());
    }
}
