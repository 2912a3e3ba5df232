//! The client side, which job scripts run: one message end to end — where it goes, the
//! policy, the outcome ([`deliver`]) — sending through a list of daemons with failover
//! ([`failover`]), many messages of one job over one stream ([`lines`]), the
//! predecessor's JSON event envelopes ([`envelope`]), and publishing straight to RabbitMQ
//! without a daemon ([`direct`]).

pub mod deliver;
pub mod direct;
pub mod envelope;
pub mod failover;
pub mod lines;

pub use failover::{
    Answer, AttemptError, Client, ClientError, DaemonFailure, Delivered, Destination,
    MessageMetadata, NotDelivered, RETRY_PAUSE,
};
