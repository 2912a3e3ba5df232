//! The Kafka backend: one idempotent, acks=all librdkafka producer per broker set
//! (`backend.rs`, [`KafkaBackend`]), configured in `config.rs`, its events served on the
//! producer actor's arbiter (`events.rs`), its failures put in words a user acts on
//! (`explain.rs`).

mod backend;
mod config;
mod events;
mod explain;

pub use backend::{
    ID_HEADER, KafkaBackend, KafkaConnection, KafkaProducer, LossReporter, classify,
};
pub use config::{RESERVED_PROPERTIES, check_settings};
