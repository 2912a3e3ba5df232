//! The operations endpoint (HTTP, on its own address): `/stats` (JSON), `/metrics`
//! (OpenMetrics text for Prometheus) and `/healthz` (200 while serving, 503 otherwise).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio::sync::oneshot;

use crate::daemon::error::ServeError;
use crate::daemon::health::{self, Health};
use crate::daemon::metrics;
use crate::daemon::source::Source;

/// The operations endpoint, serving on an arbiter until stopped.
pub struct OpsEndpoint {
    /// Tells it to stop (once the requests it is answering are answered).
    stop: oneshot::Sender<()>,
    /// Its result when it ends.
    done: oneshot::Receiver<Result<(), ServeError>>,
}

impl OpsEndpoint {
    /// Serves `router` on `listener` from `arbiter`.
    pub fn spawn(arbiter: &actix_rt::Arbiter, listener: TcpListener, router: Router) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        arbiter.spawn(async move {
            let served = async move {
                let addr = listener.local_addr().map_err(ServeError::Http)?;
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|source| ServeError::Bind { addr, source })?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .map_err(ServeError::Http)
            };
            let _ = done_tx.send(served.await);
        });
        Self { stop, done }
    }

    /// Stops it and waits until it has ended; its result.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        self.done.await.unwrap_or(Ok(()))
    }
}

/// What the handlers read.
#[derive(Clone)]
struct Ops {
    /// Builds a report of the daemon's state on each request.
    source: Source,
    /// Whether the daemon serves (false from the start of shutdown).
    serving: Arc<AtomicBool>,
    /// The last health assessment and when it was made.
    health: Arc<Mutex<Option<(Instant, Health)>>>,
}

/// The HTTP routes over `source`, reporting `serving` on `/healthz`.
pub fn router(source: Source, serving: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .with_state(Ops {
            source,
            serving,
            health: Arc::default(),
        })
}

/// `/stats`: the report as JSON.
async fn stats(State(ops): State<Ops>) -> Json<crate::report::Report> {
    Json(ops.source.report())
}

/// `/metrics`: the report as OpenMetrics text.
async fn prometheus(State(ops): State<Ops>) -> Response {
    match metrics::render(ops.source.report()) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            log::error!("Cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `/healthz`: 200 `serving`, 200 `degraded: reason; reason` (it still accepts messages:
/// a load balancer keeps it, an operator looks), or 503 `not serving`.
async fn healthz(State(ops): State<Ops>) -> (StatusCode, String) {
    if !ops.serving.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not serving\n".to_owned());
    }
    let health = ops.health();
    let code = match health.state {
        health::State::NotServing => StatusCode::SERVICE_UNAVAILABLE,
        health::State::Serving | health::State::Degraded => StatusCode::OK,
    };
    (code, format!("{}\n", health.line()))
}

/// How long `/healthz` answers from its last assessment: a probe every few milliseconds
/// must not build a report of every producer each time.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

impl Ops {
    /// The health, assessed at most once per [`HEALTH_CACHE`].
    fn health(&self) -> Health {
        let mut cached = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, health)) = cached.as_ref()
            && at.elapsed() < HEALTH_CACHE
        {
            return health.clone();
        }
        let health = self.source.report().health();
        *cached = Some((Instant::now(), health.clone()));
        health
    }
}
