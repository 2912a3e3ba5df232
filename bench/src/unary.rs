//! The `unary` path: one `messagebroker.MessageBroker` call per message, spread round robin
//! over several HTTP/2 connections to the daemon.

use ferry::proto::message_broker_client::MessageBrokerClient;
use ferry::proto::{KafkaMessage, KafkaTarget, Message, RabbitMqMessage, RabbitMqTarget};
use tonic::transport::{Channel, Endpoint};

use crate::BenchError;
use crate::plan::{Destination, Plan};
use crate::sink::Sink;

/// A request built once and cloned per call (its payload is shared, not copied).
#[derive(Debug, Clone)]
pub enum Request {
    /// A `SendKafkaMessage` request.
    Kafka(KafkaMessage),
    /// A `SendRabbitMQMessage` request.
    RabbitMq(RabbitMqMessage),
}

impl Request {
    /// The requests `plan`'s messages are sent with: message `seq` with
    /// `requests[seq % len]` (one per exchange the load is spread over).
    pub fn all(plan: &Plan) -> Vec<Self> {
        let message = Some(Message {
            data: plan.payload.clone(),
        });
        match &plan.destination {
            Destination::Kafka { brokers, topic } => vec![Self::Kafka(KafkaMessage {
                target: Some(KafkaTarget {
                    brokers: brokers.clone(),
                    topic: topic.clone(),
                }),
                message,
            })],
            Destination::RabbitMq {
                server,
                exchanges,
                routing_key,
            } => exchanges
                .iter()
                .map(|exchange| {
                    Self::RabbitMq(RabbitMqMessage {
                        target: Some(RabbitMqTarget {
                            server: server.clone(),
                            exchange: exchange.clone(),
                            route_key: routing_key.clone(),
                        }),
                        message: message.clone(),
                    })
                })
                .collect(),
        }
    }
}

/// Opens `count` separate HTTP/2 connections to the daemon at `address`.
pub async fn connect(address: &str, count: usize) -> Result<Vec<Channel>, BenchError> {
    let failed = |source| BenchError::Connect {
        address: address.to_owned(),
        source,
    };
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(failed)?
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        // Each `connect` opens its own connection.
        channels.push(endpoint.connect().await.map_err(failed)?);
    }
    Ok(channels)
}

/// Sends through the daemon with unary calls.
pub struct UnarySink {
    /// One client per connection.
    clients: Vec<MessageBrokerClient<Channel>>,
    /// The requests, message `seq` with `requests[seq % len]`.
    requests: Vec<Request>,
}

impl UnarySink {
    /// A sink over `channels` sending `plan`'s message.
    pub fn new(channels: &[Channel], plan: &Plan) -> Self {
        Self {
            clients: channels
                .iter()
                .cloned()
                .map(MessageBrokerClient::new)
                .collect(),
            requests: Request::all(plan),
        }
    }
}

impl Sink for UnarySink {
    async fn send(&self, seq: u64) -> Result<(), String> {
        let index = usize::try_from(seq).unwrap_or(0) % self.clients.len();
        let mut client = self.clients[index].clone();
        let request = &self.requests[usize::try_from(seq).unwrap_or(0) % self.requests.len()];
        let answer = match request.clone() {
            Request::Kafka(request) => client.send_kafka_message(request).await,
            Request::RabbitMq(request) => client.send_rabbit_mq_message(request).await,
        };
        match answer {
            Ok(response) => match response.into_inner().error_no {
                0 => Ok(()),
                error_no => Err(format!("error_no {error_no}")),
            },
            Err(status) => Err(format!("grpc {:?}", status.code())),
        }
    }
}
