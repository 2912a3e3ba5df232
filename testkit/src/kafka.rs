//! Kafka helpers: create topics (tansu does not create them on produce) and read a topic.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// Creates `topic` with one partition on the cluster at `bootstrap`.
pub async fn create_topic(bootstrap: &str, topic: &str) {
    create_topic_with_partitions(bootstrap, topic, 1).await;
}

/// Creates `topic` with `partitions` partitions (one replica), unless it exists.
pub async fn create_topic_with_partitions(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics");
    for result in results {
        if let Err((name, code)) = result {
            assert_eq!(
                code,
                rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "cannot create topic {name}"
            );
        }
    }
}

/// A unique topic name for one test.
pub fn unique_topic(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos}")
}

/// Reads partition 0 of `topic` from the start until `count` messages arrived or `timeout`
/// passed, and returns their payloads. Blocking: call from `spawn_blocking` in async tests.
pub fn read_topic(bootstrap: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
    payloads(read(bootstrap, topic, 0, count, timeout, None))
}

/// Like [`drain_topic`], with each message's `ferry-id` header beside its payload.
pub fn drain_topic_with_ids(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    timeout: Duration,
) -> Vec<(Vec<u8>, Option<String>)> {
    read(bootstrap, topic, 0, usize::MAX, timeout, Some(quiet))
        .into_iter()
        .map(|record| {
            let id = record.ferry_id();
            (record.payload, id)
        })
        .collect()
}

/// The payloads alone.
fn payloads(records: Vec<Record>) -> Vec<Vec<u8>> {
    records.into_iter().map(|record| record.payload).collect()
}

/// Reads partition 0 of `topic` from the start until nothing new arrived for `quiet`
/// (after the first message, or `timeout` in all). Blocking.
pub fn drain_topic(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    payloads(read(bootstrap, topic, 0, usize::MAX, timeout, Some(quiet)))
}

/// A record as a consumer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub payload: Vec<u8>,
    /// The headers, in order (`ferry-id` among them).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The partition.
    pub partition: i32,
    /// The offset in that partition.
    pub offset: i64,
}

impl Record {
    /// The `ferry-id` header.
    pub fn ferry_id(&self) -> Option<String> {
        self.headers
            .iter()
            .find(|(name, _)| name == "ferry-id")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }
}

/// Reads partition `partition` of `topic` from the start until `count` records arrived or
/// `timeout` passed. Blocking.
pub fn read_records(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    count: usize,
    timeout: Duration,
) -> Vec<Record> {
    read(bootstrap, topic, partition, count, timeout, None)
}

/// Reads up to `count` messages, for at most `timeout`, stopping early after `quiet`
/// without a new message once one arrived.
fn read(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    count: usize,
    timeout: Duration,
    quiet: Option<Duration>,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("ferry-test-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", "10485760")
        .set("fetch.max.bytes", "20971520")
        .set("receive.message.max.bytes", "20972032")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut last = Instant::now();
    while records.len() < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                    partition: message.partition(),
                    offset: message.offset(),
                });
                last = Instant::now();
            }
            Some(Err(error)) => panic!("consuming {topic}: {error}"),
            None if quiet.is_some_and(|q| !records.is_empty() && last.elapsed() >= q) => break,
            None => {}
        }
    }
    records
}
