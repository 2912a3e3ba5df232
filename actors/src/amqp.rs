//! The RabbitMQ backend: one AMQP connection and one confirm-mode channel per server URL
//! and exchange; the exchange is declared once per connection.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{FutureExt, LocalBoxFuture};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use tokio_stream::StreamExt;

use crate::error::ProduceError;
use crate::metadata::{AmqpMetadata, HeaderValue, Metadata};
use crate::producer::{Backend, Delivery, LostSignal, ProducerActor, Publish};
use crate::settings::AmqpSettings;
use crate::target::AmqpTarget;

/// The producer actor of one RabbitMQ server and exchange.
pub type AmqpProducer = ProducerActor<AmqpBackend>;

/// AMQP `delivery_mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// Connects to one RabbitMQ server and publishes to one exchange; the routing key is
/// chosen per message.
pub struct AmqpBackend {
    /// Server URL and exchange.
    target: AmqpTarget,
    /// Connection settings.
    settings: Arc<AmqpSettings>,
}

impl AmqpBackend {
    /// A backend for `target`.
    pub fn new(target: AmqpTarget, settings: Arc<AmqpSettings>) -> Self {
        Self { target, settings }
    }
}

/// An open connection with its confirm-mode publishing channel and declared exchange.
///
/// The producer actor caches one; the client's direct mode (`ferry ecflow-client` without
/// a daemon) opens one for a single message.
pub struct AmqpLink {
    /// The connection; kept so it can be closed cleanly.
    connection: Connection,
    /// The confirm-mode channel messages are published on.
    channel: Channel,
    /// The exchange name as sent on the wire.
    exchange: ShortString,
}

impl AmqpLink {
    /// Connects to `target`'s server, puts a channel in confirm mode and declares the
    /// exchange (durable, type topic, as the predecessor did).
    pub async fn open(target: &AmqpTarget, settings: &AmqpSettings) -> Result<Self, ProduceError> {
        // Parsed and checked when the target was built. A URL's frame_max may only lower
        // the configured one: the client reserves buffers in proportion to it.
        let mut uri = target.uri().clone();
        uri.query.frame_max = Some(uri.query.frame_max.map_or(settings.frame_max_bytes, |f| {
            f.min(settings.frame_max_bytes)
        }));
        let properties = ConnectionProperties::default()
            .with_connection_name(settings.connection_name.clone().into());
        // lapin 4.12 leaks two tasks (about 10 KiB) whenever its own TCP connect fails: its
        // I/O thread returns before stopping its internal RPC task. Reaching the server
        // first means lapin is only asked to connect where a listener answered, so a
        // broker that is down costs nothing however often it is retried.
        let server = (uri.authority.host.as_str(), uri.authority.port);
        drop(tokio::net::TcpStream::connect(server).await.map_err(|e| {
            ProduceError::Unavailable(format!("cannot connect to {}: {e}", target.server()))
        })?);
        let connection = Connection::connect_uri(uri, properties)
            .await
            .map_err(|e| classify(&e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| classify(&e))?;
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
            connection,
            channel,
            exchange,
        })
    }

    /// Publishes `payload` persistent with routing key `route`, the properties of
    /// `metadata` (`text/plain` unless it says otherwise) and ferry's `id` as `message_id`
    /// (or as header `ferry-id` when `metadata` sets a `message_id`). The future resolves
    /// once the broker confirmed it, and borrows nothing from `self`.
    pub fn publish(
        &self,
        route: String,
        payload: Bytes,
        id: Option<&str>,
        metadata: Option<&AmqpMetadata>,
    ) -> impl Future<Output = Result<(), ProduceError>> + 'static {
        let channel = self.channel.clone();
        let exchange = self.exchange.clone();
        let properties = properties(id, metadata);
        async move {
            let confirmation = channel
                .basic_publish(
                    exchange,
                    route.into(),
                    BasicPublishOptions::default(),
                    &payload,
                    properties,
                )
                .await
                .map_err(|e| classify(&e))?
                .await
                .map_err(|e| classify(&e))?;
            match confirmation {
                Confirmation::Ack(_) => Ok(()),
                Confirmation::Nack(_) => Err(ProduceError::Rejected(
                    "the broker nacked the message".into(),
                )),
                Confirmation::NotRequested => Err(ProduceError::Unavailable(
                    "the channel is not in confirm mode".into(),
                )),
            }
        }
    }

    /// Closes the connection cleanly (reply code 200), if it is still open.
    pub async fn close(self, reason: &str) {
        if self.connection.status().connected() {
            let _ = self.connection.close(200, reason.into()).await;
        }
    }
}

impl Backend for AmqpBackend {
    type Connection = AmqpLink;

    fn connect(
        &self,
        lost: LostSignal<Self>,
    ) -> LocalBoxFuture<'static, Result<AmqpLink, ProduceError>> {
        let target = self.target.clone();
        let settings = Arc::clone(&self.settings);
        async move {
            let link = AmqpLink::open(&target, &settings).await?;
            watch(&link.connection, lost);
            Ok(link)
        }
        .boxed_local()
    }

    fn publish(
        &self,
        link: &AmqpLink,
        lost: &LostSignal<Self>,
        message: Publish,
    ) -> LocalBoxFuture<'static, Result<Delivery, ProduceError>> {
        let metadata = match message.metadata.as_deref() {
            Some(Metadata::Amqp(amqp)) => Some(amqp),
            _ => None,
        };
        let published = link.publish(message.route, message.payload, Some(&message.id), metadata);
        let channel = link.channel.clone();
        let lost = lost.clone();
        async move {
            let outcome = published.await;
            if let Err(error) = &outcome
                && !channel.status().connected()
            {
                // A failed publish on a closed channel (connection gone, or a channel
                // error such as a deleted exchange): open everything again.
                lost.signal(error.clone());
            }
            outcome.map(|()| Delivery::default())
        }
        .boxed_local()
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

/// Reports the connection lost on its first error event.
fn watch(connection: &Connection, lost: LostSignal<AmqpBackend>) {
    let mut events = connection.events_listener();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::Error(error) = event {
                lost.signal(classify(&error));
                break;
            }
        }
    });
}

/// Maps a lapin failure to a [`ProduceError`].
fn classify(error: &lapin::Error) -> ProduceError {
    // Soft protocol errors are the broker's answer about what we asked (access refused,
    // exchange of another type, …); everything else is about reaching the broker.
    if error.is_amqp_soft_error() {
        ProduceError::Rejected(error.to_string())
    } else {
        ProduceError::Unavailable(error.to_string())
    }
}
