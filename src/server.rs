//! The daemon's runtime: an actix System with one Arbiter per worker, each serving the gRPC
//! ingress on its own SO_REUSEPORT listener (the kernel spreads client connections over
//! them); the producer actors are spread over the same arbiters.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix_rt::{Arbiter, System};
use ferry_actors::{Forwarder, Registry};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::Settings;
use crate::ingress::Ingress;
use crate::proto::message_broker_server::MessageBrokerServer;

/// Pending connections each listener queues before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 1024;
/// Room for the gRPC request's own fields around the payload.
const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
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
}

/// A running daemon; dropping it stops it.
pub struct Daemon {
    /// Where the gRPC ingress listens.
    local_addr: SocketAddr,
    /// The forwarding core, for in-process inspection.
    forwarder: Arc<Forwarder>,
    /// Tells the runtime to shut down.
    stop: Option<oneshot::Sender<()>>,
    /// The runtime thread.
    thread: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Daemon {
    /// Binds the listeners, starts the runtime on its own thread, and returns once the
    /// daemon serves.
    pub fn start(settings: Settings) -> Result<Self, ServeError> {
        let listeners = bind(settings.listen, settings.workers)?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: settings.listen,
                source,
            })?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("ferry-system".into())
            .spawn(move || run_system(settings, listeners, ready_tx, stop_rx))
            .map_err(ServeError::Thread)?;
        match ready_rx.recv() {
            Ok(forwarder) => Ok(Self {
                local_addr,
                forwarder,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Err(_) => Err(match thread.join() {
                Ok(Err(error)) => error,
                _ => ServeError::RuntimeGone,
            }),
        }
    }

    /// Where the gRPC ingress listens (the real port when 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The forwarding core (its registry holds the per-target stats).
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// Stops accepting, lets requests in flight finish (bounded by the retry policy's
    /// budget), stops the producers and waits for the runtime to end.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), ServeError> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or(Err(ServeError::RuntimeGone)),
            None => Ok(()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            log::error!("Daemon stopped with an error error={error}");
        }
    }
}

/// Binds `workers` listeners to `addr` with SO_REUSEPORT (all on the port the first got).
fn bind(addr: SocketAddr, workers: usize) -> Result<Vec<TcpListener>, ServeError> {
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let listener = bind_one(addr).map_err(|source| ServeError::Bind { addr, source })?;
        if let Ok(bound) = listener.local_addr() {
            addr = bound;
        }
        listeners.push(listener);
    }
    Ok(listeners)
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

/// The runtime thread: an actix System, one Arbiter per listener.
fn run_system(
    settings: Settings,
    listeners: Vec<TcpListener>,
    ready: std::sync::mpsc::Sender<Arc<Forwarder>>,
    stop: oneshot::Receiver<()>,
) -> Result<(), ServeError> {
    let system = System::new();
    let arbiters: Vec<Arbiter> = listeners.iter().map(|_| Arbiter::new()).collect();
    let result = system.block_on(serve(settings, listeners, &arbiters, ready, stop));
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = arbiter.join();
    }
    result
}

/// Serves until `stop` fires (or a server fails), then drains.
async fn serve(
    settings: Settings,
    listeners: Vec<TcpListener>,
    arbiters: &[Arbiter],
    ready: std::sync::mpsc::Sender<Arc<Forwarder>>,
    stop: oneshot::Receiver<()>,
) -> Result<(), ServeError> {
    let registry = Registry::new(
        arbiters.iter().map(Arbiter::handle).collect(),
        settings.producer.clone(),
        settings.registry.clone(),
    );
    registry.spawn_idle_sweeper();
    let forwarder = Arc::new(Forwarder::new(
        registry,
        settings.policy,
        settings.max_in_flight,
    ));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel(arbiters.len());
    for (arbiter, listener) in arbiters.iter().zip(listeners) {
        let service =
            MessageBrokerServer::new(Ingress::new(forwarder.clone(), settings.max_message_bytes))
                .max_decoding_message_size(settings.max_message_bytes + REQUEST_OVERHEAD_BYTES);
        let mut shutdown = shutdown_rx.clone();
        let done_tx = done_tx.clone();
        let addr = settings.listen;
        arbiter.spawn(async move {
            let served = async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|source| ServeError::Bind { addr, source })?;
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                let shutdown = async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                };
                Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .map_err(ServeError::from)
            };
            let _ = done_tx.send(served.await).await;
        });
    }

    log::info!(
        "Serving gRPC listen={} workers={} max_in_flight={} max_targets={} policy_step_ms={} max_attempts={}",
        settings.listen,
        arbiters.len(),
        settings.max_in_flight,
        settings.registry.max_targets,
        settings.policy.attempt_timeout(1).as_millis(),
        settings.policy.max_attempts(),
    );
    let _ = ready.send(forwarder.clone());

    let mut running = arbiters.len();
    let failure = tokio::select! {
        _ = stop => None,
        Some(ended) = done_rx.recv() => {
            running -= 1;
            // A server that ends before it was told to has failed, whatever it returned.
            Some(match ended {
                Err(error) => Err(error),
                Ok(()) => Err(ServeError::RuntimeGone),
            })
        }
    };
    log::info!("Shutting down in_flight={}", forwarder.in_flight());
    forwarder.begin_shutdown();
    shutdown_tx.send_replace(true);
    let drain = forwarder.policy().total_budget() + Duration::from_secs(1);
    let drained = tokio::time::timeout(drain, async {
        while running > 0 && done_rx.recv().await.is_some() {
            running -= 1;
        }
    });
    if drained.await.is_err() {
        log::warn!(
            "Requests still in flight after the drain period drain_ms={} in_flight={}",
            drain.as_millis(),
            forwarder.in_flight()
        );
    }
    failure.unwrap_or(Ok(()))
}
