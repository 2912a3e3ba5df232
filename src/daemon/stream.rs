//! The streaming ingress: the `ferry.v1.Ingest` service, which forwards every message of a
//! bidirectional stream through the same path as the unary `MessageBroker` calls and
//! answers each with an acknowledgement carrying its id.
//!
//! Each stream is driven by one task that reads requests while fewer than
//! `max_in_flight_per_stream` of them are unanswered or unwritten, forwards them
//! concurrently, and writes the acks as they complete. When the window is full it stops
//! reading, so HTTP/2 flow control holds the sender and no queue grows.
//!
//! **A sender that does not read its acks holds only its own stream.** Writing an ack never
//! blocks the task: acks wait in the stream's own queue (at most the window) while the
//! forwards in flight keep being driven to their outcomes, so they release their places in
//! the daemon-wide bounds (`max_in_flight`, `max_in_flight_bytes`, per target) as soon as
//! their brokers answer. Reading stops once the window is taken by unwritten acks. So a
//! stream holds at most `max_in_flight_per_stream` places, and only while its messages are
//! with their brokers.
//!
//! Once the daemon's shutdown grace period is over it reads no more, answers what is in
//! flight (error_no 6) and ends the stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::daemon::access::Caller;
use crate::daemon::ingress::Ingress;
use crate::daemon::oversize_stream::Oversized;
use crate::proto::ferry::v1::ingest_request::Message;
use crate::proto::ferry::v1::ingest_server::Ingest;
use crate::proto::ferry::v1::{IngestAck, IngestRequest};
use crate::wire;

/// The `Ingest` service over the same [`Ingress`] as the unary service.
pub struct IngestService {
    /// Validation, access check and forwarding of one message.
    ingress: Arc<Ingress>,
    /// Most messages of one stream in flight at once.
    window: usize,
}

impl IngestService {
    /// A service forwarding through `ingress`, with at most `window` messages of one
    /// stream in flight.
    pub fn new(ingress: Arc<Ingress>, window: usize) -> Self {
        Self {
            ingress,
            window: window.max(1),
        }
    }
}

/// The acks of one stream, as tonic sends them.
type AckStream = ReceiverStream<Result<IngestAck, Status>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = AckStream;

    async fn stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // Identified once, at the stream's start; each message is admitted on its own.
        let caller = request.extensions().get::<Caller>().cloned();
        let oversized = request.extensions().get::<Oversized>().cloned();
        let requests = request.into_inner();
        // Acks waiting to be written are bounded by the window too.
        let (acks, ack_stream) = mpsc::channel(self.window);
        tokio::spawn(drive(
            Arc::clone(&self.ingress),
            (self.window, caller, oversized),
            requests,
            acks,
        ));
        Ok(Response::new(ReceiverStream::new(ack_stream)))
    }
}

/// Reads, forwards and answers the messages of one stream until the sender closed its side
/// (or went away) and every message it sent has an outcome.
async fn drive(
    ingress: Arc<Ingress>,
    (window, caller, oversized): (usize, Option<Caller>, Option<Oversized>),
    mut requests: Streaming<IngestRequest>,
    acks: mpsc::Sender<Result<IngestAck, Status>>,
) {
    let mut pending: FuturesUnordered<Pin<Box<dyn Future<Output = IngestAck> + Send + '_>>> =
        FuturesUnordered::new();
    // Acks answered and not yet taken by the transport: together with `pending`, at most
    // the window.
    let mut unwritten: VecDeque<IngestAck> = VecDeque::new();
    let mut reading = true;
    let mut listening = true;
    // How many requests were read, the last one's id, and why reading stopped early.
    let mut read: u64 = 0;
    let mut last_id = None;
    let mut broken = None;
    // One registration for the stream's life, not one per turn of the loop.
    let aborted = ingress.aborted();
    tokio::pin!(aborted);
    loop {
        tokio::select! {
            // Answer first: it frees room in the window.
            biased;
            Some(ack) = pending.next(), if !pending.is_empty() => {
                if listening {
                    unwritten.push_back(ack);
                }
            }
            // Room in the transport's queue: never awaited inside another branch, so a
            // sender that stops reading cannot stall the forwards above.
            permit = acks.reserve(), if listening && !unwritten.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(ack) = unwritten.pop_front() {
                        permit.send(Ok(ack));
                    }
                }
                Err(_) => {
                    // The sender is gone. What it sent is still forwarded to the end (within
                    // the policy's budget), so it is counted and never half-sent.
                    log::info!(unanswered = pending.len() as u64; "Stream closed by its sender");
                    unwritten.clear();
                    listening = false;
                    reading = false;
                }
            },
            next = requests.message(), if reading && pending.len() + unwritten.len() < window => match next {
                Ok(Some(request)) => {
                    read += 1;
                    last_id = Some(request.id);
                    match too_large(&ingress, oversized.as_ref(), &request) {
                        Some(ack) => unwritten.push_back(ack),
                        None => pending.push(Box::pin(answer(&ingress, request, caller.as_ref()))),
                    }
                }
                Ok(None) => reading = false,
                Err(status) => {
                    let unanswered = pending.len();
                    ingress.log_limited(|suppressed| log::info!(
                        unanswered = unanswered as u64, read = read,
                        "error":% = status, suppressed_before = suppressed;
                        "Stream cannot be read further"
                    ));
                    broken = Some(unreadable(&status, read, last_id));
                    reading = false;
                }
            },
            // The grace period is over: what is in flight is being answered 6; read no more.
            () = &mut aborted, if reading => reading = false,
            else => break,
        }
    }
    // Every message read has its ack; a stream that could not be read to its end says so
    // in its status, so the sender knows that what it sent after that was not forwarded.
    if let Some(status) = broken
        && listening
    {
        let _ = acks.send(Err(status)).await;
    }
}

/// The status that ends a stream whose next request could not be read (not protobuf, too
/// large, or the transport failed): it names how far the daemon read.
fn unreadable(cause: &Status, read: u64, last_id: Option<u64>) -> Status {
    // tonic reports a request that does not decode as INTERNAL; it is the sender's error.
    let code = match cause.code() {
        tonic::Code::Internal | tonic::Code::Unknown => tonic::Code::InvalidArgument,
        code => code,
    };
    let after = match last_id {
        Some(id) => format!("after {read} requests (the last with id {id})"),
        None => "before any request".to_owned(),
    };
    Status::new(
        code,
        format!(
            "ferry could not read this stream {after}: {}; every request read was answered, \
             nothing after that point was read or forwarded",
            cause.message()
        ),
    )
}

/// The ack of `request` when it stands in for a message too large to decode (see
/// [`crate::daemon::oversize_stream`]): error 1 with the size and the limit, in both of the
/// ack's replies, as the sender's kind of message is not known.
fn too_large(
    ingress: &Ingress,
    oversized: Option<&Oversized>,
    request: &IngestRequest,
) -> Option<IngestAck> {
    if request.message.is_some() {
        return None;
    }
    let text = oversized?.answer(request.id)?;
    ingress.refused_too_large(&text);
    Some(refused(request.id, text))
}

/// The ack of the message `id`, refused with error 1 for `text`.
fn refused(id: u64, text: String) -> IngestAck {
    let error_no = crate::contract::ErrorNo::InvalidRequest as i32;
    IngestAck {
        id,
        response: Some(crate::proto::Response {
            error_no,
            error_message: text.clone(),
            ..Default::default()
        }),
        reply: Some(crate::proto::ferry::v1::SendReply {
            error_no,
            error_message: text,
            ..Default::default()
        }),
    }
}

/// Forwards one streamed message and builds its ack.
async fn answer(ingress: &Ingress, request: IngestRequest, caller: Option<&Caller>) -> IngestAck {
    let max = ingress.limits();
    let validated = match request.message {
        Some(Message::Kafka(message)) => wire::kafka_request(message, max),
        Some(Message::Rabbitmq(message)) => wire::rabbitmq_request(message, max),
        Some(Message::Send(message)) => {
            let validated = wire::send_request(message, max, &ingress.routes());
            let reply = ingress.send_v1(validated, caller).await;
            // `response` too, for a reader of the first version of the ack.
            let response = crate::proto::Response {
                error_no: reply.error_no,
                error_message: reply.error_message.clone(),
                id: reply.id.clone(),
                spooled: reply.spooled,
            };
            return IngestAck {
                id: request.id,
                response: Some(response),
                reply: Some(reply),
            };
        }
        None => Err(ferry_actors::InvalidRequest::new("message", "missing")),
    };
    IngestAck {
        id: request.id,
        response: Some(ingress.send(validated, caller).await),
        reply: None,
    }
}
