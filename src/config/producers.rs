//! `[policy]` (the timeout and retry policy every message goes through) and `[producers]`
//! (the per-target producer actors: their cache, connection and restart backoff).

use std::time::Duration;

use ferry_actors::policy::PolicyError;
use ferry_actors::{AmqpSettings, KafkaSettings, ProducerSettings, RegistrySettings, RetryPolicy};
use serde::Deserialize;

use crate::config::{ConfigError, positive};

/// `[policy]`: attempt n may take n × `timeout_step_ms`; at most `max_attempts` attempts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Time budget step in milliseconds.
    pub timeout_step_ms: u64,
    /// Attempts per message (1–10).
    pub max_attempts: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            timeout_step_ms: 2_000,
            max_attempts: 2,
        }
    }
}

/// `[producers]`: the per-target producer actors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducersConfig {
    /// Most targets with a cached producer.
    pub max_targets: usize,
    /// Most Kafka broker sets with a cached producer (each costs librdkafka threads).
    pub max_kafka_targets: usize,
    /// Seconds a producer may stay unused before it is stopped.
    pub idle_timeout_s: u64,
    /// Most messages in flight to one target.
    pub max_in_flight_per_target: usize,
    /// Longest a connection attempt may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// First wait before reconnecting after a failure, in milliseconds (doubles per failure).
    pub restart_backoff_initial_ms: u64,
    /// Longest wait before reconnecting, in milliseconds.
    pub restart_backoff_max_ms: u64,
}

impl Default for ProducersConfig {
    fn default() -> Self {
        let producer = ProducerSettings::default();
        let registry = RegistrySettings::default();
        Self {
            max_targets: registry.max_targets,
            max_kafka_targets: registry.max_kafka_targets,
            idle_timeout_s: registry.idle_timeout.as_secs(),
            max_in_flight_per_target: producer.max_in_flight_per_target,
            connect_timeout_ms: millis(producer.connect_timeout),
            restart_backoff_initial_ms: millis(producer.restart_backoff_initial),
            restart_backoff_max_ms: millis(producer.restart_backoff_max),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PolicyConfig {
    /// The retry policy.
    pub fn validate(&self) -> Result<RetryPolicy, ConfigError> {
        RetryPolicy::try_new(
            Duration::from_millis(self.timeout_step_ms),
            self.max_attempts,
        )
        .map_err(|e| ConfigError::Invalid {
            field: match e {
                PolicyError::ZeroStep => "policy.timeout_step_ms",
                PolicyError::Attempts(_) => "policy.max_attempts",
            },
            reason: match e {
                PolicyError::ZeroStep => "must be greater than 0".to_owned(),
                PolicyError::Attempts(_) => e.to_string(),
            },
        })
    }
}

impl ProducersConfig {
    /// Checks the bounds and the backoff.
    pub fn check(&self) -> Result<(), ConfigError> {
        positive("producers.max_targets", self.max_targets)?;
        positive("producers.max_kafka_targets", self.max_kafka_targets)?;
        positive("producers.idle_timeout_s", self.idle_timeout_s)?;
        positive(
            "producers.max_in_flight_per_target",
            self.max_in_flight_per_target,
        )?;
        positive("producers.connect_timeout_ms", self.connect_timeout_ms)?;
        positive(
            "producers.restart_backoff_initial_ms",
            self.restart_backoff_initial_ms,
        )?;
        if self.restart_backoff_max_ms < self.restart_backoff_initial_ms {
            return Err(ConfigError::Invalid {
                field: "producers.restart_backoff_max_ms",
                reason: "must be at least restart_backoff_initial_ms".into(),
            });
        }
        Ok(())
    }

    /// The producers' settings, with the validated `kafka` and `amqp` backends' own, and
    /// the bounds of their cache (after [`Self::check`]).
    pub fn settings(
        &self,
        kafka: KafkaSettings,
        amqp: AmqpSettings,
    ) -> (ProducerSettings, RegistrySettings) {
        let producer = ProducerSettings {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            restart_backoff_initial: Duration::from_millis(self.restart_backoff_initial_ms),
            restart_backoff_max: Duration::from_millis(self.restart_backoff_max_ms),
            max_in_flight_per_target: self.max_in_flight_per_target,
            kafka,
            amqp,
        };
        let registry = RegistrySettings {
            max_targets: self.max_targets,
            max_kafka_targets: self.max_kafka_targets,
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
        };
        (producer, registry)
    }
}
