//! One message end to end, as a job script's command sends it: where it goes (through the
//! daemons with failover, or straight to RabbitMQ as the predecessor did), under which
//! policy and overall limit, on a runtime of its own, and what came of it. The command
//! line only parses flags into [`Options`] and a [`Way`], calls [`deliver`], prints the
//! [`Outcome`] and turns it into an exit code.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ferry_actors::target::validate_routing_key;
use ferry_actors::{AmqpTarget, RetryPolicy};

use crate::client::direct;
use crate::client::failover::{Client, Delivered, Destination, MessageMetadata};

/// How a client reaches its daemons and how long it may try.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The daemons' addresses, tried in order.
    pub daemons: Vec<String>,
    /// Attempts per daemon (or per broker, straight to RabbitMQ).
    pub attempts: u32,
    /// Attempt n may take n × this.
    pub attempt_timeout: Duration,
    /// The longest the whole send may take, daemons left to try or not.
    pub deadline: Option<Duration>,
    /// The file holding the bearer token the daemons require, if any. Read only when a
    /// message goes through the daemons: a job publishing straight to RabbitMQ does not
    /// fail on a token file it does not need.
    pub token_file: Option<PathBuf>,
    /// The file of CA certificates (PEM) to trust when the daemons speak TLS; read as the
    /// token file is.
    pub tls_ca_file: Option<PathBuf>,
}

/// Where a message goes.
#[derive(Debug, Clone)]
pub enum Way {
    /// Through the daemons, to a route or a target they forward to.
    Daemons(Destination),
    /// Straight to a RabbitMQ exchange, without a daemon.
    StraightToRabbitMq {
        /// The server and exchange.
        target: AmqpTarget,
        /// The message's routing key.
        routing_key: String,
    },
}

/// What came of a message sent.
#[derive(Debug)]
pub enum Outcome {
    /// A broker confirmed it, through a daemon.
    Delivered(Delivered),
    /// A daemon took it into its spool (durable on its disk); it is delivered when the
    /// broker is back.
    Spooled(Delivered),
    /// Published straight to RabbitMQ, confirmed, after `attempts` attempts.
    Published {
        /// The server and exchange, without credentials.
        to: String,
        /// Attempts it took.
        attempts: u32,
    },
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The options or the message cannot be used (a bad flag, address or name): nothing
    /// was tried.
    #[error("{0}")]
    Usage(String),
    /// It was tried and not delivered (every daemon failed, the broker refused, time ran
    /// out); the message says what happened.
    #[error("{0}")]
    NotDelivered(String),
}

impl Options {
    /// The policy each daemon (or the broker) is tried under.
    pub fn policy(&self) -> Result<RetryPolicy, DeliverError> {
        RetryPolicy::try_new(self.attempt_timeout, self.attempts)
            .map_err(|error| DeliverError::Usage(error.to_string()))
    }

    /// A client of the daemons, with the token and TLS trust applied.
    pub fn client(&self) -> Result<Client, DeliverError> {
        let usage = |error: crate::client::ClientError| DeliverError::Usage(error.to_string());
        let mut client =
            Client::new(&self.daemons, self.policy()?, self.deadline).map_err(usage)?;
        if let Some(path) = &self.token_file {
            let token = String::from_utf8_lossy(&read(path)?).trim().to_owned();
            client = client.with_token(&token).map_err(usage)?;
        }
        if let Some(path) = &self.tls_ca_file {
            client = client.with_tls(&read(path)?).map_err(usage)?;
        }
        Ok(client)
    }
}

/// The bytes of `path`, or a usage error naming it.
fn read(path: &Path) -> Result<Vec<u8>, DeliverError> {
    std::fs::read(path)
        .map_err(|e| DeliverError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Where an event of the predecessor's commands goes: straight to RabbitMQ given a
/// `server` and neither `with_broker` nor a `route`, as the predecessor did; otherwise
/// through the daemons, to the `route` (with the event's routing key) or to the server's
/// `exchange`.
pub fn event_way(
    route: Option<&str>,
    server: Option<&str>,
    with_broker: bool,
    exchange: String,
    routing_key: String,
) -> Result<Way, DeliverError> {
    match (route, server) {
        (Some(route), _) => Ok(Way::Daemons(Destination::Route {
            name: route.to_owned(),
            topic: None,
            routing_key: Some(routing_key),
        })),
        (None, None) => Err(DeliverError::Usage(
            "give --rabbitmq-server or --route".into(),
        )),
        (None, Some(server)) if with_broker => Ok(Way::Daemons(Destination::RabbitMq {
            server: server.to_owned(),
            exchange,
            routing_key,
        })),
        (None, Some(server)) => {
            let usage =
                |error: ferry_actors::InvalidRequest| DeliverError::Usage(error.to_string());
            let target = AmqpTarget::try_new(server, &exchange).map_err(usage)?;
            validate_routing_key(&routing_key).map_err(usage)?;
            Ok(Way::StraightToRabbitMq {
                target,
                routing_key,
            })
        }
    }
}

/// Sends `payload` (with `metadata`, through daemons only) the `way` given, on a runtime
/// on the calling thread; what came of it.
pub fn deliver(
    options: &Options,
    way: &Way,
    payload: Bytes,
    metadata: &MessageMetadata,
) -> Result<Outcome, DeliverError> {
    match way {
        Way::Daemons(destination) => {
            let client = options.client()?;
            let delivered = block_on(client.send_with(destination, payload, metadata))?
                .map_err(|not| DeliverError::NotDelivered(not.to_string()))?;
            Ok(if delivered.answer.spooled {
                Outcome::Spooled(delivered)
            } else {
                Outcome::Delivered(delivered)
            })
        }
        Way::StraightToRabbitMq {
            target,
            routing_key,
        } => straight_to_rabbitmq(options, target, routing_key, payload),
    }
}

/// Publishes without a daemon, bounded by the policy and the optional overall limit.
fn straight_to_rabbitmq(
    options: &Options,
    target: &AmqpTarget,
    routing_key: &str,
    payload: Bytes,
) -> Result<Outcome, DeliverError> {
    let policy = options.policy()?;
    let bound = options.deadline.map_or(policy.total_budget(), |limit| {
        limit.min(policy.total_budget())
    });
    let to = target.redacted_url();
    let published = block_on(async move {
        tokio::time::timeout(bound, direct::publish(target, routing_key, payload, policy)).await
    })?;
    match published {
        Ok(Ok(attempts)) => Ok(Outcome::Published { to, attempts }),
        Ok(Err(error)) => Err(DeliverError::NotDelivered(format!(
            "not delivered to {to}: {error}"
        ))),
        Err(_) => Err(DeliverError::NotDelivered(format!(
            "not delivered to {to}: no confirmation within {} ms",
            bound.as_millis()
        ))),
    }
}

/// Runs `future` on a runtime on the calling thread: a client needs no worker threads.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, DeliverError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|runtime| runtime.block_on(future))
        .map_err(|error| DeliverError::NotDelivered(format!("cannot start: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn way(
        route: Option<&str>,
        server: Option<&str>,
        with_broker: bool,
    ) -> Result<Way, DeliverError> {
        event_way(route, server, with_broker, "x".into(), "a.b".into())
    }

    #[test]
    fn an_event_goes_straight_to_rabbitmq_only_with_a_server_and_no_broker_or_route() {
        let straight = way(None, Some("amqp://u:p@mq1:5672/%2f"), false).unwrap();
        assert!(
            matches!(&straight, Way::StraightToRabbitMq { routing_key, .. } if routing_key == "a.b")
        );
        let through = way(None, Some("amqp://u:p@mq1:5672/%2f"), true).unwrap();
        assert!(matches!(
            &through,
            Way::Daemons(Destination::RabbitMq { exchange, routing_key, .. })
                if exchange == "x" && routing_key == "a.b"
        ));
        // A route wins over a server, and carries the event's routing key.
        let routed = way(Some("events"), Some("amqp://mq1"), false).unwrap();
        assert!(matches!(
            &routed,
            Way::Daemons(Destination::Route { name, routing_key: Some(key), topic: None })
                if name == "events" && key == "a.b"
        ));
    }

    #[test]
    fn an_event_with_nowhere_to_go_or_a_bad_server_is_a_usage_error_before_any_try() {
        assert!(matches!(
            way(None, None, false),
            Err(DeliverError::Usage(_))
        ));
        assert!(matches!(
            way(None, Some("http://not-amqp"), false),
            Err(DeliverError::Usage(_))
        ));
    }

    #[test]
    fn options_with_no_attempts_are_a_usage_error() {
        let options = Options {
            daemons: vec!["127.0.0.1:1".into()],
            attempts: 0,
            attempt_timeout: Duration::from_millis(100),
            ..Options::default()
        };
        assert!(matches!(options.policy(), Err(DeliverError::Usage(_))));
        let nowhere = Options {
            attempts: 1,
            ..options
        };
        // A client needs a daemon to try.
        let no_daemons = Options {
            daemons: Vec::new(),
            ..nowhere.clone()
        };
        assert!(matches!(no_daemons.client(), Err(DeliverError::Usage(_))));
        assert!(nowhere.client().is_ok());
    }

    #[test]
    fn the_token_file_is_read_only_for_messages_through_the_daemons() {
        let options = Options {
            daemons: vec!["127.0.0.1:1".into()],
            attempts: 1,
            attempt_timeout: Duration::from_millis(500),
            token_file: Some("/nonexistent/ferry-token".into()),
            ..Options::default()
        };
        let Err(DeliverError::Usage(reason)) = options.client() else {
            panic!("a missing token file is a usage error");
        };
        assert!(reason.contains("/nonexistent/ferry-token"), "{reason}");
        // Straight to RabbitMQ (nothing listens on port 1): tried, not refused for the file.
        let way = way(None, Some("amqp://u:p@127.0.0.1:1/%2f"), false).unwrap();
        let outcome = deliver(
            &options,
            &way,
            Bytes::from_static(b"{}"),
            &Default::default(),
        );
        assert!(
            matches!(outcome, Err(DeliverError::NotDelivered(_))),
            "{outcome:?}"
        );
    }
}
