//! A response body that is either complete or streamed (server-sent events of a generation), so
//! one request pipeline, one HTTP server and one Lambda adapter serve both.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// A response body. A stream ends when its sender is dropped; when the client goes away the
/// body is dropped, and the producer's next send fails (that is how generation learns to stop).
#[derive(Debug)]
pub enum Reply {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Reply {
    /// A streamed body and the sender that feeds it (`capacity` chunks in flight).
    pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, Reply) {
        let (sender, receiver) = mpsc::channel(capacity);
        (sender, Reply::Stream(receiver))
    }

    /// Collects the whole body (tests and in-process callers).
    pub async fn collect(self) -> Bytes {
        match self {
            Reply::Full(bytes) => bytes.unwrap_or_default(),
            Reply::Stream(mut receiver) => {
                let mut all = Vec::new();
                while let Some(chunk) = receiver.recv().await {
                    all.extend_from_slice(&chunk);
                }
                all.into()
            }
        }
    }
}

impl From<Bytes> for Reply {
    fn from(bytes: Bytes) -> Self {
        Reply::Full(Some(bytes))
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Reply::Full(bytes) => Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            Reply::Stream(receiver) => receiver.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Reply::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Reply::Stream(_) => SizeHint::default(),
        }
    }
}

/// A body whose size, when known up front, is recorded in the response-size metric.
pub trait ReplyBody: From<Bytes> {
    fn known_len(&self) -> Option<usize>;
}

impl ReplyBody for Bytes {
    fn known_len(&self) -> Option<usize> {
        Some(self.len())
    }
}

impl ReplyBody for Reply {
    fn known_len(&self) -> Option<usize> {
        match self {
            Reply::Full(bytes) => Some(bytes.as_ref().map_or(0, Bytes::len)),
            Reply::Stream(_) => None,
        }
    }
}
