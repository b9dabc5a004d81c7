//! The checker's benchmark: generates a history of a correct ledger (seeded),
//! then reads and checks it, printing operations per second and the peak
//! memory of this process.
//!
//! ```sh
//! cargo run --release -p overdraft-history --example check_bench -- 10000000 1000
//! cargo run --release -p overdraft-history --example check_bench -- 10000000 8
//! ```
//! Arguments: operations (default 1,000,000), accounts (1,000), ATMs (64),
//! unknown-outcome probability (0.001).

use std::{
    fs::File,
    io::BufWriter,
    time::{Duration, Instant},
};

use overdraft_history::{
    check::{Evidence, check},
    generate::{self, Config},
    read_files,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |index: usize, default: u64| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(args
            .get(index)
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let operations = number(0, 1_000_000)?;
    let accounts = u32::try_from(number(1, 1_000)?)?;
    let atms = u32::try_from(number(2, 64)?)?;
    let unknown_probability: f64 = args.get(3).map(|a| a.parse()).transpose()?.unwrap_or(0.001);
    let directory = tempfile::tempdir()?;
    let path = directory.path().join("history.jsonl");
    let config = Config {
        seed: 7,
        accounts,
        atms,
        operations,
        unknown_probability,
        ..Config::default()
    };
    let started = Instant::now();
    let mut out = BufWriter::new(File::create(&path)?);
    let lines = generate::write(&config, &mut out)?;
    drop(out);
    let bytes = std::fs::metadata(&path)?.len();
    println!(
        "generated {lines} lines ({:.0} MB) in {:.1} s: {operations} operations, {accounts} accounts, {atms} ATMs, unknown p={unknown_probability}",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let run = read_files(&[&path])?;
    let read = started.elapsed();
    println!(
        "after reading: RSS {} MB, {} bytes per operation",
        rss_kb("VmRSS:") / 1024,
        std::mem::size_of::<overdraft_history::read::Op>()
    );
    let started = Instant::now();
    let report = check(&run, &Evidence::default(), Duration::from_secs(60));
    let checked = started.elapsed();
    let total = read + checked;
    let ops = run.ops.len() as f64;
    println!(
        "read {:.2} s ({:.0} ops/s), check {:.2} s ({:.0} ops/s), total {:.2} s ({:.0} ops/s)",
        read.as_secs_f64(),
        ops / read.as_secs_f64(),
        checked.as_secs_f64(),
        ops / checked.as_secs_f64(),
        total.as_secs_f64(),
        ops / total.as_secs_f64(),
    );
    println!(
        "verdict {:?}, {} anomalies, {} unknown outcomes ({} found applied), peak RSS {} MB",
        report.verdict,
        report.anomalies.len(),
        report.counts.unknown,
        report.counts.unknown_inferred_applied,
        rss_kb("VmHWM:") / 1024
    );
    for anomaly in report.anomalies.iter().take(3) {
        println!("  {}: {}", anomaly.kind, anomaly.detail);
    }
    Ok(())
}

/// A memory figure from /proc/self/status (VmHWM: the most this process held).
fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}
