//! The history an ATM run leaves: one JSON object per line per operation.
//!
//! Fields (documented in docs/HISTORY.md): `atm`, `op`, `account_id` or
//! `from_account_id`/`to_account_id`, `amount_cents`, `request_id`,
//! `invoke_ns`/`complete_ns` (monotonic, since the run started), `outcome`
//! (`ok`, `fail` with `code`, or `unknown` when the reply never came), and
//! the returned `balance_cents`/`version` (for a transfer, the `from`
//! account's; `to_balance_cents`/`to_version` for the other), and a
//! withdrawal's `fee_cents`.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use serde::Serialize;
use tokio::sync::mpsc;

/// Records queued for the writer. When the disk falls behind, ATMs wait for
/// room: the run slows rather than the queue growing without bound.
const HISTORY_QUEUE_MAX: usize = 65_536;

/// One operation as the ATM saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HistoryRecord {
    /// ATM index.
    pub atm: u32,
    /// `deposit`, `withdraw`, `transfer` or `balance`.
    pub op: &'static str,
    /// The account (all but transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Transfer source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_account_id: Option<String>,
    /// Transfer destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_account_id: Option<String>,
    /// Amount (all but balance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    /// Idempotency key sent.
    pub request_id: String,
    /// When the call was meant to start (open model) or started (closed), ns since the run began.
    pub invoke_ns: u64,
    /// When the reply arrived, ns since the run began.
    pub complete_ns: u64,
    /// `ok`, `fail` or `unknown`.
    pub outcome: &'static str,
    /// gRPC code name of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Balance returned (the `from` account's for a transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_cents: Option<i64>,
    /// Version returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Withdrawal: the overdraft fee charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fee_cents: Option<i64>,
    /// Transfer: the `to` account's balance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_balance_cents: Option<i64>,
    /// Transfer: the `to` account's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_version: Option<u64>,
}

/// Where ATMs send their records.
#[derive(Clone, Debug)]
pub struct HistorySink {
    sender: mpsc::Sender<HistoryRecord>,
}

impl HistorySink {
    /// Queues one record.
    pub async fn record(&self, record: HistoryRecord) {
        // The writer only stops when every sink is dropped, so a send cannot fail
        // while a sink exists; if it did, the record is dropped, not the run.
        let _ = self.sender.send(record).await;
    }
}

/// Creates `path` and a writer thread; returns the sink and a handle that
/// finishes when every sink is dropped and the file is flushed.
pub fn open(
    path: &Path,
) -> std::io::Result<(HistorySink, tokio::task::JoinHandle<std::io::Result<u64>>)> {
    let file = File::create(path)?;
    let (sender, mut receiver) = mpsc::channel::<HistoryRecord>(HISTORY_QUEUE_MAX);
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = BufWriter::new(file);
        let mut lines = 0u64;
        while let Some(record) = receiver.blocking_recv() {
            serde_json::to_writer(&mut out, &record)?;
            out.write_all(b"\n")?;
            lines += 1;
        }
        out.flush()?;
        Ok(lines)
    });
    Ok((HistorySink { sender }, writer))
}
