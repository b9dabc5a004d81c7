//! `/metrics` in the Prometheus text format (`ledger --metrics-listen ADDR`).
//!
//! The distributions in [`crate::stats::Distributions`] are registered once;
//! everything else is read at scrape time by a collector, from the counters
//! Admin.Stats reports and from the kernel, so nothing is counted twice.
//! Every metric is listed in the README.

use std::{future::Future, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{config::Mode, engine::Engine, stats::Stats};

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry a scrape encodes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Registers the engine's distributions and the scrape-time collector.
    pub fn new(engine: Arc<Engine>) -> Self {
        let mut registry = Registry::default();
        let distributions = &engine.stats().distributions;
        registry.register(
            "overdraft_operations",
            "Operations finished, by the mode they ran in, the method and the gRPC code",
            distributions.operations.clone(),
        );
        registry.register(
            "overdraft_operation_duration_seconds",
            "Time an operation spent inside the ledger (a durable wait included)",
            distributions.latency_seconds.clone(),
        );
        registry.register(
            "overdraft_flush_duration_seconds",
            "Durable flushes (group commits under --durability sync): write-out and fsync time",
            distributions.flush_seconds.clone(),
        );
        registry.register(
            "overdraft_flush_batch_operations",
            "Operations one durable flush acknowledged",
            distributions.flush_batch_operations.clone(),
        );
        registry.register(
            "overdraft_lock_wait_duration_seconds",
            "Mutex-mode waits for a lock another operation held",
            distributions.lock_wait_seconds.clone(),
        );
        registry.register(
            "overdraft_audit_findings",
            "Findings of the last Admin.Audit, by kind",
            distributions.audit_findings.clone(),
        );
        registry.register_collector(Box::new(Snapshot { engine }));
        Self { registry }
    }

    /// The text a scrape returns.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail: fmt::Write for String is infallible.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
}

/// What is read at scrape time: the Admin.Stats counters, the mode, the
/// actor mailboxes, and the process's CPU and memory.
#[derive(Debug)]
struct Snapshot {
    engine: Arc<Engine>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = &self.engine.stats();
        type Read = fn(&crate::stats::ModeCounters) -> &std::sync::atomic::AtomicU64;
        let per_mode: [(&str, &str, Read); 6] = [
            (
                "overdraft_refusals",
                "Operations the bank's rules refused, by mode (zeroed by Admin.Reset)",
                |c| &c.refusals,
            ),
            (
                "overdraft_cas_retries",
                "Compare-and-swap retries after a version conflict (zeroed by Admin.Reset)",
                |c| &c.retries,
            ),
            (
                "overdraft_aborts",
                "Operations aborted: CAS retries exhausted or a lock wait past the bound (zeroed by Admin.Reset)",
                |c| &c.aborts,
            ),
            (
                "overdraft_deadlocks_detected",
                "Lock waits past the bound while holding another lock (zeroed by Admin.Reset)",
                |c| &c.deadlocks_detected,
            ),
            (
                "overdraft_forwarded",
                "Actor calls and transfer legs handed to the replica owning the account (zeroed by Admin.Reset)",
                |c| &c.forwarded,
            ),
            (
                "overdraft_stale_writes_fenced",
                "Actor writes the store refused for a stale lease's fencing token (zeroed by Admin.Reset)",
                |c| &c.stale_writes_fenced,
            ),
        ];
        for (name, help, read) in per_mode {
            let metric = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            for mode in Mode::ALL {
                let counter = ConstCounter::new(Stats::read(read(stats.mode(mode))));
                counter.encode(family.encode_family(&[("mode", mode.as_str())])?)?;
            }
        }
        counter(
            &mut encoder,
            "overdraft_replays",
            "Mutations answered from the idempotency table (zeroed by Admin.Reset)",
            Stats::read(&stats.replays),
        )?;
        let current = self.engine.mode_now();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "overdraft_mode",
            "1 for the mode new operations start in",
            None,
            gauge.metric_type(),
        )?;
        for mode in Mode::ALL {
            ConstGauge::new(i64::from(mode == current))
                .encode(family.encode_family(&[("mode", mode.as_str())])?)?;
        }
        let (queued, fullest) = self.engine.mailbox_depth();
        gauge_of(
            &mut encoder,
            "overdraft_actor_mailbox_depth",
            "Messages queued in all actor-mode owners' mailboxes",
            queued,
        )?;
        gauge_of(
            &mut encoder,
            "overdraft_actor_mailbox_depth_max",
            "Messages queued in the fullest actor-mode mailbox",
            fullest,
        )?;
        process(&mut encoder)
    }
}

/// The standard process metrics, named as Prometheus clients name them.
fn process(encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let cpu = crate::process::cpu_time();
    let seconds = ConstCounter::new(cpu.total().as_secs_f64());
    let metric = encoder.encode_descriptor(
        "process_cpu_seconds",
        "User and system CPU time the ledger has used",
        None,
        seconds.metric_type(),
    );
    seconds.encode(metric?)?;
    if let Some(rss) = crate::process::rss_bytes() {
        gauge_of(
            encoder,
            "process_resident_memory_bytes",
            "Resident set size",
            usize::try_from(rss).unwrap_or(usize::MAX),
        )?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

fn gauge_of(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}
