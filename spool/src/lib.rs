//! ferry's durable spool: messages whose broker could not take them are written here,
//! durably, and kept until the broker confirms them.
//!
//! The spool knows nothing of gRPC or actors. One SQLite database in WAL mode with
//! `synchronous = FULL` holds the records; a single writer thread owns it and commits the
//! appends that arrive together in one transaction (group commit: one fsync for many
//! messages). An append returns only once its record is on disk.
//!
//! ```text
//! append ──┐                      ┌─ records (seq, destination, route, id, payload, crc)
//! read   ──┼─► writer thread ─────┤
//! remove ──┘   (one connection)   └─ quarantine (records whose checksum failed)
//! ```
//!
//! - [`record`]: what a record holds and where it goes.
//! - [`store`]: the SQLite database: open and recover, append, read in order, remove.
//! - [`spool`]: the writer thread and the async handle the daemon uses.
//! - [`error`]: why an operation failed.

pub mod error;
pub mod record;
pub mod spool;
pub mod store;

pub use error::SpoolError;
pub use record::{Destination, Kind, NewRecord, Record};
pub use spool::{Spool, SpoolLimits};
pub use store::{Recovery, Summary, inspect};
