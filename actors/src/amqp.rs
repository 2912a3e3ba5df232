//! The RabbitMQ backend: one AMQP connection and one confirm-mode channel per server URL
//! and exchange; the exchange is declared once per connection.

use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::{FutureExt, LocalBoxFuture};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use tokio_stream::StreamExt;

use crate::error::ProduceError;
use crate::producer::{Backend, LostSignal, ProducerActor, Publish};
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
    /// The exchange name as sent on the wire (built once).
    exchange: ShortString,
}

impl AmqpBackend {
    /// A backend for `target`.
    pub fn new(target: AmqpTarget, settings: Arc<AmqpSettings>) -> Self {
        let exchange = ShortString::from(target.exchange());
        Self {
            target,
            settings,
            exchange,
        }
    }
}

/// An open connection with its publishing channel.
pub struct AmqpLink {
    /// The connection; kept so it can be closed cleanly.
    connection: Connection,
    /// The confirm-mode channel messages are published on.
    channel: Channel,
}

impl Backend for AmqpBackend {
    type Connection = AmqpLink;

    fn connect(
        &self,
        lost: LostSignal<Self>,
    ) -> LocalBoxFuture<'static, Result<AmqpLink, ProduceError>> {
        let uri = AMQPUri::from_str(self.target.url());
        let properties = ConnectionProperties::default()
            .with_connection_name(self.settings.connection_name.clone().into());
        let exchange = self.exchange.clone();
        async move {
            // The URL was validated when the target was built; this cannot fail.
            let uri = uri.map_err(|e| ProduceError::Rejected(format!("invalid AMQP URL: {e}")))?;
            let connection = Connection::connect_uri(uri, properties)
                .await
                .map_err(|e| classify(&e))?;
            watch(&connection, lost);
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| classify(&e))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| classify(&e))?;
            // As the predecessor did: a durable topic exchange, declared once per connection.
            let options = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    exchange,
                    lapin::ExchangeKind::Topic,
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| classify(&e))?;
            Ok(AmqpLink {
                connection,
                channel,
            })
        }
        .boxed_local()
    }

    fn publish(
        &self,
        link: &AmqpLink,
        lost: &LostSignal<Self>,
        message: Publish,
    ) -> LocalBoxFuture<'static, Result<(), ProduceError>> {
        let channel = link.channel.clone();
        let exchange = self.exchange.clone();
        let lost = lost.clone();
        async move {
            let properties = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_content_type("text/plain".into());
            let outcome = async {
                channel
                    .basic_publish(
                        exchange,
                        message.route.into(),
                        BasicPublishOptions::default(),
                        &message.payload,
                        properties,
                    )
                    .await?
                    .await
            }
            .await;
            match outcome {
                Ok(Confirmation::Ack(_)) => Ok(()),
                Ok(Confirmation::Nack(_)) => Err(ProduceError::Rejected(
                    "the broker nacked the message".into(),
                )),
                Ok(Confirmation::NotRequested) => Err(ProduceError::Unavailable(
                    "the channel is not in confirm mode".into(),
                )),
                Err(error) => {
                    let error = classify(&error);
                    // A failed publish means the channel or connection is gone.
                    lost.signal(error.clone());
                    Err(error)
                }
            }
        }
        .boxed_local()
    }

    fn close(link: AmqpLink) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if link.connection.status().connected() {
                let _ = link
                    .connection
                    .close(200, "ferry: producer closed".into())
                    .await;
            }
        });
    }
}

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
