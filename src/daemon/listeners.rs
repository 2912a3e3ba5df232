//! The daemon's sockets: one gRPC listener per worker on the same address (SO_REUSEPORT,
//! after a check that no other process listens there), and the open-file limit that
//! `server.max_connections` needs.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::daemon::error::ServeError;

/// Pending connections each listener queues before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds `workers` listeners to `addr` with SO_REUSEPORT (all on the port the first got).
///
/// SO_REUSEPORT would also let a second daemon bind the same address and silently take
/// half the connections, so the address is first bound once without it: that fails while
/// any other process listens there.
pub fn bind(addr: SocketAddr, workers: usize) -> Result<Vec<TcpListener>, ServeError> {
    let addr = {
        let probe = exclusive_probe(addr).map_err(|source| ServeError::Bind { addr, source })?;
        probe
            .local_addr()
            .and_then(|bound| {
                bound
                    .as_socket()
                    .ok_or_else(|| std::io::Error::other("not an IP address"))
            })
            .map_err(|source| ServeError::Bind { addr, source })?
    };
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let listener = bind_one(addr).map_err(|source| ServeError::Bind { addr, source })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A socket bound to `addr` without SO_REUSEPORT (closed again by the caller).
fn exclusive_probe(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// One non-blocking listener with SO_REUSEPORT.
fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The operations endpoint's listener on `addr`, non-blocking (handed to tokio).
pub fn bind_ops(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let bind_error = |source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}

/// Raises the soft open-file limit so `max_connections` connections fit, with room for
/// broker connections and files; warns when the hard limit does not allow it.
pub fn raise_open_file_limit(max_connections: usize) {
    let wanted = max_connections as u64 + 1024;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => log::warn!(
            "Open-file limit {limit} is below max_connections + 1024 = {wanted}; \
             connections may fail before max_connections is reached"
        ),
        Ok(_) => {}
        Err(error) => log::warn!("Cannot raise the open-file limit: {error}"),
    }
}
