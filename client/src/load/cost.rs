//! What a run cost each side: CPU time per operation in the ledger (from
//! Admin.Stats, which reads getrusage in the ledger's process) and in this
//! process. Per-operation CPU compares modes without depending on how much
//! of the shared machine the ATMs took; throughput alone cannot.

use std::time::Duration;

use overdraft_proto::v1 as pb;
use overdraft_server::process;
use serde::Serialize;

use crate::connect::{ClientError, Clients};

/// CPU per operation, in µs. When the ledger is embedded (same process as
/// the ATMs) both figures are the one process's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CpuPerOp {
    /// The ledger process.
    pub ledger_us: f64,
    /// The ATM process.
    pub atm_us: f64,
}

/// What a run cost, read when it ended.
#[derive(Clone, Copy, Debug)]
pub struct RunCost {
    /// CPU per operation on both sides.
    pub per_op: CpuPerOp,
    /// CPU this process used over the run.
    pub atm_cpu: Duration,
    /// The ledger's resident memory then (0 if not reported).
    pub ledger_rss_bytes: u64,
}

/// Readings at the start of a run.
#[derive(Clone, Copy, Debug)]
pub struct CpuMeter {
    ledger: Duration,
    atm: Duration,
}

fn ledger_cpu(stats: &pb::StatsReply) -> Duration {
    Duration::from_micros(stats.cpu_user_us.saturating_add(stats.cpu_system_us))
}

impl CpuMeter {
    /// Reads both sides now.
    pub async fn start(clients: &mut Clients) -> Result<Self, ClientError> {
        let stats = clients.stats().await?;
        Ok(Self {
            ledger: ledger_cpu(&stats),
            atm: process::cpu_time().total(),
        })
    }

    /// What the run since [`CpuMeter::start`] cost, over `operations`.
    pub async fn finish(
        &self,
        clients: &mut Clients,
        operations: u64,
    ) -> Result<RunCost, ClientError> {
        let atm = process::cpu_time().total().saturating_sub(self.atm);
        let stats = clients.stats().await?;
        let ledger = ledger_cpu(&stats).saturating_sub(self.ledger);
        let per_op = |used: Duration| used.as_secs_f64() * 1e6 / operations.max(1) as f64;
        Ok(RunCost {
            per_op: CpuPerOp {
                ledger_us: per_op(ledger),
                atm_us: per_op(atm),
            },
            atm_cpu: atm,
            ledger_rss_bytes: stats.rss_bytes,
        })
    }
}
