//! Publishing straight to RabbitMQ, without a daemon: what the predecessor's
//! `ecflow-client` and `production` commands did unless given `--with-broker`.

use bytes::Bytes;
use ferry_actors::amqp::AmqpLink;
use ferry_actors::{AmqpSettings, AmqpTarget, ForwardError, RetryPolicy};

/// Publishes `payload` to `target` with `routing_key` (persistent, `text/plain`, with a
/// publisher confirm) under `policy`: each attempt opens a connection, publishes, waits
/// for the confirm and closes. Returns the number of attempts it took.
pub async fn publish(
    target: &AmqpTarget,
    routing_key: &str,
    payload: Bytes,
    policy: RetryPolicy,
) -> Result<u32, ForwardError> {
    let settings = AmqpSettings {
        connection_name: format!("ferry-client {}", env!("CARGO_PKG_VERSION")),
        ..AmqpSettings::default()
    };
    policy
        .run(|n| {
            let settings = &settings;
            let payload = payload.clone();
            async move {
                let link = AmqpLink::open(target, settings).await?;
                let outcome = link
                    .publish(routing_key, payload, None, None)
                    .await
                    .map_err(ferry_actors::ProduceError::from);
                link.close("ferry: message sent").await;
                outcome.map(|()| n)
            }
        })
        .await
}
