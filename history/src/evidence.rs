//! What the checker may hold beside the histories: the ledger's journal
//! (which resolves unknown outcomes and tells what each operation read) and
//! the chaos fault log (which faults were active when an anomaly happened).

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use serde::Deserialize;

use crate::{format::JournalLine, read::ReadError};

/// Longest journal line accepted: an entry is a few hundred bytes, a
/// transfer's two legs included.
const JOURNAL_LINE_BYTES_MAX: usize = 64 * 1024;

/// Most journal entries kept per request_id: a request applied more often
/// than this is reported with this many.
const APPLICATIONS_PER_REQUEST_MAX: usize = 16;

/// The journal, indexed by request_id.
#[derive(Debug, Default)]
pub struct Journal {
    /// Entries per request_id, in commit order. A transfer written as two
    /// commits has both legs under its request_id.
    pub by_request: HashMap<String, Vec<JournalLine>>,
    /// Entries read.
    pub entries: u64,
    /// The earliest and latest commit times, ns since the Unix epoch.
    pub span_unix_ns: Option<(u64, u64)>,
}

impl Journal {
    /// Reads a journal written by `atm journal`.
    pub fn read(path: &Path) -> Result<Self, ReadError> {
        let name = path.display().to_string();
        let file =
            File::open(path).map_err(|e| error(&name, 0, None, format!("cannot open: {e}")))?;
        let mut journal = Journal::default();
        for (index, line) in BufReader::new(file).lines().enumerate() {
            let number = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
            let line = line.map_err(|e| error(&name, number, None, format!("read failed: {e}")))?;
            if line.len() > JOURNAL_LINE_BYTES_MAX {
                return Err(error(
                    &name,
                    number,
                    None,
                    format!("line longer than {JOURNAL_LINE_BYTES_MAX} bytes"),
                ));
            }
            if line.trim().is_empty() {
                continue;
            }
            let entry: JournalLine = serde_json::from_str(&line)
                .map_err(|e| error(&name, number, None, format!("not a journal line: {e}")))?;
            journal.push(entry);
        }
        Ok(journal)
    }

    /// Adds one entry.
    pub fn push(&mut self, entry: JournalLine) {
        self.entries += 1;
        let t = entry.time_unix_ns;
        self.span_unix_ns = Some(match self.span_unix_ns {
            Some((from, until)) => (from.min(t), until.max(t)),
            None => (t, t),
        });
        if let Some(id) = entry.request_id.clone().filter(|id| !id.is_empty()) {
            let list = self.by_request.entry(id).or_default();
            if list.len() < APPLICATIONS_PER_REQUEST_MAX {
                list.push(entry);
            }
        }
    }

    /// Whether `request_id` was applied (a journal entry carries it).
    pub fn applied(&self, request_id: &str) -> Option<&[JournalLine]> {
        self.by_request.get(request_id).map(Vec::as_slice)
    }
}

fn error(file: &str, line: u64, field: Option<&str>, rule: String) -> ReadError {
    ReadError {
        file: file.to_owned(),
        line,
        field: field.map_or_else(String::new, |f| format!("field `{f}`: ")),
        rule,
    }
}

/// One fault's active span, wall clock.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FaultSpan {
    /// The fault's id.
    pub fault_id: String,
    /// Its kind (`latency`, `drop_response`, ...).
    pub kind: String,
    /// The schedule phase, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When it was applied, ms since the Unix epoch.
    pub from_unix_ms: u64,
    /// When it was removed (None: still applied when the log ended).
    pub until_unix_ms: Option<u64>,
}

/// The fault log, as spans.
#[derive(Debug, Default)]
pub struct FaultLog {
    /// Every fault's spans, in the order applied.
    pub spans: Vec<FaultSpan>,
}

#[derive(Deserialize)]
struct FaultEvent {
    wall_unix_ms: u64,
    action: String,
    fault_id: String,
    kind: String,
    #[serde(default)]
    phase: Option<String>,
}

impl FaultLog {
    /// Reads a fault log written by `chaos run --fault-log`.
    pub fn read(path: &Path) -> Result<Self, ReadError> {
        let name = path.display().to_string();
        let file =
            File::open(path).map_err(|e| error(&name, 0, None, format!("cannot open: {e}")))?;
        let mut open: HashMap<String, usize> = HashMap::new();
        let mut log = FaultLog::default();
        for (index, line) in BufReader::new(file).lines().enumerate() {
            let number = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
            let line = line.map_err(|e| error(&name, number, None, format!("read failed: {e}")))?;
            if line.len() > crate::read::LINE_BYTES_MAX {
                return Err(error(
                    &name,
                    number,
                    None,
                    format!("line longer than {} bytes", crate::read::LINE_BYTES_MAX),
                ));
            }
            if line.trim().is_empty() {
                continue;
            }
            let event: FaultEvent = serde_json::from_str(&line)
                .map_err(|e| error(&name, number, None, format!("not a fault-log line: {e}")))?;
            match event.action.as_str() {
                "apply" => {
                    open.insert(event.fault_id.clone(), log.spans.len());
                    log.spans.push(FaultSpan {
                        fault_id: event.fault_id,
                        kind: event.kind,
                        phase: event.phase,
                        from_unix_ms: event.wall_unix_ms,
                        until_unix_ms: None,
                    });
                }
                "remove" => {
                    if let Some(index) = open.remove(&event.fault_id) {
                        log.spans[index].until_unix_ms = Some(event.wall_unix_ms);
                    }
                }
                other => {
                    return Err(error(
                        &name,
                        number,
                        Some("action"),
                        format!("{other:?} is not apply or remove"),
                    ));
                }
            }
        }
        Ok(log)
    }

    /// The faults active at some time in `[from, until]` (ns since the Unix epoch).
    pub fn active(&self, from_unix_ns: u64, until_unix_ns: u64) -> Vec<FaultSpan> {
        // Spans are in ms, histories in ns: compare in ms.
        let from_ms = from_unix_ns / 1_000_000;
        let until_ms = until_unix_ns.div_ceil(1_000_000);
        self.spans
            .iter()
            .filter(|span| {
                span.from_unix_ms <= until_ms && span.until_unix_ms.is_none_or(|end| end >= from_ms)
            })
            .cloned()
            .collect()
    }
}
