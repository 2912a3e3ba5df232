//! The `direct` path, the ceiling: the same messages straight to the broker from this
//! process, with the producer set up as ferry sets up its own (Kafka: acks=all, idempotent,
//! the same linger; RabbitMQ: one connection, a confirm-mode channel, persistent messages).

use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::BenchError;
use crate::broker;
use crate::plan::{Destination, Plan};
use crate::sink::Sink;

/// Sends straight to the broker.
#[allow(
    clippy::large_enum_variant,
    reason = "one per benchmark, never in a collection"
)]
pub enum DirectSink {
    /// A Kafka producer.
    Kafka {
        /// The producer.
        producer: FutureProducer,
        /// The topic.
        topic: String,
        /// The payload of every message.
        payload: Bytes,
    },
    /// An AMQP connection with a confirm-mode channel.
    RabbitMq {
        /// Kept open for the channel.
        connection: Connection,
        /// The channel.
        channel: Channel,
        /// The exchanges, message `seq` to `exchanges[seq % len]`.
        exchanges: Vec<ShortString>,
        /// The routing key.
        routing_key: ShortString,
        /// The payload of every message.
        payload: Bytes,
    },
}

impl DirectSink {
    /// Connects to `plan`'s broker.
    pub async fn connect(plan: &Plan) -> Result<Self, BenchError> {
        match &plan.destination {
            Destination::Kafka { brokers, topic } => {
                let producer = ClientConfig::new()
                    .set("bootstrap.servers", brokers.join(","))
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("linger.ms", plan.linger_ms.to_string())
                    .set("queue.buffering.max.messages", "100000")
                    .create()?;
                Ok(Self::Kafka {
                    producer,
                    topic: topic.clone(),
                    payload: plan.payload.clone(),
                })
            }
            Destination::RabbitMq {
                server,
                exchanges,
                routing_key,
            } => {
                let (connection, channel) = broker::open_exchanges(server, exchanges).await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                Ok(Self::RabbitMq {
                    connection,
                    channel,
                    exchanges: exchanges.iter().map(|e| e.as_str().into()).collect(),
                    routing_key: routing_key.as_str().into(),
                    payload: plan.payload.clone(),
                })
            }
        }
    }

    /// Closes the AMQP connection (a Kafka producer closes when dropped).
    pub async fn close(self) {
        if let Self::RabbitMq { connection, .. } = self {
            let _ = connection.close(200, "ferry-bench done".into()).await;
        }
    }
}

impl Sink for DirectSink {
    async fn send(&self, seq: u64) -> Result<(), String> {
        match self {
            Self::Kafka {
                producer,
                topic,
                payload,
            } => {
                let record = FutureRecord::<(), [u8]>::to(topic).payload(&payload[..]);
                let delivery = producer
                    .send_result(record)
                    .map_err(|(error, _)| format!("kafka {error}"))?;
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(format!("kafka {error}")),
                    Err(_) => Err("kafka producer closed".to_owned()),
                }
            }
            Self::RabbitMq {
                channel,
                exchanges,
                routing_key,
                payload,
                ..
            } => {
                let exchange = &exchanges[usize::try_from(seq).unwrap_or(0) % exchanges.len()];
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("text/plain".into());
                let confirmation = channel
                    .basic_publish(
                        exchange.clone(),
                        routing_key.clone(),
                        BasicPublishOptions::default(),
                        payload,
                        properties,
                    )
                    .await
                    .map_err(|e| format!("amqp {e}"))?
                    .await
                    .map_err(|e| format!("amqp {e}"))?;
                match confirmation {
                    Confirmation::Ack(_) => Ok(()),
                    Confirmation::Nack(_) => Err("amqp nack".to_owned()),
                    Confirmation::NotRequested => Err("amqp no confirm mode".to_owned()),
                }
            }
        }
    }
}
