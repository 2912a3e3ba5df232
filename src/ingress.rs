//! The gRPC ingress: the `messagebroker.MessageBroker` service, which validates each
//! request, forwards it, and answers with the outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ferry_actors::{ForwardError, Forwarder, ProduceError};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::access::Access;
use crate::proto::message_broker_server::MessageBroker;
use crate::proto::{self, KafkaMessage, RabbitMqMessage};
use crate::wire::{self, Failure, SendRequest};

/// Requests refused before forwarding, by reason.
#[derive(Debug, Default)]
pub struct Refused {
    /// Invalid requests (`error_no` 1).
    pub invalid: AtomicU64,
    /// Targets outside the allowlist (`error_no` 7).
    pub not_allowed: AtomicU64,
}

/// The `MessageBroker` service over a [`Forwarder`]. Cloning it is cheap (shared parts).
#[derive(Clone)]
pub struct Ingress {
    /// Where messages go.
    forwarder: Arc<Forwarder>,
    /// Which targets requests may name.
    access: Arc<Access>,
    /// Largest payload accepted.
    max_message_bytes: usize,
    /// Requests refused before forwarding.
    refused: Arc<Refused>,
    /// Becomes true when the shutdown grace period ends: requests still waiting for their
    /// broker are answered "shutting down" instead of being cut off.
    abort: watch::Receiver<bool>,
}

impl Ingress {
    /// A service forwarding through `forwarder` the requests `access` allows, counting
    /// refusals in `refused` and answering what is still in flight when `abort` becomes
    /// true.
    pub fn new(
        forwarder: Arc<Forwarder>,
        access: Arc<Access>,
        max_message_bytes: usize,
        refused: Arc<Refused>,
        abort: watch::Receiver<bool>,
    ) -> Self {
        Self {
            forwarder,
            access,
            max_message_bytes,
            refused,
            abort,
        }
    }

    /// Largest payload accepted.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Resolves once the shutdown grace period is over.
    pub async fn aborted(&self) {
        aborted(self.abort.clone()).await;
    }

    /// Answers one unary call. The message is forwarded in a task of its own, so a caller
    /// that hangs up (its own timeout, a killed job) does not cut a message off half-sent:
    /// it still gets its outcome, counted in the stats, within the policy's budget.
    async fn answer(
        &self,
        request: Result<SendRequest, ferry_actors::InvalidRequest>,
    ) -> Result<Response<proto::Response>, Status> {
        let ingress = self.clone();
        tokio::spawn(async move { ingress.send(request).await })
            .await
            .map(Response::new)
            .map_err(|error| {
                log::error!("Forwarding task failed error={error}");
                Status::internal("ferry failed while forwarding this message")
            })
    }

    /// Forwards a validated request (or reports why it is invalid) and logs a failure once;
    /// shared by the unary service and the streaming one.
    pub async fn send(
        &self,
        request: Result<SendRequest, ferry_actors::InvalidRequest>,
    ) -> proto::Response {
        let started = Instant::now();
        let outcome = match request {
            Ok(request) if let Err(refusal) = self.access.check(&request.target) => {
                self.refused.not_allowed.fetch_add(1, Ordering::Relaxed);
                log::warn!("Request refused error={refusal}");
                Err(Failure::NotAllowed(refusal))
            }
            Ok(request) => {
                let forward =
                    self.forwarder
                        .forward(&request.target, request.route, request.payload);
                let result = tokio::select! {
                    result = forward => result.map_err(Failure::from),
                    () = aborted(self.abort.clone()) => {
                        // The forward was dropped before it counted its outcome.
                        self.forwarder.totals().failed.fetch_add(1, Ordering::Relaxed);
                        Err(Failure::Forward(ForwardError::refused(ProduceError::ShuttingDown)))
                    }
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
                self.refused.invalid.fetch_add(1, Ordering::Relaxed);
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
        self.answer(request).await
    }

    async fn send_kafka_message(
        &self,
        request: Request<KafkaMessage>,
    ) -> Result<Response<proto::Response>, Status> {
        let request = wire::kafka_request(request.into_inner(), self.max_message_bytes);
        self.answer(request).await
    }
}
