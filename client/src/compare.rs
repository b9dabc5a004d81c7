//! `atm compare`: the same seeded load in each mode, side by side, with the
//! transport ceiling (health checks at the same concurrency) measured in the
//! same run so that every mode reads as a ratio of what gRPC alone can do.

use std::time::{Duration, Instant};

use overdraft_server::config::Mode;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    connect::{ClientError, Clients},
    latency::Latency,
    load::{
        self, FlushSummary, LoadArgs, LoadReport,
        cost::{CpuMeter, CpuPerOp},
    },
    report,
};

/// One mode's row, in the versioned JSON schema.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRun {
    /// The mode.
    pub mode: String,
    /// Throughput.
    pub ops_per_sec: f64,
    /// Throughput over the ceiling.
    pub ceiling_ratio: f64,
    /// Latency over all methods.
    pub latency_us: Percentiles,
    /// What the audit found.
    pub anomalies: Anomalies,
    /// CAS retries.
    pub retries: u64,
    /// Aborted operations.
    pub aborts: u64,
    /// Accounts whose final balance differs from the client's model.
    pub reconcile_mismatches: usize,
    /// CPU the ATM process used, percent of one core.
    pub client_cpu_percent: f64,
    /// CPU per operation in the ledger and in the ATM process, in µs.
    pub cpu_per_op: CpuPerOp,
    /// The ledger's CPU per operation over the ceiling's (an empty call's).
    pub ledger_cpu_ratio: f64,
    /// Durable flushes during the run, under `--durability sync`.
    pub flushes: Option<FlushSummary>,
}

/// One measurement of the transport ceiling.
#[derive(Clone, Debug, Serialize)]
pub struct CeilingRun {
    /// Health checks per second.
    pub ops_per_sec: f64,
    /// Their latency.
    pub latency_us: Percentiles,
    /// CPU per health check in the ledger and in the ATM process, in µs.
    pub cpu_per_op: CpuPerOp,
}

/// Latency percentiles in µs.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    pub p999: u64,
}

/// Anomalies of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Anomalies {
    /// Overdrafts.
    pub overdrafts: u64,
    /// Lost updates.
    pub lost_updates: u64,
    /// Money created (+) or destroyed (-).
    pub money_delta_cents: i64,
}

/// `atm compare --json`: `{"schema":1,"ceiling_ops_per_sec":F,"runs":[...]}`.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// Format version.
    pub schema: u32,
    /// Empty RPCs per second at the same concurrency: the mean of the
    /// measurements before and after the modes, which ratios divide by.
    pub ceiling_ops_per_sec: f64,
    /// The ceiling measured before the first mode and after the last. Apart,
    /// they show how much the machine drifted during the run.
    pub ceiling_runs_ops_per_sec: Vec<f64>,
    /// Those two measurements in full: latency and CPU per call.
    pub ceiling_runs: Vec<CeilingRun>,
    /// The ledger's CPU per health check, the mean of the two: what the
    /// modes' `ledger_cpu_ratio` divides by.
    pub ceiling_ledger_cpu_us_per_op: f64,
    /// The workload.
    pub workload: LoadArgs,
    /// One row per mode.
    pub runs: Vec<CompareRun>,
}

/// Runs the ceiling, the load in each mode, then the ceiling again: on a
/// shared machine throughput drifts over a run, and bracketing the modes
/// keeps the drift from favouring the first mode or the last.
pub async fn run(
    url: &str,
    modes: &[Mode],
    args: &LoadArgs,
    show_progress: bool,
) -> Result<CompareReport, ClientError> {
    let before = ceiling(url, args).await?;
    if show_progress {
        eprintln!(
            "atm compare: transport ceiling before the modes {:.0} ops/s",
            before.ops_per_sec
        );
    }
    let mut loads = Vec::new();
    for mode in modes {
        if show_progress {
            eprintln!("atm compare: running {mode}");
        }
        loads.push(load::run(url, args, Some(*mode), show_progress).await?);
    }
    let after = ceiling(url, args).await?;
    if show_progress {
        eprintln!(
            "atm compare: transport ceiling after the modes {:.0} ops/s",
            after.ops_per_sec
        );
    }
    let mean = (before.ops_per_sec + after.ops_per_sec) / 2.0;
    let ledger_cpu = (before.cpu_per_op.ledger_us + after.cpu_per_op.ledger_us) / 2.0;
    Ok(CompareReport {
        schema: 1,
        ceiling_ops_per_sec: mean,
        ceiling_runs_ops_per_sec: vec![before.ops_per_sec, after.ops_per_sec],
        ceiling_ledger_cpu_us_per_op: ledger_cpu,
        ceiling_runs: vec![before, after],
        workload: args.clone(),
        runs: loads
            .iter()
            .map(|load| row(load, mean, ledger_cpu))
            .collect(),
    })
}

fn row(load: &LoadReport, ceiling: f64, ceiling_ledger_cpu_us: f64) -> CompareRun {
    let all = load.latency_us.get("all").cloned().unwrap_or_default();
    CompareRun {
        mode: load.mode.clone(),
        ops_per_sec: load.ops_per_sec,
        ceiling_ratio: load.ops_per_sec / ceiling.max(1e-9),
        latency_us: Percentiles {
            p50: all.p50,
            p99: all.p99,
            p999: all.p999,
        },
        anomalies: load
            .audit
            .as_ref()
            .map(|audit| Anomalies {
                overdrafts: audit.overdrafts,
                lost_updates: audit.lost_updates,
                money_delta_cents: audit.money_delta_cents,
            })
            .unwrap_or_default(),
        retries: load.retries,
        aborts: load.aborts,
        reconcile_mismatches: load.reconciliation.mismatched.len(),
        client_cpu_percent: load.client_cpu_percent,
        cpu_per_op: load.cpu_per_op,
        ledger_cpu_ratio: load.cpu_per_op.ledger_us / ceiling_ledger_cpu_us.max(1e-9),
        flushes: load.flushes.clone(),
    }
}

/// Health checks with the load's ATMs, connections and length: their rate,
/// latency and CPU cost on both sides.
pub async fn ceiling(url: &str, args: &LoadArgs) -> Result<CeilingRun, ClientError> {
    let targets = crate::connect::targets(url)?;
    let clients = Clients::connect(&targets[0]).await?;
    let channels = crate::connect::spread(&targets, args.connections).await?;
    let mut meter = CpuMeter::start(&clients, &targets[1..]).await?;
    let started = Instant::now();
    let deadline = args.run_duration().map(|d| started + d);
    let quota = args.ops.map(|ops| ops / u64::from(args.atms).max(1));
    let mut atms = JoinSet::new();
    for atm in 0..args.atms {
        let mut health = HealthClient::new(channels[atm as usize % channels.len()].clone());
        atms.spawn(async move {
            let mut latency = Latency::default();
            let mut sent = 0u64;
            while quota.is_none_or(|q| sent < q) && deadline.is_none_or(|d| Instant::now() < d) {
                let began = Instant::now();
                let _ = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                latency.record(began.elapsed());
                sent += 1;
            }
            latency
        });
    }
    let mut latency = Latency::default();
    while let Some(joined) = atms.join_next().await {
        latency.merge(&joined.map_err(|e| ClientError::Internal(e.to_string()))?);
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    let cpu_per_op = meter.finish(latency.count()).await?.per_op;
    Ok(CeilingRun {
        ops_per_sec: latency.count() as f64 / elapsed.as_secs_f64(),
        latency_us: Percentiles {
            p50: latency.quantile_us(0.50),
            p99: latency.quantile_us(0.99),
            p999: latency.quantile_us(0.999),
        },
        cpu_per_op,
    })
}

/// The side-by-side table: the ceiling's two measurements, then each mode.
pub fn table(report: &CompareReport) -> String {
    let runs: Vec<String> = report
        .ceiling_runs_ops_per_sec
        .iter()
        .map(|ceiling| format!("{ceiling:.0}"))
        .collect();
    let mut out = format!(
        "transport ceiling (health checks, same concurrency): {:.0} ops/s (before and after the modes: {}); \
         ratio: throughput over it; ledger cpu ratio: the ledger's CPU per operation over an empty call's\n",
        report.ceiling_ops_per_sec,
        runs.join(", ")
    );
    let mut table = report::grid(
        [
            "run",
            "ops/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "ledger µs/op",
            "ledger cpu ratio",
            "atm µs/op",
            "overdrafts",
            "lost updates",
            "money cents",
            "retries",
            "aborts",
            "reconciled",
            "atm cpu",
        ],
        1,
    );
    let ceiling_row = |name: &str, run: &CeilingRun| {
        vec![
            name.to_owned(),
            format!("{:.0}", run.ops_per_sec),
            format!(
                "{:.2}",
                run.ops_per_sec / report.ceiling_ops_per_sec.max(1e-9)
            ),
            report::ms(run.latency_us.p50),
            report::ms(run.latency_us.p99),
            report::ms(run.latency_us.p999),
            format!("{:.1}", run.cpu_per_op.ledger_us),
            format!(
                "{:.2}",
                run.cpu_per_op.ledger_us / report.ceiling_ledger_cpu_us_per_op.max(1e-9)
            ),
            format!("{:.1}", run.cpu_per_op.atm_us),
        ]
    };
    if let Some(first) = report.ceiling_runs.first() {
        table.add_row(ceiling_row("ceiling (before)", first));
    }
    for run in &report.runs {
        table.add_row(mode_row(run));
    }
    if let Some(last) = report.ceiling_runs.get(1) {
        table.add_row(ceiling_row("ceiling (after)", last));
    }
    out.push_str(&format!("{table}\n"));
    for run in &report.runs {
        if let Some(f) = &run.flushes {
            out.push_str(&format!(
                "{}: {:.0} flushes/s, {:.1} operations each, {:.2} ms mean, {:.2} ms max, flushing {:.0}% of the time\n",
                run.mode,
                f.flushes_per_sec,
                f.operations_per_flush,
                f.flush_us_mean / 1e3,
                f.flush_us_max as f64 / 1e3,
                100.0 * f.busy_fraction
            ));
        }
    }
    out
}

/// One mode's row of the side-by-side table.
fn mode_row(run: &CompareRun) -> Vec<String> {
    vec![
        run.mode.clone(),
        format!("{:.0}", run.ops_per_sec),
        format!("{:.2}", run.ceiling_ratio),
        report::ms(run.latency_us.p50),
        report::ms(run.latency_us.p99),
        report::ms(run.latency_us.p999),
        format!("{:.1}", run.cpu_per_op.ledger_us),
        format!("{:.2}", run.ledger_cpu_ratio),
        format!("{:.1}", run.cpu_per_op.atm_us),
        run.anomalies.overdrafts.to_string(),
        run.anomalies.lost_updates.to_string(),
        report::signed(run.anomalies.money_delta_cents),
        run.retries.to_string(),
        run.aborts.to_string(),
        if run.reconcile_mismatches == 0 {
            "yes".to_owned()
        } else {
            format!("{} off", run.reconcile_mismatches)
        },
        format!("{:.0}%", run.client_cpu_percent),
    ]
}

/// A self-contained HTML page (inline SVG, no scripts, no network) with
/// throughput, tail latency and anomalies per mode.
pub fn html(report: &CompareReport) -> String {
    let modes: Vec<&str> = report.runs.iter().map(|r| r.mode.as_str()).collect();
    let throughput = bar_chart(
        "throughput",
        "Throughput (ops/s); the dashed line is the transport ceiling",
        &modes,
        &[("ops/s", report.runs.iter().map(|r| r.ops_per_sec).collect())],
        Some(report.ceiling_ops_per_sec),
    );
    let latency = bar_chart(
        "latency",
        "Latency (ms): p50, p99, p99.9",
        &modes,
        &[
            (
                "p50",
                report
                    .runs
                    .iter()
                    .map(|r| r.latency_us.p50 as f64 / 1e3)
                    .collect(),
            ),
            (
                "p99",
                report
                    .runs
                    .iter()
                    .map(|r| r.latency_us.p99 as f64 / 1e3)
                    .collect(),
            ),
            (
                "p99.9",
                report
                    .runs
                    .iter()
                    .map(|r| r.latency_us.p999 as f64 / 1e3)
                    .collect(),
            ),
        ],
        None,
    );
    let anomalies = bar_chart(
        "anomalies",
        "Anomalies found by the audit: overdrafts, lost updates",
        &modes,
        &[
            (
                "overdrafts",
                report
                    .runs
                    .iter()
                    .map(|r| r.anomalies.overdrafts as f64)
                    .collect(),
            ),
            (
                "lost updates",
                report
                    .runs
                    .iter()
                    .map(|r| r.anomalies.lost_updates as f64)
                    .collect(),
            ),
        ],
        None,
    );
    let figures = table(report);
    let page = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "overdraft: mode comparison" }
                style { (maud::PreEscaped(PAGE_STYLE)) }
            }
            body {
                h1 { "overdraft: the same load in each mode" }
                p {
                    (report.workload.atms) " ATMs, " (report.workload.accounts) " accounts, mix "
                    (format!("{:?}", report.workload.mix)) ", seed " (report.workload.seed)
                    ". Ratios are to the transport ceiling measured in the same run."
                }
                (throughput)
                (latency)
                (anomalies)
                h2 { "Figures" }
                pre { (figures) }
            }
        }
    };
    page.into_string()
}

const PAGE_STYLE: &str = "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}\
pre{background:#f4f4f4;padding:1em;overflow-x:auto}svg{display:block;margin:1em 0}";

const COLORS: [&str; 3] = ["#3b6ea8", "#d9822b", "#7a4fa3"];

/// A grouped bar chart, one group per mode, as SVG markup (maud escapes
/// every text and attribute).
fn bar_chart(
    id: &str,
    title: &str,
    modes: &[&str],
    series: &[(&str, Vec<f64>)],
    line: Option<f64>,
) -> maud::Markup {
    let (width, height, left, bottom) = (720.0, 260.0, 70.0, 40.0);
    let plot_height = height - bottom - 30.0;
    let max = series
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .chain(line)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let group_width = (width - left - 10.0) / modes.len().max(1) as f64;
    let bar_width = group_width * 0.8 / series.len().max(1) as f64;
    let bars: Vec<(f64, f64, f64, &str, String)> = modes
        .iter()
        .enumerate()
        .flat_map(|(m, mode)| {
            series.iter().enumerate().map(move |(s, (name, values))| {
                let value = values.get(m).copied().unwrap_or(0.0);
                let bar_height = plot_height * value / max;
                let x = left + 5.0 + group_width * m as f64 + bar_width * s as f64;
                (
                    x,
                    height - bottom - bar_height,
                    bar_height,
                    COLORS[s % COLORS.len()],
                    format!("{mode} {name}: {}", format_number(value)),
                )
            })
        })
        .collect();
    let line_y = line.map(|line| height - bottom - plot_height * line / max);
    maud::html! {
        h2 { (title) }
        svg id=(id) xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) role="img" aria-label=(title) {
            text x="5" y="20" font-size="12" { (format_number(max)) }
            line x1=(left) y1="30" x2=(left) y2=(height - bottom) stroke="#888" {}
            @for (x, y, bar_height, color, label) in &bars {
                rect class="bar" x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(format!("{:.1}", bar_width * 0.95))
                    height=(format!("{bar_height:.1}")) fill=(color) { title { (label) } }
            }
            @for (m, mode) in modes.iter().enumerate() {
                text x=(format!("{:.1}", left + 5.0 + group_width * m as f64 + group_width * 0.4)) y=(height - bottom + 18.0)
                    font-size="13" text-anchor="middle" { (mode) }
            }
            @if let Some(y) = line_y {
                line x1=(left) y1=(format!("{y:.1}")) x2=(width - 5.0) y2=(format!("{y:.1}")) stroke="#c00" stroke-dasharray="6 4" {}
            }
            @for (s, (name, _)) in series.iter().enumerate() {
                @let x = left + 10.0 + 110.0 * s as f64;
                rect x=(x) y=(height - 12.0) width="10" height="10" fill=(COLORS[s % COLORS.len()]) {}
                text x=(x + 14.0) y=(height - 3.0) font-size="12" { (name) }
            }
        }
    }
}

fn format_number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}
