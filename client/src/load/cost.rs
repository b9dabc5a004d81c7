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
    /// The ledger's resident memory then, over all its replicas (0 if not
    /// reported).
    pub ledger_rss_bytes: u64,
}

/// Readings at the start of a run, and the ledgers to read again at its
/// end: one, or every replica (the ledger's cost is theirs together).
#[derive(Debug)]
pub struct CpuMeter {
    ledgers: Vec<Clients>,
    ledger: Duration,
    atm: Duration,
}

fn ledger_cpu(stats: &pb::StatsReply) -> Duration {
    Duration::from_micros(stats.cpu_user_us.saturating_add(stats.cpu_system_us))
}

/// CPU and resident memory summed over the processes serving `ledgers`
/// (replicas embedded in one process count once).
async fn read_ledgers(ledgers: &mut [Clients]) -> Result<(Duration, u64), ClientError> {
    let (mut cpu, mut rss) = (Duration::ZERO, 0u64);
    let mut seen = std::collections::HashSet::new();
    for ledger in ledgers {
        let stats = ledger.stats().await?;
        if !seen.insert(stats.process_instance) {
            continue;
        }
        cpu += ledger_cpu(&stats);
        rss = rss.saturating_add(stats.rss_bytes);
    }
    Ok((cpu, rss))
}

impl CpuMeter {
    /// Reads both sides now: the ledger through `first` (its connection
    /// shared, not a new one: a proxy that deals connections out to
    /// replicas in turn would count it) and through each of `others`.
    pub async fn start(first: &Clients, others: &[String]) -> Result<Self, ClientError> {
        let mut ledgers = vec![first.clone()];
        ledgers.extend(Clients::connect_each(others).await?);
        let (ledger, _) = read_ledgers(&mut ledgers).await?;
        Ok(Self {
            ledgers,
            ledger,
            atm: process::cpu_time().total(),
        })
    }

    /// What the run since [`CpuMeter::start`] cost, over `operations`.
    pub async fn finish(&mut self, operations: u64) -> Result<RunCost, ClientError> {
        let atm = process::cpu_time().total().saturating_sub(self.atm);
        let (ledger, rss) = read_ledgers(&mut self.ledgers).await?;
        let ledger = ledger.saturating_sub(self.ledger);
        let per_op = |used: Duration| used.as_secs_f64() * 1e6 / operations.max(1) as f64;
        Ok(RunCost {
            per_op: CpuPerOp {
                ledger_us: per_op(ledger),
                atm_us: per_op(atm),
            },
            atm_cpu: atm,
            ledger_rss_bytes: rss,
        })
    }
}
