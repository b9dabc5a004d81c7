//! Throughput benchmark: every mode, on uncontended accounts and on one hot
//! account, with `--durability none` and `sync`, against an embedded ledger
//! over real gRPC on loopback. Prints one row per run, plus the transport
//! ceiling (health checks at the same concurrency, measured before the modes
//! and after them) so that modes can be read as ratios of the mean ceiling
//! within one run.
//!
//! `cargo run --release -p overdraft-server --example bench -- --help`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use hdrhistogram::Histogram;
use overdraft_proto::v1::{self as pb, admin_client::AdminClient, ledger_client::LedgerClient};
use overdraft_server::config::{Durability, Mode};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Throughput of each mode, uncontended and on a hot account.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 2)]
    duration_secs: u64,
    /// Concurrent clients (closed loop: each sends when its last reply returns).
    #[arg(long, default_value_t = 64)]
    atms: usize,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Race window in ms (0 measures the modes themselves).
    #[arg(long, default_value_t = 0)]
    race_window_ms: u64,
}

#[derive(Clone, Copy, Debug)]
enum Workload {
    /// Each client deposits into its own account.
    Uncontended,
    /// Every client deposits into one account.
    Hot,
}

struct Outcome {
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    retries: u64,
    aborts: u64,
    ops: u64,
}

/// The same allocator as the `ledger` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "overdraft bench: {} clients over {} connections, {} s per run, race window {} ms",
        args.atms, args.connections, args.duration_secs, args.race_window_ms
    );
    println!(
        "{:<10} {:<14} {:<7} {:>10} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "durability",
        "workload",
        "mode",
        "ops/s",
        "ratio",
        "p50 us",
        "p99 us",
        "retry/op",
        "errors"
    );
    for durability in [Durability::None, Durability::Sync] {
        let dir = tempfile::tempdir()?;
        let mut config = overdraft_server::Config::defaults();
        config.listen = "127.0.0.1:0".parse()?;
        config.data_dir = Some(dir.path().to_owned());
        config.durability = durability;
        config.race_window_ms = args.race_window_ms;
        let ledger = overdraft_server::spawn(config).await?;
        let channels = connect_all(&ledger.url(), args.connections).await?;
        // The ceiling before the modes and after them: on a shared machine
        // throughput drifts, and the mean keeps the drift from favouring
        // the first runs or the last.
        let before = run_ceiling(&channels, &args).await;
        let mut outcomes = Vec::new();
        for workload in [Workload::Uncontended, Workload::Hot] {
            for mode in Mode::ALL {
                outcomes.push((
                    workload,
                    mode,
                    run_mode(&channels, &args, mode, workload).await?,
                ));
            }
        }
        let after = run_ceiling(&channels, &args).await;
        let ceiling_ops_per_sec = (before.ops_per_sec + after.ops_per_sec) / 2.0;
        let label = format!("{durability:?}").to_lowercase();
        for (when, ceiling) in [("before", &before), ("after", &after)] {
            println!(
                "{:<10} {:<14} {:<7} {:>10.0} {:>8.2} {:>8} {:>9} {:>8} {:>8}",
                label,
                format!("ceiling {when}"),
                "health",
                ceiling.ops_per_sec,
                ceiling.ops_per_sec / ceiling_ops_per_sec,
                ceiling.p50_us,
                ceiling.p99_us,
                "-",
                ceiling.errors
            );
        }
        for (workload, mode, outcome) in outcomes {
            println!(
                "{:<10} {:<14} {:<7} {:>10.0} {:>8.2} {:>8} {:>9} {:>8.2} {:>8}",
                label,
                format!("{workload:?}").to_lowercase(),
                mode.as_str(),
                outcome.ops_per_sec,
                outcome.ops_per_sec / ceiling_ops_per_sec,
                outcome.p50_us,
                outcome.p99_us,
                outcome.retries as f64 / outcome.ops.max(1) as f64,
                outcome.errors + outcome.aborts,
            );
        }
        ledger.stop().await?;
    }
    Ok(())
}

async fn connect_all(url: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        channels.push(Channel::from_shared(url.to_owned())?.connect().await?);
    }
    Ok(channels)
}

async fn run_ceiling(channels: &[Channel], args: &Args) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let mut clients = JoinSet::new();
    for atm in 0..args.atms {
        let mut health = HealthClient::new(channels[atm % channels.len()].clone());
        clients.spawn(async move {
            let mut histogram = new_histogram();
            let mut errors = 0;
            while Instant::now() < deadline {
                let started = Instant::now();
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                if health.check(request).await.is_err() {
                    errors += 1;
                }
                record(&mut histogram, started);
            }
            (histogram, errors)
        });
    }
    collect(clients, args.duration_secs, 0, 0).await
}

async fn run_mode(
    channels: &[Channel],
    args: &Args,
    mode: Mode,
    workload: Workload,
) -> anyhow::Result<Outcome> {
    let mut admin = AdminClient::new(channels[0].clone());
    let accounts = match workload {
        Workload::Uncontended => args.atms,
        Workload::Hot => 1,
    };
    let opening = (0..accounts)
        .map(|n| pb::OpenAccountRequest {
            account_id: format!("acct-{n}"),
            initial_balance_cents: 0,
        })
        .collect();
    admin.reset(pb::ResetRequest { accounts: opening }).await?;
    admin
        .set_mode(pb::SetModeRequest {
            mode: pb::Mode::from(mode).into(),
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let mut clients = JoinSet::new();
    for atm in 0..args.atms {
        let mut ledger = LedgerClient::new(channels[atm % channels.len()].clone());
        let account_id: Arc<str> = format!("acct-{}", atm % accounts).into();
        clients.spawn(async move {
            let mut histogram = new_histogram();
            let mut errors = 0;
            let mut op = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let request = pb::DepositRequest {
                    account_id: account_id.to_string(),
                    amount_cents: 1,
                    request_id: format!("bench-{atm}-{op}"),
                };
                if ledger.deposit(request).await.is_err() {
                    errors += 1;
                }
                record(&mut histogram, started);
                op += 1;
            }
            (histogram, errors)
        });
    }
    let stats = |reply: pb::StatsReply| {
        reply
            .modes
            .into_iter()
            .find(|m| m.mode == i32::from(pb::Mode::from(mode)))
            .map(|m| (m.retries, m.aborts))
            .unwrap_or_default()
    };
    let outcome = collect(clients, args.duration_secs, 0, 0).await;
    let (retries, aborts) = stats(admin.stats(pb::StatsRequest {}).await?.into_inner());
    Ok(Outcome {
        retries,
        aborts,
        ..outcome
    })
}

async fn collect(
    mut clients: JoinSet<(Histogram<u64>, u64)>,
    duration_secs: u64,
    retries: u64,
    aborts: u64,
) -> Outcome {
    let mut histogram = new_histogram();
    let mut errors = 0;
    while let Some(Ok((client_histogram, client_errors))) = clients.join_next().await {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = histogram.add(&client_histogram);
        errors += client_errors;
    }
    let ops = histogram.len();
    Outcome {
        ops_per_sec: ops as f64 / duration_secs.max(1) as f64,
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        errors,
        retries,
        aborts,
        ops,
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant figures: these bounds are valid constants.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, started: Instant) {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}
