//! Counters the Admin.Stats call reports: per mode, and for the ledger as a whole.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Mode;

/// Counters for one mode.
#[derive(Debug, Default)]
pub struct ModeCounters {
    /// Operations applied.
    pub operations: AtomicU64,
    /// Operations the bank's rules refused (insufficient funds, limits).
    pub refusals: AtomicU64,
    /// CAS retries after a version conflict.
    pub retries: AtomicU64,
    /// Operations aborted (CAS retries exhausted, deadlock detected).
    pub aborts: AtomicU64,
    /// Lock waits past the bound in mutex mode.
    pub deadlocks_detected: AtomicU64,
}

/// Every counter the ledger keeps.
#[derive(Debug, Default)]
pub struct Stats {
    modes: [ModeCounters; 4],
    /// Mutations answered from the idempotency table.
    pub replays: AtomicU64,
    /// Durable flushes (group commits) done.
    pub flushes: AtomicU64,
    /// Operations those flushes covered.
    pub flushed_operations: AtomicU64,
}

impl Stats {
    /// The counters of `mode`.
    pub fn mode(&self, mode: Mode) -> &ModeCounters {
        &self.modes[mode.index()]
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Zeroes every counter.
    pub fn reset(&self) {
        for counters in &self.modes {
            for counter in [
                &counters.operations,
                &counters.refusals,
                &counters.retries,
                &counters.aborts,
                &counters.deadlocks_detected,
            ] {
                counter.store(0, Ordering::Relaxed);
            }
        }
        for counter in [&self.replays, &self.flushes, &self.flushed_operations] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}
