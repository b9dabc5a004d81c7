//! Writing a run's history: format 2 (docs/HISTORY.md), whose lines are
//! defined once in `overdraft_history::format` and read back by `atm check`.
//! The header and the `open` lines go first, then one line per operation
//! as ATMs complete them, then the final reads of every account touched.
//!
//! ATMs hand lines to a writer thread through a bounded queue, so a slow
//! disk slows the run instead of growing memory.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

pub use overdraft_history::format::{Header, OpLine, OpenLine, Operation, Outcome, Policy};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::connect::ClientError;

/// Lines queued for the writer. When the disk falls behind, ATMs wait for
/// room: the run slows rather than the queue growing without bound.
const HISTORY_QUEUE_MAX: usize = 65_536;

/// The history's clock: time zero, as an instant for the ATMs and as wall
/// clock for the header (which lines it up with the journal and faults).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    zero: Instant,
    wall_unix_ns_at_zero: u64,
}

impl Clock {
    /// Time zero is now.
    pub fn start() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            zero: Instant::now(),
            wall_unix_ns_at_zero: wall,
        }
    }

    /// The instant of time zero.
    pub fn zero(&self) -> Instant {
        self.zero
    }

    /// Wall clock at time zero, ns since the Unix epoch.
    pub fn wall_unix_ns_at_zero(&self) -> u64 {
        self.wall_unix_ns_at_zero
    }

    /// `at` in ns since time zero (0 before it).
    pub fn since(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.zero).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Now, in ns since time zero.
    pub fn now(&self) -> u64 {
        self.since(Instant::now())
    }
}

/// Where ATMs send their lines.
#[derive(Clone, Debug)]
pub struct HistorySink {
    sender: mpsc::Sender<OpLine>,
}

impl HistorySink {
    /// Queues one line.
    pub async fn record(&self, line: OpLine) {
        // The writer only stops when every sink is dropped, so a send cannot fail
        // while a sink exists; if it did, the line is dropped, not the run.
        let _ = self.sender.send(line).await;
    }
}

/// The file being written; [`HistoryFile::finish`] once every sink is dropped.
#[derive(Debug)]
pub struct HistoryFile {
    writer: tokio::task::JoinHandle<std::io::Result<u64>>,
    path: String,
}

impl HistoryFile {
    /// Waits for the writer to flush; returns the lines written.
    pub async fn finish(self) -> Result<u64, ClientError> {
        self.writer
            .await
            .map_err(|e| ClientError::Internal(e.to_string()))?
            .map_err(|e| {
                ClientError::Internal(format!("writing the history {} failed: {e}", self.path))
            })
    }
}

/// Creates `path` with its header and `open` lines, and a writer thread for
/// the rest.
pub fn create(
    path: &Path,
    header: &Header,
    opens: &[OpenLine],
) -> Result<(HistorySink, HistoryFile), ClientError> {
    let file = File::create(path).map_err(|e| cannot_write(path, &e))?;
    start(file, path, header, opens)
}

/// As [`create`], but refuses a `path` that exists: a crowd member's file,
/// which no other member may share.
pub fn create_new(
    path: &Path,
    header: &Header,
    opens: &[OpenLine],
) -> Result<(HistorySink, HistoryFile), ClientError> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| cannot_write(path, &e))?;
    start(file, path, header, opens)
}

fn cannot_write(path: &Path, e: &std::io::Error) -> ClientError {
    ClientError::Usage(format!("cannot write --history {}: {e}", path.display()))
}

fn start(
    file: File,
    path: &Path,
    header: &Header,
    opens: &[OpenLine],
) -> Result<(HistorySink, HistoryFile), ClientError> {
    let cannot = |e: std::io::Error| cannot_write(path, &e);
    let mut out = BufWriter::new(file);
    write_line(&mut out, header).map_err(cannot)?;
    for open in opens {
        write_line(&mut out, open).map_err(cannot)?;
    }
    let (sender, mut receiver) = mpsc::channel::<OpLine>(HISTORY_QUEUE_MAX);
    let written = 1 + opens.len() as u64;
    let writer = tokio::task::spawn_blocking(move || {
        let mut lines = written;
        while let Some(line) = receiver.blocking_recv() {
            write_line(&mut out, &line)?;
            lines += 1;
        }
        out.flush()?;
        Ok(lines)
    });
    Ok((
        HistorySink { sender },
        HistoryFile {
            writer,
            path: path.display().to_string(),
        },
    ))
}

/// Reads each of `accounts` once and records it as a final read: the state
/// a run left, taken after its ATMs stopped.
pub async fn record_final_reads<'a>(
    clients: &mut crate::connect::Clients,
    accounts: impl IntoIterator<Item = &'a str>,
    sink: &HistorySink,
    clock: &Clock,
) -> Result<(), ClientError> {
    for account in accounts {
        let invoke_ns = clock.now();
        let state = clients.balance(account).await?;
        let mut line = OpLine::final_read(account, invoke_ns, state.balance_cents, state.version);
        line.complete_ns = clock.now();
        sink.record(line).await;
    }
    Ok(())
}

fn write_line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// The header's form of the ledger's overdraft policy.
pub fn policy_of(settings: &overdraft_proto::v1::Settings) -> Policy {
    match &settings.overdraft {
        Some(o) if o.allow => Policy::Fee {
            fee_cents: o.fee_cents,
            floor_cents: o.limit_cents.saturating_neg(),
        },
        _ => Policy::Reject,
    }
}

/// What an ATM knows of an operation that failed with `code`: these codes
/// mean the ledger decided and applied nothing; any other failure may have
/// come after the ledger applied it. The one classification of the client.
pub fn outcome_of(code: tonic::Code) -> Outcome {
    use tonic::Code;
    match code {
        Code::Ok => Outcome::Ok,
        Code::FailedPrecondition
        | Code::Aborted
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// The history file of one scenario run in `dir`: `SCENARIO-RUN.jsonl`,
/// where `run` is a mode (`cas`) or a run over replicas (`mutex-database`).
pub fn file_in(dir: &Path, scenario: &str, run: &str) -> std::path::PathBuf {
    dir.join(format!("{scenario}-{run}.jsonl"))
}

/// Creates `dir` (and its parents) for the histories of several runs.
pub fn create_dir(dir: &Path) -> Result<(), ClientError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        ClientError::Usage(format!(
            "cannot create the --history directory {}: {e}",
            dir.display()
        ))
    })
}
