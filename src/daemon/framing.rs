//! Checks on the gRPC framing of request bodies, below tonic's decoder: a read deadline
//! per streamed message (`server.stream_message_timeout_ms`), and one message per unary
//! call.
//!
//! **One message per unary call.** tonic decodes a unary call's first message and drains
//! the rest of the body, so a second message in the same body would be dropped while the
//! call answers OK. [`Checked`] fails such a body with `INVALID_ARGUMENT` as soon as a
//! second message begins, and the call is answered with that status; nothing is forwarded.
//!
//! **The deadline.** A stream may stay open and quiet between messages (the connection's idle timeout and
//! PINGs govern that), but once a message has begun to arrive, all of it must arrive
//! within the deadline. Without one, a sender that trickles a byte just under the idle
//! timeout pins a partial message (up to `max_message_bytes`) per stream for as long as
//! it likes.
//!
//! tonic decodes messages from the HTTP/2 body and shows none of a partial one, so the
//! deadline is kept below it: [`Checked`] wraps the request body, follows the gRPC
//! framing (a 5-byte header — a flag and a big-endian 32-bit length — then the message),
//! arms a timer at the first byte of each message and disarms it at the last. When the
//! timer fires while the body waits for more, the body fails with `DEADLINE_EXCEEDED`
//! naming the bound; the stream's reader answers what it read and ends the stream, and the
//! partial message's buffer is freed with it. Time during which the reader does not ask for
//! more (its window is full, and HTTP/2 flow control then holds the sender too) does not
//! count: the deadline moves back by it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{Service, StdError, http};
use tonic::server::NamedService;

/// Bytes of a gRPC message header: the compression flag and the length.
const HEADER_BYTES: usize = 5;

/// What [`Checked`] enforces on a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// A unary call: exactly one message.
    OneMessage,
    /// A stream: each message whole within this long of its first byte.
    MessageDeadline(Duration),
}

/// A service whose request bodies are read under [`Checks`].
#[derive(Debug, Clone)]
pub struct Framed<S> {
    /// The service that reads the messages.
    inner: S,
    /// What its bodies must keep to.
    checks: Checks,
}

impl<S> Framed<S> {
    /// `inner`, whose request bodies must keep to `checks`.
    pub fn new(inner: S, checks: Checks) -> Self {
        Self { inner, checks }
    }
}

impl<S, B> Service<http::Request<B>> for Framed<S>
where
    S: Service<http::Request<Checked<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let checks = self.checks;
        self.inner
            .call(request.map(|body| Checked::new(body, checks)))
    }
}

impl<S: NamedService> NamedService for Framed<S> {
    const NAME: &'static str = S::NAME;
}

/// A request body that fails when it breaks its [`Checks`]: a second message in a unary
/// call, or a streamed message that takes longer than its deadline to arrive.
pub struct Checked<B> {
    /// The body as received.
    inner: B,
    /// What it must keep to.
    checks: Checks,
    /// Where the body is in the gRPC framing.
    framing: Framing,
    /// The deadline's timer (made at the first message, reset for each one after).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The message the timer is armed for (its number in `framing.begun`); 0 when none is
    /// partly received.
    armed_for: u64,
    /// When the body last handed a frame on. Until the reader asks for the next one, the
    /// time is the daemon's (its stream window is full, and HTTP/2 flow control holds the
    /// sender too): it does not count against the deadline.
    handed_at: Option<tokio::time::Instant>,
}

impl<B> Checked<B> {
    /// `inner` under `checks`.
    pub fn new(inner: B, checks: Checks) -> Self {
        Self {
            inner,
            checks,
            framing: Framing::default(),
            timer: None,
            armed_for: 0,
            handed_at: None,
        }
    }

    /// Follows `data` through the framing: fails a unary body at a second message; with a
    /// deadline, arms the timer at a message's first byte and disarms it at its last.
    fn track(&mut self, data: &[u8]) -> Result<(), StdError> {
        self.framing.advance(data);
        match self.checks {
            Checks::OneMessage if self.framing.begun > 1 => {
                Err(Box::new(tonic::Status::invalid_argument(
                    "this unary call's body holds more than one message; send one message per \
                     call, or use the ferry.v1.Ingest stream for many",
                )))
            }
            Checks::OneMessage => Ok(()),
            Checks::MessageDeadline(limit) => {
                // Armed for the message partly received now, from its first byte: a chunk
                // that ends one message and begins the next re-arms it.
                if !self.framing.within_message() {
                    self.armed_for = 0;
                } else if self.armed_for != self.framing.begun {
                    self.armed_for = self.framing.begun;
                    let at = tokio::time::Instant::now() + limit;
                    match &mut self.timer {
                        Some(timer) => timer.as_mut().reset(at),
                        None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                Ok(())
            }
        }
    }
}

impl<B> Checked<B> {
    /// Moves the deadline back by the time since a frame was last handed on: the reader
    /// was not reading, so the sender could not send.
    fn credit_the_readers_time(&mut self) {
        let Some(handed_at) = self.handed_at.take() else {
            return;
        };
        if self.armed_for != 0
            && let Some(timer) = self.timer.as_mut()
        {
            let deadline = timer.deadline() + handed_at.elapsed();
            timer.as_mut().reset(deadline);
        }
    }
}

/// The error that ends a body whose message took longer than `limit` to arrive.
fn late(limit: Duration) -> StdError {
    Box::new(tonic::Status::deadline_exceeded(format!(
        "a message took longer than {} ms to arrive (server.stream_message_timeout_ms): \
         send each message whole",
        limit.as_millis()
    )))
}

impl<B> Body for Checked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.credit_the_readers_time();
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    if let Err(broken) = self.track(&data) {
                        return Poll::Ready(Some(Err(broken)));
                    }
                }
                if self.armed_for != 0 {
                    self.handed_at = Some(tokio::time::Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Checks::MessageDeadline(limit) = self.checks else {
                    return Poll::Pending;
                };
                let expired = self.armed_for != 0
                    && self
                        .timer
                        .as_mut()
                        .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if expired {
                    self.armed_for = 0;
                    return Poll::Ready(Some(Err(late(limit))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a body is in the gRPC framing: header bytes seen of the current message, then the
/// bytes of its payload still to come.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Framing {
    /// Bytes of the current message's header seen (0: between messages).
    header_seen: usize,
    /// The header as far as seen.
    header: [u8; HEADER_BYTES],
    /// Payload bytes of the current message still to come (once its header is whole).
    payload_left: u64,
    /// Messages begun so far.
    begun: u64,
}

impl Framing {
    /// Consumes `data`.
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.header_seen < HEADER_BYTES {
                if self.header_seen == 0 {
                    self.begun += 1;
                }
                let take = (HEADER_BYTES - self.header_seen).min(data.len());
                self.header[self.header_seen..self.header_seen + take]
                    .copy_from_slice(&data[..take]);
                self.header_seen += take;
                data = &data[take..];
                if self.header_seen == HEADER_BYTES {
                    let length = [
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ];
                    self.payload_left = u64::from(u32::from_be_bytes(length));
                    self.end_if_whole();
                }
            } else {
                let take = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.payload_left -= take as u64;
                data = &data[take..];
                self.end_if_whole();
            }
        }
    }

    /// Back to "between messages" once the payload is whole.
    fn end_if_whole(&mut self) {
        if self.header_seen == HEADER_BYTES && self.payload_left == 0 {
            self.header_seen = 0;
        }
    }

    /// Whether a message has begun and not yet ended.
    fn within_message(&self) -> bool {
        self.header_seen > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.resize(HEADER_BYTES + len as usize, b'm');
        bytes
    }

    #[test]
    fn the_framing_knows_when_a_message_is_partly_received() {
        let mut framing = Framing::default();
        let two: Vec<u8> = [message(3), message(0), message(10)].concat();
        // Byte by byte: within a message from its first byte to its last.
        let mut within = Vec::new();
        for byte in &two {
            framing.advance(std::slice::from_ref(byte));
            within.push(framing.within_message());
        }
        let ends: Vec<usize> = (0..within.len()).filter(|&i| !within[i]).collect();
        assert_eq!(ends, [7, 12, 27], "after each message's last byte");
        // Whole chunks, split anywhere.
        let mut framing = Framing::default();
        framing.advance(&two[..9]);
        assert!(framing.within_message(), "in the second header");
        framing.advance(&two[9..20]);
        assert!(framing.within_message());
        framing.advance(&two[20..]);
        assert!(!framing.within_message());
        assert_eq!(
            framing,
            Framing {
                header: framing.header,
                begun: 3,
                ..Framing::default()
            }
        );
    }

    /// A body of the chunks `rx` sends.
    struct Chunks(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_trickles_past_its_deadline_fails_the_body() {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = Checked::new(Chunks(rx), Checks::MessageDeadline(Duration::from_secs(5)));
        let whole = message(4);
        tx.send(Bytes::from(whole.clone())).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // Quiet between messages: no deadline.
        tokio::time::advance(Duration::from_secs(60)).await;
        let next = message(1000);
        tx.send(Bytes::copy_from_slice(&next[..100])).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        for _ in 0..4 {
            tokio::time::advance(Duration::from_millis(1_200)).await;
            tx.send(Bytes::copy_from_slice(&next[100..101])).unwrap();
            assert!(
                body.frame().await.unwrap().is_ok(),
                "a byte before the deadline"
            );
        }
        let error = body.frame().await.unwrap().unwrap_err();
        let status = error.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().contains("stream_message_timeout_ms"),
            "{status}"
        );
    }

    /// While the reader does not ask for more (its window is full), the sender cannot send
    /// either: that time is not the sender's to be blamed for.
    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_not_reading_does_not_count() {
        use futures_util::FutureExt;
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = Checked::new(Chunks(rx), Checks::MessageDeadline(Duration::from_secs(5)));
        let next = message(1000);
        tx.send(Bytes::copy_from_slice(&next[..100])).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // The reader is busy for a minute; then it asks, and nothing more has come yet.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(body.frame().now_or_never().is_none(), "waiting, not late");
        tokio::time::advance(Duration::from_secs(2)).await;
        tx.send(Bytes::copy_from_slice(&next[100..])).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn messages_that_straddle_chunks_each_get_their_own_deadline() {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = Checked::new(Chunks(rx), Checks::MessageDeadline(Duration::from_secs(5)));
        // 30 messages of 100 bytes in 64-byte chunks, one chunk a second: each message
        // arrives within 2 s of its first byte, though a chunk always holds a part of one.
        let all: Vec<u8> = (0..30).flat_map(|_| message(95)).collect();
        tokio::spawn(async move {
            for chunk in all.chunks(64) {
                // The body waits (Pending) between chunks, its timer polled.
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send(Bytes::copy_from_slice(chunk)).unwrap();
            }
        });
        while let Some(frame) = body.frame().await {
            assert!(frame.is_ok(), "a message late: {:?}", frame.err());
        }
    }

    #[tokio::test]
    async fn a_second_message_in_a_unary_body_fails_it() {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = Checked::new(Chunks(rx), Checks::OneMessage);
        let first = message(4);
        tx.send(Bytes::from(first.clone())).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        tx.send(Bytes::from([&first[..], &first[..2]].concat()))
            .unwrap();
        let error = body.frame().await.unwrap().unwrap_err();
        let status = error.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
