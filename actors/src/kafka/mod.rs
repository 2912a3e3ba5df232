//! The Kafka backend: one idempotent, acks=all librdkafka producer per broker set
//! (`backend.rs`, [`KafkaBackend`]), its events served on the producer actor's arbiter
//! (`events.rs`).

mod backend;
mod events;

pub use backend::{
    ID_HEADER, KafkaBackend, KafkaConnection, KafkaProducer, LossReporter, check_settings, classify,
};
