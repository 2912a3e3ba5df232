//! Why a spool operation failed.

/// A spool operation that did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The spool holds `max_bytes`, the target holds `max_bytes_per_target`, `max_targets`
    /// targets have records, or the disk has less free space than the floor: the record
    /// was not written (nothing already spooled is dropped).
    #[error("spool full: {0}")]
    Full(String),
    /// Another process holds the spool directory.
    #[error("spool directory {0} is in use by another ferry (its LOCK file is held)")]
    Locked(String),
    /// The spool cannot be opened for a reason a person must fix (permissions, ownership,
    /// a read-only or full disk, a database another process keeps locked). Nothing was
    /// moved or deleted; the sentence says what to do.
    #[error("{0}")]
    Unusable(String),
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

/// Whether a SQLite error means the database file itself is damaged (the only case in
/// which opening moves it aside); every other error leaves the files where they are.
pub(crate) fn is_corruption(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}
