//! overdraft's ledger: a bank ledger that races on purpose. Account operations
//! run in one of four consistency modes (`unsafe`, `mutex`, `cas`, `actor`),
//! switchable while serving, over sled, behind gRPC; an audit names every
//! overdraft, lost update and cent created or destroyed.
//!
//! # Layout
//! - [`config`]: the `ledger` command line and the mode and policy enums.
//! - [`bank`]: money rules with no I/O: ids, amounts, [`bank::apply`].
//! - [`store`]: the storage trait; sled on disk, memory, or PostgreSQL shared by replicas.
//! - [`journal`]: journal entries and the replies kept for idempotency.
//! - [`race`]: the race hook, the one seam where timing faults enter.
//! - [`chaos`]: faults armed at run time: the barrier, lost acknowledgements.
//! - [`crash`]: crash points, where an armed fault aborts the process.
//! - [`context`]: what every mode runs with ([`context::Core`]), which the engine builds.
//! - [`modes`]: the four modes and the read-check-write step they share.
//! - [`engine`]: mode switching, idempotency, durable acks.
//! - [`durability`]: group commit for `--durability sync`.
//! - [`audit`]: anomalies found in the journal and balances, as a fold.
//! - [`export`]: the journal streamed on the wire (Admin.ExportJournal).
//! - [`service`]: the gRPC services; the one place errors become `Status`.
//! - [`auth`]: the admin token in front of Admin, Chaos and Replica beyond loopback.
//! - [`peers`]: calls to the other replicas (actor mode's forwarding and legs).
//! - [`stats`]: what the ledger counts and times; [`metrics`]: `/metrics` for Prometheus;
//!   [`process`]: the process's own CPU time and memory.
//! - [`runtime`]: the async runtime the binaries run on, sized by `--threads`.
//! - [`run`] / [`spawn`]: serve on a bound listener until a shutdown future completes;
//!   [`serve`]: bind, announce the address, serve until a signal (the binary).

pub mod audit;
pub mod auth;
pub mod bank;
pub mod chaos;
pub mod config;
pub mod context;
pub mod crash;
pub(crate) mod durability;
pub mod engine;
pub mod error;
pub mod export;
pub mod journal;
pub mod metrics;
pub mod modes;
pub mod peers;
pub mod process;
pub mod race;
pub mod runtime;
pub mod service;
pub mod stats;
pub mod store;
pub mod telemetry;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use overdraft_proto::v1::{
    admin_server::AdminServer, chaos_server::ChaosServer, ledger_server::LedgerServer,
    replica_server::ReplicaServer,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{service::interceptor::InterceptedService, transport::server::TcpIncoming};

pub use crate::{config::Config, engine::Engine, service::LedgerService};
use crate::{
    config::StoreKind,
    store::{MemoryStore, SledStore, Store},
};

/// Largest gRPC message accepted: 1 MiB. The biggest legitimate request is a
/// Reset opening [`service::RESET_ACCOUNTS_MAX`] accounts (well under this);
/// anything larger is refused with RESOURCE_EXHAUSTED before it is decoded.
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// Requests served at once on one connection; more wait in HTTP/2 flow control.
pub const REQUESTS_PER_CONNECTION_MAX: usize = 1_024;

/// How long HTTP/2 keepalive pings may go unanswered before a connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens the store the configuration names: sled in `--data-dir`, a
/// temporary sled database, or memory.
pub async fn open_store(config: &Config, addr: SocketAddr) -> anyhow::Result<Arc<dyn Store>> {
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    match config.store {
        StoreKind::Memory => return Ok(Arc::new(MemoryStore::new())),
        StoreKind::Postgres => return open_postgres(config, addr).await,
        StoreKind::Sled => {}
    }
    let store = match &config.data_dir {
        Some(dir) => SledStore::open(dir)
            .map_err(|e| anyhow::anyhow!("cannot open --data-dir {}: {e}", dir.display()))?,
        None => SledStore::temporary()?,
    };
    Ok(Arc::new(store))
}

/// Where other replicas reach this one when `--advertise` is not given:
/// the listening address, or the host's name when it listens on every one.
fn advertised(addr: SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return format!("http://{addr}");
    }
    let host = nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("http://{host}:{}", addr.port())
}

#[cfg(not(feature = "shuttle"))]
async fn open_postgres(config: &Config, addr: SocketAddr) -> anyhow::Result<Arc<dyn Store>> {
    let url = config
        .database_url
        .as_ref()
        .map(config::DatabaseUrl::expose)
        .unwrap_or_default();
    let replica = match &config.replica {
        Some(name) => name.clone(),
        None => {
            let host = nix::unistd::gethostname()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "ledger".into());
            format!("{host}:{}", addr.port())
        }
    };
    let pool_size = usize::try_from(config.pool_size).unwrap_or(store::POOL_SIZE_DEFAULT);
    let store = store::PostgresStore::connect(url, &replica, pool_size, config.isolation)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open --store postgres: {e}"))?;
    tracing::info!(%replica, pool_size, "store: postgres");
    Ok(Arc::new(store))
}

#[cfg(feature = "shuttle")]
async fn open_postgres(_config: &Config, _addr: SocketAddr) -> anyhow::Result<Arc<dyn Store>> {
    anyhow::bail!("--store postgres is not built into the shuttle test build")
}

/// The connections a listener accepts, with Nagle's algorithm off. A gRPC
/// reply is one small write; with Nagle on, a reply written while the peer
/// delays its ACK waits up to 40 ms (Linux's delayed-ACK timer), which is
/// what p99.9 measured before this. tonic's `Server::tcp_nodelay` applies
/// only to listeners it binds itself, so the accepted sockets get it here.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Binds `--metrics-listen` when given.
async fn bind_metrics(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} (--metrics-listen): {e}; pick another address")
    })?;
    Ok(Some(listener))
}

/// Serves the ledger on `listener` (and `/metrics` when `--metrics-listen`
/// is given) until `shutdown` completes, then drains requests in flight and
/// flushes the store.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = bind_metrics(&config).await?;
    run_with_metrics(listener, metrics, config, shutdown).await
}

/// [`run`], with the metrics listener bound by the caller (who may need its
/// address first, as with port 0).
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        config = %serde_json::to_string(&config).unwrap_or_default(),
        overdraft = ?config.overdraft_policy(),
        "ledger starting"
    );
    let mut config = config;
    if config.store == StoreKind::Postgres && config.advertise.is_none() {
        config.advertise = Some(advertised(addr));
    }
    let store = open_store(&config, addr).await?;
    let engine = Engine::start(&config, store)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?;
    let service = LedgerService::new(Arc::clone(&engine));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LedgerServer<LedgerService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<LedgerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(overdraft_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let ledger = LedgerServer::new(service.clone())
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let guard = auth::AdminGuard::new(addr, config.admin_token.as_deref());
    if guard.required() && config.admin_token.is_none() {
        tracing::warn!(%addr, "listening beyond loopback without --admin-token: Admin and Chaos refuse every call");
    }
    let admin = AdminServer::new(service.clone())
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let replica = ReplicaServer::new(service.clone())
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let chaos = ChaosServer::new(service)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);

    // One shutdown for both servers: when it comes, each stops taking new
    // requests and finishes those in flight.
    let (stopped, stop_seen) = tokio::sync::watch::channel(false);
    let metrics_task = metrics_listener
        .map(|listener| spawn_metrics(listener, &engine, stop_seen))
        .transpose()?;
    let shutdown = async move {
        shutdown.await;
        let _ = stopped.send(true);
    };
    tracing::info!(%addr, mode = %config.mode, "ledger serving");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ledger)
        .add_service(InterceptedService::new(admin, guard.clone()))
        .add_service(InterceptedService::new(replica, guard.clone()))
        .add_service(InterceptedService::new(chaos, guard))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    // No call is in flight now: the accounts this replica owned go to the
    // next replica that calls, not after their leases run out.
    match engine.release_leases().await {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "gave up the actor leases held here"),
        Err(error) => {
            tracing::warn!(%error, "could not give up the leases held here; they run out by themselves")
        }
    }
    // The store is flushed first: a metrics server that failed must not
    // cost an acknowledged operation its place on disk.
    let flushed = engine
        .flush()
        .map_err(|e| anyhow::anyhow!("final flush failed: {e}"));
    if let Some(task) = metrics_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the metrics server failed"),
            Err(error) => tracing::error!(%error, "the metrics server panicked"),
        }
    }
    flushed?;
    tracing::info!("ledger stopped; store flushed");
    Ok(())
}

/// Serves `/metrics` on `listener` in a task of its own until `stop` turns true.
fn spawn_metrics(
    listener: TcpListener,
    engine: &Arc<Engine>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let addr = listener.local_addr()?;
    let exporter = Arc::new(metrics::Metrics::new(Arc::clone(engine)));
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        metrics::serve(listener, exporter, stopped).await
    });
    tracing::info!(%addr, "metrics serving at /metrics");
    Ok(task)
}

/// A ledger serving in the background, for embedding (the ATM demo, tests).
#[derive(Debug)]
pub struct RunningLedger {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when `--metrics-listen` was given.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningLedger {
    /// `http://ADDR`, for a tonic client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it gracefully and waits until the store is flushed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

/// Binds `config.listen` (port 0 picks one) and serves in a background task.
pub async fn spawn(config: Config) -> anyhow::Result<RunningLedger> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let metrics = bind_metrics(&config).await?;
    let metrics_addr = metrics.as_ref().map(TcpListener::local_addr).transpose()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run_with_metrics(listener, metrics, config, async {
        let _ = stopped.await;
    }));
    Ok(RunningLedger {
        addr,
        metrics_addr,
        stop: Some(stop),
        task,
    })
}

/// Binds `config.listen`, prints `listening on ADDR` on stdout (scripts and
/// tests read the bound address from it, useful with port 0), and serves
/// until SIGINT or SIGTERM: what the `ledger` binary does.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e}; pick another --listen",
            config.listen
        )
    })?;
    let metrics = bind_metrics(&config).await?;
    println!("listening on {}", listener.local_addr()?);
    if let Some(metrics) = &metrics {
        println!("metrics on http://{}/metrics", metrics.local_addr()?);
    }
    run_with_metrics(listener, metrics, config, shutdown_signal()).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (docker stop).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received; draining");
}
