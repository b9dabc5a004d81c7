//! `cas` mode: optimistic concurrency. Read balances and versions, race hook,
//! check, then commit only if every account is still at the version read. On
//! a conflict, back off (exponential, full jitter from the seeded RNG) and
//! retry, up to `--cas-retries-max` times; then ABORTED. Under a hot account
//! the retries pile up: correct, but the tail latency shows the cost.

use std::{sync::Arc, time::Duration};

use super::{Applied, Attempt, Request, WriteKind, read_check_write};
use crate::{config::Mode, context::Core, error::LedgerError, stats::Stats};

/// First backoff ceiling: 100 µs, about one sled commit.
const BACKOFF_US_BASE: u64 = 100;

/// Backoff ceiling: 20 ms. Past this, waiting longer only adds latency.
const BACKOFF_US_MAX: u64 = 20_000;

/// Runs `request`, retrying on version conflicts.
pub(crate) async fn execute(core: &Arc<Core>, request: &Request) -> Result<Applied, LedgerError> {
    let counters = core.stats.mode(Mode::Cas);
    let mut retries = 0u32;
    loop {
        let account = match read_check_write(core, Mode::Cas, request, WriteKind::Guarded).await? {
            Attempt::Applied(applied) => return Ok(applied),
            Attempt::Conflict(account) => account,
        };
        if retries >= core.cas_retries_max {
            Stats::bump(&counters.aborts);
            return Err(LedgerError::Contention {
                account,
                attempts: retries + 1,
            });
        }
        retries += 1;
        Stats::bump(&counters.retries);
        tokio::time::sleep(backoff(core, retries)).await;
    }
}

/// Full-jitter exponential backoff: uniform in `0..=min(max, base * 2^retry)`.
fn backoff(core: &Core, retry: u32) -> Duration {
    let ceiling_us = BACKOFF_US_BASE
        .saturating_mul(1u64 << retry.min(16))
        .min(BACKOFF_US_MAX);
    Duration::from_micros(core.random_up_to(ceiling_us))
}
