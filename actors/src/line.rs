//! Lines of the spool: what a spooled message is filed under, and how replay finds where
//! a line's records go under the config in force.
//!
//! A message a sender addressed itself (brokers and topic, or server URL and exchange) is
//! filed under its [`Target`]. A message sent through a named route is filed under the
//! route's *name*: the spool stores no broker address and no password for it, and replay
//! asks a [`Resolve`] where the route points now. So a password rotated with `ferry reload`
//! during an outage is the one replay uses.
//!
//! A line the config in force does not allow (a route removed, a target the allowlist no
//! longer names) is **held**: its records are neither delivered nor deleted, and replay
//! asks again every [`HELD_RECHECK`] until the config allows them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ferry_spool::{Destination, Kind};

use crate::target::{AmqpTarget, KafkaTarget, Target};

/// How often a held line asks again whether the config in force allows it.
pub const HELD_RECHECK: Duration = Duration::from_secs(1);
/// Bootstrap addresses accepted for a broker set read back from the spool (it was
/// validated against the configured bound when it was spooled).
const MAX_SPOOLED_BROKERS: usize = 64;
/// Longest route name read back from the spool (the config allows 64 bytes).
const MAX_SPOOLED_ROUTE_NAME: usize = 255;

/// What a spooled message is filed under; each line is replayed in order by one task. A
/// route's messages and the same target named outright are two lines, each in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Line {
    /// A target its sender named (for RabbitMQ, the URL as sent, password included).
    Target(Target),
    /// A named route of the daemon's config, resolved again at replay; `kind` is the
    /// kind of target (`kafka` or `rabbitmq`) it had when its messages were accepted.
    Route {
        /// The route's name.
        name: Arc<str>,
        /// `kafka` or `rabbitmq`.
        kind: &'static str,
    },
}

impl Line {
    /// The kind shown in stats: `kafka`, `rabbitmq` or `route`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Target(target) => target.kind(),
            Self::Route { .. } => "route",
        }
    }

    /// Where it points, credentials redacted: the target's endpoint or the route's name.
    pub fn endpoint(&self) -> String {
        match self {
            Self::Target(target) => target.endpoint(),
            Self::Route { name, .. } => name.to_string(),
        }
    }

    /// How the spool stores it.
    pub fn destination(&self) -> Destination {
        match self {
            Self::Target(Target::Kafka(t)) => Destination {
                kind: Kind::Kafka,
                address: t.bootstrap_servers().to_owned(),
                exchange: String::new(),
            },
            Self::Target(Target::Amqp(t)) => Destination {
                kind: Kind::Amqp,
                address: t.url().to_owned(),
                exchange: t.exchange().to_owned(),
            },
            Self::Route { name, kind } => Destination {
                kind: Kind::Route,
                address: name.to_string(),
                exchange: (*kind).to_owned(),
            },
        }
    }

    /// The line of a stored destination, validated again; `None` when it does not
    /// validate or does not read back as stored.
    pub fn of(destination: &Destination) -> Option<Self> {
        let line = match destination.kind {
            Kind::Kafka => {
                KafkaTarget::try_new(destination.address.split(','), MAX_SPOOLED_BROKERS)
                    .ok()
                    .map(|t| Self::Target(Target::Kafka(t)))
            }
            Kind::Amqp => AmqpTarget::try_new(&destination.address, &destination.exchange)
                .ok()
                .map(|t| Self::Target(Target::Amqp(t))),
            Kind::Route => {
                let name = &destination.address;
                let kind = match destination.exchange.as_str() {
                    "kafka" => "kafka",
                    "rabbitmq" => "rabbitmq",
                    _ => return None,
                };
                (!name.is_empty() && name.len() <= MAX_SPOOLED_ROUTE_NAME).then(|| Self::Route {
                    name: Arc::from(name.as_str()),
                    kind,
                })
            }
        }?;
        (line.destination() == *destination).then_some(line)
    }
}

/// Shows the line with any password replaced by `***`.
impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Target(target) => target.fmt(f),
            Self::Route { name, .. } => write!(f, "route {name}"),
        }
    }
}

/// Where a line's records go under the config in force. The daemon implements it over
/// its live config (routes and allowlist, swapped by a reload).
pub trait Resolve: Send + Sync {
    /// The target `line`'s records are published to now, or why they are held (a
    /// sentence naming what the config must allow).
    fn resolve(&self, line: &Line) -> Result<Target, String>;
}

/// Replays targets as stored and holds every route: for a spool used without a daemon's
/// config (tests, benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct AsStored;

impl Resolve for AsStored {
    fn resolve(&self, line: &Line) -> Result<Target, String> {
        match line {
            Line::Target(target) => Ok(target.clone()),
            Line::Route { name, .. } => Err(format!("no config to resolve route {name} with")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_back_as_it_was_stored() {
        let kafka = Line::Target(Target::Kafka(
            KafkaTarget::try_new(["b:2", "A:1"], 8).unwrap(),
        ));
        let amqp = Line::Target(Target::Amqp(
            AmqpTarget::try_new("amqp://u:secret@mq:5672/%2f", "ex").unwrap(),
        ));
        let route = Line::Route {
            name: Arc::from("events"),
            kind: "rabbitmq",
        };
        for line in [&kafka, &amqp, &route] {
            assert_eq!(Line::of(&line.destination()).as_ref(), Some(line));
        }
        assert_eq!(route.destination().address, "events");
        assert_eq!(route.destination().exchange, "rabbitmq");
        assert!(!amqp.to_string().contains("secret"), "{amqp}");
        let empty = Destination {
            kind: Kind::Route,
            address: String::new(),
            exchange: String::new(),
        };
        assert_eq!(Line::of(&empty), None);
        let unsorted = Destination {
            kind: Kind::Kafka,
            address: "b:2,a:1".into(),
            exchange: String::new(),
        };
        assert_eq!(Line::of(&unsorted), None, "not as this ferry stores it");
    }
}
