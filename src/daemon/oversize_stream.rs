//! A streamed message too large for the gRPC decoder is answered like any other oversized
//! message — its ack carries `error_no` 1 with the size and the limit — and the stream
//! goes on, rather than ending with tonic's `OUT_OF_RANGE: decoded message length too
//! large` and leaving the sender to guess which message it was.
//!
//! tonic refuses such a message from its 5-byte header, before any of it is read, so it
//! cannot say which one it was. [`Shrunk`] wraps the request body below the decoder and
//! follows the gRPC framing: a message within the limit is handed on untouched (the same
//! `Bytes`, not copied); one beyond it is replaced by a message holding only its `id`
//! (field 1 of `IngestRequest`, which encoders write first; absent when it is 0), read
//! from its first bytes, and the rest of it is read and dropped as it arrives, never held.
//! The stream's reader finds the id in [`Oversized`] and answers it error 1. The message
//! must still arrive whole within the stream's per-message deadline (`framing.rs`, outside
//! this body), so a sender cannot announce 4 GiB and trickle it for ever.
//!
//! A message whose id cannot be read so (compressed, or starting with a field the request
//! does not have) is handed on as it was, and tonic ends the stream as before; the
//! stream's status then says how far the daemon read.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{Service, StdError, http};
use tonic::server::NamedService;

use crate::daemon::oversize::grpc_framed;

/// Bytes of a gRPC message header: the compression flag and the length.
const HEADER_BYTES: usize = 5;
/// Bytes of a message's start that hold its id: the tag of field 1 and a varint of at most
/// 10 bytes.
const ID_BYTES: usize = 11;
/// The tag of `IngestRequest.id`: field 1, varint.
const ID_TAG: u8 = 0x08;
/// Oversized messages remembered for the stream's reader at once. The reader takes each as
/// it reads the message standing in for it, which comes right after in the same body, so
/// more never wait; past this, one is answered as a message with nothing in it.
const MAX_WAITING: usize = 16;

/// The oversized messages of one stream, by id and announced length, until its reader
/// answers them (in the request's extensions).
#[derive(Debug, Clone, Default)]
pub struct Oversized {
    /// Those not yet answered, in order.
    waiting: Arc<Mutex<VecDeque<(u64, u64)>>>,
    /// The decoder's limit they exceeded.
    limit: u64,
}

impl Oversized {
    /// None yet, over `limit`.
    fn new(limit: u64) -> Self {
        Self {
            waiting: Arc::default(),
            limit,
        }
    }

    /// Remembers that the message `id` announced `length` bytes.
    fn push(&self, id: u64, length: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() < MAX_WAITING {
            waiting.push_back((id, length));
        }
    }

    /// The length the oversized message `id` announced, if it was one (and forgets it).
    pub fn take(&self, id: u64) -> Option<u64> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let at = waiting
            .iter()
            .position(|&(waiting_id, _)| waiting_id == id)?;
        waiting.remove(at).map(|(_, length)| length)
    }

    /// What the message `id` is answered (error 1), if it was an oversized one.
    pub fn answer(&self, id: u64) -> Option<String> {
        let length = self.take(id)?;
        Some(crate::daemon::oversize::too_large_text(length, self.limit))
    }
}

/// A streaming service whose request bodies pass through [`Shrunk`].
#[derive(Debug, Clone)]
pub struct OversizeStream<S> {
    /// The service that decodes the messages.
    inner: S,
    /// The decoder's limit: the largest message length accepted, in bytes.
    limit: u64,
}

impl<S> OversizeStream<S> {
    /// `inner`, whose streamed messages over `limit` bytes are stood in for.
    pub fn new(inner: S, limit: usize) -> Self {
        Self {
            inner,
            limit: limit as u64,
        }
    }
}

impl<S: NamedService> NamedService for OversizeStream<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for OversizeStream<S>
where
    S: Service<http::Request<Shrunk<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let oversized = Oversized::new(self.limit);
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(oversized.clone());
        let body = Shrunk::new(body, self.limit, oversized);
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

/// Where [`Shrunk`] is in the gRPC framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// In a header (or between messages): `seen` of its bytes, held until it is whole.
    Header {
        bytes: [u8; HEADER_BYTES],
        seen: usize,
    },
    /// In a message within the limit: its bytes still to come, handed on.
    Pass(u64),
    /// In an oversized message of `length` bytes: its first bytes, for its id.
    Peek {
        /// The length its header announced.
        length: u64,
        /// Its first bytes.
        head: [u8; ID_BYTES],
        /// How many of them were seen.
        seen: usize,
    },
    /// In an oversized message: its bytes still to come, dropped.
    Skip(u64),
}

/// A request body whose oversized messages are replaced by their id alone.
pub struct Shrunk<B> {
    /// The body as received.
    inner: B,
    /// The largest message handed on.
    limit: u64,
    /// Where the body is in the framing.
    at: At,
    /// What to hand on next, in order.
    out: VecDeque<Bytes>,
    /// Where the oversized messages' ids go.
    oversized: Oversized,
    /// Whether the body as received has ended (its data: trailers may follow).
    ended: bool,
    /// The body's trailers, handed on after the data.
    trailers: Option<Frame<Bytes>>,
}

impl<B> Shrunk<B> {
    /// `inner`, its messages over `limit` bytes replaced and remembered in `oversized`.
    pub fn new(inner: B, limit: u64, oversized: Oversized) -> Self {
        Self {
            inner,
            limit,
            at: At::Header {
                bytes: [0; HEADER_BYTES],
                seen: 0,
            },
            out: VecDeque::new(),
            oversized,
            ended: false,
            trailers: None,
        }
    }

    /// Follows `data` through the framing, queueing what to hand on: runs of it as slices
    /// of it, a header split across chunks as its own bytes, a stand-in for each oversized
    /// message.
    fn feed(&mut self, data: &Bytes) {
        let mut i = 0;
        // The start of the run of `data` handed on unchanged that ends at `i`.
        let mut run = 0;
        while i < data.len() {
            let rest = &data[i..];
            match &mut self.at {
                At::Header { bytes, seen } => {
                    let started_here = *seen == 0;
                    let take = (HEADER_BYTES - *seen).min(rest.len());
                    bytes[*seen..*seen + take].copy_from_slice(&rest[..take]);
                    *seen += take;
                    i += take;
                    if *seen < HEADER_BYTES {
                        // Held until whole; the run stops before it.
                        self.flush(data, run, i - take);
                        run = i;
                        continue;
                    }
                    let header = *bytes;
                    run = self.header_whole(data, header, (run, i), started_here);
                }
                At::Pass(left) => {
                    let take = (*left).min(rest.len() as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.at = header_start();
                    }
                }
                At::Peek { length, head, seen } => {
                    let want = ID_BYTES.min(usize::try_from(*length).unwrap_or(ID_BYTES));
                    let take = (want - *seen).min(rest.len());
                    head[*seen..*seen + take].copy_from_slice(&rest[..take]);
                    *seen += take;
                    i += take;
                    run = i;
                    if *seen == want {
                        let (length, head, seen) = (*length, *head, *seen);
                        self.peeked(length, &head[..seen]);
                    }
                }
                At::Skip(left) => {
                    let take = (*left).min(rest.len() as u64);
                    *left -= take;
                    i += take as usize;
                    run = i;
                    if *left == 0 {
                        self.at = header_start();
                    }
                }
            }
        }
        self.flush(data, run, i);
    }

    /// A header is whole, ending at `end` in `data`, after the run from `run`: a message
    /// within the limit goes on (its header in the run when it `started_here`, else queued
    /// whole); an oversized one is peeked at. Where the run goes on from.
    fn header_whole(
        &mut self,
        data: &Bytes,
        header: [u8; HEADER_BYTES],
        (run, end): (usize, usize),
        started_here: bool,
    ) -> usize {
        let length = u64::from(u32::from_be_bytes([
            header[1], header[2], header[3], header[4],
        ]));
        if length <= self.limit {
            self.at = if length == 0 {
                header_start()
            } else {
                At::Pass(length)
            };
            if started_here {
                return run;
            }
            self.out.push_back(Bytes::copy_from_slice(&header));
            return end;
        }
        if started_here {
            self.flush(data, run, end - HEADER_BYTES);
        }
        if header[0] != 0 {
            // Compressed: its id cannot be read. Handed on for tonic to refuse.
            self.out.push_back(Bytes::copy_from_slice(&header));
            self.at = At::Pass(length);
            return end;
        }
        self.at = At::Peek {
            length,
            head: [0; ID_BYTES],
            seen: 0,
        };
        end
    }

    /// At the end of the body's data, what is held (a partial header, the first bytes of a
    /// message) is handed on, so tonic sees the body as it was sent and refuses it as it
    /// would have.
    fn hand_on_held(&mut self) {
        match self.at {
            At::Header { bytes, seen } if seen > 0 => {
                self.out.push_back(Bytes::copy_from_slice(&bytes[..seen]));
            }
            At::Peek { length, head, seen } => self.out.push_back(original(length, &head[..seen])),
            _ => {}
        }
        self.at = header_start();
    }

    /// The first bytes of an oversized message of `length` bytes are in: it is replaced by
    /// its id alone, and the rest dropped; or, when they hold no id, handed on as it was.
    fn peeked(&mut self, length: u64, head: &[u8]) {
        let rest = length - head.len() as u64;
        match read_id(head) {
            Some(id) => {
                log::debug!(id = id, length = length; "Streamed message too large, answered error 1");
                self.oversized.push(id, length);
                self.out.push_back(stand_in(id));
                self.at = if rest == 0 {
                    header_start()
                } else {
                    At::Skip(rest)
                };
            }
            None => {
                self.out.push_back(original(length, head));
                self.at = if rest == 0 {
                    header_start()
                } else {
                    At::Pass(rest)
                };
            }
        }
    }

    /// Queues `data[from..to]`, if not empty.
    fn flush(&mut self, data: &Bytes, from: usize, to: usize) {
        if from < to {
            self.out.push_back(data.slice(from..to));
        }
    }
}

/// Between messages.
fn header_start() -> At {
    At::Header {
        bytes: [0; HEADER_BYTES],
        seen: 0,
    }
}

/// The header of an uncompressed message of `length` bytes, and its first bytes `head`.
fn original(length: u64, head: &[u8]) -> Bytes {
    let mut bytes = BytesMut::with_capacity(HEADER_BYTES + head.len());
    bytes.extend_from_slice(&[0]);
    bytes.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    bytes.extend_from_slice(head);
    bytes.freeze()
}

/// The tags of `IngestRequest`'s messages (fields 2, 3 and 4, length-delimited): a request
/// that starts with one of them has the id 0, which proto3 does not write.
const MESSAGE_TAGS: [u8; 3] = [0x12, 0x1a, 0x22];

/// The `id` at the start of an encoded `IngestRequest`: field 1's tag, then its varint; 0
/// when the request starts with its message instead.
fn read_id(head: &[u8]) -> Option<u64> {
    let (&tag, mut varint) = head.split_first()?;
    if MESSAGE_TAGS.contains(&tag) {
        return Some(0);
    }
    if tag != ID_TAG {
        return None;
    }
    prost::encoding::decode_varint(&mut varint).ok()
}

/// A framed `IngestRequest` holding only `id`.
fn stand_in(id: u64) -> Bytes {
    let mut message = BytesMut::with_capacity(ID_BYTES);
    message.extend_from_slice(&[ID_TAG]);
    prost::encoding::encode_varint(id, &mut message);
    grpc_framed(&message)
}

impl<B> Body for Shrunk<B>
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
        loop {
            if let Some(bytes) = self.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if self.ended {
                return Poll::Ready(self.trailers.take().map(Ok));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.feed(&data),
                    Err(trailers) => {
                        // The body's data ends here: what is held goes first.
                        self.hand_on_held();
                        self.trailers = Some(trailers);
                        self.ended = true;
                    }
                },
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(None) => {
                    self.hand_on_held();
                    self.ended = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.out.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A framed message: the id (field 1), then `pad` bytes of field 2.
    fn framed(id: u64, pad: usize) -> Vec<u8> {
        let mut message = BytesMut::new();
        message.extend_from_slice(&[ID_TAG]);
        prost::encoding::encode_varint(id, &mut message);
        message.extend_from_slice(&[0x12]);
        prost::encoding::encode_varint(pad as u64, &mut message);
        message.extend_from_slice(&vec![b'p'; pad]);
        let mut bytes = vec![0];
        bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&message);
        bytes
    }

    /// What `Shrunk` hands on of `sent` cut into chunks of `chunk` bytes, under `limit`.
    async fn through(sent: &[u8], chunk: usize, limit: u64) -> (Vec<u8>, Oversized) {
        let chunks: Vec<_> = sent
            .chunks(chunk)
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        let oversized = Oversized::new(limit);
        let shrunk = Shrunk::new(body, limit, oversized.clone());
        let out = shrunk.collect().await.unwrap().to_bytes().to_vec();
        (out, oversized)
    }

    #[tokio::test]
    async fn messages_within_the_limit_pass_unchanged_however_they_are_cut() {
        let sent = [framed(1, 10), framed(300, 0), framed(2, 40)].concat();
        for chunk in 1..=sent.len() {
            let (out, oversized) = through(&sent, chunk, 64).await;
            assert_eq!(out, sent, "chunks of {chunk}");
            assert_eq!(oversized.take(1), None);
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_replaced_by_its_id_and_the_stream_goes_on() {
        let big = framed(70_000, 500);
        let sent = [framed(1, 10), big.clone(), framed(2, 10)].concat();
        let expected = [
            &framed(1, 10)[..],
            &stand_in(70_000)[..],
            &framed(2, 10)[..],
        ]
        .concat();
        for chunk in 1..=sent.len() {
            let (out, oversized) = through(&sent, chunk, 64).await;
            assert_eq!(out, expected, "chunks of {chunk}");
            let announced = (big.len() - HEADER_BYTES) as u64;
            assert_eq!(oversized.take(70_000), Some(announced), "chunks of {chunk}");
            assert_eq!(oversized.take(70_000), None, "taken once");
        }
    }

    #[tokio::test]
    async fn an_oversized_message_with_the_id_0_is_replaced_too() {
        // proto3 writes no field of its default value: the message starts with field 2.
        let mut big = framed(0, 500);
        big.remove(HEADER_BYTES);
        big.remove(HEADER_BYTES);
        let length = (big.len() - HEADER_BYTES) as u32;
        big[1..HEADER_BYTES].copy_from_slice(&length.to_be_bytes());
        assert_eq!(big[HEADER_BYTES], 0x12);
        let sent = [big.clone(), framed(1, 10)].concat();
        let expected = [&stand_in(0)[..], &framed(1, 10)[..]].concat();
        for chunk in [1, 6, 64, sent.len()] {
            let (out, oversized) = through(&sent, chunk, 64).await;
            assert_eq!(out, expected, "chunks of {chunk}");
            assert_eq!(oversized.take(0), Some(u64::from(length)));
        }
    }

    #[tokio::test]
    async fn an_oversized_message_without_a_readable_id_is_handed_on_as_it_was() {
        let mut compressed = framed(5, 200);
        compressed[0] = 1;
        let mut unknown_field_first = framed(5, 200);
        unknown_field_first[HEADER_BYTES] = 0x2a;
        for sent in [compressed, unknown_field_first] {
            for chunk in [1, 3, 7, 64, sent.len()] {
                let (out, oversized) = through(&sent, chunk, 64).await;
                assert_eq!(out, sent, "chunks of {chunk}");
                assert_eq!(oversized.take(5), None);
            }
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_is_handed_on_as_far_as_it_came() {
        let big = framed(9, 500);
        for cut in [2, HEADER_BYTES + 4] {
            let (out, _) = through(&big[..cut], 1, 64).await;
            assert_eq!(out, &big[..cut], "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn trailers_come_after_the_held_bytes() {
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[0, 0]))),
            Ok(Frame::trailers(http::HeaderMap::new())),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut shrunk = Shrunk::new(body, 64, Oversized::new(64));
        let first = shrunk.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(&[0, 0]));
        assert!(shrunk.frame().await.unwrap().unwrap().is_trailers());
        assert!(shrunk.frame().await.is_none());
    }

    #[test]
    fn the_stand_in_decodes_as_a_request_with_the_id_alone() {
        use prost::Message;
        let bytes = stand_in(u64::MAX);
        let request =
            crate::proto::ferry::v1::IngestRequest::decode(&bytes[HEADER_BYTES..]).unwrap();
        assert_eq!(request.id, u64::MAX);
        assert!(request.message.is_none());
    }
}
