//! Why a spool operation failed.

/// A spool operation that did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The spool holds `max_bytes`, or the disk has less free space than the floor: the
    /// record was not written (nothing already spooled is dropped).
    #[error("spool full: {0}")]
    Full(String),
    /// Another process holds the spool directory.
    #[error("spool directory {0} is in use by another ferry (its LOCK file is held)")]
    Locked(String),
    /// The disk or the database failed; the record was not written.
    #[error("spool I/O error: {0}")]
    Io(String),
    /// The spool's writer thread is gone (the daemon is stopping).
    #[error("the spool is closed")]
    Closed,
}

impl From<rusqlite::Error> for SpoolError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Io(error.to_string())
    }
}

impl From<std::io::Error> for SpoolError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error.to_string())
    }
}
