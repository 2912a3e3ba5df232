//! The daemon's runtime: an actix System with one Arbiter per worker, each serving the gRPC
//! ingress on its own SO_REUSEPORT listener (the kernel spreads client connections over
//! them); the producer actors are spread over the same arbiters.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_rt::{Arbiter, System};
use ferry_actors::spooler::Spooler;
use ferry_actors::{Forwarder, Registry};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Settings;
use crate::daemon::access::TokenCheck;
use crate::daemon::connections::ConnectionLimit;
use crate::daemon::framing::{Checks, Framed};
use crate::daemon::ingest::IngestService;
use crate::daemon::ingress::{Ingress, Refused};
use crate::daemon::live::Live;
use crate::daemon::report::Source;
use crate::daemon::send::SendService;
use crate::proto::ferry::v1::ingest_server::IngestServer;
use crate::proto::ferry::v1::send_server::SendServer;
use crate::proto::message_broker_server::MessageBrokerServer;
use crate::wire::RequestLimits;

/// The ingress's TLS: its identity, and with a client CA, client certificates verified
/// against it (optional: a caller without one identifies by bearer token).
fn server_tls(tls: &crate::config::TlsIdentity, handshake: Duration) -> ServerTlsConfig {
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert, &tls.key))
        .timeout(handshake);
    match &tls.client_ca {
        Some(ca) => config
            .client_ca_root(tonic::transport::Certificate::from_pem(ca))
            .client_auth_optional(true),
        None => config,
    }
}

/// Pending connections each listener queues before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 1024;
/// Room for the gRPC request's own fields around the payload.
const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;
/// How long servers may take to answer the aborted requests after the grace period.
const ABORT_GRACE: Duration = Duration::from_secs(1);
/// The service name grpc.health.v1 reports for the ingress.
pub const HEALTH_SERVICE: &str = "messagebroker.MessageBroker";
/// The service name grpc.health.v1 reports for the streaming ingress.
pub const INGEST_HEALTH_SERVICE: &str = "ferry.v1.Ingest";

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

/// The spool as opened at start: the store and what it held.
struct OpenedSpool {
    /// The store.
    spool: ferry_spool::Spool,
    /// The destinations that had records.
    summary: Vec<ferry_spool::Summary>,
    /// What opening it repaired.
    recovery: ferry_spool::Recovery,
}

/// Opens (and recovers) the configured spool, logging what recovery found.
fn open_spool(settings: &Settings) -> Result<Option<OpenedSpool>, ServeError> {
    let Some(config) = &settings.spool else {
        return Ok(None);
    };
    let (spool, recovery, summary) = ferry_spool::Spool::open(&config.dir, config.limits)?;
    if recovery.torn_tail {
        log::warn!(
            "Spool recovered from a crash mid-write: its log ended in a partial commit, which was never acknowledged; every whole commit is kept dir={}",
            config.dir.display()
        );
    }
    for aside in &recovery.moved_aside {
        log::error!(
            "Spool database was unusable and was moved aside; its records are not replayed moved_to={}",
            aside.display()
        );
    }
    log::info!(
        "Spool open dir={} targets={} records={} bytes={} max_bytes={}",
        config.dir.display(),
        summary.len(),
        summary.iter().map(|s| s.count).sum::<u64>(),
        spool.bytes(),
        config.limits.max_bytes
    );
    Ok(Some(OpenedSpool {
        spool,
        summary,
        recovery,
    }))
}

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
}

impl Daemon {
    /// Binds the listeners, starts the runtime on its own thread, and returns once the
    /// daemon serves.
    pub fn start(settings: Settings) -> Result<Self, ServeError> {
        let listeners = bind(settings.listen, settings.workers)?;
        let spool = open_spool(&settings)?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: settings.listen,
                source,
            })?;
        let ops_bind = |source| ServeError::Bind {
            addr: settings.ops_listen,
            source,
        };
        let ops_listener = TcpListener::bind(settings.ops_listen).map_err(ops_bind)?;
        ops_listener.set_nonblocking(true).map_err(ops_bind)?;
        let ops_addr = ops_listener.local_addr().map_err(ops_bind)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (hurry_tx, hurry_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        let live = Arc::new(Live::new(&settings, String::new()));
        let started_with = settings.clone();
        let thread_live = Arc::clone(&live);
        let thread = std::thread::Builder::new()
            .name("ferry-system".into())
            .spawn(move || {
                let _ended = ended_tx;
                let signals = Signals {
                    stop: stop_rx,
                    hurry: hurry_rx,
                };
                run_system(
                    settings,
                    thread_live,
                    listeners,
                    ops_listener,
                    spool,
                    ready_tx,
                    signals,
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
            log::error!("Daemon stopped with an error error={error}");
        }
    }
}

/// Binds `workers` listeners to `addr` with SO_REUSEPORT (all on the port the first got).
///
/// SO_REUSEPORT would also let a second daemon bind the same address and silently take
/// half the connections, so the address is first bound once without it: that fails while
/// any other process listens there.
fn bind(addr: SocketAddr, workers: usize) -> Result<Vec<TcpListener>, ServeError> {
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

/// What the runtime is told from outside.
struct Signals {
    /// Shut down.
    stop: oneshot::Receiver<()>,
    /// End the shutdown grace period now.
    hurry: oneshot::Receiver<()>,
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
    signals: Signals,
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
        signals,
    ));
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = arbiter.join();
    }
    result
}

/// Raises the soft open-file limit so `max_connections` connections fit, with room for
/// broker connections and files; warns when the hard limit does not allow it.
fn raise_open_file_limit(max_connections: usize) {
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

/// The daemon's "serving" flag as seen by `/healthz` and grpc.health.v1.
struct Health {
    /// Read by `/healthz`.
    serving: Arc<AtomicBool>,
    /// Updates grpc.health.v1.
    reporter: HealthReporter,
}

impl Health {
    /// Reports `status` for the whole server and for the ingress service.
    async fn set(&self, status: ServingStatus) {
        self.serving
            .store(status == ServingStatus::Serving, Ordering::Release);
        self.reporter.set_service_status("", status).await;
        for service in [HEALTH_SERVICE, INGEST_HEALTH_SERVICE] {
            self.reporter.set_service_status(service, status).await;
        }
    }
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
    signals: Signals,
) -> Result<(), ServeError> {
    let Signals { stop, mut hurry } = signals;
    let registry = Registry::new(
        arbiters.iter().map(Arbiter::handle).collect(),
        settings.producer.clone(),
        settings.registry.clone(),
    );
    registry.spawn_idle_sweeper();
    let spooler = match (spool, &settings.spool) {
        (Some(opened), Some(config)) => {
            let spooler = Spooler::new(
                opened.spool,
                Arc::clone(&registry),
                settings.policy,
                config.replay,
                Arc::clone(&live) as Arc<dyn ferry_actors::Resolve>,
            );
            spooler.note_recovery(&opened.recovery);
            spooler.resume(&opened.summary);
            Some(spooler)
        }
        _ => None,
    };
    let forwarder = Arc::new(Forwarder::new(
        registry,
        settings.policy,
        settings.max_in_flight,
        settings.max_in_flight_bytes,
        spooler,
    ));
    let refused = Arc::new(Refused::default());
    let connections = ConnectionLimit::new(
        settings.max_connections,
        settings.handshake_timeout,
        settings.idle_connection_timeout,
    );
    raise_open_file_limit(settings.max_connections);
    let source = Source::new(
        forwarder.clone(),
        refused.clone(),
        connections.clone(),
        Arc::clone(&live),
    );
    let token_check = TokenCheck::new(Arc::clone(&live));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        serving: Arc::new(AtomicBool::new(false)),
        reporter,
    };
    health.set(ServingStatus::Serving).await;

    // One builder per worker, TLS set up before anything serves (a bad key fails start).
    let builders = arbiters
        .iter()
        .map(|_| match &settings.tls {
            Some(tls) => Server::builder().tls_config(server_tls(tls, settings.handshake_timeout)),
            None => Ok(Server::builder()),
        })
        .map(|builder| {
            builder.map(|builder| {
                // Bounds in number and time: streams per connection, and a unary call
                // whose request stalls is cut off (its message, once read, is still
                // forwarded to an outcome and counted).
                builder
                    .max_concurrent_streams(settings.max_streams_per_connection)
                    .timeout(settings.request_timeout)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel(arbiters.len());
    for ((arbiter, listener), mut builder) in arbiters.iter().zip(listeners).zip(builders) {
        let ingress = Arc::new(Ingress::new(
            forwarder.clone(),
            Arc::clone(&live),
            RequestLimits {
                max_message_bytes: settings.max_message_bytes,
                max_brokers_per_target: settings.max_brokers_per_target,
            },
            refused.clone(),
            abort_rx.clone(),
        ));
        let max_request_bytes = settings.max_message_bytes + REQUEST_OVERHEAD_BYTES;
        let service = Framed::new(
            InterceptedService::new(
                MessageBrokerServer::from_arc(ingress.clone())
                    .max_decoding_message_size(max_request_bytes),
                token_check.clone(),
            ),
            Checks::OneMessage,
        );
        let send = Framed::new(
            InterceptedService::new(
                SendServer::new(SendService::new(ingress.clone()))
                    .max_decoding_message_size(max_request_bytes),
                token_check.clone(),
            ),
            Checks::OneMessage,
        );
        let ingest = Framed::new(
            InterceptedService::new(
                IngestServer::new(IngestService::new(
                    ingress,
                    settings.max_in_flight_per_stream,
                ))
                .max_decoding_message_size(max_request_bytes),
                token_check.clone(),
            ),
            Checks::MessageDeadline(settings.stream_message_timeout),
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // v1 for current tools, v1alpha for older grpcurl releases.
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let health_service = health_service.clone();
        let mut shutdown = shutdown_rx.clone();
        let done_tx = done_tx.clone();
        let addr = settings.listen;
        let connections = connections.clone();
        arbiter.spawn(async move {
            let served = async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|source| ServeError::Bind { addr, source })?;
                let incoming =
                    connections.apply(TcpIncoming::from(listener).with_nodelay(Some(true)));
                let shutdown = async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                };
                builder
                    .add_service(service)
                    .add_service(send)
                    .add_service(ingest)
                    .add_service(health_service)
                    .add_service(reflection_v1)
                    .add_service(reflection_v1alpha)
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .map_err(ServeError::from)
            };
            let _ = done_tx.send(served.await).await;
        });
    }
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let (http_done_tx, http_done_rx) = oneshot::channel();
    let router = crate::daemon::http::router(source, health.serving.clone());
    let ops_addr = settings.ops_listen;
    arbiters[0].spawn(async move {
        let served = async move {
            let listener = tokio::net::TcpListener::from_std(ops_listener).map_err(|source| {
                ServeError::Bind {
                    addr: ops_addr,
                    source,
                }
            })?;
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = http_stop_rx.await;
                })
                .await
                .map_err(ServeError::Http)
        };
        let _ = http_done_tx.send(served.await);
    });

    log::info!(
        "Serving gRPC{} on {} ({} workers), stats on http://{}/stats; limits: max_connections={} max_in_flight={} max_in_flight_bytes={} \
         max_streams_per_connection={} handshake_timeout_ms={} idle_connection_timeout_ms={} request_timeout_ms={} \
         max_in_flight_per_target={} max_in_flight_per_stream={} max_targets={} max_message_bytes={} policy={}x{}ms \
         shutdown_grace_ms={}; access: {}; bearer token {}",
        if settings.tls.is_some() {
            " with TLS"
        } else {
            ""
        },
        settings.listen,
        arbiters.len(),
        settings.ops_listen,
        settings.max_connections,
        settings.max_in_flight,
        settings.max_in_flight_bytes,
        settings.max_streams_per_connection,
        settings.handshake_timeout.as_millis(),
        settings.idle_connection_timeout.as_millis(),
        settings.request_timeout.as_millis(),
        settings.producer.max_in_flight_per_target,
        settings.max_in_flight_per_stream,
        settings.registry.max_targets,
        settings.max_message_bytes,
        settings.policy.max_attempts(),
        settings.policy.attempt_timeout(1).as_millis(),
        settings.shutdown_grace.as_millis(),
        settings.access,
        if settings.token.is_some() {
            "required"
        } else {
            "not required"
        },
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

    // 1. Say so, refuse new messages, stop accepting connections.
    log::info!("Shutting down in_flight={}", forwarder.in_flight());
    health.set(ServingStatus::NotServing).await;
    forwarder.begin_shutdown();
    shutdown_tx.send_replace(true);
    // 2. Let what is in flight finish within the grace period (the servers end when their
    //    last request is answered); then answer the rest "shutting down".
    let mut wait_servers = async |limit| {
        tokio::time::timeout(limit, async {
            while running > 0 && done_rx.recv().await.is_some() {
                running -= 1;
            }
        })
        .await
        .is_ok()
    };
    let drained = tokio::select! {
        drained = wait_servers(settings.shutdown_grace) => drained,
        Ok(()) = &mut hurry => {
            log::warn!("Told to stop now: ending the grace period early");
            false
        }
    };
    if !drained {
        log::warn!(
            "Grace period over, answering the rest as shutting down shutdown_grace_ms={} in_flight={}",
            settings.shutdown_grace.as_millis(),
            forwarder.in_flight()
        );
        abort_tx.send_replace(true);
        if !wait_servers(ABORT_GRACE).await {
            log::warn!("Servers still running after the grace period; stopping them");
        }
    }
    // 3. Close the producers (each closes its connection), then the operations endpoint.
    let producers = forwarder.registry().stop_all();
    let _ = http_stop_tx.send(());
    let http = http_done_rx.await.unwrap_or(Ok(()));
    log::info!("Stopped producers={producers}");
    failure.unwrap_or(http)
}
