//! The client side: sends one message through a list of ferry daemons, moving to the next
//! daemon when one is unreachable or cannot deliver.
//!
//! On each daemon, attempt n may take n × `attempt_step` and there are at most `attempts`
//! attempts, the daemon's own policy. What happens after a failed attempt depends on why:
//!
//! | failure                                             | next step                     |
//! |-----------------------------------------------------|-------------------------------|
//! | no answer within the attempt's time                 | next attempt, same daemon     |
//! | answered 2 (timeout) or 4 (broker unavailable)      | next attempt, same daemon     |
//! | cannot connect, connection lost, any gRPC error     | next daemon                   |
//! | answered 5 (overloaded) or 6 (shutting down)        | next daemon                   |
//! | answered 1 (invalid), 3 (rejected), 7 (not allowed) | stop: no daemon would deliver |
//!
//! A retry after an early failure waits [`RETRY_PAUSE`] (within the failed attempt's time)
//! so a daemon that answers "unavailable" at once is not asked again at once. The whole
//! send therefore takes at most `daemons × (1 + 2 + … + attempts) × attempt_step`
//! ([`Client::bound`]), or the optional overall deadline if that is shorter.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_actors::RetryPolicy;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::contract::ErrorNo;
use crate::proto::ferry::v1;
use crate::proto::ferry::v1::send_client::SendClient;
use crate::proto::message_broker_client::MessageBrokerClient;
use crate::proto::{self, KafkaMessage, RabbitMqMessage};

/// How long a retry on the same daemon waits after an attempt that failed early.
pub const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Where a message goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A Kafka topic.
    Kafka {
        /// Bootstrap addresses of the cluster.
        brokers: Vec<String>,
        /// The topic.
        topic: String,
    },
    /// A RabbitMQ exchange.
    RabbitMq {
        /// AMQP URL of the server.
        server: String,
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// A route of the daemons' config (`ferry.v1.Send`): the daemon knows the target.
    Route {
        /// The route's name.
        name: String,
        /// A topic instead of the route's own (where the route allows it).
        topic: Option<String>,
        /// A routing key instead of the route's own (where the route allows it).
        routing_key: Option<String>,
    },
}

/// What a message carries besides its bytes, as `ferry.v1.Send` takes it. Empty (the
/// default), the legacy calls carry the message, so an older daemon still takes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageMetadata {
    /// Key, headers and partition for Kafka.
    pub kafka: Option<v1::KafkaMetadata>,
    /// Properties for RabbitMQ.
    pub amqp: Option<v1::AmqpMetadata>,
    /// Headers for either kind.
    pub headers: Vec<v1::KafkaHeader>,
}

impl MessageMetadata {
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.kafka.is_none() && self.amqp.is_none() && self.headers.is_empty()
    }
}

impl Destination {
    /// The predecessor's message of `data` to this destination; `None` for a route, which
    /// only `ferry.v1.Send` carries.
    pub(super) fn legacy(&self, data: Bytes) -> Option<Legacy> {
        let message = Some(proto::Message { data });
        match self {
            Self::Kafka { brokers, topic } => Some(Legacy::Kafka(KafkaMessage {
                target: Some(proto::KafkaTarget {
                    brokers: brokers.clone(),
                    topic: topic.clone(),
                }),
                message,
            })),
            Self::RabbitMq {
                server,
                exchange,
                routing_key,
            } => Some(Legacy::RabbitMq(RabbitMqMessage {
                target: Some(proto::RabbitMqTarget {
                    server: server.clone(),
                    exchange: exchange.clone(),
                    route_key: routing_key.clone(),
                }),
                message,
            })),
            Self::Route { .. } => None,
        }
    }

    /// The `ferry.v1.SendRequest` of `data` to this destination with `metadata`.
    pub fn v1_request(&self, data: Bytes, metadata: &MessageMetadata) -> v1::SendRequest {
        use v1::send_request::Target;
        let (target, topic, routing_key) = match self {
            Self::Kafka { brokers, topic } => (
                Target::Kafka(proto::KafkaTarget {
                    brokers: brokers.clone(),
                    topic: topic.clone(),
                }),
                None,
                None,
            ),
            Self::RabbitMq {
                server,
                exchange,
                routing_key,
            } => (
                Target::Rabbitmq(proto::RabbitMqTarget {
                    server: server.clone(),
                    exchange: exchange.clone(),
                    route_key: routing_key.clone(),
                }),
                None,
                None,
            ),
            Self::Route {
                name,
                topic,
                routing_key,
            } => (
                Target::Route(name.clone()),
                topic.clone(),
                routing_key.clone(),
            ),
        };
        v1::SendRequest {
            target: Some(target),
            data,
            topic,
            routing_key,
            kafka_metadata: metadata.kafka.clone(),
            amqp_metadata: metadata.amqp.clone(),
            headers: metadata.headers.clone(),
        }
    }
}

/// A client that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon address was given.
    #[error("no ferry daemon address given")]
    NoDaemon,
    /// A daemon address is not `host:port`.
    #[error("invalid ferry daemon address {0:?} (expected host:port)")]
    Address(String),
    /// The bearer token cannot be sent in a header.
    #[error("the bearer token must be printable ASCII")]
    Token,
    /// TLS cannot be set up (an unusable CA certificate).
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// Why one attempt on one daemon failed.
#[derive(Debug)]
pub enum AttemptError {
    /// The daemon could not be reached.
    Connect(String),
    /// The call failed at the gRPC level (connection lost, not a ferry daemon, …).
    Rpc(tonic::Status),
    /// No answer within the attempt's time.
    Timeout(Duration),
    /// The daemon answered that the message was not delivered.
    Answered {
        /// The `error_no` of the answer.
        error_no: i32,
        /// The daemon's explanation.
        message: String,
    },
}

impl AttemptError {
    /// Whether another attempt on the same daemon may succeed.
    fn retry_same_daemon(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Answered { error_no, .. } => matches!(
                ErrorNo::from_wire(*error_no),
                Some(ErrorNo::Timeout | ErrorNo::Unavailable)
            ),
            Self::Connect(_) | Self::Rpc(_) => false,
        }
    }

    /// Whether the message is refused for what it is, so no daemon would deliver it.
    fn is_final(&self) -> bool {
        match self {
            Self::Answered { error_no, .. } => !matches!(
                ErrorNo::from_wire(*error_no),
                Some(
                    ErrorNo::Timeout
                        | ErrorNo::Unavailable
                        | ErrorNo::Overloaded
                        | ErrorNo::ShuttingDown
                )
            ),
            // The daemon's gRPC decoder refused the message as too large (over its
            // server.max_message_bytes): the next daemon would refuse it too.
            Self::Rpc(status) => status.code() == tonic::Code::OutOfRange,
            Self::Connect(_) | Self::Timeout(_) => false,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(reason) => write!(f, "cannot connect: {reason}"),
            Self::Rpc(status) if status.code() == tonic::Code::OutOfRange => write!(
                f,
                "the message is larger than this daemon takes (its server.max_message_bytes; \
                 give --max-bytes to match): {}",
                status.message()
            ),
            Self::Rpc(status) => write!(f, "gRPC {:?}: {}", status.code(), status.message()),
            Self::Timeout(limit) => write!(f, "no answer within {} ms", limit.as_millis()),
            Self::Answered { error_no, message } => write!(f, "error_no {error_no}: {message}"),
        }
    }
}

/// The last failure on one daemon.
#[derive(Debug)]
pub struct DaemonFailure {
    /// The daemon's address.
    pub daemon: String,
    /// How many attempts it got.
    pub attempts: u32,
    /// Why the last one failed.
    pub error: AttemptError,
}

/// A message that no daemon delivered.
#[derive(Debug)]
pub struct NotDelivered {
    /// One entry per daemon tried, in order.
    pub failures: Vec<DaemonFailure>,
    /// How long the client tried.
    pub elapsed: Duration,
}

impl NotDelivered {
    /// Whether the message itself was refused (invalid or rejected by the broker), as
    /// opposed to daemons or brokers being unreachable.
    pub fn is_refused(&self) -> bool {
        self.failures.last().is_some_and(|f| f.error.is_final())
    }
}

impl fmt::Display for NotDelivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not delivered ({} ms): ", self.elapsed.as_millis())?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let plural = if failure.attempts == 1 { "" } else { "s" };
            write!(
                f,
                "{} ({} attempt{plural}): {}",
                failure.daemon, failure.attempts, failure.error
            )?;
        }
        if self.failures.is_empty() {
            f.write_str("the deadline passed before any attempt")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotDelivered {}

/// An accepted message: which daemon took it, after how many attempts there, and whether
/// the broker confirmed it or the daemon spooled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The daemon's address.
    pub daemon: String,
    /// Attempts on that daemon, counted from 1.
    pub attempts: u32,
    /// The daemon's answer.
    pub answer: Answer,
}

/// What a daemon answered for an accepted message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// The message's id (empty from a daemon that predates ids).
    pub id: String,
    /// Whether the daemon spooled it (delivered later) rather than the broker confirming it.
    pub spooled: bool,
    /// The daemon's words about it (why it was spooled).
    pub message: String,
    /// Kafka, over `ferry.v1.Send`: the record's partition.
    pub partition: Option<i32>,
    /// Kafka, over `ferry.v1.Send`: the record's offset.
    pub offset: Option<i64>,
}

/// One daemon to send through.
#[derive(Debug, Clone)]
pub(super) struct Daemon {
    /// As given, for messages.
    pub(super) address: String,
    /// Where to connect.
    pub(super) endpoint: Endpoint,
}

/// Sends messages through ferry daemons with failover.
#[derive(Debug, Clone)]
pub struct Client {
    /// The daemons, tried in order.
    pub(super) daemons: Vec<Daemon>,
    /// Attempts per daemon and their time limits.
    pub(super) policy: RetryPolicy,
    /// An overall limit, when shorter than the policy's bound.
    pub(super) deadline: Option<Duration>,
    /// `authorization` header value for daemons that require a bearer token.
    pub(super) authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    /// A client for `daemons` (each `host:port`, tried in this order) with `policy` on
    /// each, and optionally an overall `deadline`.
    pub fn new<I, S>(
        daemons: I,
        policy: RetryPolicy,
        deadline: Option<Duration>,
    ) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let daemons = daemons
            .into_iter()
            .map(|address| {
                let address = address.as_ref().trim();
                if address.is_empty() || address.contains('/') || !address.contains(':') {
                    return Err(ClientError::Address(address.to_owned()));
                }
                let endpoint = Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|_| ClientError::Address(address.to_owned()))?
                    .tcp_nodelay(true);
                Ok(Daemon {
                    address: address.to_owned(),
                    endpoint,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if daemons.is_empty() {
            return Err(ClientError::NoDaemon);
        }
        Ok(Self {
            daemons,
            policy,
            deadline,
            authorization: None,
        })
    }

    /// Speaks TLS to every daemon, trusting the CA certificates in `ca_pem` (PEM). The
    /// daemon's certificate must name the host (or IP address) it is addressed by.
    pub fn with_tls(mut self, ca_pem: &[u8]) -> Result<Self, ClientError> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        for daemon in &mut self.daemons {
            daemon.endpoint = Endpoint::from_shared(format!("https://{}", daemon.address))
                .and_then(|endpoint| endpoint.tls_config(tls.clone()))
                .map_err(|e| ClientError::Tls(chain(&e)))?
                .tcp_nodelay(true);
        }
        Ok(self)
    }

    /// Sends `token` as `authorization: Bearer <token>` with every call.
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Token)?;
        self.authorization = Some(value);
        Ok(self)
    }

    /// The longest [`Client::send`] can take, connection set-up and name lookup included
    /// (give or take the scheduler's delays).
    pub fn bound(&self) -> Duration {
        let policy_bound = self.policy.total_budget() * self.daemons.len() as u32;
        self.deadline
            .map_or(policy_bound, |deadline| deadline.min(policy_bound))
    }

    /// Sends `data` to `destination`, trying each daemon in turn.
    pub async fn send(
        &self,
        destination: &Destination,
        data: Bytes,
    ) -> Result<Delivered, NotDelivered> {
        self.send_with(destination, data, &MessageMetadata::default())
            .await
    }

    /// [`Self::send`] with `metadata` (over `ferry.v1.Send` when there is any, or the
    /// destination is a route).
    pub async fn send_with(
        &self,
        destination: &Destination,
        data: Bytes,
        metadata: &MessageMetadata,
    ) -> Result<Delivered, NotDelivered> {
        let started = Instant::now();
        let deadline = self.deadline.map(|limit| started + limit);
        let mut failures = Vec::new();
        for daemon in &self.daemons {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            match self
                .via(daemon, destination, &data, metadata, deadline)
                .await
            {
                Ok((attempts, answer)) => {
                    return Ok(Delivered {
                        daemon: daemon.address.clone(),
                        attempts,
                        answer,
                    });
                }
                Err(failure) => {
                    let last = failure.error.is_final();
                    log::info!("Daemon {} failed: {}", failure.daemon, failure.error);
                    failures.push(failure);
                    if last {
                        break;
                    }
                }
            }
        }
        Err(NotDelivered {
            failures,
            elapsed: started.elapsed(),
        })
    }

    /// Sends through one daemon under the policy; the attempt count and the answer on
    /// success.
    async fn via(
        &self,
        daemon: &Daemon,
        destination: &Destination,
        data: &Bytes,
        metadata: &MessageMetadata,
        deadline: Option<Instant>,
    ) -> Result<(u32, Answer), DaemonFailure> {
        let mut channel: Option<Channel> = None;
        let mut n = 1;
        loop {
            let started = Instant::now();
            let mut limit = self.policy.attempt_timeout(n);
            if let Some(deadline) = deadline {
                limit = limit.min(deadline.saturating_duration_since(started));
            }
            let call = Call {
                destination,
                data,
                metadata,
                limit,
                authorization: self.authorization.as_ref(),
            };
            let outcome = attempt(daemon, &mut channel, call).await;
            let error = match outcome {
                Ok(answer) => return Ok((n, answer)),
                Err(error) => error,
            };
            let pause = RETRY_PAUSE.min(limit.saturating_sub(started.elapsed()));
            if !error.retry_same_daemon()
                || n >= self.policy.max_attempts()
                || deadline.is_some_and(|deadline| Instant::now() + pause >= deadline)
            {
                return Err(DaemonFailure {
                    daemon: daemon.address.clone(),
                    attempts: n,
                    error,
                });
            }
            log::info!("Attempt {n} on {} failed: {error}", daemon.address);
            tokio::time::sleep(pause).await;
            n += 1;
        }
    }
}

/// One call on one daemon within `limit`, connecting first if needed. A connection not
/// made in time is a connection failure (the next daemon is tried); a call not answered
/// in time is a timeout (the same daemon gets the next attempt).
async fn attempt(
    daemon: &Daemon,
    channel: &mut Option<Channel>,
    call: Call<'_>,
) -> Result<Answer, AttemptError> {
    let limit = call.limit;
    let deadline = tokio::time::Instant::now() + limit;
    let connected = match channel {
        Some(channel) => channel.clone(),
        None => {
            let connected = tokio::time::timeout_at(deadline, daemon.endpoint.connect())
                .await
                .map_err(|_| {
                    AttemptError::Connect(format!("no connection within {} ms", limit.as_millis()))
                })?
                .map_err(|e| AttemptError::Connect(chain(&e)))?;
            *channel = Some(connected.clone());
            connected
        }
    };
    tokio::time::timeout_at(deadline, call.run(connected))
        .await
        .unwrap_or(Err(AttemptError::Timeout(limit)))
}

/// A message the predecessor's `MessageBroker` calls carry (no route, no metadata), which
/// every ferry daemon, old or new, takes.
pub(super) enum Legacy {
    /// `SendKafkaMessage`.
    Kafka(KafkaMessage),
    /// `SendRabbitMQMessage`.
    RabbitMq(RabbitMqMessage),
}

/// One gRPC call: what to send, within what time, with what credentials.
struct Call<'a> {
    /// Where the message goes.
    destination: &'a Destination,
    /// The payload.
    data: &'a Bytes,
    /// What it carries besides.
    metadata: &'a MessageMetadata,
    /// The attempt's time limit, also sent as grpc-timeout.
    limit: Duration,
    /// The `authorization` header, if the daemon needs one.
    authorization: Option<&'a tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Call<'_> {
    /// Makes the call on `connected`: the predecessor's `MessageBroker` call when the
    /// message is one it can carry (every daemon takes it), else `ferry.v1.Send`.
    async fn run(self, connected: Channel) -> Result<Answer, AttemptError> {
        let legacy = match self.metadata.is_empty() {
            true => self.destination.legacy(self.data.clone()),
            false => None,
        };
        match legacy {
            Some(legacy) => self.send_legacy(legacy, connected).await,
            None => self.send_v1(connected).await,
        }
    }

    /// `ferry.v1.Send`: a route, or metadata, which only it carries.
    async fn send_v1(self, connected: Channel) -> Result<Answer, AttemptError> {
        let message = self
            .destination
            .v1_request(self.data.clone(), self.metadata);
        let reply = SendClient::new(connected)
            .send(self.request(message))
            .await
            .map_err(|status| self.failed(status))?
            .into_inner();
        match reply.error_no {
            0 => Ok(Answer {
                id: reply.id,
                spooled: reply.spooled,
                message: reply.error_message,
                partition: reply.partition,
                offset: reply.offset,
            }),
            error_no => Err(AttemptError::Answered {
                error_no,
                message: reply.error_message,
            }),
        }
    }

    /// `SendKafkaMessage` or `SendRabbitMQMessage`, as the predecessor's client sent them.
    async fn send_legacy(self, legacy: Legacy, connected: Channel) -> Result<Answer, AttemptError> {
        let mut client = MessageBrokerClient::new(connected);
        let response = match legacy {
            Legacy::Kafka(message) => client.send_kafka_message(self.request(message)).await,
            Legacy::RabbitMq(message) => client.send_rabbit_mq_message(self.request(message)).await,
        }
        .map_err(|status| self.failed(status))?
        .into_inner();
        match response.error_no {
            0 => Ok(Answer {
                id: response.id,
                spooled: response.spooled,
                message: response.error_message,
                partition: None,
                offset: None,
            }),
            error_no => Err(AttemptError::Answered {
                error_no,
                message: response.error_message,
            }),
        }
    }

    /// `message` as a request: the attempt's limit sent as grpc-timeout (the daemon learns
    /// when the client stops waiting), and the `authorization` header if any.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.limit);
        if let Some(value) = self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// A failed call's status as an attempt's error: a timeout (the deadline, or the
    /// channel's own timeout) as such, anything else as the daemon's status.
    fn failed(&self, status: tonic::Status) -> AttemptError {
        if status.code() == tonic::Code::DeadlineExceeded
            || (status.code() == tonic::Code::Cancelled && status.message().contains("Timeout"))
        {
            AttemptError::Timeout(self.limit)
        } else {
            AttemptError::Rpc(status)
        }
    }
}

/// An error and its sources, joined by ": " (tonic's transport error alone says only
/// "transport error").
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(error_no: i32) -> AttemptError {
        AttemptError::Answered {
            error_no,
            message: String::new(),
        }
    }

    #[test]
    fn failures_choose_retry_failover_or_stop() {
        let timeout = AttemptError::Timeout(Duration::from_secs(2));
        assert!(timeout.retry_same_daemon() && !timeout.is_final());
        for code in [2, 4] {
            assert!(answered(code).retry_same_daemon(), "{code}");
            assert!(!answered(code).is_final(), "{code}");
        }
        for code in [5, 6] {
            assert!(!answered(code).retry_same_daemon(), "{code}");
            assert!(!answered(code).is_final(), "{code}");
        }
        for code in [1, 3, 7, 99] {
            assert!(!answered(code).retry_same_daemon(), "{code}");
            assert!(answered(code).is_final(), "{code}");
        }
        let connect = AttemptError::Connect("refused".into());
        assert!(!connect.retry_same_daemon() && !connect.is_final());
    }

    #[test]
    fn the_bound_grows_with_daemons_and_honours_the_deadline() {
        let policy = RetryPolicy::default();
        let one = Client::new(["a:1"], policy, None).unwrap();
        assert_eq!(one.bound(), Duration::from_secs(6));
        let two = Client::new(["a:1", "b:2"], policy, None).unwrap();
        assert_eq!(two.bound(), Duration::from_secs(12));
        let capped = Client::new(["a:1", "b:2"], policy, Some(Duration::from_secs(3))).unwrap();
        assert_eq!(capped.bound(), Duration::from_secs(3));
    }

    #[test]
    fn bad_addresses_are_refused() {
        let policy = RetryPolicy::default();
        let none: [&str; 0] = [];
        assert!(matches!(
            Client::new(none, policy, None),
            Err(ClientError::NoDaemon)
        ));
        for bad in ["", "nohost", "http://a:1", "a b:1"] {
            assert!(
                matches!(
                    Client::new([bad], policy, None),
                    Err(ClientError::Address(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn all_daemons_down_fails_over_and_reports_each() {
        // Two ports nothing listens on: both refuse at once, so the send ends quickly
        // with one failure per daemon.
        let ports: Vec<String> = (0..2)
            .map(|_| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().to_string()
            })
            .collect();
        let client = Client::new(&ports, RetryPolicy::default(), None).unwrap();
        let destination = Destination::Kafka {
            brokers: vec!["k:1".into()],
            topic: "t".into(),
        };
        let failure = client
            .send(&destination, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(failure.failures.len(), 2);
        assert!(!failure.is_refused());
        for (failure, port) in failure.failures.iter().zip(&ports) {
            assert_eq!(&failure.daemon, port);
            assert_eq!(failure.attempts, 1);
            assert!(matches!(failure.error, AttemptError::Connect(_)));
        }
        let line = failure.to_string();
        assert!(line.contains("refused"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}
