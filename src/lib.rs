//! ferry: a daemon that accepts messages over gRPC on a supercomputer's login node and
//! forwards them to Kafka or RabbitMQ, and the client job scripts call.
//!
//! - [`daemon`]: what `ferry serve` runs — the gRPC ingress (unary and streaming), the
//!   allowlist and token, connection bounds, signals and the operations endpoint.
//! - [`client`]: what job scripts run — sending through daemons with failover (one message, or
//!   many over one stream), the predecessor's event envelopes, and publishing straight to
//!   RabbitMQ.
//! - [`config`]: the TOML configuration, validated into [`config::Settings`].
//! - [`wire`]: protobuf requests → domain values and outcomes → replies (the daemon's side).
//! - [`proto`] (the generated messages), [`contract`] (the `error_no` codes, default
//!   addresses, health service names) and [`report`] (the `/stats` document): what the
//!   client and the daemon share.
//! - [`cli`]: the `ferry` command line, one file per command group.
//!
//! Two builds: with the default `daemon` feature, `ferry` has every command; without it
//! (`--no-default-features`, the static client for compute nodes) it has the commands job
//! scripts run — `send`, `ecflow-client`, `production`, `log`, `check` — and the operator
//! commands that only read a daemon (`stats`, `routes`), and links neither librdkafka nor
//! OpenSSL nor Cyrus SASL.
//!
//! The forwarding itself (producer actors, supervisor, retry policy, spool) is the
//! `ferry-actors` crate, which knows nothing of gRPC; the durable store is `ferry-spool`.

#[cfg(all(
    feature = "daemon",
    not(any(feature = "system-libs", feature = "portable"))
))]
compile_error!(
    "the daemon needs its Kafka client's TLS from somewhere: add feature `system-libs` (the \
     system's OpenSSL and SASL) or `portable` (OpenSSL built in)"
);
#[cfg(all(feature = "system-libs", feature = "portable"))]
compile_error!(
    "`portable` excludes the default `system-libs`: build the portable daemon with \
     --no-default-features --features portable (scripts/portable-daemon)"
);

pub mod cli;
pub mod client;
#[cfg(feature = "daemon")]
pub mod config;
pub mod contract;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod logging;
pub mod proto;
pub mod report;
pub mod toml_place;
#[cfg(feature = "daemon")]
pub mod wire;
