//! Faults on single gRPC calls. gRPC multiplexes many calls over one HTTP/2
//! connection, so a byte-level toxic hits all of them at once; to drop,
//! delay or duplicate one call the proxy must speak HTTP/2. It does: each
//! call arrives here as an HTTP request, meets the call faults that take it,
//! and is forwarded to the ledger over one shared channel.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{Request, Response};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use overdraft_proto::transport::Channel;
use tonic::body::Body;
use tower::ServiceExt;

use crate::{fault::FaultKind, registry::Registry};

/// Largest request or response body the proxy buffers (to duplicate a
/// request or read a response it drops): the ledger's own message bound.
pub const BUFFERED_BYTES_MAX: usize = 1024 * 1024;

/// Longest a dropped call is held before the proxy answers UNAVAILABLE, for
/// clients without a deadline. Clients with one give up first, which is what
/// a drop looks like to them.
pub const HOLD_MS_MAX: u64 = 30_000;

/// What a call needs: the faults and the way to the ledger.
#[derive(Clone, Debug)]
pub struct Calls {
    /// The live faults.
    pub registry: Arc<Registry>,
    /// One HTTP/2 channel to the ledger, shared by every client connection.
    pub upstream: Channel,
}

impl Calls {
    /// Handles one call; never fails at the HTTP level, only with gRPC statuses.
    pub async fn handle(self, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let path = request.uri().path().to_owned();
        let faults = self.registry.call_faults(&path);
        let mut delay_ms = 0u64;
        let mut copies = 0u32;
        let mut drop_request = false;
        let mut drop_response = false;
        for active in &faults {
            match &active.fault.kind {
                FaultKind::CallDelay { delay_ms: ms } => delay_ms = delay_ms.saturating_add(*ms),
                FaultKind::ReturnStatus { code, message } => {
                    tracing::debug!(%path, fault = %active.fault.id, "call answered by chaos");
                    return Ok(status(code.code(), message));
                }
                FaultKind::DropRequest => drop_request = true,
                FaultKind::DropResponse => drop_response = true,
                FaultKind::DuplicateRequest { copies: n } => copies = copies.max(*n),
                _ => {}
            }
        }
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        if drop_request {
            tracing::debug!(%path, "request dropped by chaos");
            return Ok(hold("request dropped by chaos").await);
        }
        let response = if copies > 0 {
            self.forward_copies(request, copies).await
        } else {
            self.forward(request.map(Body::new)).await
        };
        if drop_response {
            // The ledger answered; read the whole answer so the call is
            // complete there, then lose it.
            let _ = Limited::new(response.into_body(), BUFFERED_BYTES_MAX)
                .collect()
                .await;
            tracing::debug!(%path, "response dropped by chaos");
            return Ok(hold("response dropped by chaos").await);
        }
        Ok(response)
    }

    async fn forward(&self, request: Request<Body>) -> Response<Body> {
        match self.upstream.clone().oneshot(request).await {
            Ok(response) => response.map(Body::new),
            Err(error) => status(
                tonic::Code::Unavailable,
                &format!("chaos proxy: the ledger is unreachable: {error}"),
            ),
        }
    }

    /// Sends the call `1 + copies` times at once, as a client retrying in a
    /// storm would, and answers with the first copy's reply.
    async fn forward_copies(&self, request: Request<Incoming>, copies: u32) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, BUFFERED_BYTES_MAX).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return status(
                    tonic::Code::ResourceExhausted,
                    &format!("chaos proxy: request not buffered to duplicate it: {error}"),
                );
            }
        };
        let sends = (0..=copies).map(|_| {
            let mut copy = Request::new(Body::new(http_body_util::Full::new(body.clone())));
            *copy.method_mut() = parts.method.clone();
            *copy.uri_mut() = parts.uri.clone();
            *copy.headers_mut() = parts.headers.clone();
            let calls = self.clone();
            tokio::spawn(async move { buffered(calls.forward(copy).await).await })
        });
        let mut replies = Vec::new();
        for send in sends.collect::<Vec<_>>() {
            replies.push(send.await);
        }
        match replies.into_iter().next() {
            Some(Ok(reply)) => reply,
            _ => status(
                tonic::Code::Internal,
                "chaos proxy: a duplicate's task failed",
            ),
        }
    }
}

/// Reads a whole response (data and trailers) and rebuilds it, so copies can
/// be awaited to the end before answering.
async fn buffered(response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    match Limited::new(body, BUFFERED_BYTES_MAX).collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            let mut frames = vec![Ok::<_, Infallible>(Frame::data(collected.to_bytes()))];
            if let Some(trailers) = trailers {
                frames.push(Ok(Frame::trailers(trailers)));
            }
            let stream = tokio_stream::iter(frames);
            Response::from_parts(parts, Body::new(StreamBody::new(stream)))
        }
        Err(error) => status(
            tonic::Code::Unavailable,
            &format!("chaos proxy: reply not read: {error}"),
        ),
    }
}

/// A gRPC reply carrying only `code` and `message`.
fn status(code: tonic::Code, message: &str) -> Response<Body> {
    tonic::Status::new(code, message).into_http()
}

/// Holds the call until the client gives up (its future is then dropped),
/// at most [`HOLD_MS_MAX`], then answers UNAVAILABLE.
async fn hold(why: &str) -> Response<Body> {
    tokio::time::sleep(Duration::from_millis(HOLD_MS_MAX)).await;
    status(tonic::Code::Unavailable, &format!("chaos proxy: {why}"))
}
