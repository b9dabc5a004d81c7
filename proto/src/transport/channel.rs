//! [`Channel`]: one HTTP/2 connection to a ledger, dialled on first use and
//! again when it breaks, with each call sent and awaited by the caller's
//! own task.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http_body::Body as _;
use tonic::{Status, body::Body};

use super::{request_body::LookAhead, response_body::ResponseBody};

/// The HTTP/2 windows a connection opens: hyper's defaults (tonic's), so a
/// long server stream (a journal export) is not held back by the 64 KiB
/// that h2 itself starts from.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// A gRPC channel to one ledger over one HTTP/2 connection. Clones share the
/// connection. It is dialled on the first call (or by [`Channel::ready`]),
/// and dialled again by the first call that finds it closed: a call whose
/// request never went out is not lost to a broken connection.
#[derive(Clone, Debug)]
pub struct Channel {
    shared: Arc<Shared>,
}

/// Why a target is not something a [`Channel`] can call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError(String);

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TargetError {}

#[derive(Debug)]
struct Shared {
    /// `host:port`, as dialled.
    address: String,
    authority: Authority,
    connect_timeout: Duration,
    /// The open connection, if any.
    current: Mutex<Option<Connection>>,
    /// Held while dialling, so that the calls finding no connection make one
    /// between them, not one each.
    dialling: tokio::sync::Mutex<()>,
    /// Connections dialled so far.
    dials: AtomicU64,
}

#[derive(Clone, Debug)]
struct Connection {
    sender: SendRequest<Bytes>,
    /// Which dial made it: a call that saw it break forgets this one only,
    /// never its replacement.
    generation: u64,
}

impl Channel {
    /// A channel to `target` (`http://host:port`), not yet connected.
    pub fn lazy(target: &str, connect_timeout: Duration) -> Result<Self, TargetError> {
        let uri: Uri = target
            .parse()
            .map_err(|e| TargetError(format!("not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(TargetError(format!(
                    "scheme {other:?} is not supported; the ledger speaks plaintext HTTP/2 (http://)"
                )));
            }
            None => return Err(TargetError("no scheme; write http://host:port".into())),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| TargetError("no host; write http://host:port".into()))?;
        if !matches!(uri.path(), "" | "/") {
            return Err(TargetError(format!(
                "a path ({}) is not allowed; give http://host:port only",
                uri.path()
            )));
        }
        let address = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.as_str()),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                address,
                authority,
                connect_timeout,
                current: Mutex::new(None),
                dialling: tokio::sync::Mutex::new(()),
                dials: AtomicU64::new(0),
            }),
        })
    }

    /// Connects now if not connected: an unreachable target shows here, not
    /// in the first call.
    pub async fn ready(&self) -> Result<(), Status> {
        self.shared.sender().await.map(drop)
    }

    /// The target's `host:port`, as requests name it.
    pub(super) fn authority(&self) -> &Authority {
        &self.shared.authority
    }

    /// A sender ready for one request, the connection dialled if need be.
    pub(super) async fn sender(&self) -> Result<SendRequest<Bytes>, Status> {
        self.shared.sender().await
    }
}

impl tower_service::Service<http::Request<Body>> for Channel {
    type Response = http::Response<ResponseBody>;
    type Error = Status;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<ResponseBody>, Status>> + Send>>;

    /// Always ready: a call waits for its connection (and h2 for a free
    /// stream) inside its own future.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let deadline = grpc_timeout(request.headers());
            within(deadline, shared.exchange(request)).await
        })
    }
}

/// `call`'s outcome, or DEADLINE_EXCEEDED once `deadline` (if any) passes.
pub(super) async fn within<T>(
    deadline: Option<Duration>,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        None => call.await,
        Some(deadline) => tokio::time::timeout(deadline, call)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no response within the call's deadline ({} ms)",
                    deadline.as_millis()
                )))
            }),
    }
}

impl Shared {
    /// Sends `request` and waits for the response's headers.
    async fn exchange(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let (mut head, body) = request.into_parts();
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        head.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Status::internal(format!("cannot build the request's URI: {e}")))?;
        let body = LookAhead::new(body);
        let end = body.is_end_stream();
        let (response, stream) = self
            .sender()
            .await?
            .send_request(http::Request::from_parts(head, ()), end)
            .map_err(status_of)?;
        if !end {
            send_body(body, stream).await?;
        }
        let response = response.await.map_err(status_of)?;
        Ok(response.map(ResponseBody::new))
    }

    /// A sender ready for one request. A connection found closed is dialled
    /// again, once: nothing had been sent on it for this call.
    async fn sender(&self) -> Result<SendRequest<Bytes>, Status> {
        let connection = self.connection().await?;
        match connection.sender.ready().await {
            Ok(sender) => Ok(sender),
            Err(_) => {
                self.forget(connection.generation);
                let connection = self.connection().await?;
                connection.sender.ready().await.map_err(status_of)
            }
        }
    }

    fn current(&self) -> Option<Connection> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn forget(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }

    /// The open connection, dialled if there is none.
    async fn connection(&self) -> Result<Connection, Status> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let _dialling = self.dialling.lock().await;
        if let Some(connection) = self.current() {
            // Another call dialled while this one waited.
            return Ok(connection);
        }
        let sender = self.dial().await?;
        let connection = Connection {
            sender,
            generation: self.dials.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        Ok(connection)
    }

    async fn dial(&self) -> Result<SendRequest<Bytes>, Status> {
        let unavailable =
            |why: String| Status::unavailable(format!("cannot connect to {}: {why}", self.address));
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "no answer within {} ms",
                self.connect_timeout.as_millis()
            ))
        })?
        .map_err(|e| unavailable(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| unavailable(format!("cannot set TCP_NODELAY: {e}")))?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| unavailable(format!("HTTP/2 handshake failed: {e}")))?;
        // The connection's frames are read and written by a task of its own;
        // when it ends, the senders see it closed.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// Sends `body` on `stream`, as much as the peer's window lets through at a
/// time, the last data frame carrying END_STREAM.
async fn send_body(mut body: LookAhead, mut stream: h2::SendStream<Bytes>) -> Result<(), Status> {
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(status) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Err(status);
            }
        };
        let end = body.is_end_stream();
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return stream.send_trailers(trailers).map_err(status_of);
                }
                continue;
            }
        };
        if data.is_empty() {
            if end {
                return stream.send_data(data, true).map_err(status_of);
            }
            continue;
        }
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(granted) => granted.map_err(status_of)?,
                None => return Err(Status::unavailable("the stream closed while sending")),
            };
            let chunk = data.split_to(granted.min(data.len()));
            stream
                .send_data(chunk, end && data.is_empty())
                .map_err(status_of)?;
        }
        if end {
            return Ok(());
        }
    }
    // A body that could not tell its last frame: end the stream empty.
    stream.send_data(Bytes::new(), true).map_err(status_of)
}

/// The call's deadline from its `grpc-timeout` header (tonic writes it from
/// `Request::set_timeout`): at most 8 digits and a unit.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// An h2 error as the gRPC status a caller sees, by the table of gRPC's
/// HTTP/2 transport document (as tonic maps them); a broken connection is
/// UNAVAILABLE.
pub(super) fn status_of(error: h2::Error) -> Status {
    use h2::Reason;
    use tonic::Code;
    let code = if error.is_io() || error.is_go_away() && error.reason() == Some(Reason::NO_ERROR) {
        Code::Unavailable
    } else {
        match error.reason() {
            Some(Reason::REFUSED_STREAM) => Code::Unavailable,
            Some(Reason::CANCEL) => Code::Cancelled,
            Some(Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
            Some(Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
            Some(_) => Code::Internal,
            None => Code::Unknown,
        }
    };
    Status::new(code, format!("h2: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full};
    use tokio::net::TcpListener;
    use tower_service::Service as _;

    /// What the test server saw of one request.
    #[derive(Debug)]
    struct Seen {
        authority: Option<String>,
        body: Bytes,
        /// The request's last data frame carried END_STREAM.
        ended_with_data: bool,
    }

    /// An h2 server on loopback that answers each request with its body and
    /// `grpc-status: 0` trailers, closing each connection after `per_conn`
    /// requests, or never answering when `per_conn` is 0.
    async fn server(per_conn: usize) -> (String, tokio::sync::mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    // h2's server moves frames only while `accept` is polled:
                    // each request is answered by a task of its own.
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    let mut served = 0;
                    while let Some(Ok((request, respond))) = conn.accept().await {
                        tokio::spawn(answer(request, respond, seen.clone(), per_conn == 0));
                        served += 1;
                        if served == per_conn {
                            // Let the response out, then close the connection.
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        (url, rx)
    }

    async fn answer(
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        seen: tokio::sync::mpsc::Sender<Seen>,
        never: bool,
    ) {
        let authority = request.uri().authority().map(|a| a.to_string());
        let mut body = request.into_body();
        let mut data = Vec::new();
        let mut ended_with_data = false;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            ended_with_data = body.is_end_stream() && !chunk.is_empty();
            data.extend_from_slice(&chunk);
        }
        let body = Bytes::from(data);
        let _ = seen
            .send(Seen {
                authority,
                body: body.clone(),
                ended_with_data,
            })
            .await;
        if never {
            std::future::pending::<()>().await;
        }
        let mut stream = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        stream.send_data(body, false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        stream.send_trailers(trailers).unwrap();
    }

    fn request(body: &'static str, timeout: Option<&str>) -> http::Request<Body> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("/overdraft.v1.Ledger/Deposit")
            .body(Body::new(Full::new(Bytes::from_static(body.as_bytes()))))
            .unwrap();
        if let Some(timeout) = timeout {
            request
                .headers_mut()
                .insert("grpc-timeout", timeout.parse().unwrap());
        }
        request
    }

    async fn call(channel: &mut Channel, body: &'static str) -> Result<(Bytes, String), Status> {
        let response = channel.call(request(body, None)).await?;
        let collected = response.into_body().collect().await?;
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok((collected.to_bytes(), status))
    }

    /// Goal: a call carries the channel's authority, its body arrives whole
    /// with END_STREAM on the data frame, and the response's data and
    /// trailers come back. Method: an echoing h2 server.
    #[tokio::test]
    async fn a_call_goes_out_in_two_frames_and_its_response_comes_back() {
        let (url, mut seen) = server(usize::MAX).await;
        let mut channel = Channel::lazy(&url, Duration::from_secs(5)).unwrap();
        let (body, status) = call(&mut channel, "deposit 100").await.unwrap();
        assert_eq!(body, "deposit 100");
        assert_eq!(status, "0");
        let seen = seen.recv().await.unwrap();
        assert_eq!(seen.body, "deposit 100");
        assert!(seen.ended_with_data, "END_STREAM rode on the data frame");
        assert_eq!(seen.authority.as_deref(), url.strip_prefix("http://"));
    }

    /// Goal: a connection the server closed is dialled again, and the call
    /// that finds it closed succeeds. Method: a server that closes each
    /// connection after one response; three calls in a row.
    #[tokio::test]
    async fn a_closed_connection_is_dialled_again() {
        let (url, _seen) = server(1).await;
        let mut channel = Channel::lazy(&url, Duration::from_secs(5)).unwrap();
        for n in 0..3 {
            // Give the close time to reach the client: the next call must
            // find the connection closed, not race it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (body, _) = call(&mut channel, "again").await.unwrap_or_else(|s| {
                panic!("call {n} failed: {s:?}");
            });
            assert_eq!(body, "again");
        }
        assert_eq!(channel.shared.dials.load(Ordering::Relaxed), 3);
    }

    /// Goal: a call past its grpc-timeout ends DEADLINE_EXCEEDED, not never.
    /// Method: a server that never answers; a 50 ms deadline.
    #[tokio::test]
    async fn a_call_past_its_deadline_ends() {
        let (url, _seen) = server(0).await;
        let mut channel = Channel::lazy(&url, Duration::from_secs(5)).unwrap();
        let error = channel
            .call(request("slow", Some("50m")))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded, "{error:?}");
    }

    /// Goal: nothing listening is UNAVAILABLE naming the address.
    #[tokio::test]
    async fn an_unreachable_target_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let channel = Channel::lazy(&format!("http://{address}"), Duration::from_secs(5)).unwrap();
        let error = channel.ready().await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(error.message().contains(&address.to_string()), "{error:?}");
    }

    /// Goal: targets a channel cannot call are refused with the rule.
    #[test]
    fn unusable_targets_are_refused_with_the_rule() {
        let refused = |target: &str| Channel::lazy(target, Duration::from_secs(1)).unwrap_err().0;
        assert!(refused("https://h:1").contains("plaintext"));
        assert!(refused("127.0.0.1:50051").contains("scheme"));
        assert!(refused("http://h:1/v1").contains("path"));
        assert!(refused("http://").contains("URL") || refused("http://").contains("host"));
        let channel = Channel::lazy("http://ledger", Duration::from_secs(1)).unwrap();
        assert_eq!(channel.shared.address, "ledger:80");
    }

    /// Goal: grpc-timeout values read as tonic writes them; others are none.
    #[test]
    fn grpc_timeouts_parse() {
        let timeout = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("120000m"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("123456789m"), None, "at most 8 digits");
        assert_eq!(timeout("10x"), None);
        assert_eq!(timeout("m"), None);
    }
}
