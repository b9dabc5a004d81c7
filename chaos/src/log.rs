//! The fault log: one JSON line per fault applied or removed, so that a
//! report can line anomalies up with the faults active at the time.
//!
//! Each line carries the wall clock (`wall_unix_ms`, to line up with ATM
//! histories and the ledger's journal) and, in a schedule run, the planned
//! offset (`at_ms`) and phase. Everything but `wall_unix_ms` follows from
//! the schedule and the seed, so the same seed gives the same log.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    sync::Mutex,
};

use serde::Serialize;

use crate::fault::{Family, Fault};

/// What happened to a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// It started acting.
    Apply,
    /// It stopped.
    Remove,
}

/// One line of the fault log.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Planned offset from the start of the schedule, ms (schedule runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// Wall-clock time, ms since the Unix epoch.
    pub wall_unix_ms: u64,
    /// Applied or removed.
    pub action: Action,
    /// The fault's id.
    pub fault_id: String,
    /// Its kind.
    pub kind: &'static str,
    /// Where it acts.
    pub family: Family,
    /// The schedule phase it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Every parameter.
    pub fault: Fault,
}

impl Event {
    /// `fault` started acting.
    pub fn applied(fault: &Fault, at_ms: Option<u64>) -> Self {
        Self::new(Action::Apply, fault, at_ms)
    }

    /// `fault` stopped acting.
    pub fn removed(fault: &Fault, at_ms: Option<u64>) -> Self {
        Self::new(Action::Remove, fault, at_ms)
    }

    fn new(action: Action, fault: &Fault, at_ms: Option<u64>) -> Self {
        Self {
            at_ms,
            wall_unix_ms: now_unix_ms(),
            action,
            fault_id: fault.id.clone(),
            kind: fault.kind.name(),
            family: fault.kind.family(),
            phase: None,
            fault: fault.clone(),
        }
    }

    /// The same event, marked as part of `phase`.
    pub fn in_phase(mut self, phase: &str) -> Self {
        self.phase = Some(phase.to_owned());
        self
    }
}

/// Where fault-log lines go: a file, standard output, or nowhere.
#[derive(Debug)]
pub struct FaultLog {
    // A std mutex: held to write one line, never across an await.
    sink: Option<Mutex<Sink>>,
}

enum Sink {
    File(BufWriter<File>),
    Stdout,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::File(_) => f.write_str("file"),
            Sink::Stdout => f.write_str("stdout"),
        }
    }
}

impl FaultLog {
    /// No log.
    pub fn disabled() -> Self {
        Self { sink: None }
    }

    /// Lines to standard output.
    pub fn stdout() -> Self {
        Self {
            sink: Some(Mutex::new(Sink::Stdout)),
        }
    }

    /// Lines appended to `path` (`-` for standard output).
    pub fn to_path(path: &Path) -> anyhow::Result<Self> {
        if path.as_os_str() == "-" {
            return Ok(Self::stdout());
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open --fault-log {}: {e}", path.display()))?;
        Ok(Self {
            sink: Some(Mutex::new(Sink::File(BufWriter::new(file)))),
        })
    }

    /// Writes `event` as one line, flushed at once so that a crash or a
    /// kill loses no line already reported.
    pub fn write(&self, event: &Event) {
        let Some(sink) = &self.sink else {
            return;
        };
        let line = match serde_json::to_string(event) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "fault-log line not encoded");
                return;
            }
        };
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        let written = match &mut *sink {
            Sink::File(file) => writeln!(file, "{line}").and_then(|()| file.flush()),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}").and_then(|()| out.flush())
            }
        };
        if let Err(error) = written {
            tracing::error!(%error, "fault-log line not written");
        }
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
