//! The proxy: accepts ATM connections, runs each direction of each through
//! the toxics, serves the calls inside it over HTTP/2 through the call
//! faults, and forwards them to the ledger.
//!
//! ```text
//! ATM --tcp--> [upstream pump: toxics] --> HTTP/2 server: call faults --> ledger channel
//! ATM <--tcp-- [downstream pump: toxics] <--'
//! ```

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use overdraft_proto::transport::Channel;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};

use crate::{
    calls::Calls,
    control,
    fault::Direction,
    registry::{ProxyStats, Registry},
    toxic::{Close, Pump},
};

/// Most client connections at once; past this, new ones wait to be accepted.
pub const CONNECTIONS_MAX: usize = 1_024;

/// Bytes buffered between a pump and the HTTP/2 server of one connection.
const PIPE_BYTES: usize = 64 * 1024;

/// Most ledgers one proxy may front (the replicas of one ledger).
pub const UPSTREAMS_MAX: usize = 16;

/// How long to wait for the ledger's TCP handshake before a call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `run` needs.
#[derive(Debug)]
pub struct Proxy {
    /// The live faults.
    pub registry: Arc<Registry>,
    /// Counters.
    pub stats: Arc<ProxyStats>,
    /// One channel per ledger; client connection `n` goes to `n % len`.
    upstreams: Vec<Channel>,
    /// What the control API requires beyond loopback.
    admin_token: Option<String>,
}

impl Proxy {
    /// A proxy towards the ledger at `upstream` (`http://HOST:PORT`), or
    /// towards its replicas (`URL1,URL2,...`): each client connection keeps to
    /// one, in turn, as a layer-4 balancer spreads them. The channels connect
    /// lazily: the proxy may start before the ledgers.
    pub fn new(upstream: &str, registry: Arc<Registry>) -> anyhow::Result<Self> {
        let urls: Vec<&str> = upstream.split(',').map(str::trim).collect();
        if urls.iter().any(|url| url.is_empty()) || urls.len() > UPSTREAMS_MAX {
            anyhow::bail!(
                "--upstream {upstream:?}: give one ledger URL, or up to {UPSTREAMS_MAX} separated by commas"
            );
        }
        let mut upstreams = Vec::with_capacity(urls.len());
        for url in urls {
            upstreams.push(
                Channel::lazy(url, CONNECT_TIMEOUT)
                    .map_err(|e| anyhow::anyhow!("--upstream {url:?} is not usable: {e}"))?,
            );
        }
        Ok(Self {
            registry,
            stats: Arc::default(),
            upstreams,
            admin_token: None,
        })
    }

    /// The admin token the control API requires when it listens beyond
    /// loopback (see `control`'s header): without one, such a control API
    /// refuses every call.
    pub fn with_admin_token(mut self, token: Option<String>) -> Self {
        self.admin_token = token.filter(|token| !token.is_empty());
        self
    }

    /// Serves clients on `listener` and the control API on `control` until
    /// `shutdown` completes.
    pub async fn run(
        self,
        listener: TcpListener,
        control: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let guard = overdraft_proto::admin_token::Gate::new(
            control.local_addr()?,
            self.admin_token.as_deref(),
        );
        let control_app =
            control::router(Arc::clone(&self.registry), Arc::clone(&self.stats), guard);
        let control_task = tokio::spawn(async move { axum::serve(control, control_app).await });
        let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));

        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit?,
                () = &mut shutdown => break,
            };
            let (client, peer) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = &mut shutdown => break,
            };
            let connection = self.stats.connections.fetch_add(1, Ordering::Relaxed);
            let upstream = usize::try_from(connection).unwrap_or(0) % self.upstreams.len();
            let calls = Calls {
                registry: Arc::clone(&self.registry),
                upstream: self.upstreams[upstream].clone(),
            };
            let registry = Arc::clone(&self.registry);
            tokio::spawn(async move {
                serve_connection(client, peer, connection, registry, calls).await;
                drop(permit);
            });
        }
        control_task.abort();
        Ok(())
    }
}

/// One client connection: two pumps and an HTTP/2 server between them.
async fn serve_connection(
    client: TcpStream,
    peer: SocketAddr,
    connection: u64,
    registry: Arc<Registry>,
    calls: Calls,
) {
    let _ = client.set_nodelay(true);
    tracing::debug!(%peer, connection, "client connected");
    let (mut client_read, mut client_write) = client.into_split();
    let (proxy_side, server_side) = tokio::io::duplex(PIPE_BYTES);
    let (proxy_read, proxy_write) = tokio::io::split(proxy_side);
    let (close, _) = watch::channel(Close::Open);
    let pump = |direction| Pump {
        direction,
        connection,
        registry: Arc::clone(&registry),
        close: close.clone(),
    };
    let upstream = pump(Direction::Upstream);
    let downstream = pump(Direction::Downstream);
    let up = tokio::spawn(async move {
        let outcome = upstream.run(&mut client_read, proxy_write).await;
        (outcome, client_read)
    });
    let down = tokio::spawn(async move {
        let outcome = downstream.run(proxy_read, &mut client_write).await;
        (outcome, client_write)
    });
    let service = hyper::service::service_fn(move |request| calls.clone().handle(request));
    let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(server_side), service);
    let mut closed = close.subscribe();
    tokio::select! {
        _ = server => {}
        _ = closed.wait_for(|close| *close != Close::Open) => {}
    }
    // When the server is done the pumps drain what is left and see end of
    // stream; when a toxic closed the connection they have seen it already.
    let (Ok((_, read_half)), Ok((_, write_half))) = (up.await, down.await) else {
        return;
    };
    let reset = *close.borrow() == Close::Reset;
    // Whole again, the stream closes once: a dropped write half would send a
    // FIN of its own first, and a client reading that end of stream before
    // the RST sees "connection closed" instead of a reset.
    if let Ok(client) = read_half.reunite(write_half)
        && reset
    {
        // Zero linger makes the close an RST: the client reads
        // "connection reset by peer", as Toxiproxy's reset_peer does.
        let _ = client.set_zero_linger();
    }
    tracing::debug!(%peer, connection, reset, "client disconnected");
}
