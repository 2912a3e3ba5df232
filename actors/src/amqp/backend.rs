//! The RabbitMQ backend: one producer actor per server and exchange, publishing on a
//! confirm-mode channel it borrows from its server's connection actor
//! ([`super::server`]); the exchange is declared once per channel.

use std::future::Future;
use std::sync::Arc;

use actix::Addr;
use bytes::Bytes;
use futures_util::future::{FutureExt, LocalBoxFuture};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::oneshot;

use super::explain::classify;
use super::server::{AmqpServer, ChannelSlot, OpenChannel, bounded_uri, connect};
use crate::error::ProduceError;
use crate::metadata::{AmqpMetadata, HeaderValue, Metadata};
use crate::producer::{Backend, Delivery, LostSignal, Outgoing, ProducerActor};
use crate::settings::AmqpSettings;
use crate::stats::TargetStats;
use crate::target::AmqpTarget;

/// The producer actor of one RabbitMQ server and exchange.
pub type AmqpProducer = ProducerActor<AmqpBackend>;

/// AMQP `delivery_mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// Publishes to one exchange of one RabbitMQ server, on a channel of the server's shared
/// connection; the routing key is chosen per message.
pub struct AmqpBackend {
    /// Server URL and exchange.
    target: AmqpTarget,
    /// The server's connection actor, which lends the channel.
    server: Addr<AmqpServer>,
    /// Whether to publish mandatory, and what the channel's connection needs.
    settings: Arc<AmqpSettings>,
    /// The target's counters (returned messages are counted here).
    stats: Arc<TargetStats>,
}

impl AmqpBackend {
    /// A backend for `target`, borrowing its channel from `server`.
    pub fn new(
        target: AmqpTarget,
        server: Addr<AmqpServer>,
        settings: Arc<AmqpSettings>,
        stats: Arc<TargetStats>,
    ) -> Self {
        Self {
            target,
            server,
            settings,
            stats,
        }
    }
}

/// Who keeps the channel's connection open.
enum Owner {
    /// The link opened the connection itself and closes it (the client's direct mode).
    Connection(Connection),
    /// The channel is lent by the server's connection actor.
    Lent {
        /// Frees the channel's place on its connection when dropped.
        _slot: ChannelSlot,
        /// Dropped with the link: stops the task that watches the connection.
        _watching: oneshot::Sender<()>,
    },
}

/// A confirm-mode channel with its declared exchange.
///
/// The producer actor caches one on its server's shared connection; the client's direct
/// mode (`ferry ecflow-client` without a daemon) opens a connection for a single message.
pub struct AmqpLink {
    /// The confirm-mode channel messages are published on.
    channel: Channel,
    /// The exchange name as sent on the wire.
    exchange: ShortString,
    /// Publish mandatory (a message no queue receives is returned and refused).
    mandatory: bool,
    /// What keeps the connection open.
    owner: Owner,
}

impl AmqpLink {
    /// Connects to `target`'s server, puts a channel in confirm mode and declares the
    /// exchange (durable, type topic, as the predecessor did).
    pub async fn open(target: &AmqpTarget, settings: &AmqpSettings) -> Result<Self, ProduceError> {
        let uri = bounded_uri(target, settings);
        let connection =
            connect(uri, target.server().to_owned(), Arc::new(settings.clone())).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| classify(&e))?;
        Self::on_channel(channel, target, settings, Owner::Connection(connection)).await
    }

    /// Puts `channel` in confirm mode and declares `target`'s exchange on it.
    async fn on_channel(
        channel: Channel,
        target: &AmqpTarget,
        settings: &AmqpSettings,
        owner: Owner,
    ) -> Result<Self, ProduceError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| classify(&e))?;
        let exchange = ShortString::from(target.exchange());
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                exchange.clone(),
                lapin::ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(&e))?;
        Ok(Self {
            channel,
            exchange,
            mandatory: settings.mandatory,
            owner,
        })
    }

    /// Publishes `payload` persistent with routing key `route`, the properties of
    /// `metadata` (`text/plain` unless it says otherwise) and ferry's `id` as `message_id`
    /// (or as header `ferry-id` when `metadata` sets a `message_id`). The future resolves
    /// once the broker confirmed it, and borrows nothing from `self`. A message the broker
    /// returned (published mandatory, no queue bound) is [`Unconfirmed::Returned`].
    pub fn publish(
        &self,
        route: &str,
        payload: Bytes,
        id: Option<&str>,
        metadata: Option<&AmqpMetadata>,
    ) -> impl Future<Output = Result<(), Unconfirmed>> + Send + 'static {
        publish_on(
            &self.channel,
            &self.exchange,
            self.mandatory,
            route,
            payload,
            id,
            metadata,
        )
    }

    /// Closes the channel (and the connection, if the link opened it) cleanly.
    pub async fn close(self, reason: &str) {
        match self.owner {
            Owner::Connection(connection) => {
                if connection.status().connected() {
                    let _ = connection.close(200, reason.into()).await;
                }
            }
            Owner::Lent { .. } => {
                if self.channel.status().connected() {
                    let _ = self.channel.close(200, reason.into()).await;
                }
            }
        }
    }
}

/// Publishes `payload` on `channel` to `exchange` (see [`AmqpLink::publish`]); the future
/// owns what it needs and resolves at the broker's confirmation.
fn publish_on(
    channel: &Channel,
    exchange: &ShortString,
    mandatory: bool,
    route: &str,
    payload: Bytes,
    id: Option<&str>,
    metadata: Option<&AmqpMetadata>,
) -> impl Future<Output = Result<(), Unconfirmed>> + Send + 'static {
    let channel = channel.clone();
    let exchange = exchange.clone();
    let route = ShortString::from(route);
    let properties = properties(id, metadata);
    let options = BasicPublishOptions {
        mandatory,
        ..BasicPublishOptions::default()
    };
    async move {
        let confirmation = channel
            .basic_publish(
                exchange.clone(),
                route.clone(),
                options,
                &payload,
                properties,
            )
            .await
            .map_err(|e| Unconfirmed::Failed(classify(&e)))?
            .await
            .map_err(|e| Unconfirmed::Failed(classify(&e)))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(Unconfirmed::Returned(ProduceError::Rejected(format!(
                    "unroutable: no queue bound for routing key {route} on exchange {exchange}"
                ))))
            }
            Confirmation::Nack(None) => Err(Unconfirmed::Failed(ProduceError::Rejected(
                "the broker nacked the message".into(),
            ))),
            Confirmation::NotRequested => Err(Unconfirmed::Failed(ProduceError::Unavailable(
                "the channel is not in confirm mode".into(),
            ))),
        }
    }
}

/// Why a published message was not confirmed.
#[derive(Debug)]
pub enum Unconfirmed {
    /// The broker returned it: published mandatory, and no queue is bound for its key.
    Returned(ProduceError),
    /// It failed otherwise (nacked, or the channel or connection failed).
    Failed(ProduceError),
}

impl From<Unconfirmed> for ProduceError {
    fn from(unconfirmed: Unconfirmed) -> Self {
        match unconfirmed {
            Unconfirmed::Returned(error) | Unconfirmed::Failed(error) => error,
        }
    }
}

/// Publishes to one exchange on the channel of a ready [`AmqpLink`] (a handle: the link
/// keeps the channel open).
pub struct AmqpPublisher {
    /// The link's channel (a handle: publishing on it needs no lock).
    channel: Channel,
    /// The exchange name as sent on the wire.
    exchange: ShortString,
    /// Publish mandatory (an unroutable message comes back, refused).
    mandatory: bool,
    /// The target's counters (returned messages are counted here).
    stats: Arc<TargetStats>,
    /// Where a closed channel is reported.
    lost: LostSignal<AmqpBackend>,
}

impl Backend for AmqpBackend {
    type Connection = AmqpLink;
    type Publisher = AmqpPublisher;

    fn connect(
        &self,
        lost: LostSignal<Self>,
    ) -> LocalBoxFuture<'static, Result<AmqpLink, ProduceError>> {
        let target = self.target.clone();
        let settings = Arc::clone(&self.settings);
        let lease = self.server.send(OpenChannel);
        async move {
            let lease = lease.await.map_err(|_| {
                ProduceError::Unavailable("the AMQP connection actor stopped".into())
            })??;
            let (watching, stopped) = oneshot::channel();
            let mut connection_lost = lease.lost;
            let owner = Owner::Lent {
                _slot: lease.slot,
                _watching: watching,
            };
            let link = AmqpLink::on_channel(lease.channel, &target, &settings, owner).await?;
            tokio::spawn(async move {
                tokio::select! {
                    changed = connection_lost.wait_for(Option::is_some) => {
                        let error = changed.ok().and_then(|e| e.clone()).unwrap_or_else(|| {
                            ProduceError::Unavailable("the AMQP connection closed".into())
                        });
                        lost.signal(error);
                    }
                    _ = stopped => {}
                }
            });
            Ok(link)
        }
        .boxed_local()
    }

    fn publisher(&self, link: &AmqpLink, lost: LostSignal<Self>) -> AmqpPublisher {
        AmqpPublisher {
            channel: link.channel.clone(),
            exchange: link.exchange.clone(),
            mandatory: link.mandatory,
            stats: Arc::clone(&self.stats),
            lost,
        }
    }

    fn publish(publisher: &AmqpPublisher, message: &Outgoing<'_>) -> crate::producer::Confirmation {
        let metadata = match message.metadata.map(|m| &**m) {
            Some(Metadata::Amqp(amqp)) => Some(amqp),
            _ => None,
        };
        let published = publish_on(
            &publisher.channel,
            &publisher.exchange,
            publisher.mandatory,
            message.route,
            message.payload.clone(),
            Some(message.id),
            metadata,
        );
        let channel = publisher.channel.clone();
        let lost = publisher.lost.clone();
        let stats = Arc::clone(&publisher.stats);
        async move {
            match published.await {
                Ok(()) => Ok(Delivery::default()),
                Err(Unconfirmed::Returned(error)) => {
                    stats.record_returned();
                    Err(error)
                }
                Err(Unconfirmed::Failed(error)) => {
                    if !channel.status().connected() {
                        // A failed publish on a closed channel (connection gone, or a
                        // channel error such as a deleted exchange): open it again.
                        lost.signal(error.clone());
                    }
                    Err(error)
                }
            }
        }
        .boxed()
    }

    fn close(link: AmqpLink) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(link.close("ferry: producer closed"));
    }
}

/// The basic properties of a message: persistent, `text/plain` unless `metadata` names
/// another content type, and the rest of `metadata`.
fn properties(id: Option<&str>, metadata: Option<&AmqpMetadata>) -> BasicProperties {
    let default = AmqpMetadata::default();
    let m = metadata.unwrap_or(&default);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(m.content_type.as_deref().unwrap_or("text/plain").into());
    let mut headers = FieldTable::default();
    for (name, value) in &m.headers {
        let value = match value {
            HeaderValue::Text(text) => AMQPValue::LongString(text.as_str().into()),
            HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
            HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        };
        headers.insert(name.as_str().into(), value);
    }
    match (&m.message_id, id) {
        (Some(theirs), Some(ours)) => {
            properties = properties.with_message_id(theirs.as_str().into());
            headers.insert(ID_HEADER.into(), AMQPValue::LongString(ours.into()));
        }
        (Some(theirs), None) => properties = properties.with_message_id(theirs.as_str().into()),
        (None, Some(ours)) => properties = properties.with_message_id(ours.into()),
        (None, None) => {}
    }
    if !headers.inner().is_empty() {
        properties = properties.with_headers(headers);
    }
    if let Some(ttl) = m.expiration_ms {
        properties = properties.with_expiration(ttl.to_string().into());
    }
    if let Some(encoding) = &m.content_encoding {
        properties = properties.with_content_encoding(encoding.as_str().into());
    }
    if let Some(correlation) = &m.correlation_id {
        properties = properties.with_correlation_id(correlation.as_str().into());
    }
    if let Some(kind) = &m.kind {
        properties = properties.with_type(kind.as_str().into());
    }
    if let Some(app) = &m.app_id {
        properties = properties.with_app_id(app.as_str().into());
    }
    if let Some(priority) = m.priority {
        properties = properties.with_priority(priority);
    }
    properties
}

/// The header that carries ferry's id when the sender set its own `message_id`.
pub const ID_HEADER: &str = "ferry-id";
