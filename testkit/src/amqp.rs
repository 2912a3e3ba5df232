//! RabbitMQ helpers: bind a queue to an exchange and read the messages it received.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

/// A message as the broker stored it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The body.
    pub data: Vec<u8>,
    /// AMQP delivery mode (2 = persistent).
    pub delivery_mode: Option<u8>,
    /// Content type.
    pub content_type: Option<String>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The `message_id` property (ferry's message id).
    pub message_id: Option<String>,
    /// Every property as the broker delivered it (headers, expiration, correlation id, …).
    pub properties: lapin::BasicProperties,
}

/// Declares the durable topic `exchange` (as ferry does) and a durable queue `queue`
/// bound to it with `binding_key`.
pub async fn bind_queue(url: &str, exchange: &str, queue: &str, binding_key: &str) {
    bind_queue_with(url, exchange, queue, binding_key, FieldTable::default()).await;
}

/// [`bind_queue`] with queue `arguments` (`x-max-length`, `x-overflow`, …).
pub async fn bind_queue_with(
    url: &str,
    exchange: &str,
    queue: &str,
    binding_key: &str,
    arguments: FieldTable,
) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("exchange_declare");
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await
        .expect("queue_declare");
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            binding_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_bind");
    let _ = connection.close(200, "done".into()).await;
}

/// Takes up to `count` messages from `queue`, waiting at most `timeout` for them.
pub async fn read_queue(url: &str, queue: &str, count: usize, timeout: Duration) -> Vec<Received> {
    read(url, queue, count, timeout, None).await
}

/// Takes every message from `queue` until it stayed empty for `quiet` (after the first
/// message, or `timeout` in all).
pub async fn drain_queue(
    url: &str,
    queue: &str,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Received> {
    read(url, queue, usize::MAX, timeout, Some(quiet)).await
}

/// Takes up to `count` messages, for at most `timeout`, stopping early after `quiet`
/// without a new message once one arrived.
async fn read(
    url: &str,
    queue: &str,
    count: usize,
    timeout: Duration,
    quiet: Option<Duration>,
) -> Vec<Received> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut last = Instant::now();
    while received.len() < count && Instant::now() < deadline {
        let options = BasicGetOptions { no_ack: true };
        match channel
            .basic_get(queue.into(), options)
            .await
            .expect("basic_get")
        {
            Some(message) => {
                last = Instant::now();
                let delivery = message.delivery;
                received.push(Received {
                    properties: delivery.properties.clone(),
                    data: delivery.data.clone(),
                    delivery_mode: *delivery.properties.delivery_mode(),
                    message_id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|id| id.to_string()),
                    content_type: delivery
                        .properties
                        .content_type()
                        .as_ref()
                        .map(|c| c.to_string()),
                    routing_key: delivery.routing_key.to_string(),
                });
            }
            None if quiet.is_some_and(|q| !received.is_empty() && last.elapsed() >= q) => break,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = connection.close(200, "done".into()).await;
    received
}
