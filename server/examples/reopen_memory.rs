//! Where a reopen's memory goes: opens a data directory a ledger left, with
//! sled alone (its own recovery, then a read of the whole journal tree) or
//! as the ledger's store (sled plus the checkpoint replay, the request index
//! and the filter of seen ids), printing resident memory and the peak after
//! each step. Run each on its own copy of the directory: a process's peak
//! only grows.
//!
//! `cargo run --release -p overdraft-server --example reopen_memory -- DIR [sled|store]`

use std::{path::PathBuf, time::Instant};

use overdraft_server::{process, store::SledStore};

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn report(step: &str, started: Instant) {
    let rss_mib = process::rss_bytes().unwrap_or(0) / (1024 * 1024);
    println!(
        "{step}: {:.2} s, resident {rss_mib} MiB, peak {} MiB",
        started.elapsed().as_secs_f64(),
        peak_kib() / 1024
    );
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: reopen_memory DIR [sled|store]"))?,
    );
    let what = args.next().unwrap_or_else(|| "store".to_owned());
    report("start", Instant::now());
    let started = Instant::now();
    match what.as_str() {
        "sled" => {
            let db = sled::Config::new()
                .path(&dir)
                .cache_capacity(256 * 1024 * 1024)
                .open()?;
            report("sled opened (its recovery)", started);
            let mut bytes = 0u64;
            for value in db.open_tree("journal")?.iter().values() {
                bytes += u64::try_from(value?.len()).unwrap_or(0);
            }
            report(&format!("journal tree read ({bytes} bytes)"), started);
        }
        "store" => {
            let store = SledStore::open(&dir)?;
            report(
                "store opened (sled, checkpoint replay, index, seen ids)",
                started,
            );
            drop(store);
        }
        other => anyhow::bail!("unknown step {other:?}: sled or store"),
    }
    Ok(())
}
