//! What a spooled record holds and where it goes.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Milliseconds since the Unix epoch: the clock of `created_ms`, `max_age_s` and
/// dead letters' `dead_ms`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The kind of middleware a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Kafka: the address is the bootstrap list.
    Kafka,
    /// RabbitMQ: the address is the AMQP URL, with the exchange beside it.
    Amqp,
    /// A named route of the daemon's config: the address is the route's name and the
    /// exchange is empty. Replay looks the route up in the config in force, so no broker
    /// address or password is stored.
    Route,
}

impl Kind {
    /// The stored name (`kafka`, `rabbitmq`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Amqp => "rabbitmq",
            Self::Route => "route",
        }
    }

    /// The kind of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "kafka" => Some(Self::Kafka),
            "rabbitmq" => Some(Self::Amqp),
            "route" => Some(Self::Route),
            _ => None,
        }
    }
}

/// Where a record goes, as stored: enough to rebuild the daemon's target after a restart.
/// An AMQP URL a sender named itself may hold a password, so the spool's files are
/// readable by their owner only; a record sent through a route stores the route's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// Kafka or RabbitMQ.
    pub kind: Kind,
    /// The bootstrap list (Kafka), the server URL (RabbitMQ) or the route's name.
    pub address: String,
    /// The exchange (RabbitMQ); empty for Kafka.
    pub exchange: String,
}

/// A message to spool.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The message's id (sortable, stable across replays).
    pub id: String,
    /// Where it goes.
    pub destination: Destination,
    /// The Kafka topic or AMQP routing key.
    pub route: String,
    /// The bytes to deliver.
    pub payload: Bytes,
    /// The message's metadata as the caller encoded it (opaque to the spool).
    pub meta: Option<Bytes>,
}

/// A spooled record read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Position in the spool: records of one destination are replayed in this order.
    pub seq: i64,
    /// The message's id.
    pub id: String,
    /// Where it goes.
    pub destination: Destination,
    /// The Kafka topic or AMQP routing key.
    pub route: String,
    /// The bytes to deliver.
    pub payload: Bytes,
    /// The metadata stored with it.
    pub meta: Option<Bytes>,
    /// When it was spooled, in milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// Bytes a record counts against `max_bytes`: its payload, metadata, route, id and
/// destination.
fn record_bytes(
    id: &str,
    destination: &Destination,
    route: &str,
    payload: &Bytes,
    meta: Option<&Bytes>,
) -> u64 {
    (payload.len()
        + meta.map_or(0, Bytes::len)
        + route.len()
        + id.len()
        + destination.address.len()
        + destination.exchange.len()) as u64
}

impl NewRecord {
    /// Bytes it counts against `max_bytes`.
    pub fn bytes(&self) -> u64 {
        record_bytes(
            &self.id,
            &self.destination,
            &self.route,
            &self.payload,
            self.meta.as_ref(),
        )
    }
}

impl Record {
    /// Bytes it counts against `max_bytes`.
    pub fn bytes(&self) -> u64 {
        record_bytes(
            &self.id,
            &self.destination,
            &self.route,
            &self.payload,
            self.meta.as_ref(),
        )
    }
}
