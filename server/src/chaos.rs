//! Faults aimed at the inside of a ledger operation, armed through the Chaos
//! gRPC service:
//! - the barrier: the next N operations that reach the race hook wait there
//!   until all N have arrived (or a bounded wait runs out), then go on
//!   together. It turns "two ATMs at the same moment" into a certainty.
//! - lost acknowledgements: the next N mutations apply, then their RPC fails
//!   with UNAVAILABLE or DEADLINE_EXCEEDED, so a client that retries without
//!   an idempotency key applies the operation twice.
//! - a slow owner: in actor mode each owner waits this long before every
//!   message, falls behind, and clients with deadlines time out and retry.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

/// Most operations one barrier may hold: each is a task parked at the hook.
pub const BARRIER_PARTIES_MAX: u32 = 1_024;

/// Longest a barrier may hold an operation before letting it go alone.
pub const BARRIER_WAIT_MS_MAX: u64 = 60_000;

/// Longest slow-owner delay per message: 10 s.
pub const SLOW_OWNER_MS_MAX: u64 = 10_000;

/// Most lost acknowledgements armed at once.
pub const LOST_ACKS_MAX: u32 = 10_000;

/// How a lost acknowledgement fails the RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostAckCode {
    /// UNAVAILABLE, as when the connection drops after the server applied.
    Unavailable,
    /// DEADLINE_EXCEEDED, as when the reply arrives after the client gave up.
    DeadlineExceeded,
}

#[derive(Debug)]
struct Barrier {
    parties: u32,
    wait: Duration,
    armed_at: Instant,
    waiting: Vec<oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
struct Faults {
    barrier: Option<Barrier>,
    lost_acks: u32,
    lost_ack_code: Option<LostAckCode>,
    barriers_released: u64,
    acks_lost: u64,
    slow_owner: Duration,
}

/// What the Chaos service reports as armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChaosState {
    /// Parties the armed barrier still waits for (0: none armed).
    pub barrier_waiting_for: u32,
    /// Lost acknowledgements still armed.
    pub lost_acks: u32,
    /// Barriers released so far.
    pub barriers_released: u64,
    /// Acknowledgements dropped so far.
    pub acks_lost: u64,
    /// Delay per actor message, ms.
    pub slow_owner_ms: u64,
}

/// The armed faults. A std mutex: held only to update counters and lists,
/// never across an await.
#[derive(Debug, Default)]
pub struct Chaos {
    faults: Mutex<Faults>,
}

impl Chaos {
    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a barrier for the next `parties` operations; replaces (and
    /// releases) any barrier already armed.
    pub fn arm_barrier(&self, parties: u32, wait: Duration) {
        let mut faults = self.faults();
        if let Some(old) = faults.barrier.take() {
            release(old.waiting);
        }
        faults.barrier = Some(Barrier {
            parties,
            wait,
            armed_at: Instant::now(),
            waiting: Vec::new(),
        });
    }

    /// Arms `count` lost acknowledgements failing with `code`.
    pub fn arm_lost_acks(&self, count: u32, code: LostAckCode) {
        let mut faults = self.faults();
        faults.lost_acks = count;
        faults.lost_ack_code = Some(code);
    }

    /// Disarms everything, releasing any operation held at a barrier.
    pub fn reset(&self) {
        let mut faults = self.faults();
        if let Some(barrier) = faults.barrier.take() {
            release(barrier.waiting);
        }
        faults.lost_acks = 0;
        faults.lost_ack_code = None;
        faults.slow_owner = Duration::ZERO;
    }

    /// Makes every actor owner wait `delay` before each message.
    pub fn set_slow_owner(&self, delay: Duration) {
        self.faults().slow_owner = delay;
    }

    /// The delay actor owners apply before each message.
    pub fn slow_owner(&self) -> Duration {
        self.faults().slow_owner
    }

    /// What is armed, and what has fired.
    pub fn state(&self) -> ChaosState {
        let faults = self.faults();
        ChaosState {
            barrier_waiting_for: faults.barrier.as_ref().map_or(0, |b| {
                b.parties
                    .saturating_sub(u32::try_from(b.waiting.len()).unwrap_or(u32::MAX))
            }),
            lost_acks: faults.lost_acks,
            barriers_released: faults.barriers_released,
            acks_lost: faults.acks_lost,
            slow_owner_ms: u64::try_from(faults.slow_owner.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Called at the race hook: waits at the barrier if one is armed.
    pub async fn at_hook(&self) {
        let (waiter, wait) = {
            let mut faults = self.faults();
            let Some(barrier) = faults.barrier.as_mut() else {
                return;
            };
            let (sender, receiver) = oneshot::channel();
            barrier.waiting.push(sender);
            let full = barrier.waiting.len() >= barrier.parties as usize;
            // The wait is measured from arming, so a barrier nobody fills
            // lets its first arrivals go within the bound.
            let wait = barrier.wait.saturating_sub(barrier.armed_at.elapsed());
            if full && let Some(barrier) = faults.barrier.take() {
                faults.barriers_released += 1;
                release(barrier.waiting);
            }
            (receiver, wait)
        };
        if tokio::time::timeout(wait, waiter).await.is_err() {
            // Timed out: let everyone still held go, and disarm.
            let mut faults = self.faults();
            if let Some(barrier) = faults.barrier.take() {
                release(barrier.waiting);
            }
        }
    }

    /// Called after a mutation applied: Some(code) when its acknowledgement must be lost.
    pub fn take_lost_ack(&self) -> Option<LostAckCode> {
        let mut faults = self.faults();
        if faults.lost_acks == 0 {
            return None;
        }
        faults.lost_acks -= 1;
        faults.acks_lost += 1;
        faults.lost_ack_code
    }
}

fn release(waiting: Vec<oneshot::Sender<()>>) {
    for waiter in waiting {
        // A waiter whose operation has gone needs no signal.
        let _ = waiter.send(());
    }
}
