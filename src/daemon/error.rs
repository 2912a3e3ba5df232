//! Why the daemon could not start, or stopped abnormally.

use std::net::SocketAddr;

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for (`server.listen` or `ops.listen`).
        addr: SocketAddr,
        /// The operating system's reason: in use, not this host's address, no permission…
        source: std::io::Error,
    },
    /// The runtime thread could not be started.
    #[error("cannot start the runtime thread: {0}")]
    Thread(std::io::Error),
    /// A gRPC server failed while serving.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The runtime thread ended without saying why (it panicked).
    #[error("the daemon's runtime stopped unexpectedly")]
    RuntimeGone,
    /// The gRPC reflection service could not be built from the descriptors.
    #[error("cannot build the gRPC reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The operations endpoint failed while serving.
    #[error("operations endpoint failed: {0}")]
    Http(std::io::Error),
    /// The spool could not be opened (held by another daemon, or unusable).
    #[error("cannot open the spool: {0}")]
    Spool(#[from] ferry_spool::SpoolError),
}
