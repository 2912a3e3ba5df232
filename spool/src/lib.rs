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
//! remove ──┤   (one connection)   ├─ dead_letters (moved by a configured rule)
//! bury   ──┘                      └─ quarantine (records whose checksum failed)
//! ```
//!
//! - [`record`]: what a record holds and where it goes.
//! - [`open`]: the directory's checks, the lock, opening and recovering the database.
//! - [`store`]: the SQLite database: append, read in order, remove.
//! - [`dead`]: dead letters: moved by a configured rule, listed, requeued, exported.
//! - [`salvage`]: copying what still reads out of a damaged database moved aside.
//! - [`spool`]: the writer thread and the async handle the daemon uses.
//! - [`error`]: why an operation failed.

pub mod dead;
pub mod error;
pub mod open;
pub mod record;
pub mod salvage;
pub mod spool;
pub mod store;

pub use dead::{Burial, DeadLetter, Moved, Selection};
pub use error::SpoolError;
pub use open::Recovery;
pub use record::{Destination, Kind, NewRecord, Record};
pub use spool::{Expiry, Spool, SpoolLimits};
pub use store::{Inventory, Store, Summary};
