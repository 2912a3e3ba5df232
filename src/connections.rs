//! The bound on concurrent client connections: a connection accepted beyond
//! `server.max_connections` is closed at once (the client moves to its next daemon), so
//! a flood of connections cannot exhaust the daemon's file descriptors.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// The connection places shared by all listeners.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    /// One permit per connection.
    places: Arc<Semaphore>,
    /// The bound.
    max: usize,
    /// Connections closed because the bound was reached.
    refused: Arc<AtomicU64>,
}

impl ConnectionLimit {
    /// A limit of `max` concurrent connections.
    pub fn new(max: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(max)),
            max,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        (self.max - self.places.available_permits()) as u64
    }

    /// Connections closed because the bound was reached, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// `incoming` with each connection holding a place until it closes; a connection
    /// with no place left is closed at once.
    pub fn apply<S, IO, E>(&self, incoming: S) -> impl Stream<Item = Result<Limited<IO>, E>>
    where
        S: Stream<Item = Result<IO, E>>,
    {
        let limit = self.clone();
        incoming.filter_map(move |accepted| match accepted {
            Ok(io) => match limit.places.clone().try_acquire_owned() {
                Ok(permit) => Some(Ok(Limited {
                    io,
                    _permit: permit,
                })),
                Err(_) => {
                    let refused = limit.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    // Logged at 1, 2, 4, 8, … refusals: visible, but a flood cannot flood
                    // the log.
                    if refused.is_power_of_two() {
                        log::warn!(
                            "Connection refused: max_connections={} reached refused_so_far={refused}",
                            limit.max
                        );
                    }
                    None
                }
            },
            Err(error) => Some(Err(error)),
        })
    }
}

/// A connection holding its place in the [`ConnectionLimit`].
#[derive(Debug)]
pub struct Limited<IO> {
    /// The connection.
    io: IO,
    /// Given back when the connection is dropped.
    _permit: OwnedSemaphorePermit,
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_limit_are_dropped_and_places_come_back() {
        let limit = ConnectionLimit::new(2);
        let accepted = tokio_stream::iter((0..4).map(Ok::<_, ()>));
        let limited: Vec<_> = limit.apply(accepted).collect().await;
        assert_eq!(limited.len(), 2);
        assert_eq!((limit.open(), limit.refused()), (2, 2));
        drop(limited);
        assert_eq!(limit.open(), 0);
    }
}
