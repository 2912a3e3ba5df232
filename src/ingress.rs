//! The gRPC ingress: the `messagebroker.MessageBroker` service, which validates each
//! request, forwards it, and answers with the outcome.

use std::sync::Arc;
use std::time::Instant;

use ferry_actors::Forwarder;
use tonic::{Request, Response, Status};

use crate::proto::message_broker_server::MessageBroker;
use crate::proto::{self, KafkaMessage, RabbitMqMessage};
use crate::wire::{self, Failure, SendRequest};

/// The `MessageBroker` service over a [`Forwarder`].
pub struct Ingress {
    /// Where messages go.
    forwarder: Arc<Forwarder>,
    /// Largest payload accepted.
    max_message_bytes: usize,
}

impl Ingress {
    /// A service forwarding through `forwarder`.
    pub fn new(forwarder: Arc<Forwarder>, max_message_bytes: usize) -> Self {
        Self {
            forwarder,
            max_message_bytes,
        }
    }

    /// Forwards a validated request (or reports why it is invalid) and logs a failure once.
    async fn send(
        &self,
        request: Result<SendRequest, ferry_actors::InvalidRequest>,
    ) -> proto::Response {
        let started = Instant::now();
        let outcome = match request {
            Ok(request) => {
                let result = self
                    .forwarder
                    .forward(&request.target, request.route, request.payload)
                    .await
                    .map_err(Failure::from);
                if let Err(failure) = &result {
                    log::warn!(
                        "Message not delivered target={} error_no={} error={failure} ms={}",
                        request.target,
                        failure.error_no() as i32,
                        started.elapsed().as_millis()
                    );
                }
                result
            }
            Err(invalid) => {
                log::info!("Request refused error={invalid}");
                Err(Failure::Invalid(invalid))
            }
        };
        wire::response(&outcome)
    }
}

#[tonic::async_trait]
impl MessageBroker for Ingress {
    async fn send_rabbit_mq_message(
        &self,
        request: Request<RabbitMqMessage>,
    ) -> Result<Response<proto::Response>, Status> {
        let request = wire::rabbitmq_request(request.into_inner(), self.max_message_bytes);
        Ok(Response::new(self.send(request).await))
    }

    async fn send_kafka_message(
        &self,
        request: Request<KafkaMessage>,
    ) -> Result<Response<proto::Response>, Status> {
        let request = wire::kafka_request(request.into_inner(), self.max_message_bytes);
        Ok(Response::new(self.send(request).await))
    }
}
