//! `atm journal`: the ledger's journal (what each applied operation read
//! and wrote) streamed into a JSON-lines file that `atm check --journal`
//! reads. One record in memory at a time on this side.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use clap::Args;
use overdraft_history::format::{JournalLeg, JournalLine};
use overdraft_proto::v1 as pb;
use overdraft_server::config::Mode;

use crate::connect::{ClientError, Clients};

/// `atm journal` arguments.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// The ledger (e.g. http://127.0.0.1:50051).
    #[arg(long)]
    pub target: String,
    /// Write the journal here, one JSON line per entry.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// Streams the journal of `target` into `output`; returns the entries written.
pub async fn export(target: &str, output: &Path) -> Result<u64, ClientError> {
    let mut clients = Clients::connect(target).await?;
    let cannot = |e: std::io::Error| {
        ClientError::Usage(format!("cannot write -o {}: {e}", output.display()))
    };
    let mut out = BufWriter::new(File::create(output).map_err(cannot)?);
    let mut stream = clients.export_journal().await?;
    let mut written = 0u64;
    while let Some(record) = stream
        .message()
        .await
        .map_err(|status| ClientError::Refused {
            call: "ExportJournal",
            status: format!("{:?}: {}", status.code(), status.message()),
        })?
    {
        serde_json::to_writer(&mut out, &line(record))
            .map_err(|e| cannot(std::io::Error::other(e)))?;
        out.write_all(b"\n").map_err(cannot)?;
        written += 1;
    }
    out.flush().map_err(cannot)?;
    Ok(written)
}

/// The file's form of one record.
pub fn line(record: pb::JournalRecord) -> JournalLine {
    JournalLine {
        seq: record.seq,
        kind: record.kind,
        request_id: Some(record.request_id).filter(|id| !id.is_empty()),
        transfer_id: Some(record.transfer_id).filter(|id| !id.is_empty()),
        mode: Mode::from_proto(record.mode)
            .map_or_else(|| "unknown".to_owned(), |m| m.as_str().to_owned()),
        amount_cents: record.amount_cents,
        fee_cents: record.fee_cents,
        legs: record
            .legs
            .into_iter()
            .map(|leg| JournalLeg {
                account_id: leg.account_id,
                read_balance_cents: leg.read_balance_cents,
                read_version: leg.read_version,
                written_balance_cents: leg.written_balance_cents,
                written_version: leg.written_version,
                delta_cents: leg.delta_cents,
            })
            .collect(),
        time_unix_ns: record.time_unix_ns,
        replica: Some(record.replica).filter(|r| !r.is_empty()),
    }
}
