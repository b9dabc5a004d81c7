//! What this process costs: CPU time and resident memory, read from the
//! kernel. Admin.Stats and /metrics report the ledger's own; the ATM reports
//! its own beside it, so a comparison between modes does not depend on the
//! client sharing the machine.

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};

/// CPU time the process has used since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// In user space.
    pub user: Duration,
    /// In the kernel on the process's behalf (syscalls: sockets, fsync).
    pub system: Duration,
}

impl CpuTime {
    /// User plus system.
    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

/// This process's CPU time; zero if the kernel refuses (it does not on Linux).
pub fn cpu_time() -> CpuTime {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return CpuTime::default();
    };
    let duration = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    CpuTime {
        user: duration(usage.user_time()),
        system: duration(usage.system_time()),
    }
}

/// A random number fixed for this process's life: tells apart processes
/// whose pids may be equal (containers, hosts).
pub fn instance() -> u64 {
    static INSTANCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INSTANCE.get_or_init(rand::random)
}

/// Resident set size now, in bytes, from `/proc/self/statm`; None off Linux.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages.saturating_mul(page_bytes()))
}

/// The kernel's page size; 4 KiB when it cannot be asked.
fn page_bytes() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|bytes| u64::try_from(bytes).ok())
        .unwrap_or(4_096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: CPU time grows with work. Method: spin and read it until 20 ms
    /// more have been counted; fail if 10 s of spinning never get there.
    #[test]
    fn cpu_time_grows_with_work() {
        // Spin until 20 ms of CPU show up, for at most 10 s of wall time: on a
        // busy machine the wall time it takes varies, the CPU it counts must not.
        let before = cpu_time();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time().total() < before.total() + Duration::from_millis(20)
            && started.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let after = cpu_time();
        assert!(
            after.total() >= before.total() + Duration::from_millis(20),
            "{before:?} -> {after:?}"
        );
    }

    /// Goal: the resident size is read. Method: it is above a MiB for any Rust test binary.
    #[test]
    fn rss_is_read_on_linux() {
        let rss = rss_bytes().expect("/proc/self/statm is readable on Linux");
        assert!(rss > 1024 * 1024, "{rss}");
    }
}
