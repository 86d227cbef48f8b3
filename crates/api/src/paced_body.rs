//! A request body handed to the multipart parser one chunk per poll.
//!
//! `multer` pulls every chunk the body has ready into its own buffer before it parses. While a
//! handler is busy with one part (a photo being checked), a fast client keeps the body ready,
//! so the parser's buffer grew to the whole upload (about 45 MB for a request of 1,000 small
//! files). Yielding after each chunk keeps that buffer near one chunk; the rest of the upload
//! waits in the socket, where TCP flow control holds it.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;

pub struct PacedBody<S> {
    inner: S,
    /// A chunk was just handed out: the next poll yields first.
    yield_next: bool,
}

impl<S> PacedBody<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            yield_next: false,
        }
    }
}

impl<S: Stream + Unpin> Stream for PacedBody<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.yield_next {
            self.yield_next = false;
            // Ready to go on at once: the consumer only has to finish what it has.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = Pin::new(&mut self.inner).poll_next(cx);
        self.yield_next = matches!(next, Poll::Ready(Some(_)));
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn every_chunk_arrives_in_order() {
        let chunks = futures_util::stream::iter(vec![1, 2, 3]);
        let paced: Vec<_> = PacedBody::new(chunks).collect().await;
        assert_eq!(paced, vec![1, 2, 3]);
    }

    #[test]
    fn a_ready_body_gives_one_chunk_per_poll() {
        let mut paced = PacedBody::new(futures_util::stream::iter(vec![1, 2]));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(paced.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(paced.poll_next_unpin(&mut cx), Poll::Pending);
        assert_eq!(paced.poll_next_unpin(&mut cx), Poll::Ready(Some(2)));
    }
}
