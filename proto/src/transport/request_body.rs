//! A request body read one frame ahead.
//!
//! A request's last data frame should carry END_STREAM: the ledger waits for
//! the end of the request before it runs the call, and h2load sends a unary
//! call as two frames (HEADERS, DATA). tonic's encoded body learns that it
//! has ended only when polled once more, so sent frame by frame a unary call
//! went out as three (HEADERS, DATA, and an empty DATA carrying END_STREAM).
//! [`LookAhead`] asks for the next frame before it hands one out.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body as _, Frame};
use tonic::{Status, body::Body};

/// A body read one frame ahead, so that it can say it has ended as soon as
/// its last frame is out.
pub(super) struct LookAhead {
    inner: Body,
    /// The frame read ahead, or the error it was.
    ahead: Option<Result<Frame<Bytes>, Status>>,
    /// The inner body has ended.
    ended: bool,
}

impl LookAhead {
    pub(super) fn new(inner: Body) -> Self {
        let ended = inner.is_end_stream();
        Self {
            inner,
            ahead: None,
            ended,
        }
    }
}

impl http_body::Body for LookAhead {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(ahead) = this.ahead.take() {
            return Poll::Ready(Some(ahead));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => {
                this.ended = other.is_none();
                return Poll::Ready(other);
            }
        };
        // One more poll: a unary body has its end ready at once. A body
        // that is not ready yet has registered the waker, and the next
        // poll asks again.
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(next)) => this.ahead = Some(next),
            Poll::Pending => {}
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ahead.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, StreamBody};

    /// A body like tonic's encoded one: it learns it has ended only when
    /// polled past its last frame.
    fn body(frames: Vec<Result<&'static str, Status>>) -> Body {
        let frames = frames
            .into_iter()
            .map(|frame| frame.map(|data| Frame::data(Bytes::from_static(data.as_bytes()))));
        Body::new(StreamBody::new(tokio_stream::iter(frames)))
    }

    async fn next(body: &mut LookAhead) -> Option<Result<Bytes, Status>> {
        body.frame()
            .await
            .map(|frame| frame.map(|frame| frame.into_data().unwrap()))
    }

    /// Goal: a one-message body says it has ended with its only frame, where
    /// the body it wraps does not. Method: poll each once.
    #[tokio::test]
    async fn a_unary_body_ends_on_its_only_frame() {
        let mut plain = body(vec![Ok("deposit")]);
        plain.frame().await.unwrap().unwrap();
        assert!(
            !plain.is_end_stream(),
            "the unwrapped body needs one more poll"
        );

        let mut ahead = LookAhead::new(body(vec![Ok("deposit")]));
        assert!(!ahead.is_end_stream());
        assert_eq!(next(&mut ahead).await.unwrap().unwrap(), "deposit");
        assert!(ahead.is_end_stream(), "ended with its last frame");
        assert!(next(&mut ahead).await.is_none());
    }

    /// Goal: a longer body loses no frame and no error, in order, and ends
    /// only after its last. Method: two frames then an error; three frames.
    #[tokio::test]
    async fn frames_and_errors_pass_through_in_order() {
        let mut ahead = LookAhead::new(body(vec![
            Ok("one"),
            Ok("two"),
            Err(Status::internal("broken")),
        ]));
        assert_eq!(next(&mut ahead).await.unwrap().unwrap(), "one");
        assert!(!ahead.is_end_stream());
        assert_eq!(next(&mut ahead).await.unwrap().unwrap(), "two");
        assert!(!ahead.is_end_stream());
        let error = next(&mut ahead).await.unwrap().unwrap_err();
        assert_eq!(error.message(), "broken");

        let mut ahead = LookAhead::new(body(vec![Ok("a"), Ok("b"), Ok("c")]));
        let mut seen = Vec::new();
        while let Some(frame) = next(&mut ahead).await {
            seen.push(frame.unwrap());
        }
        assert_eq!(seen, ["a", "b", "c"]);
        assert!(ahead.is_end_stream());
    }
}
