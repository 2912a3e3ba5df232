//! The connection actor of one RabbitMQ server: it owns the AMQP connections to that
//! server (URL with credentials and vhost) and lends each exchange's producer actor a
//! channel on one of them.
//!
//! ```text
//! AmqpServer (one per server URL) ── connection 1 ── channel ── ProducerActor (exchange a)
//!                                  │               └─ channel ── ProducerActor (exchange b)
//!                                  └─ connection 2 (only beyond max_channels_per_connection)
//! ```
//!
//! A connection is opened on the first request for a channel and again after it was lost;
//! requests wait in the mailbox while it opens, so 1,000 producers starting together open
//! one connection, not 1,000. When a connection is lost, every channel on it is told (its
//! producer restarts and asks again); a channel the broker closes (an exchange of another
//! type) concerns its own producer only. The actor stops, closing its connections, when
//! no producer holds its address any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::WeakAddr;
use actix::prelude::*;
use actix_rt::ArbiterHandle;
use futures_util::future::{self, LocalBoxFuture};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt;

use super::explain::{self, classify};
use crate::error::ProduceError;
use crate::repeats::Repeats;
use crate::settings::{AmqpSettings, AmqpTls};
use crate::target::AmqpTarget;

/// A channel lent to one producer, with what it needs to know about its connection.
pub struct Lease {
    /// The channel (not yet in confirm mode).
    pub channel: Channel,
    /// Holds the channel's place on its connection until dropped.
    pub slot: ChannelSlot,
    /// Changes to `Some(error)` when the connection is lost.
    pub lost: watch::Receiver<Option<ProduceError>>,
}

/// One lent channel's place among its connection's channels; dropping it frees the place.
pub struct ChannelSlot(Arc<AtomicUsize>);

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ask for a channel on a connection to the server.
#[derive(Debug, Message)]
#[rtype(result = "Result<Lease, ProduceError>")]
pub struct OpenChannel;

/// Connection `id` reported an error: it is lost, unless it is still connected (the
/// error was one channel's).
#[derive(Debug, Message)]
#[rtype(result = "()")]
#[allow(missing_docs)] // The message's doc says what each field is.
struct ConnectionLost {
    id: u64,
    error: ProduceError,
}

/// An open connection and its channels.
struct Pooled {
    /// Identifies it in loss reports.
    id: u64,
    /// The connection (shared with the futures that open channels on it).
    connection: Arc<Connection>,
    /// Channels lent on it and not yet given back.
    channels: Arc<AtomicUsize>,
    /// Most channels lent on it: the configured bound or what the broker allows.
    channel_max: usize,
    /// Tells every lessee that the connection is lost.
    lost: watch::Sender<Option<ProduceError>>,
}

impl Pooled {
    /// Reserves a channel's place and returns the future that opens the channel.
    fn lease(&self) -> LocalBoxFuture<'static, Result<Lease, ProduceError>> {
        self.channels.fetch_add(1, Ordering::Relaxed);
        let slot = ChannelSlot(Arc::clone(&self.channels));
        let lost = self.lost.subscribe();
        let connection = Arc::clone(&self.connection);
        Box::pin(async move {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| classify(&e))?;
            Ok(Lease {
                channel,
                slot,
                lost,
            })
        })
    }

    /// Whether another channel may be lent on it.
    fn has_room(&self) -> bool {
        self.connection.status().connected()
            && self.channels.load(Ordering::Relaxed) < self.channel_max
    }
}

/// The connection actor of one RabbitMQ server.
pub struct AmqpServer {
    /// Where to connect (frame_max already bounded by the settings).
    uri: AMQPUri,
    /// The server for logs (the URL, credentials redacted).
    label: String,
    /// The server's `host:port`, for errors.
    server: String,
    /// Connection name, frame size, channel bound and TLS.
    settings: Arc<AmqpSettings>,
    /// Longest a connection attempt may take.
    connect_timeout: Duration,
    /// For this long after a failed attempt, requests are answered with its error rather
    /// than a new attempt (1,000 producers of a dead server cost one attempt, not 1,000).
    retry_after: Duration,
    /// The open connections, each lending up to its `channel_max` channels.
    connections: Vec<Pooled>,
    /// The id of the next connection.
    next_id: u64,
    /// The last failed attempt, and when.
    failure: Option<(Instant, ProduceError)>,
    /// The failure last warned about: one that repeats on every attempt is logged once a
    /// minute, until a connection is made.
    repeats: Repeats,
}

impl AmqpServer {
    /// The actor for `target`'s server (the exchange is not used).
    pub fn new(
        target: &AmqpTarget,
        settings: Arc<AmqpSettings>,
        connect_timeout: Duration,
        retry_after: Duration,
    ) -> Self {
        Self {
            uri: bounded_uri(target, &settings),
            label: target.redacted_url(),
            server: target.server().to_owned(),
            settings,
            connect_timeout,
            retry_after,
            connections: Vec::new(),
            next_id: 0,
            failure: None,
            repeats: Repeats::default(),
        }
    }

    /// Drops the connections that are no longer connected, telling their lessees.
    fn prune(&mut self) {
        self.connections.retain(|pooled| {
            let alive = pooled.connection.status().connected();
            if !alive {
                pooled.lost.send_replace(Some(ProduceError::Unavailable(
                    "the AMQP connection was closed".into(),
                )));
            }
            alive
        });
    }

    /// Adds a new connection to the pool and watches it for errors.
    fn add(&mut self, connection: Connection, ctx: &mut Context<Self>) -> &Pooled {
        self.next_id += 1;
        let id = self.next_id;
        let negotiated = usize::from(connection.configuration().channel_max());
        let channel_max = match negotiated {
            0 => self.settings.max_channels_per_connection,
            n => n.min(self.settings.max_channels_per_connection),
        };
        let mut events = connection.events_listener();
        let actor = ctx.address().downgrade();
        // lapin reports a channel's error on its connection's events too; the handler
        // tells the two apart by the connection's state. The stream ends with the
        // connection.
        actix::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::Error(error) = event {
                    let Some(actor) = actor.upgrade() else { break };
                    actor.do_send(ConnectionLost {
                        id,
                        error: classify(&error),
                    });
                }
            }
        });
        log::info!(
            server:% = self.label,
            connections = self.connections.len() as u64 + 1,
            channel_max = channel_max as u64;
            "AMQP connection opened"
        );
        self.connections.push(Pooled {
            id,
            connection: Arc::new(connection),
            channels: Arc::new(AtomicUsize::new(0)),
            channel_max,
            lost: watch::Sender::new(None),
        });
        let last = self.connections.len() - 1;
        &self.connections[last]
    }
}

impl Actor for AmqpServer {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for pooled in self.connections.drain(..) {
            let connection = pooled.connection;
            actix::spawn(async move {
                if connection.status().connected() {
                    let _ = connection
                        .close(200, "ferry: no exchange left".into())
                        .await;
                }
            });
        }
        log::info!(server:% = self.label; "AMQP server released");
    }
}

impl Handler<OpenChannel> for AmqpServer {
    type Result = ResponseFuture<Result<Lease, ProduceError>>;

    fn handle(&mut self, _: OpenChannel, ctx: &mut Context<Self>) -> Self::Result {
        self.prune();
        if let Some(pooled) = self.connections.iter().find(|p| p.has_room()) {
            return pooled.lease();
        }
        if let Some((at, error)) = &self.failure
            && at.elapsed() < self.retry_after
        {
            return Box::pin(future::ready(Err(error.clone())));
        }
        // Open a connection, holding the mailbox meanwhile: the requests behind this one
        // find it open.
        let (answer, answered) = oneshot::channel();
        let timeout = self.connect_timeout;
        let attempt = tokio::time::timeout(
            timeout,
            connect(
                self.uri.clone(),
                self.server.clone(),
                Arc::clone(&self.settings),
            ),
        );
        ctx.wait(attempt.into_actor(self).map(move |outcome, act, ctx| {
            let outcome = match outcome {
                Ok(Ok(connection)) => {
                    act.failure = None;
                    act.repeats.clear();
                    Ok(act.add(connection, ctx).lease())
                }
                Ok(Err(error)) => Err(error),
                Err(_) => Err(ProduceError::Unavailable(format!(
                    "no AMQP connection within {} ms to {}: packets dropped on the way, or \
                     a port that does not speak AMQP (is it RabbitMQ's AMQP port? amqps for \
                     a TLS port?)",
                    timeout.as_millis(),
                    act.label
                ))),
            };
            if let Err(error) = &outcome {
                match act.repeats.warn(&error.to_string()) {
                    Some(left_out) => log::warn!(
                        server:% = act.label,
                        error:% = error,
                        suppressed_before = left_out;
                        "AMQP connection failed"
                    ),
                    None => {
                        log::debug!(server:% = act.label, error:% = error; "AMQP connection failed")
                    }
                }
                act.failure = Some((Instant::now(), error.clone()));
            }
            let _ = answer.send(outcome);
        }));
        Box::pin(async move {
            match answered.await {
                Ok(Ok(lease)) => lease.await,
                Ok(Err(error)) => Err(error),
                Err(_) => Err(ProduceError::Unavailable(
                    "the AMQP connection actor stopped".into(),
                )),
            }
        })
    }
}

impl Handler<ConnectionLost> for AmqpServer {
    type Result = ();

    fn handle(&mut self, lost: ConnectionLost, _: &mut Context<Self>) {
        let Some(index) = self.connections.iter().position(|p| p.id == lost.id) else {
            return;
        };
        if self.connections[index].connection.status().connected() {
            // A channel's error (its producer learns of it by its own publish).
            log::debug!(server:% = self.label, error:% = lost.error; "AMQP channel error");
            return;
        }
        let pooled = self.connections.swap_remove(index);
        log::warn!(
            server:% = self.label,
            channels = pooled.channels.load(Ordering::Relaxed) as u64,
            error:% = lost.error;
            "AMQP connection lost"
        );
        pooled.lost.send_replace(Some(lost.error));
    }
}

/// The connection actor of each RabbitMQ server (by URL), weakly held: an actor stops
/// when the last producer on its server stops.
pub(crate) struct Servers {
    /// The actors by server URL.
    actors: Mutex<HashMap<String, WeakAddr<AmqpServer>>>,
    /// The RabbitMQ settings every connection actor shares (they hold the TLS files: one
    /// copy, not one per server).
    settings: Arc<AmqpSettings>,
    /// Longest a connection attempt may take.
    connect_timeout: Duration,
    /// How long a failed attempt's error answers requests before a new attempt.
    retry_after: Duration,
}

impl Servers {
    /// No actor yet; each is started on first use with these settings.
    pub(crate) fn new(
        settings: Arc<AmqpSettings>,
        connect_timeout: Duration,
        retry_after: Duration,
    ) -> Self {
        Self {
            actors: Mutex::new(HashMap::new()),
            settings,
            connect_timeout,
            retry_after,
        }
    }

    /// The connection actor of `target`'s server, started on `arbiter` if it has none.
    pub(crate) fn of(&self, target: &AmqpTarget, arbiter: &ArbiterHandle) -> Addr<AmqpServer> {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = actors.get(target.url()).and_then(WeakAddr::upgrade)
            && addr.connected()
        {
            return addr;
        }
        actors.retain(|_, addr| addr.upgrade().is_some_and(|a| a.connected()));
        let server = AmqpServer::new(
            target,
            Arc::clone(&self.settings),
            self.connect_timeout,
            self.retry_after,
        );
        let addr = AmqpServer::start_in_arbiter(arbiter, move |_| server);
        actors.insert(target.url().to_owned(), addr.downgrade());
        addr
    }
}

/// `target`'s URL with `frame_max` bounded by the settings: a URL's own `frame_max` may
/// only lower the configured one, because the client reserves buffers in proportion to it.
pub(crate) fn bounded_uri(target: &AmqpTarget, settings: &AmqpSettings) -> AMQPUri {
    let mut uri = target.uri().clone();
    uri.query.frame_max = Some(uri.query.frame_max.map_or(settings.frame_max_bytes, |f| {
        f.min(settings.frame_max_bytes)
    }));
    uri
}

/// Opens one connection to `uri`; `server` (`host:port`) names it in errors.
pub(crate) async fn connect(
    uri: AMQPUri,
    server: String,
    settings: Arc<AmqpSettings>,
) -> Result<Connection, ProduceError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(settings.connection_name.clone().into());
    let tls = (uri.scheme == AMQPScheme::AMQPS).then(|| tls_config(settings.tls_for(&server)));
    // lapin 4.12 leaks two tasks (about 10 KiB) whenever its own TCP connect fails: its
    // I/O thread returns before stopping its internal RPC task. Reaching the server first
    // means lapin is only asked to connect where a listener answered, so a broker that is
    // down costs nothing however often it is retried.
    let address = (uri.authority.host.as_str(), uri.authority.port);
    let user = uri.authority.userinfo.username.clone();
    drop(
        tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| ProduceError::Unavailable(unreachable(&server, &e)))?,
    );
    let connected = match tls {
        None => Connection::connect_uri(uri, properties).await,
        Some(tls) => {
            let runtime = lapin::runtime::default_runtime().map_err(|e| classify(&e))?;
            Connection::connect_uri_with_config(uri, properties, tls, runtime).await
        }
    };
    connected.map_err(|e| {
        let text = e.to_string();
        if text.contains("invalid peer certificate") {
            ProduceError::Unavailable(format!(
                "TLS to {server}: the server's certificate was not trusted ({text}); \
                 give the CA that signed it in rabbitmq.tls_ca_file"
            ))
        } else {
            explain::login(&e, &server, &user)
        }
    })
}

/// Why `server` could not be reached over TCP: a name that does not resolve, or the OS
/// error of the connection.
fn unreachable(server: &str, error: &std::io::Error) -> String {
    let text = error.to_string();
    // tokio's resolver: "failed to lookup address information: Name or service not known".
    match text.strip_prefix("failed to lookup address information: ") {
        Some(reason) => format!("cannot resolve {server}: {reason}"),
        None => format!("cannot connect to {server}: {text}"),
    }
}

/// The AMQP client's TLS settings: `tls`'s CA (besides the system's roots) and client
/// certificate.
fn tls_config(tls: &AmqpTls) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity: tls.identity.as_ref().map(|id| OwnedIdentity::PKCS8 {
            pem: id.cert_pem.clone(),
            key: id.key_pem.clone(),
        }),
        cert_chain: tls.ca_pem.clone(),
    }
}
