//! Validated, typed settings of the producers and the registry (the daemon's config file
//! is turned into these before any actor starts).

use std::time::Duration;

/// How producer actors connect, restart and bound their traffic.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// Longest a connection attempt (TCP, AMQP handshake, channel, exchange) may take.
    pub connect_timeout: Duration,
    /// Wait before the first reconnection after a failure; doubles per consecutive failure.
    pub restart_backoff_initial: Duration,
    /// Upper bound of the reconnection wait; a connection that lived this long resets it.
    pub restart_backoff_max: Duration,
    /// Most messages in flight to one target; beyond it callers get an overload error.
    pub max_in_flight_per_target: usize,
    /// Kafka producer settings.
    pub kafka: KafkaSettings,
    /// RabbitMQ producer settings.
    pub amqp: AmqpSettings,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            restart_backoff_initial: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(2),
            max_in_flight_per_target: 10_000,
            kafka: KafkaSettings::default(),
            amqp: AmqpSettings::default(),
        }
    }
}

impl ProducerSettings {
    /// The wait before reconnecting after `failures` consecutive failures (1, 2, …).
    pub fn restart_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.restart_backoff_initial
            .saturating_mul(1 << doublings)
            .min(self.restart_backoff_max)
    }
}

/// Settings of each Kafka producer (one per broker set).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// librdkafka `linger.ms`: how long a message may wait to join a batch.
    pub linger_ms: u32,
    /// librdkafka `queue.buffering.max.messages`: the producer's queue bound.
    pub queue_max_messages: u32,
    /// librdkafka `message.max.bytes`: the largest request the producer sends.
    pub message_max_bytes: usize,
    /// librdkafka `message.timeout.ms`: how long the producer keeps trying one message.
    /// The daemon sets it to the policy's total budget, so nothing outlives its caller long.
    pub message_timeout: Duration,
    /// Further librdkafka properties, applied last (they override the above).
    pub properties: Vec<(String, String)>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            linger_ms: 1,
            queue_max_messages: 100_000,
            message_max_bytes: 5 * 1024 * 1024,
            message_timeout: Duration::from_secs(6),
            properties: Vec::new(),
        }
    }
}

/// Settings of each RabbitMQ producer (one per server URL and exchange).
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// The connection name shown in the broker's management tools.
    pub connection_name: String,
    /// The largest AMQP frame ferry proposes (the broker may lower it, and so may a URL's
    /// own `frame_max`, within 4 KiB–128 KiB). lapin keeps 2 × 32 frames of buffer per connection and
    /// zero-fills them when the negotiated frame is larger than its first guess, so this
    /// sets each connection's memory: RabbitMQ's default 128 KiB costs 8 MiB of resident
    /// memory per connection; at 8 KiB the 512 KiB of buffer stays mostly untouched (a
    /// target measured 80 KiB in all).
    pub frame_max_bytes: u32,
}

/// The smallest frame AMQP 0-9-1 allows.
pub const AMQP_FRAME_MIN_BYTES: u32 = 4096;

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            connection_name: "ferry".to_owned(),
            frame_max_bytes: 8192,
        }
    }
}

/// Bounds of the producer registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Most targets with a cached producer; the least recently used idle one is evicted
    /// to make room, and when none is idle new targets are refused as overloaded.
    pub max_targets: usize,
    /// Most of those that are Kafka broker sets: each is a librdkafka producer with a
    /// thread per broker, so they are bounded apart (the least recently used idle one is
    /// evicted, as above).
    pub max_kafka_targets: usize,
    /// A producer unused for this long, with nothing in flight, is stopped.
    pub idle_timeout: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            max_targets: 1_000,
            max_kafka_targets: 16,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delay_doubles_up_to_its_bound() {
        let s = ProducerSettings::default();
        let delays: Vec<_> = (1..=7).map(|n| s.restart_delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(s.restart_delay(u32::MAX), Duration::from_secs(2));
    }
}
