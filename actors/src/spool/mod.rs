//! The spool side of forwarding: which messages go to the spool, the per-target state
//! that keeps a target's messages in arrival order, and the replay of each target's
//! records once its broker takes messages again.
//!
//! Spooled messages are filed by [`Line`](crate::Line): the target a sender named, or the name of the
//! route it sent through. A line is *spooling* from its first spooled record until its
//! spool is empty again. While it spools, every new message for it goes to the spool too,
//! behind the others. One replay task per spooling line (`replay.rs`) reads its
//! records in order, publishes them to the target the line resolves to under the config
//! in force, and removes each only after the broker confirmed it. Once a line's spool is
//! empty its state is dropped (the daemon-wide totals keep its counts), so the state grows
//! with the lines that have records, not with every target ever spooled.

mod lines;
mod replay;
mod spooler;

pub use lines::{SpoolSnapshot, SpoolStats, SpoolTotals};
pub use replay::{ReplaySettings, UNREACHED_BACKOFF_MAX};
pub use spooler::Spooler;
pub(crate) use spooler::ToSpool;
