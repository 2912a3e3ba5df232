//! The gRPC ingress: the `messagebroker.MessageBroker` service, which validates each
//! request, forwards it, and answers with the outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ferry_actors::stats::InFlightGuard;
use ferry_actors::{ForwardError, Forwarder, ProduceError};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::config::allowlist::NotAllowed;
use crate::config::routes::Routes;
use crate::daemon::access::Caller;
use crate::daemon::live::Live;
use crate::daemon::log_budget::LogBudget;
use crate::proto::message_broker_server::MessageBroker;
use crate::proto::{self, KafkaMessage, RabbitMqMessage};
use crate::wire::{self, Failure, RequestLimits, SendRequest};

/// Requests refused before forwarding, by reason.
#[derive(Debug, Default)]
pub struct Refused {
    /// Invalid requests (`error_no` 1).
    pub invalid: AtomicU64,
    /// Targets outside the allowlist (`error_no` 7).
    pub not_allowed: AtomicU64,
    /// Bounds the log lines about messages refused or not delivered.
    pub log: LogBudget,
}

/// The `MessageBroker` service over a [`Forwarder`]. Cloning it is cheap (shared parts).
#[derive(Clone)]
pub struct Ingress {
    /// Where messages go.
    forwarder: Arc<Forwarder>,
    /// The routes, the allowlist and the token, as a reload leaves them.
    live: Arc<Live>,
    /// Bounds of a request.
    limits: RequestLimits,
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
        live: Arc<Live>,
        limits: RequestLimits,
        refused: Arc<Refused>,
        abort: watch::Receiver<bool>,
    ) -> Self {
        Self {
            forwarder,
            live,
            limits,
            refused,
            abort,
        }
    }

    /// The bounds requests are validated against.
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The named routes requests may use now.
    pub fn routes(&self) -> Arc<Routes> {
        self.live.routes()
    }

    /// Runs `line` (a log statement) if the log budget allows, with the count of lines
    /// left out before it.
    pub fn log_limited(&self, line: impl FnOnce(u64)) {
        if let Some(suppressed) = self.refused.log.admit() {
            line(suppressed);
        }
    }

    /// Counts and logs (within the log budget) a message refused for its size before it
    /// was decoded, answered error 1 with `text` by the layers below the decoder (unary
    /// and streamed).
    pub fn refused_too_large(&self, text: &str) {
        self.refused.invalid.fetch_add(1, Ordering::Relaxed);
        self.log_limited(|suppressed| {
            log::info!(
                "error":% = text, suppressed_before = suppressed,
                error_no = crate::contract::ErrorNo::InvalidRequest as i32; "Request refused"
            );
        });
    }

    /// Resolves once the shutdown grace period is over.
    pub async fn aborted(&self) {
        aborted(self.abort.clone()).await;
    }

    /// Answers one unary call from `caller`. The message is forwarded in a task of its
    /// own, so a caller that hangs up (its own timeout, a killed job) does not cut a
    /// message off half-sent: it still gets its outcome, counted in the stats, within the
    /// policy's budget.
    async fn answer(
        &self,
        request: Result<SendRequest, ferry_actors::InvalidRequest>,
        caller: Option<Caller>,
    ) -> Result<Response<proto::Response>, Status> {
        let ingress = self.clone();
        tokio::spawn(async move { ingress.send(request, caller.as_ref()).await })
            .await
            .map(Response::new)
            .map_err(|error| {
                log::error!("error":% = error; "Forwarding task failed");
                Status::internal("ferry failed while forwarding this message")
            })
    }

    /// Forwards a validated request from `caller` (or reports why it is invalid) and logs
    /// a failure once; shared by the unary service and the streaming one.
    pub async fn send(
        &self,
        request: Result<SendRequest, ferry_actors::InvalidRequest>,
        caller: Option<&Caller>,
    ) -> proto::Response {
        let (outcome, spooled_to) = self.outcome(request, caller).await;
        wire::response(&outcome, spooled_to.as_ref())
    }

    /// [`Self::send`] answered as `ferry.v1.SendReply` (with the Kafka partition and offset).
    pub async fn send_v1(
        &self,
        request: Result<SendRequest, ferry_actors::InvalidRequest>,
        caller: Option<&Caller>,
    ) -> crate::proto::ferry::v1::SendReply {
        let (outcome, spooled_to) = self.outcome(request, caller).await;
        wire::reply(&outcome, spooled_to.as_ref())
    }

    /// The outcome of a request, and the target it was spooled for, if it was.
    async fn outcome(
        &self,
        request: Result<SendRequest, ferry_actors::InvalidRequest>,
        caller: Option<&Caller>,
    ) -> (
        Result<ferry_actors::Accepted, Failure>,
        Option<ferry_actors::Target>,
    ) {
        let request = match request {
            Ok(request) => request,
            Err(invalid) => {
                self.refused.invalid.fetch_add(1, Ordering::Relaxed);
                let failure = Failure::Invalid(invalid);
                self.log_limited(|suppressed| {
                    log::info!(
                        "error":% = failure, suppressed_before = suppressed,
                        error_no = failure.error_no() as i32; "Request refused"
                    );
                });
                return (Err(failure), None);
            }
        };
        // Held until the message has its outcome: the caller's in-flight place.
        let _admitted = match self.admit(&request, caller) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.log_limited(|suppressed| {
                    log::warn!(
                        "error":% = refusal, suppressed_before = suppressed,
                        error_no = refusal.error_no() as i32,
                        "target":% = request.target, route = via(&request); "Request refused"
                    );
                });
                return (Err(refusal), None);
            }
        };
        self.forward(request).await
    }

    /// Whether `request` may go: the caller as the config in force knows it, the daemon's
    /// allowlist for a target named outright, then the caller's routes, targets, in-flight
    /// bound and rate. Returns the caller's in-flight place, or the refusal (7, or 5 over a
    /// client's limit), counted.
    fn admit(
        &self,
        request: &SendRequest,
        caller: Option<&Caller>,
    ) -> Result<Option<InFlightGuard>, Failure> {
        let not_allowed = |refusal| {
            self.refused.not_allowed.fetch_add(1, Ordering::Relaxed);
            Failure::NotAllowed(refusal)
        };
        let client = self.current_client(caller).map_err(not_allowed)?;
        if let Some(client) = &client {
            client.note_request();
        }
        // A route's target is allowed by definition; any other is checked.
        if request.via.is_none()
            && let Err(refusal) = self.live.check_access(&request.target)
        {
            if let Some(client) = &client {
                client.note_not_allowed();
            }
            return Err(not_allowed(refusal));
        }
        let Some(client) = client else {
            return Ok(None);
        };
        match &request.via {
            Some(route) => client.check_route(route),
            None => client.check_target(&request.target),
        }
        .map_err(not_allowed)?;
        client.admit().map_err(|over| {
            self.forwarder
                .totals()
                .failed
                .fetch_add(1, Ordering::Relaxed);
            Failure::Forward(ForwardError::refused(ProduceError::Overloaded(over)))
        })
    }

    /// The client `caller` is under the config in force: a stream opened before a reload
    /// is held to the clients as they are now, so a removed client, a rotated credential,
    /// or clients configured since the call began, refuse its next message.
    fn current_client(
        &self,
        caller: Option<&Caller>,
    ) -> Result<Option<std::sync::Arc<crate::config::clients::Client>>, NotAllowed> {
        let auth = self.live.auth();
        let clients = &auth.clients;
        match caller {
            None if clients.is_empty() => Ok(None),
            None => Err(NotAllowed(
                "this call identified as no client, and the daemon now decides access per \
                 client: open a new call with a client's credential"
                    .into(),
            )),
            Some(Caller(client)) => clients.current(client).map(Some).ok_or_else(|| {
                NotAllowed(format!(
                    "client {} is no longer configured as it was when this call began: open \
                     a new call",
                    client.name
                ))
            }),
        }
    }

    /// Forwards an admitted request; its outcome, and the target it was spooled for.
    async fn forward(
        &self,
        request: SendRequest,
    ) -> (
        Result<ferry_actors::Accepted, Failure>,
        Option<ferry_actors::Target>,
    ) {
        let started = Instant::now();
        let forward = self.forwarder.forward(
            &request.target,
            request.via.as_ref(),
            request.route,
            request.payload,
            request.metadata,
        );
        let result = tokio::select! {
            result = forward => result.map_err(Failure::from),
            () = aborted(self.abort.clone()) => {
                // The forward was dropped before it counted its outcome.
                self.forwarder.totals().failed.fetch_add(1, Ordering::Relaxed);
                Err(Failure::Forward(ForwardError::refused(ProduceError::ShuttingDown)))
            }
        };
        let mut spooled_to = None;
        match &result {
            Err(failure) => self.log_limited(|suppressed| {
                log::warn!(
                    "target":% = request.target, error_no = failure.error_no() as i32,
                    "error":% = failure, ms = started.elapsed().as_millis() as u64,
                    suppressed_before = suppressed, route = request.via.as_deref().unwrap_or("");
                    "Message not delivered"
                );
            }),
            Ok(accepted) if accepted.spooled.is_some() => {
                self.log_limited(|suppressed| {
                    log::info!(
                        "target":% = request.target, id:% = accepted.id,
                        ms = started.elapsed().as_millis() as u64,
                        suppressed_before = suppressed, route = request.via.as_deref().unwrap_or("");
                        "Message spooled"
                    );
                });
                spooled_to = Some(request.target);
            }
            Ok(_) => {}
        }
        (result, spooled_to)
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
        let caller = request.extensions().get::<Caller>().cloned();
        let request = wire::rabbitmq_request(request.into_inner(), self.limits);
        self.answer(request, caller).await
    }

    async fn send_kafka_message(
        &self,
        request: Request<KafkaMessage>,
    ) -> Result<Response<proto::Response>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request = wire::kafka_request(request.into_inner(), self.limits);
        self.answer(request, caller).await
    }
}

/// The named route `request` came through, "" for a target named outright (a log field).
fn via(request: &SendRequest) -> &str {
    request.via.as_deref().unwrap_or("")
}
