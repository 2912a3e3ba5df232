//! A unary request too large for the gRPC decoder is answered like any other oversized
//! message — `error_no` 1, saying the size and the limit — rather than with tonic's
//! transport status (`OUT_OF_RANGE: decoded message length too large`), which the
//! predecessor's clients and `ferry send` would read as a daemon fault and try on the next
//! daemon.
//!
//! [`Oversize`] reads only the 5-byte gRPC header of the call's first message: when the
//! length it announces is beyond the decoder's limit, the call is answered at once and the
//! rest of the body is never read (HTTP/2 resets the stream). Otherwise the bytes read are
//! handed on in front of the rest of the body ([`Prepended`]) and tonic decodes as usual.
//! It sits inside the token check, so a caller without a token is refused for that first.
//!
//! Both unary replies, `messagebroker.Response` and `ferry.v1.SendReply`, carry `error_no`
//! as field 1 and `error_message` as field 2, so one encoding answers either method.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prost::Message;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::NamedService;

use crate::contract::ErrorNo;
use crate::daemon::ingress::Ingress;

/// Bytes of a gRPC message header: the compression flag and the length.
const HEADER_BYTES: usize = 5;
/// The unary methods whose reply carries `error_no` (field 1) and `error_message` (field
/// 2); any other path (an unknown method) is left to tonic (`UNIMPLEMENTED`).
const UNARY_METHODS: [&str; 3] = [
    "/messagebroker.MessageBroker/SendRabbitMQMessage",
    "/messagebroker.MessageBroker/SendKafkaMessage",
    "/ferry.v1.Send/Send",
];
/// Body frames read at most while looking for the header (empty frames do not count as
/// bytes; a body of many empty frames is handed on rather than read on).
const MAX_PEEK_FRAMES: usize = 16;

/// A unary service whose oversized requests are answered with error 1.
#[derive(Clone)]
pub struct Oversize<S> {
    /// The service that decodes and answers the others.
    inner: S,
    /// The decoder's limit: the largest message length accepted, in bytes.
    limit: usize,
    /// Where refusals are counted and logged, as the other invalid requests are.
    ingress: Arc<Ingress>,
}

impl<S> Oversize<S> {
    /// `inner`, whose requests over `limit` bytes are answered here (and counted in
    /// `ingress`'s refusals).
    pub fn new(inner: S, limit: usize, ingress: Arc<Ingress>) -> Self {
        Self {
            inner,
            limit,
            ingress,
        }
    }
}

impl<S: NamedService> NamedService for Oversize<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Oversize<S>
where
    S: Service<http::Request<Prepended<B>>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<StdError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service made ready is the one to call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        let ingress = Arc::clone(&self.ingress);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = Prepended::peek(body).await;
            let known = UNARY_METHODS.contains(&parts.uri.path());
            match body.announced_length() {
                Some(length) if known && length > limit => {
                    let text = too_large_text(length as u64, limit as u64);
                    ingress.refused_too_large(&text);
                    Ok(error_1(text))
                }
                _ => inner.call(http::Request::from_parts(parts, body)).await,
            }
        })
    }
}

/// A unary reply of `error_no` 1 with `text`, as a whole gRPC response.
fn error_1(text: String) -> http::Response<tonic::body::Body> {
    let reply = crate::proto::Response {
        error_no: ErrorNo::InvalidRequest as i32,
        error_message: text,
        ..Default::default()
    }
    .encode_to_vec();
    let framed = grpc_framed(&reply);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, std::convert::Infallible>(Frame::data(framed)),
        Ok(Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// `message` as gRPC frames it: uncompressed, its length, then its bytes.
pub fn grpc_framed(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(HEADER_BYTES + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(message);
    framed.freeze()
}

/// What a message of `length` bytes, beyond `limit`, is answered (with error 1).
pub fn too_large_text(length: u64, limit: u64) -> String {
    format!(
        "invalid request: {length} bytes is more than the {limit} this daemon takes \
         (server.max_message_bytes and the request's fields): send less, or ask for a \
         larger limit"
    )
}

/// A body with the frames already read from it in front.
pub struct Prepended<B> {
    /// Read while looking for the header, in order (an error ends them).
    read: VecDeque<Result<Frame<Bytes>, StdError>>,
    /// The data bytes among them, up to the header's 5.
    head: BytesMut,
    /// The rest; `None` once it ended while being read.
    rest: Option<B>,
}

impl<B> Prepended<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<StdError>,
{
    /// Reads `body` until its first 5 data bytes (or its end, an error, or
    /// [`MAX_PEEK_FRAMES`] frames) and keeps what it read.
    async fn peek(mut body: B) -> Self {
        let mut read = VecDeque::new();
        let mut head = BytesMut::with_capacity(HEADER_BYTES);
        let mut rest = None;
        while head.len() < HEADER_BYTES && read.len() < MAX_PEEK_FRAMES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let wanted = HEADER_BYTES - head.len();
                        head.extend_from_slice(&data[..wanted.min(data.len())]);
                    }
                    read.push_back(Ok(frame));
                }
                Some(Err(error)) => {
                    read.push_back(Err(error.into()));
                    return Self { read, head, rest };
                }
                None => return Self { read, head, rest },
            }
        }
        rest = Some(body);
        Self { read, head, rest }
    }

    /// The length the first message's header announces, once all 5 bytes were read and
    /// its flag is a valid one (0 plain, 1 compressed; anything else is tonic's to refuse).
    fn announced_length(&self) -> Option<usize> {
        let header: [u8; HEADER_BYTES] = self.head[..].try_into().ok()?;
        if header[0] > 1 {
            return None;
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        usize::try_from(length).ok()
    }
}

impl<B> Body for Prepended<B>
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
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.rest, self.read.is_empty()) {
            (Some(rest), true) => rest.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    /// A body of `chunks`, one frame each.
    fn body(
        chunks: &[&[u8]],
    ) -> http_body_util::StreamBody<
        impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Unpin,
    > {
        let frames: Vec<_> = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn the_header_is_read_across_frames_and_everything_is_handed_on() {
        let peeked = Prepended::peek(body(&[&[0, 0], &[0, 1], &[0, b'x', b'y']])).await;
        assert_eq!(peeked.announced_length(), Some(256));
        let all = peeked.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], &[0, 0, 0, 1, 0, b'x', b'y']);
    }

    #[tokio::test]
    async fn an_invalid_flag_announces_nothing() {
        let peeked = Prepended::peek(body(&[&[7, 0, 0, 1, 0]])).await;
        assert_eq!(peeked.announced_length(), None, "tonic refuses it");
    }

    #[tokio::test]
    async fn a_body_shorter_than_a_header_announces_nothing() {
        let peeked = Prepended::peek(Full::new(Bytes::from_static(&[0, 0]))).await;
        assert_eq!(peeked.announced_length(), None);
        assert_eq!(&peeked.collect().await.unwrap().to_bytes()[..], &[0, 0]);
    }

    #[tokio::test]
    async fn the_answer_is_a_grpc_reply_with_error_1() {
        let response = error_1(too_large_text(5_000_000, 4_259_840));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let bytes = collected.to_bytes();
        let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(bytes.len(), HEADER_BYTES + length);
        let reply = crate::proto::ferry::v1::SendReply::decode(&bytes[HEADER_BYTES..]).unwrap();
        assert_eq!(reply.error_no, 1);
        assert!(
            reply
                .error_message
                .contains("5000000 bytes is more than the 4259840")
        );
    }
}
