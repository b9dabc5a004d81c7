//! When each ATM sends: the closed model (the next operation when the last
//! reply returns) or the open one (arrivals on a fixed schedule), and what it
//! draws from its seeded workload.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    LoadArgs,
    workload::{AccountPicker, AmountRange, Mix},
};
use crate::history::Clock;

/// What one ATM sends, and when.
#[derive(Debug)]
pub(super) struct AtmPlan {
    pub(super) atm: u32,
    /// ATMs in the run: the open model staggers their schedules by 1/atms.
    pub(super) atms: u32,
    pub(super) seed: u64,
    /// A crowd member's name, in its request ids and history lines.
    pub(super) member: Option<Arc<str>>,
    /// Sends of one operation in all (the first and its resends).
    pub(super) attempts: u32,
    /// gRPC deadline of each attempt.
    pub(super) deadline_per_attempt: Option<Duration>,
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
    pub(super) fn new(
        args: &LoadArgs,
        member: Option<Arc<str>>,
        atm: u32,
        started: Instant,
        clock: Clock,
    ) -> Self {
        let quota = args.ops.map(|ops| {
            let atms = u64::from(args.atms);
            ops / atms + u64::from(u64::from(atm) < ops % atms)
        });
        Self {
            atm,
            atms: args.atms.max(1),
            seed: args.seed,
            member,
            attempts: args.attempts,
            deadline_per_attempt: args.deadline,
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

    /// The seed of this ATM's draws: the run's seed, the ATM's number and,
    /// in a crowd, the member's name, so that members sharing a seed do not
    /// all send the same operations.
    pub(super) fn stream(&self) -> u64 {
        let member = self.member.as_deref().map_or(0, name_hash);
        self.seed
            .wrapping_mul(1_000_003)
            .wrapping_add(u64::from(self.atm))
            ^ member
    }

    /// The request id of operation `k`: unique to the run's seed, this ATM
    /// and, in a crowd, its member.
    pub(super) fn request_id(&self, k: u64) -> String {
        match &self.member {
            Some(name) => format!("load-{name}-{}-{}-{k}", self.seed, self.atm),
            None => format!("load-{}-{}-{k}", self.seed, self.atm),
        }
    }

    /// The ATM's name in a crowd member's history: the member's, with the
    /// ATM's number when the member runs several.
    pub(super) fn atm_name(&self) -> Option<String> {
        let name = self.member.as_deref()?;
        Some(if self.atms == 1 {
            name.to_owned()
        } else {
            format!("{name}/{}", self.atm)
        })
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
                let offset = interval.mul_f64(f64::from(self.atm) / f64::from(self.atms));
                self.started + offset + interval.mul_f64(k as f64)
            }
            None => Instant::now(),
        }
    }
}

/// A stable hash of a crowd member's name (FNV-1a: the same across builds
/// and platforms, unlike std's hasher): its draws, and the replica it
/// starts on.
pub(super) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: in the open model the ATMs' schedules are spread evenly over one
    /// interval, so arrivals do not come in bursts. Method: 4 ATMs at 400
    /// arrivals/s (each every 10 ms); their first sends fall 0, 2.5, 5 and
    /// 7.5 ms after the start, and each ATM's next send one interval later.
    #[test]
    fn open_model_staggers_atms_over_one_interval() {
        let args = LoadArgs {
            atms: 4,
            accounts: 10,
            duration: Some(Duration::from_secs(1)),
            mix: "deposit=1".parse().unwrap(),
            amount_cents: "100..200".parse().unwrap(),
            rate: Some(400.0),
            connections: 1,
            opening_cents: 0,
            ..LoadArgs::default()
        };
        let started = Instant::now();
        let clock = Clock::start();
        let offsets_us: Vec<u128> = (0..4)
            .map(|atm| {
                let plan = AtmPlan::new(&args, None, atm, started, clock);
                assert_eq!(
                    plan.intended(1) - plan.intended(0),
                    Duration::from_millis(10)
                );
                (plan.intended(0) - started).as_micros()
            })
            .collect();
        assert_eq!(offsets_us, [0, 2_500, 5_000, 7_500]);
    }
}
