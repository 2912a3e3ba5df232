//! The broker side of a benchmark: create the topic or bind a queue before, count what
//! arrived after each run, and clean up at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
use rdkafka::{Offset, TopicPartitionList};

use crate::BenchError;
use crate::plan::Destination;

/// How long a metadata request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// A topic short of the expected count is read until no new message came for this long.
const KAFKA_QUIET: Duration = Duration::from_secs(5);

/// Counts the messages a broker holds for the benchmark.
#[allow(
    clippy::large_enum_variant,
    reason = "one per benchmark, never in a collection"
)]
pub enum Counter {
    /// The messages read back from the topic. (tansu's high watermarks lag behind the
    /// last batch, so offsets cannot be used to count.)
    Kafka {
        /// A consumer of every partition of the topic, from its beginning.
        consumer: BaseConsumer,
        /// Messages read so far.
        read: AtomicU64,
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

/// Connects to `server`, opens a channel and declares `exchanges` as ferry does: durable,
/// type topic.
pub async fn open_exchanges(
    server: &str,
    exchanges: &[String],
) -> Result<(Connection, Channel), lapin::Error> {
    let connection = Connection::connect(server, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in exchanges {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await?;
    }
    Ok((connection, channel))
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
                config
                    .set("group.id", "ferry-bench")
                    .set("enable.auto.commit", "false");
                let consumer: BaseConsumer = config.create()?;
                let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
                let mut partitions = TopicPartitionList::new();
                for t in metadata.topics() {
                    for partition in t.partitions() {
                        partitions.add_partition_offset(
                            topic,
                            partition.id(),
                            Offset::Beginning,
                        )?;
                    }
                }
                consumer.assign(&partitions)?;
                Ok(Self::Kafka {
                    consumer,
                    read: AtomicU64::new(0),
                })
            }
            Destination::RabbitMq {
                server,
                exchanges,
                routing_key,
            } => {
                let (connection, channel) = open_exchanges(server, exchanges).await?;
                let queue = format!("ferry-bench-{}", std::process::id());
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(queue.as_str().into(), durable, FieldTable::default())
                    .await?;
                for exchange in exchanges {
                    channel
                        .queue_bind(
                            queue.as_str().into(),
                            exchange.as_str().into(),
                            routing_key.as_str().into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                Ok(Self::RabbitMq {
                    connection,
                    channel,
                    queue,
                })
            }
        }
    }

    /// The number of messages the broker holds now, where `expected` of them should be
    /// there already (a Kafka topic is read until it has them, then until nothing more
    /// comes for a moment, or until nothing came for [`KAFKA_QUIET`]).
    pub async fn count(&self, expected: u64) -> Result<u64, BenchError> {
        match self {
            Self::Kafka { consumer, read } => tokio::task::block_in_place(|| {
                let mut last = Instant::now();
                loop {
                    let have = read.load(Ordering::Relaxed);
                    // Past what is expected, a short quiet is enough to see duplicates.
                    let quiet = if have >= expected {
                        KAFKA_QUIET / 5
                    } else {
                        KAFKA_QUIET
                    };
                    if last.elapsed() >= quiet {
                        return Ok(have);
                    }
                    match consumer.poll(Duration::from_millis(50)) {
                        Some(Ok(_)) => {
                            read.fetch_add(1, Ordering::Relaxed);
                            last = Instant::now();
                        }
                        Some(Err(error)) => return Err(error.into()),
                        None => {}
                    }
                }
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
