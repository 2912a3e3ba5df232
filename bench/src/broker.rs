//! The broker side of a benchmark: create the topic or bind a queue before, count what
//! arrived after each run, and clean up at the end.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::BenchError;
use crate::plan::Destination;

/// How long a metadata or watermark request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts the messages a broker holds for the benchmark.
#[allow(
    clippy::large_enum_variant,
    reason = "one per benchmark, never in a collection"
)]
pub enum Counter {
    /// The sum of the topic's high watermarks.
    Kafka {
        /// A consumer used only for metadata and watermarks.
        consumer: BaseConsumer,
        /// The topic.
        topic: String,
    },
    /// The depth of a durable queue bound to the exchange.
    RabbitMq {
        /// Kept open for the channel.
        connection: Connection,
        /// The channel.
        channel: Channel,
        /// The queue.
        queue: String,
    },
}

/// Declares `exchange` as ferry does: durable, type topic.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
}

impl Counter {
    /// Prepares `destination` (creates the topic with one partition, or declares the
    /// exchange and a durable queue bound to it with the routing key) and returns its
    /// counter.
    pub async fn prepare(destination: &Destination) -> Result<Self, BenchError> {
        match destination {
            Destination::Kafka { brokers, topic } => {
                let mut config = ClientConfig::new();
                config.set("bootstrap.servers", brokers.join(","));
                let admin: AdminClient<_> = config.create()?;
                let created = admin
                    .create_topics(
                        &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                        &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)),
                    )
                    .await?;
                for result in created {
                    if let Err((_, code)) = result
                        && code != RDKafkaErrorCode::TopicAlreadyExists
                    {
                        return Err(rdkafka::error::KafkaError::AdminOp(code).into());
                    }
                }
                config.set("group.id", "ferry-bench");
                Ok(Self::Kafka {
                    consumer: config.create()?,
                    topic: topic.clone(),
                })
            }
            Destination::RabbitMq {
                server,
                exchange,
                routing_key,
            } => {
                let connection =
                    Connection::connect(server, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                declare_exchange(&channel, exchange).await?;
                let queue = format!("ferry-bench-{}", std::process::id());
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(queue.as_str().into(), durable, FieldTable::default())
                    .await?;
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok(Self::RabbitMq {
                    connection,
                    channel,
                    queue,
                })
            }
        }
    }

    /// The number of messages the broker holds now.
    pub async fn count(&self) -> Result<u64, BenchError> {
        match self {
            Self::Kafka { consumer, topic } => tokio::task::block_in_place(|| {
                let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
                let mut total = 0;
                for t in metadata.topics() {
                    for partition in t.partitions() {
                        let (_, high) =
                            consumer.fetch_watermarks(topic, partition.id(), KAFKA_TIMEOUT)?;
                        total += u64::try_from(high).unwrap_or(0);
                    }
                }
                Ok(total)
            }),
            Self::RabbitMq { channel, queue, .. } => {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                let queue = channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await?;
                Ok(u64::from(queue.message_count()))
            }
        }
    }

    /// Empties the queue between runs so it does not grow (Kafka keeps its topic).
    pub async fn reset(&self) -> Result<(), BenchError> {
        if let Self::RabbitMq { channel, queue, .. } = self {
            channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Deletes the queue (a Kafka topic is left for inspection).
    pub async fn finish(self) {
        if let Self::RabbitMq {
            connection,
            channel,
            queue,
        } = self
        {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = connection.close(200, "ferry-bench done".into()).await;
        }
    }
}
