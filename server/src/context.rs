//! The shared context every mode runs with ([`Core`]: the store, the race
//! hook, the settings, the counters) and the hold an operation keeps on its
//! mode. The engine builds it and dispatches to the modes; the modes and the
//! group committer read it. It imports none of them, so the arrows run one
//! way: engine -> modes -> context.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    config::{Config, LockScope, Mode, Settings},
    race::RaceHook,
    stats::Stats,
    store::{Commit, Rejected, Store, StoreError},
};

/// What every mode needs: the store, the race hook, the policies and counters.
#[derive(Debug)]
pub struct Core {
    /// The storage.
    pub store: Arc<dyn Store>,
    /// The race hook every mode pauses at.
    pub hook: Arc<RaceHook>,
    // A std RwLock: read once per operation, written only by Configure while
    // operations are held back; never held across an await.
    settings: std::sync::RwLock<Settings>,
    /// Mutex mode's lock wait bound.
    pub lock_wait_ms: u64,
    /// Where mutex mode's locks live.
    pub lock_scope: LockScope,
    /// CAS mode's retry bound.
    pub cas_retries_max: u32,
    /// Counters.
    pub stats: Stats,
    // A std mutex: held only to draw one number.
    jitter: Mutex<StdRng>,
    transfer_ids: AtomicU64,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Core {
    /// The context for `config` over `store`.
    pub fn new(config: &Config, store: Arc<dyn Store>) -> Self {
        let start_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            store,
            hook: Arc::new(RaceHook::new(
                config.race_window_ms_min,
                config.race_window_ms,
                config.seed,
            )),
            settings: std::sync::RwLock::new(config.settings()),
            lock_wait_ms: config.lock_wait_ms,
            lock_scope: config.lock_scope,
            cas_retries_max: config.cas_retries_max,
            stats: Stats::default(),
            // A different stream from the race hook's, from the same seed.
            jitter: Mutex::new(StdRng::seed_from_u64(config.seed.wrapping_add(1))),
            // Start-time nanoseconds make transfer ids unique across restarts.
            transfer_ids: AtomicU64::new(start_ns),
        }
    }

    /// Commits inline. A commit is a few in-memory sled inserts under a std
    /// mutex (no transaction, no fsync: flushing is the group committer's
    /// job), so it is shorter than a hop to the blocking pool, which cost a
    /// quarter of the throughput when measured.
    pub async fn commit(&self, commit: Commit) -> Result<Result<u64, Rejected>, StoreError> {
        self.store.commit(&commit).await
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        *self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_settings(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// A uniform draw in `0..=max` from the seeded jitter RNG.
    pub fn random_up_to(&self, max: u64) -> u64 {
        let mut rng = self.jitter.lock().unwrap_or_else(|p| p.into_inner());
        rng.random_range(0..=max)
    }

    /// A transfer id for an actor transfer's two legs. The counter starts at
    /// the process's start time in ns, so ids do not repeat across restarts.
    pub fn next_transfer_id(&self) -> String {
        let n = self.transfer_ids.fetch_add(1, Ordering::Relaxed);
        format!("t{n}")
    }
}

/// A running operation's hold on the mode: Admin.SetMode waits until every
/// one is released, so no operation straddles two modes.
pub(crate) type ModeGuard = tokio::sync::OwnedRwLockReadGuard<Mode>;
