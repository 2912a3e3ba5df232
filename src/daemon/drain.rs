//! The shutdown, in order, so that no message a client was told is taken is lost:
//!
//! 1. say "not serving" (grpc.health.v1 and `/healthz`), refuse new messages, stop
//!    accepting connections;
//! 2. let what is in flight finish within `server.shutdown_grace_ms` (the servers end when
//!    their last call is answered; a second SIGTERM ends the grace period), then answer
//!    the rest "shutting down" (error_no 6);
//! 3. close the producers (each closes its connection), then the operations endpoint.

use std::sync::Arc;
use std::time::Duration;

use ferry_actors::Forwarder;
use tokio::sync::{oneshot, watch};
use tonic_health::ServingStatus;

use crate::daemon::error::ServeError;
use crate::daemon::grpc::{Health, Servers};
use crate::daemon::http::OpsEndpoint;

/// How long servers may take to answer the aborted requests after the grace period.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// What the shutdown stops.
pub struct Drain {
    /// The health the daemon reports.
    pub health: Health,
    /// The forwarding core.
    pub forwarder: Arc<Forwarder>,
    /// The gRPC servers.
    pub servers: Servers,
    /// Tells the servers to stop accepting and finish.
    pub shutdown: watch::Sender<bool>,
    /// Tells the calls still waiting to answer "shutting down" now.
    pub abort: watch::Sender<bool>,
    /// How long calls in flight may take to finish.
    pub grace: Duration,
    /// Ends the grace period early (a second SIGTERM).
    pub hurry: oneshot::Receiver<()>,
    /// The operations endpoint.
    pub ops: OpsEndpoint,
}

impl Drain {
    /// Shuts down in order; the result is the operations endpoint's.
    pub async fn run(mut self) -> Result<(), ServeError> {
        log::info!(in_flight = self.forwarder.in_flight(); "Shutting down");
        crate::daemon::notify::stopping();
        self.health.set(ServingStatus::NotServing).await;
        self.forwarder.begin_shutdown();
        self.shutdown.send_replace(true);
        if !self.finished_in_grace().await {
            log::warn!(
                shutdown_grace_ms = self.grace.as_millis() as u64,
                in_flight = self.forwarder.in_flight();
                "Grace period over, answering the rest as shutting down"
            );
            self.abort.send_replace(true);
            if !self.servers.all_ended_within(ABORT_GRACE).await {
                log::warn!("Servers still running after the grace period; stopping them");
            }
        }
        let producers = self.forwarder.registry().stop_all();
        let http = self.ops.stop().await;
        log::info!(producers = producers as u64; "Stopped");
        http
    }

    /// Whether every server ended within the grace period (not cut short).
    async fn finished_in_grace(&mut self) -> bool {
        tokio::select! {
            drained = self.servers.all_ended_within(self.grace) => drained,
            Ok(()) = &mut self.hurry => {
                log::warn!("Told to stop now: ending the grace period early");
                false
            }
        }
    }
}
