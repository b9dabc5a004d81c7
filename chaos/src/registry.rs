//! The proxy's live faults: added, listed and removed through the control
//! API, read by every connection and call. Every random choice a fault makes
//! comes from its own seed, so the same seed and the same traffic replay the
//! same decisions. Beside them, the counters the control API reports.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

/// Counters the control API reports; the proxy counts, the control API
/// reads, and neither imports the other.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: AtomicU64,
}

use crate::{
    fault::{Direction, Family, Fault, Invalid},
    log::{Event, FaultLog},
};

/// Most faults live at once: each is consulted on every chunk or call.
pub const FAULTS_MAX: usize = 256;

/// One live fault and what it has done.
#[derive(Debug)]
pub struct Active {
    /// The fault.
    pub fault: Fault,
    seed: u64,
    /// Connections or calls it acted on.
    fired: AtomicU64,
    // A std mutex: held for one draw.
    rng: Mutex<StdRng>,
}

impl Active {
    /// Whether this fault applies to connection `connection`: drawn once per
    /// connection from the fault's seed and the connection's number, so it
    /// does not depend on timing.
    pub fn applies_to_connection(&self, connection: u64) -> bool {
        let probability = self.fault.probability();
        if probability >= 1.0 {
            return true;
        }
        let mut rng = StdRng::seed_from_u64(mix(self.seed, connection));
        rng.random_bool(probability.max(0.0))
    }

    /// Whether this call fault takes the next call: its probability, then its count.
    pub fn takes_call(&self) -> bool {
        let probability = self.fault.probability();
        if probability < 1.0 {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            if !rng.random_bool(probability.max(0.0)) {
                return false;
            }
        }
        let limit = self.fault.count.unwrap_or(u64::MAX);
        self.fired
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |fired| {
                (fired < limit).then_some(fired + 1)
            })
            .is_ok()
    }

    /// Counts one connection this toxic acted on.
    pub fn fired_on_connection(&self) {
        self.fired.fetch_add(1, Ordering::Relaxed);
    }

    /// A uniform draw in `low..=high` from the fault's own stream.
    pub fn draw(&self, low: u64, high: u64) -> u64 {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.random_range(low..=high)
    }
}

/// A fault as listed by the control API.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// The fault, with its id.
    #[serde(flatten)]
    pub fault: Fault,
    /// Where it acts.
    pub family: Family,
    /// Connections (toxics) or calls it acted on.
    pub fired: u64,
}

/// Why a fault was not added or removed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A parameter breaks a rule.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A ledger fault was sent to the proxy.
    #[error(
        "{0} is a ledger fault: arm it with `chaos ledger {0} ...` or a schedule with --target"
    )]
    LedgerFault(&'static str),
    /// A process fault was sent to the proxy.
    #[error("{0} acts on a ledger process: carry it out with `chaos pause` or a schedule")]
    ProcessFault(&'static str),
    /// The id is taken.
    #[error("id: {0:?} is already in use; remove it first or pick another")]
    Duplicate(String),
    /// No fault has the id.
    #[error("no fault has id {0:?}")]
    NotFound(String),
    /// Too many faults.
    #[error("at most {FAULTS_MAX} faults may be live at once; remove some first")]
    Full,
}

/// The live faults.
#[derive(Debug)]
pub struct Registry {
    // Read on every chunk and call, written on changes: the readers clone
    // one Arc under a short read lock.
    faults: RwLock<Arc<Vec<Arc<Active>>>>,
    next_id: AtomicU64,
    seed: u64,
    log: FaultLog,
}

impl Registry {
    /// An empty registry; faults without a seed take one from `seed`.
    pub fn new(seed: u64, log: FaultLog) -> Self {
        Self {
            faults: RwLock::new(Arc::new(Vec::new())),
            next_id: AtomicU64::new(1),
            seed,
            log,
        }
    }

    /// The live faults.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Active>>> {
        Arc::clone(&self.faults.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds `fault`, giving it an id (`KIND-N`) and a seed if it has none.
    pub fn add(&self, mut fault: Fault) -> Result<Listed, RegistryError> {
        fault.validate()?;
        match fault.kind.family() {
            Family::Ledger => return Err(RegistryError::LedgerFault(fault.kind.name())),
            Family::Process => return Err(RegistryError::ProcessFault(fault.kind.name())),
            Family::Toxic | Family::Call => {}
        }
        let mut faults = self.faults.write().unwrap_or_else(|p| p.into_inner());
        if faults.len() >= FAULTS_MAX {
            return Err(RegistryError::Full);
        }
        if fault.id.is_empty() {
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            fault.id = format!("{}-{n}", fault.kind.name());
        }
        if faults.iter().any(|active| active.fault.id == fault.id) {
            return Err(RegistryError::Duplicate(fault.id));
        }
        let seed = fault
            .seed
            .unwrap_or_else(|| mix(self.seed, hash(&fault.id)));
        let active = Arc::new(Active {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            seed,
            fired: AtomicU64::new(0),
            fault,
        });
        let mut next = faults.as_ref().clone();
        next.push(Arc::clone(&active));
        *faults = Arc::new(next);
        drop(faults);
        self.log.write(&Event::applied(&active.fault, None));
        tracing::info!(id = %active.fault.id, kind = active.fault.kind.name(), "fault added");
        Ok(listed(&active))
    }

    /// Removes the fault with `id`.
    pub fn remove(&self, id: &str) -> Result<Listed, RegistryError> {
        let mut faults = self.faults.write().unwrap_or_else(|p| p.into_inner());
        let Some(position) = faults.iter().position(|active| active.fault.id == id) else {
            return Err(RegistryError::NotFound(id.to_owned()));
        };
        let mut next = faults.as_ref().clone();
        let removed = next.remove(position);
        *faults = Arc::new(next);
        drop(faults);
        self.log.write(&Event::removed(&removed.fault, None));
        tracing::info!(id, "fault removed");
        Ok(listed(&removed))
    }

    /// Removes every fault; returns how many there were.
    pub fn reset(&self) -> usize {
        let mut faults = self.faults.write().unwrap_or_else(|p| p.into_inner());
        let removed = std::mem::take(&mut *faults);
        drop(faults);
        for active in removed.iter() {
            self.log.write(&Event::removed(&active.fault, None));
        }
        tracing::info!(removed = removed.len(), "faults reset");
        removed.len()
    }

    /// Every live fault with its counters.
    pub fn list(&self) -> Vec<Listed> {
        self.snapshot()
            .iter()
            .map(|active| listed(active))
            .collect()
    }

    /// The toxics in `direction` that apply to connection `connection`.
    pub fn toxics(&self, direction: Direction, connection: u64) -> Vec<Arc<Active>> {
        self.snapshot()
            .iter()
            .filter(|active| {
                active.fault.kind.family() == Family::Toxic
                    && active.fault.direction() == direction
                    && active.applies_to_connection(connection)
            })
            .cloned()
            .collect()
    }

    /// The call faults that take a call to `path`, in the order added.
    pub fn call_faults(&self, path: &str) -> Vec<Arc<Active>> {
        self.snapshot()
            .iter()
            .filter(|active| {
                active.fault.kind.family() == Family::Call
                    && active.fault.matches_path(path)
                    && active.takes_call()
            })
            .cloned()
            .collect()
    }
}

fn listed(active: &Active) -> Listed {
    Listed {
        fault: active.fault.clone(),
        family: active.fault.kind.family(),
        fired: active.fired.load(Ordering::Relaxed),
    }
}

/// Mixes two numbers into one seed (SplitMix64's finalizer over their sum),
/// so nearby inputs give unrelated streams.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_add(b.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable hash of a string. DefaultHasher with no keys is deterministic.
pub fn hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultKind;

    fn registry() -> Registry {
        Registry::new(7, FaultLog::disabled())
    }

    /// Goal: the per-connection draw depends only on the seed and the
    /// connection number. Method: two registries with one seed agree on 200
    /// connections, and about half take a probability-0.5 toxic.
    #[test]
    fn connection_draws_replay_from_the_seed() {
        let draws = |registry: &Registry| {
            let mut fault = Fault::new(FaultKind::Latency {
                latency_ms: 1,
                jitter_ms: 0,
            });
            fault.probability = Some(0.5);
            registry.add(fault).unwrap();
            (0..200)
                .map(|connection| {
                    !registry
                        .toxics(Direction::Downstream, connection)
                        .is_empty()
                })
                .collect::<Vec<_>>()
        };
        let first = draws(&registry());
        assert_eq!(first, draws(&registry()));
        let taken = first.iter().filter(|taken| **taken).count();
        assert!((60..=140).contains(&taken), "{taken} of 200 took it");
    }

    /// Goal: a call fault with a count stops after that many calls, and
    /// ledger faults are refused with a pointer to the right command.
    #[test]
    fn call_counts_bound_a_fault_and_ledger_faults_are_refused() {
        let registry = registry();
        let mut fault = Fault::new(FaultKind::DropRequest);
        fault.count = Some(2);
        registry.add(fault).unwrap();
        let taken = (0..5)
            .filter(|_| {
                !registry
                    .call_faults("/overdraft.v1.Ledger/Deposit")
                    .is_empty()
            })
            .count();
        assert_eq!(taken, 2);
        let error = registry
            .add(Fault::new(FaultKind::SlowOwner { delay_ms: 1 }))
            .unwrap_err();
        assert!(
            error.to_string().contains("chaos ledger slow_owner"),
            "{error}"
        );
        assert!(matches!(
            registry.remove("nope"),
            Err(RegistryError::NotFound(_))
        ));
    }
}
