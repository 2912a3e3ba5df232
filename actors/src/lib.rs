//! ferry's forwarding core: one supervised producer actor per target, a bounded registry
//! of those actors, the timeout/retry policy every message goes through, and the spool
//! that keeps what a broker cannot take now.
//!
//! This crate knows nothing of gRPC or protobuf. The daemon turns wire requests into a
//! validated [`Target`] plus a route (topic or routing key) and a payload, and calls
//! [`Forwarder::forward`]. The data flow is:
//!
//! ```text
//!                 ┌─(policy: attempt n ≤ n × step)─► Producer ──► ProducerActor<KafkaBackend>
//! Forwarder ──────┤   (found or started by the Registry)    └──► ProducerActor<AmqpBackend>
//!                 │                                                  (a channel lent by the
//!                 │                                                   server's AmqpServer)
//!                 └─(broker cannot take it now)─► Spooler ──► replay task per line ──► Producer
//! ```
//!
//! A ready actor lends its connection's publisher ([`producer::Direct`]): a [`Producer`]
//! handle publishes through it from the caller's task and awaits the confirmation there,
//! and goes through the actor's mailbox only while the actor is not ready.
//!
//! The modules, by folder:
//!
//! - the core: [`forwarder`] (admission, policy, spool hand-off), [`registry`] (the bounded
//!   cache of producers), [`producer`] (the actor, its [`producer::Backend`] trait and the
//!   [`Producer`] handle), [`policy`], [`stats`], [`target`], [`metadata`], [`line`](mod@line),
//!   [`error`], [`settings`], and `backends.rs` (which backend starts a target's producer);
//! - `kafka` (feature `kafka`): the librdkafka backend, its configuration and its event serving;
//! - [`amqp`]: the RabbitMQ backend and the per-server connection actor;
//! - [`spool`]: the spooler, each line's spooling state, and the replay tasks.

pub mod amqp;
mod backends;
pub mod error;
#[cfg(test)]
mod fake;
pub mod forwarder;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod line;
pub mod metadata;
pub mod policy;
pub mod producer;
pub mod registry;
mod repeats;
pub mod settings;
pub mod spool;
pub mod stats;
pub mod target;

pub use error::{ForwardError, InvalidRequest, ProduceError};
pub use forwarder::{Accepted, Forwarder};
pub use line::{Line, Resolve};
pub use metadata::Metadata;
pub use policy::RetryPolicy;
pub use producer::{Delivery, Producer};
pub use registry::Registry;
pub use settings::{
    AmqpSettings, AmqpTls, ClientIdentity, KafkaCluster, KafkaSettings, ProducerSettings,
    RegistrySettings,
};
pub use stats::{LastError, LatencySnapshot, ProducerState, StatsSnapshot, TargetStats};
pub use target::{AmqpTarget, KafkaTarget, Target};
