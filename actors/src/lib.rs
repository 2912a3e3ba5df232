//! ferry's forwarding core: one supervised producer actor per target, a bounded registry
//! of those actors, and the timeout/retry policy every message goes through.
//!
//! This crate knows nothing of gRPC or protobuf. The daemon turns wire requests into a
//! validated [`Target`] plus a route (topic or routing key) and a payload, and calls
//! [`Forwarder::forward`]. The data flow is:
//!
//! ```text
//! Forwarder ──(policy: attempt n ≤ n × step)──► Registry ──► ProducerActor<KafkaBackend>
//!                                                        └─► ProducerActor<AmqpBackend>
//!                                                              (a channel lent by the
//!                                                               server's AmqpServer actor)
//! ```
//!
//! A ready actor lends its connection's publisher ([`producer::Direct`]): the forwarder
//! publishes through it from the caller's task and awaits the confirmation there, and
//! goes through the actor's mailbox only while the actor is not ready.

pub mod amqp;
mod backends;
pub mod error;
#[cfg(test)]
mod fake;
pub mod forwarder;
pub mod kafka;
pub mod line;
pub mod metadata;
pub mod policy;
pub mod producer;
pub mod registry;
pub mod settings;
pub mod spool;
pub mod stats;
pub mod target;

/// [`spool`] under its former name, which the daemon's config still uses
/// (`spooler::SpoolSettings`).
pub use spool as spooler;

pub use error::{ForwardError, InvalidRequest, ProduceError};
pub use forwarder::{Accepted, Forwarder};
pub use line::{Line, Resolve};
pub use metadata::Metadata;
pub use policy::RetryPolicy;
pub use producer::Delivery;
pub use registry::Registry;
pub use settings::{
    AmqpSettings, AmqpTls, ClientIdentity, KafkaCluster, KafkaSettings, ProducerSettings,
    RegistrySettings,
};
pub use stats::{LastError, LatencySnapshot, ProducerState, StatsSnapshot, TargetStats};
pub use target::{AmqpTarget, KafkaTarget, Target};
