//! Helpers for ferry's end-to-end tests and demo: reach the test brokers that
//! `scripts/test` started, start private brokers for fault tests, create topics and bound
//! queues, and read messages back from the brokers.

// Test support: failing loudly (panicking) on a broker error is what a test wants.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod amqp;
pub mod brokers;
pub mod kafka;

pub use brokers::{BrokerKind, PrivateBroker, shared_amqp_url, shared_kafka};
