//! The gRPC side of the daemon: per worker, one tonic server on its own listener serving
//! `messagebroker.MessageBroker`, `ferry.v1.Send`, `ferry.v1.Ingest` (each behind the
//! token check and the framing checks), grpc.health.v1 and reflection; and the health
//! status they and `/healthz` report.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_rt::Arbiter;
use ferry_actors::Forwarder;
use tokio::sync::{mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::{ServerSettings, TlsIdentity};
use crate::daemon::access::TokenCheck;
use crate::daemon::connections::ConnectionLimit;
use crate::daemon::error::ServeError;
use crate::daemon::framing::{Checks, Framed};
use crate::daemon::ingress::{Ingress, Refused};
use crate::daemon::live::Live;
use crate::daemon::oversize::Oversize;
use crate::daemon::oversize_stream::OversizeStream;
use crate::daemon::send::SendService;
use crate::daemon::stream::IngestService;
use crate::proto::ferry::v1::ingest_server::IngestServer;
use crate::proto::ferry::v1::send_server::SendServer;
use crate::proto::message_broker_server::MessageBrokerServer;
use crate::wire::RequestLimits;

pub use crate::contract::{HEALTH_SERVICE, INGEST_HEALTH_SERVICE};
/// Room for the gRPC request's own fields around the payload.
const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;

/// The ingress's TLS: its identity, and with a client CA, client certificates verified
/// against it (optional: a caller without one identifies by bearer token).
fn server_tls(tls: &TlsIdentity, handshake: Duration) -> ServerTlsConfig {
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

/// The daemon's "serving" flag as seen by `/healthz` and grpc.health.v1.
pub struct Health {
    /// Read by `/healthz`.
    pub serving: Arc<AtomicBool>,
    /// Updates grpc.health.v1.
    reporter: HealthReporter,
}

impl Health {
    /// A flag not yet serving, and the grpc.health.v1 service that reports it.
    pub fn new() -> (Self, HealthServer<HealthService>) {
        let reporter = HealthReporter::new();
        let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let health = Self {
            serving: Arc::new(AtomicBool::new(false)),
            reporter,
        };
        (health, service)
    }

    /// Reports `status` for the whole server and for the ingress services.
    pub async fn set(&self, status: ServingStatus) {
        self.serving
            .store(status == ServingStatus::Serving, Ordering::Release);
        self.reporter.set_service_status("", status).await;
        for service in [HEALTH_SERVICE, INGEST_HEALTH_SERVICE] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// What the gRPC servers of every worker share.
pub struct Grpc {
    /// The `[server]` settings: bounds, timeouts, TLS.
    pub server: ServerSettings,
    /// Bounds of one request.
    pub limits: RequestLimits,
    /// Where messages go.
    pub forwarder: Arc<Forwarder>,
    /// The routes, access and clients in force.
    pub live: Arc<Live>,
    /// Requests refused before forwarding, counted for `/stats`.
    pub refused: Arc<Refused>,
    /// Identifies every call before a service sees it.
    pub token_check: TokenCheck,
    /// The grpc.health.v1 service.
    pub health: HealthServer<HealthService>,
    /// Bounds the connections, their handshakes and their idle time.
    pub connections: ConnectionLimit,
    /// Set when the servers must stop accepting and finish.
    pub shutdown: watch::Receiver<bool>,
    /// Set when the grace period is over: calls still waiting are answered at once.
    pub abort: watch::Receiver<bool>,
}

/// The gRPC servers running, as they end.
pub struct Servers {
    /// Each server's result when it ends.
    done: mpsc::Receiver<Result<(), ServeError>>,
    /// How many have not ended.
    running: usize,
}

impl Servers {
    /// The result of the next server to end (`None` once all have).
    pub async fn next_ended(&mut self) -> Option<Result<(), ServeError>> {
        if self.running == 0 {
            return None;
        }
        let ended = self.done.recv().await;
        self.running -= 1;
        ended
    }

    /// Whether every server ended within `limit`.
    pub async fn all_ended_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async { while self.next_ended().await.is_some() {} })
            .await
            .is_ok()
    }
}

impl Grpc {
    /// Starts one server per listener, each on its arbiter. Every server's TLS is set up
    /// before any serves, so a bad key fails the start.
    pub fn spawn(
        &self,
        arbiters: &[Arbiter],
        listeners: Vec<TcpListener>,
    ) -> Result<Servers, ServeError> {
        let builders = arbiters
            .iter()
            .map(|_| self.builder())
            .collect::<Result<Vec<_>, _>>()?;
        let (done, receiver) = mpsc::channel(arbiters.len());
        for ((arbiter, listener), builder) in arbiters.iter().zip(listeners).zip(builders) {
            self.spawn_one(arbiter, listener, builder, done.clone())?;
        }
        Ok(Servers {
            done: receiver,
            running: arbiters.len(),
        })
    }

    /// A server builder with the ingress's TLS and bounds in number and time: streams per
    /// connection, and a unary call whose request stalls is cut off (its message, once
    /// read, is still forwarded to an outcome and counted).
    fn builder(&self) -> Result<Server, ServeError> {
        let builder = match &self.server.tls {
            Some(tls) => {
                Server::builder().tls_config(server_tls(tls, self.server.handshake_timeout))?
            }
            None => Server::builder(),
        };
        // A caller that gives up on many calls at once (each a RST_STREAM, often before the
        // server took the stream) is not an attack: h2's default of 20 such streams pending
        // before a GOAWAY tore down the connection, and every other call on it, of a client
        // whose timeouts fired together. As many as the streams a connection may have open
        // keeps the rapid-reset bound.
        let max_streams = self.server.max_streams_per_connection;
        Ok(builder
            .max_concurrent_streams(max_streams)
            .http2_max_pending_accept_reset_streams(Some(max_streams as usize))
            .timeout(self.server.request_timeout))
    }

    /// The unary service `server` as it is served: one message per call, behind the token
    /// check, a message beyond the decoder's limit answered error 1 (counted in `ingress`).
    fn unary<S>(
        &self,
        server: S,
        ingress: &Arc<Ingress>,
    ) -> Framed<InterceptedService<Oversize<S>, TokenCheck>> {
        let limit = self.server.max_message_bytes + REQUEST_OVERHEAD_BYTES;
        Framed::new(
            InterceptedService::new(
                Oversize::new(server, limit, Arc::clone(ingress)),
                self.token_check.clone(),
            ),
            Checks::OneMessage,
        )
    }

    /// Spawns on `arbiter` a server of every service on `listener`, serving until
    /// shutdown; its result goes to `done`.
    fn spawn_one(
        &self,
        arbiter: &Arbiter,
        listener: TcpListener,
        mut builder: Server,
        done: mpsc::Sender<Result<(), ServeError>>,
    ) -> Result<(), ServeError> {
        let ingress = Arc::new(Ingress::new(
            self.forwarder.clone(),
            Arc::clone(&self.live),
            self.limits,
            self.refused.clone(),
            self.abort.clone(),
        ));
        let max_request_bytes = self.server.max_message_bytes + REQUEST_OVERHEAD_BYTES;
        let unary = self.unary(
            MessageBrokerServer::from_arc(ingress.clone())
                .max_decoding_message_size(max_request_bytes),
            &ingress,
        );
        let send = self.unary(
            SendServer::new(SendService::new(ingress.clone()))
                .max_decoding_message_size(max_request_bytes),
            &ingress,
        );
        let ingest = Framed::new(
            InterceptedService::new(
                OversizeStream::new(
                    IngestServer::new(IngestService::new(
                        ingress,
                        self.server.max_in_flight_per_stream,
                    ))
                    .max_decoding_message_size(max_request_bytes),
                    max_request_bytes,
                ),
                self.token_check.clone(),
            ),
            Checks::MessageDeadline(self.server.stream_message_timeout),
        );
        let (reflection_v1, reflection_v1alpha) = reflection()?;
        let health = self.health.clone();
        let mut shutdown = self.shutdown.clone();
        let addr = self.server.listen;
        let connections = self.connections.clone();
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
                    .add_service(unary)
                    .add_service(send)
                    .add_service(ingest)
                    .add_service(health)
                    .add_service(reflection_v1)
                    .add_service(reflection_v1alpha)
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .map_err(ServeError::from)
            };
            let _ = done.send(served.await).await;
        });
        Ok(())
    }
}

/// The gRPC reflection services (v1 for current tools, v1alpha for older grpcurl
/// releases) over ferry's and grpc.health.v1's descriptors.
#[allow(clippy::type_complexity)]
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
