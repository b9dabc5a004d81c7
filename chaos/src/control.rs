//! The control API: HTTP and JSON, like Toxiproxy's, so `curl` works as well
//! as `chaos fault ...`. Routes:
//!
//! | route | does |
//! |---|---|
//! | `GET /faults` | list the live faults with how often each fired |
//! | `POST /faults` | add one (the JSON of [`Fault`]); 201 with its id |
//! | `DELETE /faults/{id}` | remove one; 404 if no such id |
//! | `POST /reset` | remove them all |
//! | `GET /stats` | connections accepted |
//!
//! Errors are `{"error": "..."}` naming the field and the rule.
//!
//! Who may inject faults: the same rule as the ledger's Admin and Chaos
//! services. On loopback the API is open, as for a laptop demo; when it
//! listens beyond loopback every route requires `authorization: Bearer
//! TOKEN` (`chaos proxy --admin-token`, or `OVERDRAFT_ADMIN_TOKEN`), and a
//! call without it is refused with 401 before any route runs, so it changes
//! nothing. Without a token configured, such a proxy refuses every call.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json, Router,
    extract::{Path, Request, State, rejection::JsonRejection},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use overdraft_proto::admin_token::{self, Gate, Refusal};
use serde_json::json;

use crate::{
    fault::Fault,
    registry::{Listed, ProxyStats, Registry, RegistryError},
};

/// Largest control request body: a fault is a few hundred bytes.
const CONTROL_BODY_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    stats: Arc<ProxyStats>,
}

/// The control API's routes, behind `guard`.
pub fn router(registry: Arc<Registry>, stats: Arc<ProxyStats>, guard: Gate) -> Router {
    Router::new()
        .route("/faults", get(list).post(add))
        .route("/faults/{id}", delete(remove))
        .route("/reset", post(reset))
        .route("/stats", get(stats_route))
        .layer(axum::extract::DefaultBodyLimit::max(CONTROL_BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(guard, authorize))
        .with_state(Shared { registry, stats })
}

/// Refuses a call beyond loopback that does not carry the admin token.
async fn authorize(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(admin_token::HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(admin_token::bearer);
    match gate.admit(presented) {
        Ok(()) => next.run(request).await,
        Err(Refusal::NoTokenConfigured) => error(
            StatusCode::UNAUTHORIZED,
            "this proxy's control API listens beyond loopback without --admin-token, so it is \
             closed; restart `chaos proxy` with --admin-token (or OVERDRAFT_ADMIN_TOKEN)"
                .into(),
        ),
        Err(Refusal::WrongOrMissing) => error(
            StatusCode::UNAUTHORIZED,
            "the control API needs `authorization: Bearer <admin token>` beyond loopback \
             (`chaos fault` and `chaos run` read it from OVERDRAFT_ADMIN_TOKEN or --admin-token)"
                .into(),
        ),
    }
}

async fn list(State(shared): State<Shared>) -> Json<Vec<Listed>> {
    Json(shared.registry.list())
}

async fn add(State(shared): State<Shared>, fault: Result<Json<Fault>, JsonRejection>) -> Response {
    let Json(fault) = match fault {
        Ok(fault) => fault,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match shared.registry.add(fault) {
        Ok(listed) => (StatusCode::CREATED, Json(listed)).into_response(),
        Err(failure) => registry_error(&failure),
    }
}

async fn remove(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    match shared.registry.remove(&id) {
        Ok(listed) => Json(listed).into_response(),
        Err(failure) => registry_error(&failure),
    }
}

async fn reset(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(json!({ "removed": shared.registry.reset() }))
}

async fn stats_route(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(json!({
        "connections": shared.stats.connections.load(Ordering::Relaxed),
        "faults": shared.registry.list().len(),
    }))
}

fn registry_error(failure: &RegistryError) -> Response {
    let code = match failure {
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Duplicate(_) => StatusCode::CONFLICT,
        RegistryError::Full => StatusCode::TOO_MANY_REQUESTS,
        RegistryError::Invalid(_)
        | RegistryError::LedgerFault(_)
        | RegistryError::ProcessFault(_) => StatusCode::BAD_REQUEST,
    };
    error(code, failure.to_string())
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

/// A client of the control API at `base` (`http://HOST:PORT`): one HTTP/1.1
/// request per call, which is all a CLI needs.
#[derive(Clone, Debug)]
pub struct ControlClient {
    authority: String,
    /// Sent as `authorization: Bearer TOKEN` when set.
    token: Option<String>,
}

impl ControlClient {
    /// A client for `base`, e.g. `http://127.0.0.1:7101` or `127.0.0.1:7101`.
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let authority = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        if authority.is_empty() || authority.contains('/') {
            anyhow::bail!("--control {base:?} must be http://HOST:PORT");
        }
        Ok(Self {
            authority,
            token: None,
        })
    }

    /// Sends `token` (the admin token) with every call: a proxy whose
    /// control API listens beyond loopback requires it.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|token| !token.is_empty());
        self
    }

    /// Adds `fault`; returns it as listed, with its id.
    pub async fn add(&self, fault: &Fault) -> anyhow::Result<serde_json::Value> {
        let body = serde_json::to_vec(fault)?;
        self.call("POST", "/faults", Some(body)).await
    }

    /// Removes the fault with `id`.
    pub async fn remove(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        self.call("DELETE", &format!("/faults/{id}"), None).await
    }

    /// Lists the live faults.
    pub async fn list(&self) -> anyhow::Result<serde_json::Value> {
        self.call("GET", "/faults", None).await
    }

    /// Removes every fault.
    pub async fn reset(&self) -> anyhow::Result<serde_json::Value> {
        self.call("POST", "/reset", None).await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the proxy's control API at {}: {e} (is `chaos proxy` running with --control there?)",
                    self.authority
                )
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header(
                overdraft_proto::admin_token::HEADER,
                format!("Bearer {token}"),
            );
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("the control API answered {status} with a body that is not JSON: {e}")
        })?;
        if !status.is_success() {
            let message = value["error"].as_str().unwrap_or("no message");
            anyhow::bail!("the proxy refused: {message} ({status})");
        }
        Ok(serde_json::from_value(value)?)
    }
}
