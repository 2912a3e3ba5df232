//! The gRPC ingress: the `messagebroker.MessageBroker` service, which validates each
//! request, forwards it, and answers with the outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ferry_actors::{ForwardError, Forwarder, ProduceError};
use tokio::sync::watch;
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
    /// Requests refused as invalid.
    invalid: Arc<AtomicU64>,
    /// Becomes true when the shutdown grace period ends: requests still waiting for their
    /// broker are answered "shutting down" instead of being cut off.
    abort: watch::Receiver<bool>,
}

impl Ingress {
    /// A service forwarding through `forwarder`, counting invalid requests in `invalid`
    /// and answering what is still in flight when `abort` becomes true.
    pub fn new(
        forwarder: Arc<Forwarder>,
        max_message_bytes: usize,
        invalid: Arc<AtomicU64>,
        abort: watch::Receiver<bool>,
    ) -> Self {
        Self {
            forwarder,
            max_message_bytes,
            invalid,
            abort,
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
                let forward =
                    self.forwarder
                        .forward(&request.target, request.route, request.payload);
                let result = tokio::select! {
                    result = forward => result.map_err(Failure::from),
                    () = aborted(self.abort.clone()) => Err(Failure::Forward(
                        ForwardError::refused(ProduceError::ShuttingDown),
                    )),
                };
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
                self.invalid.fetch_add(1, Ordering::Relaxed);
                log::info!("Request refused error={invalid}");
                Err(Failure::Invalid(invalid))
            }
        };
        wire::response(&outcome)
    }
}

/// Resolves when `abort` becomes true (never, if its sender is gone without setting it).
async fn aborted(mut abort: watch::Receiver<bool>) {
    if abort.wait_for(|abort| *abort).await.is_err() {
        std::future::pending::<()>().await;
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
