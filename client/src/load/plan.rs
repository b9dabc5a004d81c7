//! When each ATM sends: the closed model (the next operation when the last
//! reply returns) or the open one (arrivals on a fixed schedule), and what it
//! draws from its seeded workload.

use std::time::{Duration, Instant};

use super::{
    LoadArgs,
    workload::{AccountPicker, AmountRange, Mix},
};
use crate::history::Clock;

/// What one ATM sends, and when.
#[derive(Debug)]
pub(super) struct AtmPlan {
    pub(super) atm: u32,
    pub(super) seed: u64,
    pub(super) mix: Mix,
    pub(super) amounts: AmountRange,
    pub(super) picker: AccountPicker,
    pub(super) started: Instant,
    pub(super) clock: Clock,
    pub(super) deadline: Option<Instant>,
    pub(super) quota: Option<u64>,
    /// Open model: this ATM's gap between intended sends.
    pub(super) interval: Option<Duration>,
}

impl AtmPlan {
    pub(super) fn new(args: &LoadArgs, atm: u32, started: Instant, clock: Clock) -> Self {
        let quota = args.ops.map(|ops| {
            let atms = u64::from(args.atms);
            ops / atms + u64::from(u64::from(atm) < ops % atms)
        });
        Self {
            atm,
            seed: args.seed,
            mix: args.mix.clone(),
            amounts: args.amount_cents,
            picker: AccountPicker::new(args.accounts, args.skew),
            started,
            clock,
            deadline: args.run_duration().map(|d| started + d),
            quota,
            interval: args
                .rate
                .map(|rate| Duration::from_secs_f64(f64::from(args.atms) / rate)),
        }
    }

    pub(super) fn more(&self, sent: u64, now: Instant) -> bool {
        self.quota.is_none_or(|quota| sent < quota)
            && self.deadline.is_none_or(|deadline| now < deadline)
    }

    /// When operation `k` is meant to start: on the schedule (open model,
    /// staggered per ATM) or now (closed model).
    pub(super) fn intended(&self, k: u64) -> Instant {
        match self.interval {
            Some(interval) => {
                let offset = interval.mul_f64(f64::from(self.atm) / 4_096.0);
                self.started + offset + interval.mul_f64(k as f64)
            }
            None => Instant::now(),
        }
    }
}
