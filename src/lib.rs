//! ferry: a daemon that accepts messages over gRPC on a supercomputer's login node and
//! forwards them to Kafka or RabbitMQ, and the client job scripts call.
//!
//! - [`access`]: the target allowlist and the bearer token.
//! - [`config`]: the TOML configuration, validated into [`config::Settings`].
//! - [`server`]: the runtime (actix arbiters serving gRPC on SO_REUSEPORT listeners).
//! - [`ingress`]: the `messagebroker.MessageBroker` gRPC service.
//! - [`ingest`]: the `ferry.v1.Ingest` streaming service (many messages per stream).
//! - [`wire`]: protobuf ↔ domain conversion and the `error_no` codes.
//! - [`report`], [`http`], [`metrics`]: the operations endpoint (`/stats`, `/metrics`,
//!   `/healthz`).
//! - [`client`]: sending a message through daemons, with failover.
//! - [`envelope`]: the JSON event envelope of `ecflow-client` and `production`.
//! - [`direct`]: publishing to RabbitMQ without a daemon (the predecessor's default).
//! - [`cli`]: the `ferry` command line.
//!
//! The forwarding itself (producer actors, supervisor, retry policy) is the
//! `ferry-actors` crate, which knows nothing of gRPC.

pub mod access;
pub mod cli;
pub mod client;
pub mod config;
pub mod connections;
pub mod direct;
pub mod envelope;
pub mod http;
pub mod ingest;
pub mod ingress;
pub mod metrics;
pub mod proto;
pub mod report;
pub mod server;
pub mod signal;
pub mod wire;
