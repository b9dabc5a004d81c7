//! The race hook: the one seam, the same in every mode, where an operation
//! waits between reading an account and writing it. In `unsafe` mode the wait
//! is the race window; in the safe modes it sits inside the protected section,
//! so widening it costs time but never correctness. The chaos injector will
//! drive this same seam.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::chaos::Chaos;

/// Where in an operation the hook is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RacePoint {
    /// After reading the balances, before checking and writing them.
    ReadToWrite,
    /// In mutex mode, after taking a transfer's first lock and before the
    /// second: where crossed transfers meet.
    BetweenLocks,
}

/// Applies a seeded random delay, uniform in `window_ms_min..=window_ms_max`.
#[derive(Debug)]
pub struct RaceHook {
    window_ms_min: AtomicU64,
    window_ms_max: AtomicU64,
    // A std mutex: it is held only to draw one number, never across an await.
    rng: Mutex<StdRng>,
    /// Faults armed through the Chaos service; the barrier waits here.
    pub chaos: Chaos,
}

impl RaceHook {
    /// A hook with the given window, drawing from `seed`.
    pub fn new(window_ms_min: u64, window_ms_max: u64, seed: u64) -> Self {
        Self {
            window_ms_min: AtomicU64::new(window_ms_min.min(window_ms_max)),
            window_ms_max: AtomicU64::new(window_ms_max),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            chaos: Chaos::default(),
        }
    }

    /// The current window: (min, max) in ms.
    pub fn window_ms(&self) -> (u64, u64) {
        (
            self.window_ms_min.load(Ordering::Relaxed),
            self.window_ms_max.load(Ordering::Relaxed),
        )
    }

    /// Changes the window for operations that reach the hook from now on.
    /// A min above the max is clamped to the max.
    pub fn set_window_ms(&self, window_ms_min: u64, window_ms_max: u64) {
        self.window_ms_max.store(window_ms_max, Ordering::Relaxed);
        self.window_ms_min
            .store(window_ms_min.min(window_ms_max), Ordering::Relaxed);
    }

    /// Waits as long as the hook says at `point`.
    pub async fn pause(&self, point: RacePoint) {
        if point == RacePoint::ReadToWrite {
            self.chaos.at_hook().await;
        }
        let delay = self.draw(point);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    fn draw(&self, _point: RacePoint) -> Duration {
        let (window_ms_min, window_ms_max) = self.window_ms();
        if window_ms_max == 0 {
            return Duration::ZERO;
        }
        // Microsecond resolution so that a 1 ms window still spreads operations out.
        let window_us_min = window_ms_min.saturating_mul(1_000);
        let window_us_max = window_ms_max.saturating_mul(1_000).max(window_us_min);
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        Duration::from_micros(rng.random_range(window_us_min..=window_us_max))
    }
}
