//! The race hook: the one seam, the same in every mode, where an operation
//! waits between reading an account and writing it. In `unsafe` mode the wait
//! is the race window; in the safe modes it sits inside the protected section,
//! so widening it costs time but never correctness. The chaos faults (the
//! barrier, the window's distribution and targets) act here too.

use std::{sync::Mutex, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal, Pareto};

use crate::{
    bank::{AccountId, EntryKind},
    chaos::Chaos,
    config::{Mode, RACE_WINDOW_MS_MAX},
};

/// Where in an operation the hook is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RacePoint {
    /// After reading the balances, before checking and writing them.
    ReadToWrite,
    /// In mutex mode, after taking a transfer's first lock and before the
    /// second: where crossed transfers meet.
    BetweenLocks,
}

/// What the operation at the hook is, for targeted windows.
#[derive(Clone, Copy, Debug)]
pub struct HookContext<'a> {
    /// Deposit, withdraw or transfer (a transfer's legs count as transfer).
    pub kind: EntryKind,
    /// The accounts it touches.
    pub accounts: &'a [&'a AccountId],
    /// The mode it runs in.
    pub mode: Mode,
}

/// How long the hook waits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Delay {
    /// Always `ms`.
    Fixed {
        /// The delay.
        ms: u64,
    },
    /// Uniform in `[min_ms, max_ms]`, at microsecond resolution.
    Uniform {
        /// Smallest delay.
        min_ms: u64,
        /// Largest delay.
        max_ms: u64,
    },
    /// Normal, clamped to `[0, RACE_WINDOW_MS_MAX]`.
    Normal {
        /// Mean.
        mean_ms: f64,
        /// Standard deviation.
        stddev_ms: f64,
    },
    /// Pareto (heavy tail), clamped to `RACE_WINDOW_MS_MAX`.
    Pareto {
        /// Scale: the smallest delay.
        scale_ms: f64,
        /// Shape: smaller means a heavier tail.
        shape: f64,
    },
}

impl Delay {
    /// Draws one delay. Every result is within `[0, RACE_WINDOW_MS_MAX]` ms.
    pub fn sample(&self, rng: &mut StdRng) -> Duration {
        let ms_max = RACE_WINDOW_MS_MAX as f64;
        let ms = match *self {
            Delay::Fixed { ms } => return Duration::from_millis(ms.min(RACE_WINDOW_MS_MAX)),
            Delay::Uniform { min_ms, max_ms } => {
                let min_us = min_ms.min(max_ms).saturating_mul(1_000);
                let max_us = max_ms
                    .min(RACE_WINDOW_MS_MAX)
                    .saturating_mul(1_000)
                    .max(min_us);
                return Duration::from_micros(rng.random_range(min_us..=max_us));
            }
            Delay::Normal { mean_ms, stddev_ms } => {
                Normal::new(mean_ms, stddev_ms).map_or(mean_ms, |normal| normal.sample(rng))
            }
            Delay::Pareto { scale_ms, shape } => {
                Pareto::new(scale_ms, shape).map_or(scale_ms, |pareto| pareto.sample(rng))
            }
        };
        Duration::from_secs_f64(ms.clamp(0.0, ms_max) / 1_000.0)
    }

    /// The bounds a reader can quote: exact for fixed and uniform, the clamp otherwise.
    pub fn bounds_ms(&self) -> (u64, u64) {
        match *self {
            Delay::Fixed { ms } => (ms, ms),
            Delay::Uniform { min_ms, max_ms } => (min_ms, max_ms),
            Delay::Normal { .. } | Delay::Pareto { .. } => (0, RACE_WINDOW_MS_MAX),
        }
    }
}

/// Which operations a window applies to; `None` matches any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// Only this kind of operation.
    pub kind: Option<EntryKind>,
    /// Only operations touching this account.
    pub account: Option<AccountId>,
    /// Only operations running in this mode.
    pub mode: Option<Mode>,
}

impl Targets {
    fn matches(&self, context: &HookContext<'_>) -> bool {
        let kind = match context.kind {
            EntryKind::TransferDebit | EntryKind::TransferCredit => EntryKind::Transfer,
            other => other,
        };
        self.kind.is_none_or(|wanted| wanted == kind)
            && self.mode.is_none_or(|wanted| wanted == context.mode)
            && self
                .account
                .as_ref()
                .is_none_or(|wanted| context.accounts.contains(&wanted))
    }
}

/// The race window: a delay, the probability it applies, and its targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The delay.
    pub delay: Delay,
    /// Probability that a matching operation waits at all, in `[0, 1]`.
    pub probability: f64,
    /// Which operations wait.
    pub targets: Targets,
}

impl Window {
    /// Uniform in `[min_ms, max_ms]` for every operation: `--race-window-ms`.
    pub fn uniform(min_ms: u64, max_ms: u64) -> Self {
        Self {
            delay: Delay::Uniform { min_ms, max_ms },
            probability: 1.0,
            targets: Targets::default(),
        }
    }
}

/// The hook: the window and the seeded RNG every delay is drawn from.
#[derive(Debug)]
pub struct RaceHook {
    // A std mutex: it is held only to draw one number, never across an await.
    state: Mutex<(StdRng, Window)>,
    /// Faults armed through the Chaos service; the barrier waits here.
    pub chaos: Chaos,
}

impl RaceHook {
    /// A hook with a uniform window, drawing from `seed`.
    pub fn new(window_ms_min: u64, window_ms_max: u64, seed: u64) -> Self {
        Self {
            state: Mutex::new((
                StdRng::seed_from_u64(seed),
                Window::uniform(window_ms_min.min(window_ms_max), window_ms_max),
            )),
            chaos: Chaos::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (StdRng, Window)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window in force.
    pub fn window(&self) -> Window {
        self.state().1.clone()
    }

    /// Replaces the window for operations that reach the hook from now on.
    pub fn set_window(&self, window: Window) {
        self.state().1 = window;
    }

    /// The window's bounds in ms, as Admin.Configure reports them.
    pub fn window_ms(&self) -> (u64, u64) {
        self.state().1.delay.bounds_ms()
    }

    /// Sets a uniform window for every operation (Admin.Configure).
    pub fn set_window_ms(&self, window_ms_min: u64, window_ms_max: u64) {
        self.set_window(Window::uniform(
            window_ms_min.min(window_ms_max),
            window_ms_max,
        ));
    }

    /// Waits as long as the hook says at `point` for the operation in `context`.
    pub async fn pause(&self, point: RacePoint, context: &HookContext<'_>) {
        if point == RacePoint::ReadToWrite {
            self.chaos.at_hook().await;
        }
        let delay = self.draw(context);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    fn draw(&self, context: &HookContext<'_>) -> Duration {
        let mut state = self.state();
        let (rng, window) = &mut *state;
        if window.delay
            == (Delay::Uniform {
                min_ms: 0,
                max_ms: 0,
            })
            || !window.targets.matches(context)
        {
            return Duration::ZERO;
        }
        if window.probability < 1.0 && !rng.random_bool(window.probability.clamp(0.0, 1.0)) {
            return Duration::ZERO;
        }
        window.delay.sample(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(delay: Delay, seed: u64) -> Vec<Duration> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..2_000).map(|_| delay.sample(&mut rng)).collect()
    }

    fn mean_ms(samples: &[Duration]) -> f64 {
        samples.iter().map(Duration::as_secs_f64).sum::<f64>() * 1_000.0 / samples.len() as f64
    }

    /// Each distribution stays in its bounds and has the shape it claims; the
    /// same seed draws the same delays.
    #[test]
    fn distributions_have_their_shape_and_replay_from_the_seed() {
        assert!(
            draws(Delay::Fixed { ms: 7 }, 1)
                .iter()
                .all(|d| *d == Duration::from_millis(7))
        );
        let uniform = draws(
            Delay::Uniform {
                min_ms: 10,
                max_ms: 20,
            },
            1,
        );
        assert!(uniform.iter().all(|d| (10..=20).contains(&d.as_millis())));
        assert!((mean_ms(&uniform) - 15.0).abs() < 1.0);
        let normal = draws(
            Delay::Normal {
                mean_ms: 50.0,
                stddev_ms: 5.0,
            },
            1,
        );
        assert!(
            (mean_ms(&normal) - 50.0).abs() < 1.0,
            "{}",
            mean_ms(&normal)
        );
        let pareto = draws(
            Delay::Pareto {
                scale_ms: 2.0,
                shape: 1.5,
            },
            1,
        );
        assert!(
            pareto
                .iter()
                .all(|d| d.as_secs_f64() * 1_000.0 >= 2.0 - 1e-9)
        );
        assert!(pareto.iter().any(|d| d.as_millis() > 20), "a heavy tail");
        assert!(
            pareto
                .iter()
                .all(|d| d.as_millis() <= u128::from(RACE_WINDOW_MS_MAX))
        );
        assert_eq!(
            draws(
                Delay::Normal {
                    mean_ms: 50.0,
                    stddev_ms: 5.0
                },
                9
            ),
            draws(
                Delay::Normal {
                    mean_ms: 50.0,
                    stddev_ms: 5.0
                },
                9
            )
        );
    }

    /// Targets select by kind (transfer legs count as transfers), account and mode.
    #[test]
    fn targets_select_kind_account_and_mode() {
        let a = AccountId::parse("account_id", "a").unwrap();
        let b = AccountId::parse("account_id", "b").unwrap();
        let accounts = [&a];
        let leg = HookContext {
            kind: EntryKind::TransferDebit,
            accounts: &accounts,
            mode: Mode::Actor,
        };
        let targets = Targets {
            kind: Some(EntryKind::Transfer),
            account: Some(a.clone()),
            mode: Some(Mode::Actor),
        };
        assert!(targets.matches(&leg));
        assert!(
            !Targets {
                account: Some(b),
                ..Targets::default()
            }
            .matches(&leg)
        );
        assert!(
            !Targets {
                mode: Some(Mode::Cas),
                ..Targets::default()
            }
            .matches(&leg)
        );
        assert!(
            !Targets {
                kind: Some(EntryKind::Deposit),
                ..Targets::default()
            }
            .matches(&leg)
        );
        assert!(Targets::default().matches(&leg));
    }
}
