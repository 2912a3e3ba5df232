//! The bounds on client connections, in number and in time: a connection accepted beyond
//! `server.max_connections` is closed at once (the client moves to its next daemon), so
//! a flood of connections cannot exhaust the daemon's file descriptors; one that sends
//! nothing within `server.handshake_timeout_ms` of being accepted, or on which nothing
//! moves either way for `server.idle_connection_timeout_ms`, is closed, so idle sockets
//! cannot hold the places for ever.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
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
    /// How long a new connection may stay silent.
    handshake_timeout: Duration,
    /// How long an established connection may see no traffic either way.
    idle_timeout: Duration,
    /// Connections closed for silence or idleness.
    timed_out: Arc<AtomicU64>,
}

impl ConnectionLimit {
    /// A limit of `max` concurrent connections, each closed when it sends nothing within
    /// `handshake_timeout` of being accepted or has no traffic for `idle_timeout`.
    pub fn new(max: usize, handshake_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            places: Arc::new(Semaphore::new(max)),
            max,
            refused: Arc::new(AtomicU64::new(0)),
            handshake_timeout,
            idle_timeout,
            timed_out: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Connections closed because they stayed silent or idle too long, since start.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
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
                    deadline: Deadline::new(&limit),
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
    /// When the connection is closed for silence.
    deadline: Deadline,
}

/// The time bound of one connection: the handshake timeout until its first byte arrives,
/// then the idle timeout from its last traffic either way.
#[derive(Debug)]
struct Deadline {
    /// Fires at the deadline as it was when last armed; checked against `last_traffic`
    /// only then, so traffic costs a clock read and no timer update.
    timer: Pin<Box<Sleep>>,
    /// When the connection was accepted, or last read or wrote a byte.
    last_traffic: Instant,
    /// Whether the peer has sent anything yet.
    heard: bool,
    /// See [`ConnectionLimit::new`].
    handshake_timeout: Duration,
    /// See [`ConnectionLimit::new`].
    idle_timeout: Duration,
    /// Counts connections closed for silence.
    timed_out: Arc<AtomicU64>,
}

impl Deadline {
    /// The deadline of a connection accepted now under `limit`.
    fn new(limit: &ConnectionLimit) -> Self {
        let now = Instant::now();
        Self {
            timer: Box::pin(tokio::time::sleep_until(now + limit.handshake_timeout)),
            last_traffic: now,
            heard: false,
            handshake_timeout: limit.handshake_timeout,
            idle_timeout: limit.idle_timeout,
            timed_out: limit.timed_out.clone(),
        }
    }

    /// Notes traffic: `read` bytes came in (or went out, when false).
    fn traffic(&mut self, read: bool) {
        self.last_traffic = Instant::now();
        self.heard |= read;
    }

    /// Ready with an error once the connection has been silent past its bound.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let (bound, what) = if self.heard {
                (self.idle_timeout, "idle_connection_timeout_ms")
            } else {
                (self.handshake_timeout, "handshake_timeout_ms")
            };
            let due = self.last_traffic + bound;
            if self.timer.deadline() != due {
                // Traffic moved the deadline since the timer was armed.
                self.timer.as_mut().reset(due);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= due {
                let closed = self.timed_out.fetch_add(1, Ordering::Relaxed) + 1;
                if closed.is_power_of_two() {
                    log::info!(
                        "Connection closed: nothing received or sent within {what}={} closed_so_far={closed}",
                        bound.as_millis()
                    );
                }
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connection silent past {what}"),
                ));
            }
        }
    }
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
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadline.traffic(true);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.deadline.poll_expired(cx).map(Err),
            failed => failed,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.deadline.traffic(false);
        }
        written
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
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.deadline.traffic(false);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn connections_beyond_the_limit_are_dropped_and_places_come_back() {
        let limit = ConnectionLimit::new(2, LONG, LONG);
        let accepted = tokio_stream::iter((0..4).map(Ok::<_, ()>));
        let limited: Vec<_> = limit.apply(accepted).collect().await;
        assert_eq!(limited.len(), 2);
        assert_eq!((limit.open(), limit.refused()), (2, 2));
        drop(limited);
        assert_eq!(limit.open(), 0);
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One limited connection over an in-memory pipe, and the peer's end.
    async fn pipe(
        limit: &ConnectionLimit,
    ) -> (Limited<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, peer) = tokio::io::duplex(1024);
        let accepted = tokio_stream::iter([Ok::<_, ()>(server)]);
        let mut limited = Box::pin(limit.apply(accepted));
        (limited.next().await.unwrap().unwrap(), peer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout() {
        let limit = ConnectionLimit::new(4, Duration::from_secs(5), Duration::from_secs(60));
        let (mut conn, _peer) = pipe(&limit).await;
        let started = Instant::now();
        let error = conn.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(limit.timed_out(), 1);
        drop(conn);
        assert_eq!(limit.open(), 0, "its place is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_keeps_a_connection_open_until_it_idles() {
        let limit = ConnectionLimit::new(4, Duration::from_secs(5), Duration::from_secs(60));
        let (mut conn, mut peer) = pipe(&limit).await;
        let started = Instant::now();
        peer.write_all(b"PRI").await.unwrap();
        let mut buf = [0; 8];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 3);
        // 50 s later the server answers: the idle clock starts again.
        tokio::time::sleep(Duration::from_secs(50)).await;
        conn.write_all(b"ok").await.unwrap();
        let error = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(110));
    }
}
