//! Crash points: named places inside an operation where the Chaos service can
//! make the process die on the spot, as a power cut or `kill -9` would.
//!
//! A crash point ends the whole process, so its switch is process-wide: one
//! static, which the sled writer thread (which holds no handle on the engine)
//! reads as easily as the modes do. Nothing in a test process arms it; the
//! crash tests arm it in a `ledger` child process over gRPC.
//!
//! Before aborting, the point flushes what is already committed, so the crash
//! lands exactly where it is named: at "between transfer legs" the debit is
//! on disk and the credit is not, whatever `--durability` says.

use std::{
    fmt,
    sync::atomic::{AtomicU8, AtomicU32, Ordering},
};

use overdraft_proto::v1 as pb;

use crate::store::Store;

/// Where an operation can be stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// In the sled writer, after a journal segment and before the checkpoint
    /// that writes its balances.
    JournalBeforeBalances,
    /// After a transfer's debit is durable, before its credit is written.
    BetweenTransferLegs,
    /// After the operation is durable, before its reply is sent.
    BeforeAck,
}

impl CrashPoint {
    const ALL: [CrashPoint; 3] = [
        CrashPoint::JournalBeforeBalances,
        CrashPoint::BetweenTransferLegs,
        CrashPoint::BeforeAck,
    ];

    /// The name used in logs, the CLI and schedules.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::JournalBeforeBalances => "journal-before-balances",
            CrashPoint::BetweenTransferLegs => "between-transfer-legs",
            CrashPoint::BeforeAck => "before-ack",
        }
    }

    /// The point named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|point| point.name() == name)
    }

    fn code(self) -> u8 {
        match self {
            CrashPoint::JournalBeforeBalances => 1,
            CrashPoint::BetweenTransferLegs => 2,
            CrashPoint::BeforeAck => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|point| point.code() == code)
    }
}

impl From<CrashPoint> for pb::CrashPoint {
    fn from(point: CrashPoint) -> Self {
        match point {
            CrashPoint::JournalBeforeBalances => pb::CrashPoint::JournalBeforeBalances,
            CrashPoint::BetweenTransferLegs => pb::CrashPoint::BetweenTransferLegs,
            CrashPoint::BeforeAck => pb::CrashPoint::BeforeAck,
        }
    }
}

impl CrashPoint {
    /// The point a wire value names; None for UNSPECIFIED or unknown values.
    pub fn from_proto(raw: i32) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|point| i32::from(pb::CrashPoint::from(*point)) == raw)
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The armed point (0: none) and how many arrivals to let pass first.
/// Atomics, not a mutex: every operation checks the switch on its hot path.
struct Switch {
    point: AtomicU8,
    skip: AtomicU32,
}

static SWITCH: Switch = Switch {
    point: AtomicU8::new(0),
    skip: AtomicU32::new(0),
};

/// Arms `point`: the process aborts at the arrival after `skip` others.
pub fn arm(point: CrashPoint, skip: u32) {
    SWITCH.skip.store(skip, Ordering::SeqCst);
    SWITCH.point.store(point.code(), Ordering::SeqCst);
}

/// Disarms any crash point.
pub fn disarm() {
    SWITCH.point.store(0, Ordering::SeqCst);
}

/// The armed point and the arrivals it still lets pass.
pub fn armed() -> Option<(CrashPoint, u32)> {
    let point = CrashPoint::from_code(SWITCH.point.load(Ordering::SeqCst))?;
    Some((point, SWITCH.skip.load(Ordering::SeqCst)))
}

/// Whether an arrival at `point` must crash; counts the arrival.
fn due(point: CrashPoint) -> bool {
    if SWITCH.point.load(Ordering::Relaxed) != point.code() {
        return false;
    }
    // Take one from `skip`; the arrival that finds it at zero crashes.
    SWITCH
        .skip
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |skip| {
            skip.checked_sub(1)
        })
        .is_err()
}

/// An operation reached `point`: if it is armed and due, make what is
/// committed durable and abort the process.
pub fn reached(point: CrashPoint, store: &dyn Store) {
    if due(point) {
        // A failed flush still crashes: the point is armed, and the restart's
        // audit tells what reached the disk.
        let flushed = store.flush();
        abort(point, flushed.is_ok());
    }
}

/// The sled writer reached `point` with its journal segment written: if it
/// is armed and due, sync the journal file and abort.
pub(crate) fn reached_in_writer(point: CrashPoint, journal: &std::fs::File) {
    if due(point) {
        let flushed = journal.sync_data();
        abort(point, flushed.is_ok());
    }
}

fn abort(point: CrashPoint, flushed: bool) -> ! {
    tracing::error!(point = %point, flushed, "chaos: crash point reached; aborting the process");
    // stderr is unbuffered; the line above is already written.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the names round-trip, so the CLI, the wire and the logs agree.
    #[test]
    fn names_round_trip() {
        for point in CrashPoint::ALL {
            assert_eq!(CrashPoint::from_name(point.name()), Some(point));
            assert_eq!(CrashPoint::from_code(point.code()), Some(point));
        }
        assert_eq!(CrashPoint::from_name("between-legs"), None);
    }
}
