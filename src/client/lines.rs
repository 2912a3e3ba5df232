//! Many messages from one job (`ferry send --lines`): every message goes over one
//! `ferry.v1.Ingest` stream and is acknowledged on its own, with failover between daemons.
//!
//! Rounds: in round n, each daemon in turn gets one stream carrying every message not yet
//! settled, and the stream is given up once no ack has come for n × the attempt timeout
//! (the policy's attempt n). An ack of 0 settles a message as delivered; 1, 3 or 7 settles
//! it as failed (no daemon would deliver it); 2, 4, 5 or 6, or no ack at all, leaves it for
//! the next daemon or round. There are at most `attempts` rounds, and the client's
//! deadline, if any, bounds the whole. A message whose stream broke before its ack may
//! have been delivered all the same, so a retried one may arrive twice (at least once).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::failover::{Client, Daemon, Destination, Legacy, MessageMetadata, RETRY_PAUSE, chain};
use crate::contract::ErrorNo;
use crate::proto;
use crate::proto::ferry::v1::ingest_client::IngestClient;
use crate::proto::ferry::v1::ingest_request::Message;
use crate::proto::ferry::v1::{IngestAck, IngestRequest};

/// Requests queued for a stream ahead of HTTP/2 flow control (the daemon takes at most its
/// `max_in_flight_per_stream` at once and holds the rest with flow control).
const QUEUED_REQUESTS: usize = 256;

/// What became of each message.
#[derive(Debug, Default)]
pub struct ManyOutcome {
    /// Messages the broker confirmed.
    pub delivered: usize,
    /// Messages a daemon accepted into its spool (delivered when the broker is back).
    pub spooled: usize,
    /// Messages not delivered: (index, why), in index order.
    pub failed: Vec<(usize, String)>,
    /// How long it all took.
    pub elapsed: Duration,
}

/// Where one message stands.
#[derive(Debug, Clone)]
enum State {
    /// Not settled; the last reason it was not delivered, if it was tried.
    Pending(Option<String>),
    /// Confirmed by the broker, or spooled (true).
    Delivered { spooled: bool },
    /// Refused for what it is.
    Failed(String),
}

impl Client {
    /// Sends every message of `messages` to `destination` over `ferry.v1.Ingest` streams,
    /// as the module documentation describes.
    pub async fn send_many(&self, destination: &Destination, messages: &[Bytes]) -> ManyOutcome {
        let started = Instant::now();
        let deadline = self.deadline.map(|limit| started + limit);
        let mut states = vec![State::Pending(None); messages.len()];
        'rounds: for round in 1..=self.policy.max_attempts() {
            if round > 1 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            for daemon in &self.daemons {
                let pending: Vec<usize> = (0..messages.len())
                    .filter(|&i| matches!(states[i], State::Pending(_)))
                    .collect();
                if pending.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
                    break 'rounds;
                }
                let stall = self.policy.attempt_timeout(round);
                let stream = Stream {
                    daemon,
                    destination,
                    messages,
                    stall,
                    deadline,
                    authorization: self.authorization.as_ref(),
                };
                stream.run(&pending, &mut states).await;
            }
        }
        let mut outcome = ManyOutcome {
            elapsed: started.elapsed(),
            ..ManyOutcome::default()
        };
        for (i, state) in states.into_iter().enumerate() {
            match state {
                State::Delivered { spooled: false } => outcome.delivered += 1,
                State::Delivered { spooled: true } => outcome.spooled += 1,
                State::Failed(reason) => outcome.failed.push((i, reason)),
                State::Pending(reason) => outcome.failed.push((
                    i,
                    reason.unwrap_or_else(|| "not sent: the time limit was reached".into()),
                )),
            }
        }
        outcome
    }
}

/// One stream to one daemon.
struct Stream<'a> {
    /// Where it goes.
    daemon: &'a Daemon,
    /// The messages' destination.
    destination: &'a Destination,
    /// Every message, by index (the request id).
    messages: &'a [Bytes],
    /// The stream is given up when no ack comes for this long.
    stall: Duration,
    /// The client's overall deadline.
    deadline: Option<Instant>,
    /// The `authorization` header, if the daemon needs one.
    authorization: Option<&'a tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Stream<'_> {
    /// Sends the messages of `pending` and settles in `states` each one answered; those
    /// not answered keep the reason the stream stopped.
    async fn run(&self, pending: &[usize], states: &mut [State]) {
        let mut unanswered = pending.len();
        if let Err(reason) = self.acks(pending, states, &mut unanswered).await {
            let reason = format!("{}: {reason}", self.daemon.address);
            log::info!("Stream to {reason} ({unanswered} unanswered)");
            for &i in pending {
                if let State::Pending(last) = &mut states[i] {
                    *last = Some(reason.clone());
                }
            }
        }
    }

    /// Opens the stream, feeds it and reads acks until every message of `pending` is
    /// answered; an error says why it stopped before that.
    async fn acks(
        &self,
        pending: &[usize],
        states: &mut [State],
        unanswered: &mut usize,
    ) -> Result<(), String> {
        let limit = self.limit(self.stall);
        let channel = tokio::time::timeout(limit, self.daemon.endpoint.connect())
            .await
            .map_err(|_| {
                format!(
                    "cannot connect: no connection within {} ms",
                    limit.as_millis()
                )
            })?
            .map_err(|e| format!("cannot connect: {}", chain(&e)))?;
        let (requests, outgoing) = mpsc::channel(QUEUED_REQUESTS);
        let feeder = {
            let to_send: Vec<IngestRequest> = pending
                .iter()
                .map(|&i| IngestRequest {
                    id: i as u64,
                    message: Some(message(self.destination, self.messages[i].clone())),
                })
                .collect();
            tokio::spawn(async move {
                for request in to_send {
                    if requests.send(request).await.is_err() {
                        break;
                    }
                }
            })
        };
        let _stop_feeding = AbortOnDrop(feeder);
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        if let Some(value) = self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let mut client = IngestClient::new(channel);
        let mut acks = tokio::time::timeout(limit, client.stream(request))
            .await
            .map_err(|_| format!("no answer within {} ms", limit.as_millis()))?
            .map_err(|status| format!("gRPC {:?}: {}", status.code(), status.message()))?
            .into_inner();
        while *unanswered > 0 {
            let limit = self.limit(self.stall);
            let ack: Option<IngestAck> = tokio::time::timeout(limit, acks.message())
                .await
                .map_err(|_| format!("no ack within {} ms", limit.as_millis()))?
                .map_err(|status| format!("gRPC {:?}: {}", status.code(), status.message()))?;
            let Some(ack) = ack else {
                return Err("the stream ended before every message was answered".into());
            };
            let Some(state) = usize::try_from(ack.id).ok().and_then(|i| states.get_mut(i)) else {
                continue;
            };
            if !matches!(state, State::Pending(_)) {
                continue;
            }
            *unanswered -= 1;
            let response = ack.response.unwrap_or_default();
            *state = settle(&self.daemon.address, response);
        }
        Ok(())
    }

    /// `limit`, cut short by the client's deadline.
    fn limit(&self, limit: Duration) -> Duration {
        self.deadline.map_or(limit, |deadline| {
            limit.min(deadline.saturating_duration_since(Instant::now()))
        })
    }
}

/// What an ack means for its message.
fn settle(daemon: &str, response: proto::Response) -> State {
    if response.error_no == 0 {
        return State::Delivered {
            spooled: response.spooled,
        };
    }
    let reason = format!(
        "{daemon}: error_no {}: {}",
        response.error_no, response.error_message
    );
    match ErrorNo::from_wire(response.error_no) {
        Some(
            ErrorNo::Timeout | ErrorNo::Unavailable | ErrorNo::Overloaded | ErrorNo::ShuttingDown,
        ) => State::Pending(Some(reason)),
        _ => State::Failed(reason),
    }
}

/// The stream message that sends `data` to `destination`.
fn message(destination: &Destination, data: Bytes) -> Message {
    match destination.legacy(data.clone()) {
        Some(Legacy::Kafka(message)) => Message::Kafka(message),
        Some(Legacy::RabbitMq(message)) => Message::Rabbitmq(message),
        None => Message::Send(destination.v1_request(data, &MessageMetadata::default())),
    }
}

/// Aborts a task when dropped: the feeder must not outlive its stream.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Splits `input` into lines (on `\n`; a last line without one counts), each a slice of
/// the same buffer.
pub fn split_lines(input: &Bytes) -> Vec<Bytes> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, byte) in input.iter().enumerate() {
        if *byte == b'\n' {
            lines.push(input.slice(start..i));
            start = i + 1;
        }
    }
    if start < input.len() {
        lines.push(input.slice(start..));
    }
    lines
}

/// Failed messages grouped by reason, their (1-based) line numbers written as ranges
/// (`3-7, 9`), at most `max_ranges` ranges per reason.
pub fn describe_failures(failed: &[(usize, String)], max_ranges: usize) -> Vec<String> {
    let mut by_reason: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, reason) in failed {
        by_reason.entry(reason).or_default().push(i + 1);
    }
    by_reason
        .into_iter()
        .map(|(reason, numbers)| {
            let mut ranges: Vec<(usize, usize)> = Vec::new();
            for n in numbers.iter().copied() {
                match ranges.last_mut() {
                    Some((_, end)) if *end + 1 == n => *end = n,
                    _ => ranges.push((n, n)),
                }
            }
            let shown: Vec<String> = ranges
                .iter()
                .take(max_ranges)
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let more = ranges.len().saturating_sub(max_ranges);
            let word = if numbers.len() == 1 { "line" } else { "lines" };
            let tail = if more > 0 {
                format!(" and {more} more ranges")
            } else {
                String::new()
            };
            format!("{word} {}{tail}: {reason}", shown.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_newlines_and_a_last_line_without_one_counts() {
        let lines = split_lines(&Bytes::from_static(b"a\n\nb c\nlast"));
        assert_eq!(
            lines,
            [&b"a"[..], b"", b"b c", b"last"].map(Bytes::from_static)
        );
        assert_eq!(split_lines(&Bytes::from_static(b"one\n")).len(), 1);
        assert!(split_lines(&Bytes::new()).is_empty());
    }

    #[test]
    fn failures_are_grouped_by_reason_as_line_ranges() {
        let failed = vec![
            (0, "x".to_owned()),
            (1, "x".to_owned()),
            (2, "x".to_owned()),
            (4, "y".to_owned()),
            (6, "x".to_owned()),
        ];
        assert_eq!(
            describe_failures(&failed, 10),
            ["lines 1-3, 7: x", "line 5: y"]
        );
        assert_eq!(
            describe_failures(&failed, 1),
            ["lines 1-3 and 1 more ranges: x", "line 5: y"]
        );
    }

    #[test]
    fn acks_settle_or_leave_a_message_for_the_next_daemon() {
        let answer = |error_no| proto::Response {
            error_no,
            ..Default::default()
        };
        assert!(matches!(
            settle("d", answer(0)),
            State::Delivered { spooled: false }
        ));
        for retriable in [2, 4, 5, 6] {
            assert!(matches!(
                settle("d", answer(retriable)),
                State::Pending(Some(_))
            ));
        }
        for final_ in [1, 3, 7] {
            assert!(matches!(settle("d", answer(final_)), State::Failed(_)));
        }
    }
}
