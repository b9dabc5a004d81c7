//! [`Channel::unary`]: one unary gRPC call encoded and decoded in place,
//! without tonic's generic client.
//!
//! tonic's client path is built for every kind of call: each unary call
//! boxes its body as a stream, encodes through an 8 KiB buffer, builds a
//! header map with a user agent, and decodes the reply through a streaming
//! decoder with a buffer of its own. For a 20-byte deposit that machinery
//! was the atm's largest cost after the kernel. Here a call is one request
//! head with static headers, one exact-size data frame, and a reply read
//! straight from its h2 stream, its status taken from the trailers (or from
//! the headers of a trailers-only reply) as tonic takes it.

use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{
    HeaderValue, Method, StatusCode,
    header::{CONTENT_TYPE, TE},
    uri::{PathAndQuery, Scheme, Uri},
};
use tonic::{Code, Status};

use super::channel::{Channel, status_of, within};

/// The largest reply accepted, as tonic's default limit.
pub const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// The largest request sent: the ledger refuses larger ones anyway, and a
/// bigger one would be a bug in the caller.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// A gRPC message's prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

impl Channel {
    /// Calls the unary method at `path` (`/package.Service/Method`) with
    /// `message`, within `deadline` if one is given (sent as grpc-timeout
    /// and kept here too), and decodes the reply.
    pub async fn unary<Q, R>(
        &self,
        path: &'static str,
        message: &Q,
        deadline: Option<Duration>,
    ) -> Result<R, Status>
    where
        Q: prost::Message,
        R: prost::Message + Default,
    {
        let frame = encode(message)?;
        let reply = within(deadline, self.exchange(path, frame, deadline)).await?;
        decode(reply)
    }

    /// Sends one encoded request and returns the reply's data once its
    /// status says OK.
    async fn exchange(
        &self,
        path: &'static str,
        frame: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Bytes, Status> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority().clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| Status::internal(format!("cannot build the request's URI: {e}")))?;
        let mut head = http::Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = uri;
        let headers = head.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if let Some(deadline) = deadline {
            headers.insert("grpc-timeout", grpc_timeout(deadline));
        }
        let (response, mut stream) = self
            .sender()
            .await?
            .send_request(head, false)
            .map_err(status_of)?;
        // h2 buffers data past the peer's window and sends it as the window
        // opens; a request is at most MAX_REQUEST_BYTES.
        stream.send_data(frame, true).map_err(status_of)?;
        let (head, mut body) = response.await.map_err(status_of)?.into_parts();
        if let Some(status) = Status::from_header_map(&head.headers) {
            // A trailers-only reply: the status came in the headers.
            return Err(if status.code() == Code::Ok {
                Status::internal("the reply carried no message")
            } else {
                status
            });
        }
        let mut reply = Reply::default();
        while let Some(data) = body.data().await {
            let data = data.map_err(status_of)?;
            let _ = body.flow_control().release_capacity(data.len());
            reply.push(data)?;
        }
        let trailers = body.trailers().await.map_err(status_of)?;
        match trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) if status.code() == Code::Ok => {}
            Some(status) => return Err(status),
            None => return Err(missing_status(head.status)),
        }
        Ok(reply.into_bytes())
    }
}

/// `message` as one length-prefixed gRPC frame, allocated at its exact size.
fn encode(message: &impl prost::Message) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix_len = u32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_REQUEST_BYTES)
        .ok_or_else(|| {
            Status::out_of_range(format!(
                "the request is {len} bytes; at most {MAX_REQUEST_BYTES} are sent"
            ))
        })?;
    let mut frame = BytesMut::with_capacity(PREFIX + len);
    frame.put_u8(0);
    frame.put_u32(prefix_len);
    message
        .encode(&mut frame)
        .map_err(|e| Status::internal(format!("cannot encode the request: {e}")))?;
    Ok(frame.freeze())
}

/// The reply's data frames: usually one, kept as it came; more are joined.
#[derive(Default)]
enum Reply {
    #[default]
    Empty,
    One(Bytes),
    Joined(BytesMut),
}

impl Reply {
    fn len(&self) -> usize {
        match self {
            Reply::Empty => 0,
            Reply::One(data) => data.len(),
            Reply::Joined(data) => data.len(),
        }
    }

    fn push(&mut self, data: Bytes) -> Result<(), Status> {
        if self.len() + data.len() > PREFIX + MAX_REPLY_BYTES {
            return Err(Status::resource_exhausted(format!(
                "the reply is over {MAX_REPLY_BYTES} bytes, the most a call accepts"
            )));
        }
        *self = match std::mem::take(self) {
            Reply::Empty => Reply::One(data),
            Reply::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Reply::Joined(joined)
            }
            Reply::Joined(mut joined) => {
                joined.extend_from_slice(&data);
                Reply::Joined(joined)
            }
        };
        Ok(())
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Reply::Empty => Bytes::new(),
            Reply::One(data) => data,
            Reply::Joined(data) => data.freeze(),
        }
    }
}

/// One length-prefixed, uncompressed message and nothing after it.
fn decode<R: prost::Message + Default>(frame: Bytes) -> Result<R, Status> {
    let Some((prefix, message)) = frame.split_first_chunk::<PREFIX>() else {
        return Err(Status::internal(if frame.is_empty() {
            "the reply carried no message".to_owned()
        } else {
            format!(
                "the reply ended inside a message prefix ({} bytes)",
                frame.len()
            )
        }));
    };
    if prefix[0] != 0 {
        return Err(Status::internal(
            "the reply is compressed; this client asked for none",
        ));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len != message.len() {
        return Err(Status::internal(format!(
            "the reply's message says {len} bytes but {} came",
            message.len()
        )));
    }
    R::decode(message).map_err(|e| Status::internal(format!("cannot decode the reply: {e}")))
}

/// No grpc-status: mapped from the HTTP status by gRPC's table, as tonic does.
fn missing_status(http: StatusCode) -> Status {
    let code = match http {
        StatusCode::OK => {
            return Status::unknown(
                "the reply ended without a grpc-status (truncated by a proxy?)",
            );
        }
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("no grpc-status; mapped from HTTP status {}", http.as_u16()),
    )
}

/// A deadline as grpc-timeout: at most 8 digits, in the finest unit that fits.
fn grpc_timeout(deadline: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = deadline.as_nanos();
    let (amount, unit) = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos.div_ceil(per), unit))
    .find(|(amount, _)| *amount <= MAX)
    .unwrap_or((MAX, "H"));
    HeaderValue::try_from(format!("{amount}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1 as pb;
    use tokio::net::TcpListener;

    /// How the test server answers a call.
    #[derive(Clone)]
    enum Answer {
        /// Headers, these data frames, then `grpc-status: code` trailers.
        Frames(Vec<Vec<u8>>, i32),
        /// A trailers-only reply: the status in the headers, no body.
        TrailersOnly(i32, &'static str),
        /// Headers and data, then the stream ends without trailers.
        NoTrailers(Vec<u8>),
    }

    /// A gRPC frame of `message`.
    fn framed(message: &impl prost::Message) -> Vec<u8> {
        encode(message).unwrap().to_vec()
    }

    /// An h2 server on loopback answering every call with `answer`; it
    /// sends back the request's path, grpc-timeout and body on `seen`.
    async fn server(
        answer: Answer,
    ) -> (
        Channel,
        tokio::sync::mpsc::UnboundedReceiver<(String, Option<String>, Vec<u8>)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                let answer = answer.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let path = request.uri().path().to_owned();
                    let timeout = request
                        .headers()
                        .get("grpc-timeout")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let mut body = request.into_body();
                    let mut data = Vec::new();
                    while let Some(chunk) = body.data().await {
                        data.extend_from_slice(&chunk.unwrap());
                    }
                    let _ = seen.send((path, timeout, data));
                    let mut trailers = http::HeaderMap::new();
                    match answer {
                        Answer::TrailersOnly(code, message) => {
                            let mut head = http::Response::new(());
                            head.headers_mut()
                                .insert("grpc-status", code.to_string().parse().unwrap());
                            head.headers_mut()
                                .insert("grpc-message", message.parse().unwrap());
                            respond.send_response(head, true).unwrap();
                        }
                        Answer::Frames(frames, code) => {
                            let mut stream = respond
                                .send_response(http::Response::new(()), false)
                                .unwrap();
                            for frame in frames {
                                stream.send_data(Bytes::from(frame), false).unwrap();
                            }
                            trailers.insert("grpc-status", code.to_string().parse().unwrap());
                            stream.send_trailers(trailers).unwrap();
                        }
                        Answer::NoTrailers(frame) => {
                            let mut stream = respond
                                .send_response(http::Response::new(()), false)
                                .unwrap();
                            stream.send_data(Bytes::from(frame), true).unwrap();
                        }
                    }
                });
            }
        });
        (Channel::lazy(&url, Duration::from_secs(5)).unwrap(), rx)
    }

    fn deposit() -> pb::DepositRequest {
        pb::DepositRequest {
            account_id: "acct-7".into(),
            amount_cents: 250,
            request_id: "r-1".into(),
        }
    }

    async fn call(channel: &Channel) -> Result<pb::MutationReply, Status> {
        channel
            .unary("/overdraft.v1.Ledger/Deposit", &deposit(), None)
            .await
    }

    /// Goal: a call sends its path and one exact frame, and decodes the
    /// reply, whether it came in one data frame or split across three.
    #[tokio::test]
    async fn a_reply_is_decoded_from_one_frame_or_many() {
        let reply = pb::MutationReply {
            balance_cents: 1250,
            version: 9,
            ..Default::default()
        };
        let whole = framed(&reply);
        let (channel, mut seen) = server(Answer::Frames(vec![whole.clone()], 0)).await;
        assert_eq!(call(&channel).await.unwrap(), reply);
        let (path, timeout, body) = seen.recv().await.unwrap();
        assert_eq!(path, "/overdraft.v1.Ledger/Deposit");
        assert_eq!(timeout, None);
        assert_eq!(body, framed(&deposit()));

        let split = vec![
            whole[..3].to_vec(),
            whole[3..7].to_vec(),
            whole[7..].to_vec(),
        ];
        let (channel, _seen) = server(Answer::Frames(split, 0)).await;
        assert_eq!(call(&channel).await.unwrap(), reply);
    }

    /// Goal: the status a server sends comes back as sent, whether in the
    /// trailers or in the headers of a trailers-only reply.
    #[tokio::test]
    async fn a_refusal_comes_back_with_its_code_and_message() {
        let (channel, _seen) = server(Answer::TrailersOnly(9, "insufficient funds")).await;
        let status = call(&channel).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "insufficient funds");

        let (channel, _seen) = server(Answer::Frames(vec![], 10)).await;
        assert_eq!(call(&channel).await.unwrap_err().code(), Code::Aborted);
    }

    /// Goal: replies that break the protocol are refused, each naming why:
    /// a prefix that disagrees with the body, a compressed message, no
    /// grpc-status, an OK status without a message.
    #[tokio::test]
    async fn broken_replies_are_refused() {
        let mut short = framed(&pb::MutationReply {
            balance_cents: 5,
            ..Default::default()
        });
        short.pop();
        let (channel, _seen) = server(Answer::Frames(vec![short], 0)).await;
        let status = call(&channel).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("says"), "{status:?}");

        let mut compressed = framed(&pb::MutationReply::default());
        compressed[0] = 1;
        let (channel, _seen) = server(Answer::Frames(vec![compressed], 0)).await;
        let status = call(&channel).await.unwrap_err();
        assert!(status.message().contains("compressed"), "{status:?}");

        let (channel, _seen) =
            server(Answer::NoTrailers(framed(&pb::MutationReply::default()))).await;
        assert_eq!(call(&channel).await.unwrap_err().code(), Code::Unknown);

        let (channel, _seen) = server(Answer::Frames(vec![], 0)).await;
        let status = call(&channel).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("no message"), "{status:?}");
    }

    /// Goal: a reply over the limit is refused before it is all held.
    #[tokio::test]
    async fn an_oversized_reply_is_refused() {
        let chunk = vec![0u8; 1024 * 1024];
        let frames = vec![chunk; 6];
        let (channel, _seen) = server(Answer::Frames(frames, 0)).await;
        let status = call(&channel).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }

    /// Goal: a deadline goes out as grpc-timeout, in the finest unit whose
    /// amount fits in 8 digits, never rounded down.
    #[tokio::test]
    async fn a_deadline_is_sent_as_grpc_timeout() {
        let (channel, mut seen) = server(Answer::Frames(
            vec![framed(&pb::MutationReply::default())],
            0,
        ))
        .await;
        channel
            .unary::<_, pb::MutationReply>(
                "/overdraft.v1.Ledger/Deposit",
                &deposit(),
                Some(Duration::from_secs(2)),
            )
            .await
            .unwrap();
        assert_eq!(seen.recv().await.unwrap().1.as_deref(), Some("2000000u"));
        let header = |d: Duration| grpc_timeout(d).to_str().unwrap().to_owned();
        assert_eq!(header(Duration::from_nanos(1500)), "1500n");
        assert_eq!(header(Duration::from_millis(250)), "250000u");
        assert_eq!(header(Duration::from_secs(120)), "120000m");
        assert_eq!(header(Duration::from_secs(3600 * 24 * 365)), "31536000S");
        assert_eq!(header(Duration::from_secs(3600 * 24 * 3650)), "5256000M");
        assert_eq!(header(Duration::new(0, 100_000_001)), "100001u");
    }
}
