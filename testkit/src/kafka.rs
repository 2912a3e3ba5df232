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
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
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
    payloads(read(bootstrap, topic, count, timeout, None))
}

/// Like [`drain_topic`], with each message's `ferry-id` header beside its payload.
pub fn drain_topic_with_ids(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    timeout: Duration,
) -> Vec<(Vec<u8>, Option<String>)> {
    read(bootstrap, topic, usize::MAX, timeout, Some(quiet))
}

/// The payloads alone.
fn payloads(records: Vec<(Vec<u8>, Option<String>)>) -> Vec<Vec<u8>> {
    records.into_iter().map(|(payload, _)| payload).collect()
}

/// Reads partition 0 of `topic` from the start until nothing new arrived for `quiet`
/// (after the first message, or `timeout` in all). Blocking.
pub fn drain_topic(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    payloads(read(bootstrap, topic, usize::MAX, timeout, Some(quiet)))
}

/// Reads up to `count` messages, for at most `timeout`, stopping early after `quiet`
/// without a new message once one arrived.
fn read(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
    quiet: Option<Duration>,
) -> Vec<(Vec<u8>, Option<String>)> {
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
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut payloads = Vec::new();
    let mut last = Instant::now();
    while payloads.len() < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let id = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == "ferry-id")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                payloads.push((message.payload().unwrap_or_default().to_vec(), id));
                last = Instant::now();
            }
            Some(Err(error)) => panic!("consuming {topic}: {error}"),
            None if quiet.is_some_and(|q| !payloads.is_empty() && last.elapsed() >= q) => break,
            None => {}
        }
    }
    payloads
}
