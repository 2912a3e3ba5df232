//! The client side: sends one message through a ferry daemon and reports the outcome.

use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Endpoint;

use crate::proto::message_broker_client::MessageBrokerClient;
use crate::proto::{self, KafkaMessage, RabbitMqMessage};

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
}

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon address is not a valid URI.
    #[error("invalid daemon address {0:?}")]
    Address(String),
    /// The daemon could not be reached.
    #[error("cannot reach the ferry daemon at {address}: {source}")]
    Connect {
        /// The daemon.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The call failed at the gRPC level.
    #[error("the ferry daemon failed the call: {0}")]
    Rpc(#[from] tonic::Status),
    /// No answer in time.
    #[error("no answer from the ferry daemon within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The daemon answered that the message was not delivered.
    #[error("not delivered (error_no {error_no}): {message}")]
    NotDelivered {
        /// The documented code.
        error_no: i32,
        /// The daemon's explanation.
        message: String,
    },
}

/// Sends `data` to `destination` through the daemon at `address` (`host:port`), waiting at
/// most `timeout` in all.
pub async fn send(
    address: &str,
    destination: Destination,
    data: Bytes,
    timeout: Duration,
) -> Result<(), ClientError> {
    tokio::time::timeout(timeout, send_unbounded(address, destination, data))
        .await
        .unwrap_or(Err(ClientError::Timeout(timeout)))
}

async fn send_unbounded(
    address: &str,
    destination: Destination,
    data: Bytes,
) -> Result<(), ClientError> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| ClientError::Address(address.to_owned()))?
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            address: address.to_owned(),
            source,
        })?;
    let mut client = MessageBrokerClient::new(channel);
    let message = Some(proto::Message { data });
    let response = match destination {
        Destination::Kafka { brokers, topic } => client
            .send_kafka_message(KafkaMessage {
                target: Some(proto::KafkaTarget { brokers, topic }),
                message,
            })
            .await?
            .into_inner(),
        Destination::RabbitMq {
            server,
            exchange,
            routing_key,
        } => client
            .send_rabbit_mq_message(RabbitMqMessage {
                target: Some(proto::RabbitMqTarget {
                    server,
                    exchange,
                    route_key: routing_key,
                }),
                message,
            })
            .await?
            .into_inner(),
    };
    match response.error_no {
        0 => Ok(()),
        error_no => Err(ClientError::NotDelivered {
            error_no,
            message: response.error_message,
        }),
    }
}
