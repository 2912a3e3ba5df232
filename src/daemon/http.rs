//! The operations endpoint (HTTP, on its own address): `/stats` (JSON), `/metrics`
//! (OpenMetrics text for Prometheus), `/healthz` (200 while serving, 503 otherwise) and
//! `POST /reload` (re-read the config, as SIGHUP does; for root and the daemon's user on
//! its own host only).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use tokio::sync::oneshot;

use crate::daemon::error::ServeError;
use crate::daemon::health::{self, Health};
use crate::daemon::metrics;
use crate::daemon::peer::{self, Ends};
use crate::daemon::reloads::{NotQueued, Outcome, ReloadRequests};
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
                let router = router.into_make_service_with_connect_info::<Ends>();
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
    /// Where `POST /reload` queues its request.
    reloads: ReloadRequests,
    /// When `POST /reload` last queued one.
    last_reload: Arc<Mutex<Option<Instant>>>,
    /// When a refused `POST /reload` was last logged.
    last_refusal_logged: Arc<Mutex<Option<Instant>>>,
    /// One reading of the kernel's socket table at a time ([`asker_refused`]).
    peer_lookups: Arc<tokio::sync::Semaphore>,
}

/// The HTTP routes over `source`, reporting `serving` on `/healthz`, queueing reloads on
/// `reloads`.
pub fn router(source: Source, serving: Arc<AtomicBool>, reloads: ReloadRequests) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/reload", post(reload))
        .with_state(Ops {
            source,
            serving,
            health: Arc::default(),
            reloads,
            last_reload: Arc::default(),
            last_refusal_logged: Arc::default(),
            peer_lookups: Arc::new(tokio::sync::Semaphore::new(1)),
        })
}

/// `POST /reload` is answered at most this often (a reload re-reads and checks the whole
/// config on the thread that handles signals).
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Whether `peer` is on the daemon's own host: a loopback address, IPv4 ones also as an
/// IPv6 socket shows them (`::ffff:127.0.0.1`).
fn from_this_host(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Why the asker at the far end of `ends` may not reload, if it may not, with the status
/// to answer: it must be on the daemon's own host (loopback), and be root or the daemon's
/// own user, as the kernel's socket table says ([`peer::peer_uid`]). Any local user can
/// reach a loopback port; only those may also send the daemon SIGHUP.
///
/// The table is read off the endpoint's thread (it can run to megabytes on a busy login
/// node), one request at a time: a user who asks in a loop is answered 429 meanwhile and
/// costs the daemon at most one reading at once.
async fn asker_refused(ops: &Ops, ends: Ends) -> Option<(StatusCode, String)> {
    if !from_this_host(ends.peer) {
        let text = "a reload may be asked for over loopback only (from the daemon's own host)";
        return Some((StatusCode::FORBIDDEN, text.into()));
    }
    let Ok(reading) = Arc::clone(&ops.peer_lookups).try_acquire_owned() else {
        let text = "another reload request is being checked: try again";
        return Some((StatusCode::TOO_MANY_REQUESTS, text.into()));
    };
    let looked_up = tokio::task::spawn_blocking(move || {
        let _reading = reading;
        peer::peer_uid(ends)
    })
    .await;
    let own = rustix::process::geteuid().as_raw();
    let refusal = match looked_up {
        Ok(Ok(uid)) if peer::may_reload(uid, own) => return None,
        Ok(Ok(uid)) => format!(
            "a reload may be asked for by root or by the daemon's user (uid {own}) only, \
             not by uid {uid}: run `ferry reload` with sudo, or as that user"
        ),
        Ok(Err(error)) => format!("cannot tell which user asked for a reload: {error}"),
        Err(_) => "cannot tell which user asked for a reload: the lookup failed".to_owned(),
    };
    Some((StatusCode::FORBIDDEN, refusal))
}

/// The longest `POST /reload` waits for its reload (reading and checking a config, and
/// the reload queued before it, take milliseconds).
const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// `POST /reload`: re-reads the config as SIGHUP does and answers the outcome — 200 with
/// the config status (JSON) when the new config serves, 409 with it when the file was
/// refused (`last_error` says why) or there is no file to reload. Only for root and the
/// daemon's own user on its own host ([`asker_refused`]): a reload can widen what the
/// daemon allows, and may catch an edit of the admins' file half done. 429 while another
/// request waits or within a second of the last, 503 while stopping.
async fn reload(State(ops): State<Ops>, ConnectInfo(ends): ConnectInfo<Ends>) -> Response {
    if let Some((status, refusal)) = asker_refused(&ops, ends).await {
        if status == StatusCode::FORBIDDEN && ops.refusal_loggable() {
            log::warn!(peer:% = ends.peer; "Reload refused: {refusal} (logged once a minute)");
        }
        return (status, format!("{refusal}\n")).into_response();
    }
    if !ops.reload_allowed_now() {
        let text = "reloads over the ops endpoint are limited to one a second: try again\n";
        return (StatusCode::TOO_MANY_REQUESTS, text).into_response();
    }
    let outcome = match tokio::time::timeout(RELOAD_WAIT, ops.reloads.reload()).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(NotQueued::Busy)) => {
            let text = "a reload is already waiting: try again\n";
            return (StatusCode::TOO_MANY_REQUESTS, text).into_response();
        }
        Ok(Err(NotQueued::Stopping)) => {
            let text = "the daemon cannot reload now (it is stopping)\n";
            return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
        }
        Err(_) => {
            let text = "the reload did not finish within 30 s\n";
            return (StatusCode::GATEWAY_TIMEOUT, text).into_response();
        }
    };
    match outcome {
        Outcome::Applied(config) => (StatusCode::OK, Json(config)).into_response(),
        Outcome::Refused(config) => (StatusCode::CONFLICT, Json(config)).into_response(),
        Outcome::NoConfig => {
            let text =
                "nothing to reload: the daemon started without --config (its built-in defaults)\n";
            (StatusCode::CONFLICT, text).into_response()
        }
    }
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

/// Whether `every` has passed since `last` (never set counts as passed); if so, sets it
/// to now.
fn once_every(last: &Mutex<Option<Instant>>, every: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_some_and(|at| at.elapsed() < every) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// How long `/healthz` answers from its last assessment: a probe every few milliseconds
/// must not build a report of every producer each time.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

impl Ops {
    /// Whether a reload may be asked for now ([`RELOAD_EVERY`]); if so, counts it.
    fn reload_allowed_now(&self) -> bool {
        once_every(&self.last_reload, RELOAD_EVERY)
    }

    /// Whether a refused reload may be logged now: once a minute (a peer that asks in a
    /// loop must not fill the log).
    fn refusal_loggable(&self) -> bool {
        once_every(&self.last_refusal_logged, Duration::from_secs(60))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_and_a_refusal_log_are_let_through_once_per_interval() {
        let last = Mutex::new(None);
        assert!(once_every(&last, Duration::from_secs(60)));
        assert!(
            !once_every(&last, Duration::from_secs(60)),
            "within the minute"
        );
        assert!(
            once_every(&last, Duration::ZERO),
            "once the interval passed"
        );
    }

    #[test]
    fn only_loopback_peers_are_on_this_host() {
        for peer in [
            "127.0.0.1:1",
            "127.0.0.2:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(from_this_host(peer.parse().unwrap()), "{peer}");
        }
        for peer in [
            "10.0.0.1:1",
            "[::ffff:10.0.0.1]:1",
            "[2001:db8::1]:1",
            "0.0.0.0:1",
        ] {
            assert!(!from_this_host(peer.parse().unwrap()), "{peer}");
        }
    }
}
