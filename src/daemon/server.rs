//! The daemon's runtime: an actix System with one Arbiter per worker, each serving the gRPC
//! ingress on its own SO_REUSEPORT listener (the kernel spreads client connections over
//! them); the producer actors are spread over the same arbiters.
//!
//! [`Daemon::start`] binds the sockets ([`crate::daemon::listeners`]) and opens the spool
//! on the caller's thread, so that those errors reach it; the runtime thread then builds
//! the forwarding core ([`crate::daemon::forwarding`]), starts the gRPC servers
//! ([`crate::daemon::grpc`]) and the operations endpoint ([`crate::daemon::http`]), serves
//! until told to stop, and shuts down in the order of [`crate::daemon::drain`].

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_rt::{Arbiter, System};
use ferry_actors::Forwarder;
use tokio::sync::{oneshot, watch};
use tonic_health::ServingStatus;

use crate::config::Settings;
use crate::daemon::access::TokenCheck;
use crate::daemon::connections::ConnectionLimit;
use crate::daemon::drain::Drain;
pub use crate::daemon::error::ServeError;
use crate::daemon::forwarding::{self, OpenedSpool, open_spool};
use crate::daemon::grpc::{Grpc, Health};
pub use crate::daemon::grpc::{HEALTH_SERVICE, INGEST_HEALTH_SERVICE};
use crate::daemon::http::OpsEndpoint;
use crate::daemon::ingress::Refused;
use crate::daemon::listeners::{bind, bind_ops, raise_open_file_limit};
use crate::daemon::live::Live;
use crate::daemon::reloads::{ReloadQueue, ReloadRequests};
use crate::daemon::source::Source;
use crate::report::Limits;
use crate::wire::RequestLimits;

/// A running daemon; dropping it stops it.
pub struct Daemon {
    /// Where the gRPC ingress listens.
    local_addr: SocketAddr,
    /// Where the operations endpoint listens.
    ops_addr: SocketAddr,
    /// The forwarding core, for in-process inspection.
    forwarder: Arc<Forwarder>,
    /// Tells the runtime to shut down.
    stop: Option<oneshot::Sender<()>>,
    /// Tells a shutting-down runtime to end the grace period now.
    hurry: Option<oneshot::Sender<()>>,
    /// Closed when the runtime ends, whatever the reason.
    ended: Option<oneshot::Receiver<()>>,
    /// The runtime thread.
    thread: Option<JoinHandle<Result<(), ServeError>>>,
    /// The parts of the config a reload replaces.
    live: Arc<Live>,
    /// The settings the daemon started with (a reload reports fields that differ from them
    /// and cannot change live).
    started_with: Settings,
    /// The reloads `POST /reload` asks for, until taken by whoever applies reloads.
    reload_queue: Option<ReloadQueue>,
}

impl Daemon {
    /// Binds the listeners, starts the runtime on its own thread, and returns once the
    /// daemon serves.
    pub fn start(settings: Settings) -> Result<Self, ServeError> {
        let listeners = bind(settings.server.listen, settings.server.workers)?;
        let spool = open_spool(&settings)?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: settings.server.listen,
                source,
            })?;
        let ops_listener = bind_ops(settings.ops.listen)?;
        let ops_addr = ops_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: settings.ops.listen,
                source,
            })?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (hurry_tx, hurry_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        let (reloads, reload_queue) = crate::daemon::reloads::channel();
        let live = Arc::new(Live::new(&settings, String::new()));
        let started_with = settings.clone();
        let thread_live = Arc::clone(&live);
        let thread = std::thread::Builder::new()
            .name("ferry-system".into())
            .spawn(move || {
                let _ended = ended_tx;
                let control = Control {
                    stop: stop_rx,
                    hurry: hurry_rx,
                    reloads,
                };
                run_system(
                    settings,
                    thread_live,
                    listeners,
                    ops_listener,
                    spool,
                    ready_tx,
                    control,
                )
            })
            .map_err(ServeError::Thread)?;
        match ready_rx.recv() {
            Ok(forwarder) => Ok(Self {
                local_addr,
                ops_addr,
                forwarder,
                stop: Some(stop_tx),
                hurry: Some(hurry_tx),
                ended: Some(ended_rx),
                thread: Some(thread),
                live,
                started_with,
                reload_queue: Some(reload_queue),
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

    /// Where the operations endpoint (HTTP) listens.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// The forwarding core (its registry holds the per-target stats).
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// The live parts of the config and its reload history.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The settings the daemon started with (a reload, [`Live::apply`], reports the fields
    /// that differ from them and cannot change live).
    pub fn started_with(&self) -> &Settings {
        &self.started_with
    }

    /// The reloads `POST /reload` asks for (once: whoever applies reloads takes them).
    /// Until taken, a request waits (answered 504 after 30 s); once the queue is dropped,
    /// 503.
    pub fn take_reload_queue(&mut self) -> Option<ReloadQueue> {
        self.reload_queue.take()
    }

    /// Resolves if the runtime ends without being told to (a server failed); the cause
    /// is what [`Self::stop`] then returns.
    pub async fn ended(&mut self) {
        match &mut self.ended {
            Some(ended) => {
                let _ = ended.await;
                self.ended = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Reports "not serving", stops accepting, lets requests in flight finish within
    /// `server.shutdown_grace_ms` (answering those still waiting then with error_no 6),
    /// stops the producers and waits for the runtime to end.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.shutdown()
    }

    /// Begins the shutdown [`Self::stop`] describes without waiting for it; [`Self::ended`]
    /// resolves when it is done.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Ends the shutdown grace period now (a second SIGTERM): what is still in flight is
    /// answered error_no 6 at once. Does nothing before [`Self::begin_stop`].
    pub fn end_grace(&mut self) {
        if self.stop.is_none()
            && let Some(hurry) = self.hurry.take()
        {
            let _ = hurry.send(());
        }
    }

    fn shutdown(&mut self) -> Result<(), ServeError> {
        self.begin_stop();
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
            log::error!(error:% = error; "Daemon stopped with an error");
        }
    }
}

/// What the runtime is told from outside.
struct Control {
    /// Shut down.
    stop: oneshot::Receiver<()>,
    /// End the shutdown grace period now.
    hurry: oneshot::Receiver<()>,
    /// Where `POST /reload` queues its requests.
    reloads: ReloadRequests,
}

/// The runtime thread: an actix System, one Arbiter per listener.
#[allow(clippy::too_many_arguments)]
fn run_system(
    settings: Settings,
    live: Arc<Live>,
    listeners: Vec<TcpListener>,
    ops_listener: TcpListener,
    spool: Option<OpenedSpool>,
    ready: std::sync::mpsc::Sender<Arc<Forwarder>>,
    control: Control,
) -> Result<(), ServeError> {
    let system = System::new();
    let arbiters: Vec<Arbiter> = listeners.iter().map(|_| Arbiter::new()).collect();
    let result = system.block_on(serve(
        settings,
        live,
        listeners,
        ops_listener,
        spool,
        &arbiters,
        ready,
        control,
    ));
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = arbiter.join();
    }
    result
}

/// Serves until `stop` fires (or a server fails), then shuts down in order.
#[allow(clippy::too_many_arguments)]
async fn serve(
    settings: Settings,
    live: Arc<Live>,
    listeners: Vec<TcpListener>,
    ops_listener: TcpListener,
    spool: Option<OpenedSpool>,
    arbiters: &[Arbiter],
    ready: std::sync::mpsc::Sender<Arc<Forwarder>>,
    control: Control,
) -> Result<(), ServeError> {
    let forwarder = forwarding::build(&settings, &live, spool, arbiters);
    let refused = Arc::new(Refused::default());
    let server = &settings.server;
    let connections = ConnectionLimit::new(
        server.max_connections,
        server.handshake_timeout,
        server.idle_connection_timeout,
    );
    raise_open_file_limit(server.max_connections);
    let (health, health_service) = Health::new();
    health.set(ServingStatus::Serving).await;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (abort, abort_rx) = watch::channel(false);
    let grpc = Grpc {
        server: server.clone(),
        limits: RequestLimits {
            max_message_bytes: server.max_message_bytes,
            max_brokers_per_target: settings.max_brokers_per_target,
        },
        forwarder: forwarder.clone(),
        live: Arc::clone(&live),
        refused: refused.clone(),
        token_check: TokenCheck::new(Arc::clone(&live)),
        health: health_service,
        connections: connections.clone(),
        shutdown: shutdown_rx,
        abort: abort_rx,
    };
    let mut servers = grpc.spawn(arbiters, listeners)?;
    let spool_max_bytes = settings.spool.as_ref().map_or(0, |s| s.limits.max_bytes);
    let source = Source::new(
        forwarder.clone(),
        refused,
        connections,
        live,
        settings.ops.health,
        spool_max_bytes,
        Limits {
            max_in_flight: server.max_in_flight as u64,
            max_in_flight_bytes: server.max_in_flight_bytes,
        },
    );
    let router = crate::daemon::http::router(source, health.serving.clone(), control.reloads);
    let ops = OpsEndpoint::spawn(&arbiters[0], ops_listener, router);
    log_started(&settings, arbiters.len());
    crate::daemon::notify::ready();
    let _ = ready.send(forwarder.clone());

    let failure = tokio::select! {
        _ = control.stop => None,
        // A server that ends before it was told to has failed, whatever it returned.
        Some(ended) = servers.next_ended() => Some(ended.and(Err(ServeError::RuntimeGone))),
    };
    let drain = Drain {
        health,
        forwarder,
        servers,
        shutdown,
        abort,
        grace: server.shutdown_grace,
        hurry: control.hurry,
        ops,
    };
    let http = drain.run().await;
    failure.unwrap_or(http)
}

/// The start-up line: where the daemon serves, and every bound and policy in force.
fn log_started(settings: &Settings, workers: usize) {
    let server = &settings.server;
    log::info!(
        "Serving gRPC{} on {} ({} workers), stats on http://{}/stats; limits: max_connections={} max_in_flight={} max_in_flight_bytes={} \
         max_streams_per_connection={} handshake_timeout_ms={} idle_connection_timeout_ms={} request_timeout_ms={} \
         max_in_flight_per_target={} max_in_flight_per_stream={} max_targets={} max_message_bytes={} policy={}x{}ms \
         shutdown_grace_ms={}; access: {}; bearer token {}",
        if server.tls.is_some() {
            " with TLS"
        } else {
            ""
        },
        server.listen,
        workers,
        settings.ops.listen,
        server.max_connections,
        server.max_in_flight,
        server.max_in_flight_bytes,
        server.max_streams_per_connection,
        server.handshake_timeout.as_millis(),
        server.idle_connection_timeout.as_millis(),
        server.request_timeout.as_millis(),
        settings.producer.max_in_flight_per_target,
        server.max_in_flight_per_stream,
        settings.registry.max_targets,
        server.max_message_bytes,
        settings.policy.max_attempts(),
        settings.policy.attempt_timeout(1).as_millis(),
        server.shutdown_grace.as_millis(),
        settings.access,
        if settings.token.is_some() {
            "required"
        } else {
            "not required"
        },
    );
}
