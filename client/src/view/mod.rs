//! `atm view`: the live page for the projector. It watches a ledger (mode,
//! counters, balances, the audit), the histories a crowd writes and the
//! chaos fault log, and pushes a snapshot to every open page twice a
//! second as server-sent events.
//!
//! Routes: `/` the page, `/events` the event stream, `/snapshot` the
//! latest snapshot as JSON (for scripts).
//!
//! Each snapshot is serialized once, when it is taken: every page and every
//! `/snapshot` request is sent a copy of the same text, so a request costs
//! a copy and a write, not a serialization, however many come.

mod page;
mod state;
mod tail;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use clap::Args;
use tokio::sync::{Semaphore, watch};
use tokio_stream::{StreamExt, wrappers::WatchStream};

use self::state::Watcher;
pub use self::state::{AccountRow, AuditView, FaultRow, FindingRow, Lane, LaneOp, Snapshot};
use crate::connect::ClientError;

/// How often a snapshot is taken and pushed.
pub const EVERY: Duration = Duration::from_millis(500);

/// Most pages listening at once: a projector and a room's laptops, not the
/// internet. Each holds one connection and a snapshot being sent.
pub const PAGES_MAX: usize = 64;

/// `atm view` arguments.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// The ledger to watch, or its replicas (comma-separated): operations
    /// are counted over all of them, balances and the audit are asked of
    /// the first (the store they share).
    #[arg(long)]
    pub target: String,
    /// Serve the page here (e.g. 127.0.0.1:8080; 0.0.0.0:8080 in a container).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// The directory the ATMs write their histories into (`atm load
    /// --history DIR`, or a crowd's): the swimlanes, the rates per method
    /// and the busiest accounts come from there.
    #[arg(long)]
    pub histories: Option<PathBuf>,
    /// The chaos fault log (`chaos run --fault-log FILE`): the faults active.
    #[arg(long)]
    pub fault_log: Option<PathBuf>,
}

#[derive(Clone)]
struct Shared {
    target: Arc<str>,
    /// The latest snapshot, as JSON.
    latest: watch::Receiver<Arc<str>>,
    pages: Arc<Semaphore>,
}

/// `snapshot` as the JSON every page and script is sent.
fn published(snapshot: &Snapshot) -> Arc<str> {
    serde_json::to_string(snapshot)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
        .into()
}

/// Serves the page until the process is stopped.
pub async fn run(args: &ViewArgs) -> Result<bool, ClientError> {
    crate::connect::targets(&args.target)?;
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| ClientError::Usage(format!("cannot listen on --http {}: {e}", args.http)))?;
    let address = listener
        .local_addr()
        .map_err(|e| ClientError::Internal(e.to_string()))?;
    eprintln!("atm view: http://{address}/ watching {}", args.target);
    serve(listener, args).await
}

/// Serves the page on `listener` until the process is stopped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: &ViewArgs,
) -> Result<bool, ClientError> {
    let mut watcher = Watcher::new(&args.target, args.histories.clone(), args.fault_log.clone());
    let (publish, latest) = watch::channel(published(&watcher.snapshot().await));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let snapshot = watcher.snapshot().await;
            if publish.send(published(&snapshot)).is_err() {
                return;
            }
        }
    });
    let shared = Shared {
        target: Arc::from(args.target.as_str()),
        latest,
        pages: Arc::new(Semaphore::new(PAGES_MAX)),
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/snapshot", get(snapshot))
        .with_state(shared);
    axum::serve(listener, app)
        .await
        .map_err(|e| ClientError::Internal(format!("the view's server stopped: {e}")))?;
    Ok(true)
}

async fn index(State(shared): State<Shared>) -> Html<String> {
    Html(page::page(&shared.target).into_string())
}

async fn snapshot(State(shared): State<Shared>) -> impl IntoResponse {
    let latest = Arc::clone(&shared.latest.borrow());
    (
        [(header::CONTENT_TYPE, "application/json")],
        latest.to_string(),
    )
}

/// Every snapshot from now on; a slow page skips to the latest (a watch
/// channel holds one), so nothing queues up behind it. Past PAGES_MAX open
/// pages, 503.
async fn events(State(shared): State<Shared>) -> Response {
    let Ok(page) = Arc::clone(&shared.pages).try_acquire_owned() else {
        let refusal = format!("{PAGES_MAX} pages are already open; close one and reload");
        return (StatusCode::SERVICE_UNAVAILABLE, refusal).into_response();
    };
    let stream = WatchStream::new(shared.latest).map(move |json| {
        // The permit lives as long as the stream: one page, one place.
        let _page = &page;
        Ok::<_, Infallible>(Event::default().data(&*json))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
