//! ferry: a daemon that accepts messages over gRPC on a supercomputer's login node and
//! forwards them to Kafka or RabbitMQ, and the client job scripts call.
//!
//! - [`daemon`]: what `ferry serve` runs — the gRPC ingress (unary and streaming), the
//!   allowlist and token, connection bounds, signals and the operations endpoint.
//! - [`client`]: what job scripts run — sending through daemons with failover (one message, or
//!   many over one stream), the predecessor's event envelopes, and publishing straight to
//!   RabbitMQ.
//! - [`config`]: the TOML configuration, validated into [`config::Settings`].
//! - [`wire`] and [`proto`]: protobuf ↔ domain conversion and the `error_no` codes, shared
//!   by both sides.
//! - [`cli`]: the `ferry` command line, one file per command group.
//!
//! The forwarding itself (producer actors, supervisor, retry policy, spool) is the
//! `ferry-actors` crate, which knows nothing of gRPC; the durable store is `ferry-spool`.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod proto;
pub mod wire;
