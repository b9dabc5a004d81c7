//! A response body read straight from its h2 stream: data frames, then
//! trailers (where gRPC puts the call's status).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::Frame;
use tonic::Status;

use super::channel::status_of;

/// The body of a response, as tonic decodes it.
#[derive(Debug)]
pub struct ResponseBody {
    stream: h2::RecvStream,
    /// Every data frame has been read; trailers come next.
    data_done: bool,
}

impl ResponseBody {
    pub(super) fn new(stream: h2::RecvStream) -> Self {
        Self {
            stream,
            data_done: false,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read means consumed: the window opens again at once,
                    // as hyper does. tonic holds at most one message.
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(status_of(error)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(status_of(error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}
