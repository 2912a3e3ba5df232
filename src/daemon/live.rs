//! What a reload (SIGHUP, `ferry reload`) replaces while the daemon serves: the routes, the
//! allowlist and the bearer token, each swapped whole so a request sees the old config or
//! the new one, never a mix. Messages in flight keep the target they were resolved to.
//! Fields that cannot change live are reported as needing a restart.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use ferry_actors::{Line, Resolve, Target};

use crate::config::Settings;
use crate::config::allowlist::Access;
use crate::config::clients::Clients;
use crate::config::routes::{RouteSummary, Routes};
use crate::report::ConfigStatus;

/// The live parts of the config and the config's history.
pub struct Live {
    /// The named routes.
    routes: ArcSwap<Routes>,
    /// Which targets requests may name.
    access: ArcSwap<Access>,
    /// Who may call: the bearer token, or the clients by name; swapped as one, so a call
    /// never sees the old token gone and the new clients not yet there.
    auth: ArcSwap<Auth>,
    /// Load time, hash, counts.
    status: Mutex<ConfigStatus>,
}

/// Who may call: one bearer token for every caller, or each client by its own credential
/// (never both: the config refuses a `token_file` beside `[[access.clients]]`).
#[derive(Debug, Default)]
pub struct Auth {
    /// The bearer token every call must carry, if any.
    pub token: Option<Vec<u8>>,
    /// The callers by name (empty: access is decided per daemon).
    pub clients: Arc<Clients>,
}

impl Auth {
    /// The token and clients of `settings`.
    fn of(settings: &Settings) -> Self {
        Self {
            token: settings.token.as_ref().map(|t| t.clone().into_bytes()),
            clients: Arc::clone(&settings.clients),
        }
    }
}

/// What a reload changed beyond the live parts it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Fields changed in the file that apply only after a restart.
    pub needs_restart: Vec<String>,
    /// What the new config allows that the old one did not.
    pub widened: Vec<String>,
}

impl Live {
    /// The live state of a daemon starting with `settings`, read from a file with `hash`.
    pub fn new(settings: &Settings, hash: String) -> Self {
        Self {
            routes: ArcSwap::from_pointee(settings.routes.clone()),
            access: ArcSwap::from_pointee(settings.access.clone()),
            auth: ArcSwap::from_pointee(Auth::of(settings)),
            status: Mutex::new(ConfigStatus {
                loaded_at: now(),
                hash,
                ..ConfigStatus::default()
            }),
        }
    }

    /// The routes now.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// Whether the allowlist now allows `target` (without taking a reference count: this
    /// runs for every message that names its target).
    pub fn check_access(
        &self,
        target: &ferry_actors::Target,
    ) -> Result<(), crate::config::allowlist::NotAllowed> {
        self.access.load().check(target)
    }

    /// Who may call now: the bearer token, or the clients (a guard, without touching a
    /// reference count: this runs for every call and every message).
    pub fn auth(&self) -> arc_swap::Guard<Arc<Auth>> {
        self.auth.load()
    }

    /// The callers by name now (empty: access is decided per daemon).
    pub fn clients(&self) -> Arc<Clients> {
        Arc::clone(&self.auth.load().clients)
    }

    /// Route names and kinds, for `/stats`.
    pub fn route_summaries(&self) -> Vec<RouteSummary> {
        self.routes.load().summaries()
    }

    /// Records the hash of the file the daemon started with.
    pub fn set_hash(&self, hash: String) {
        self.lock().hash = hash;
    }

    /// The config status now.
    pub fn status(&self) -> ConfigStatus {
        self.lock().clone()
    }

    /// Applies the live parts of `new` (validated from a file with `hash`, for the
    /// listen addresses in force), given the settings the daemon started with and the
    /// fields (`moved`) the file changes that were set aside for them; returns what needs
    /// a restart and what the new config allows that the old one did not.
    pub fn apply(
        &self,
        started_with: &Settings,
        new: &Settings,
        hash: String,
        moved: Vec<String>,
    ) -> Applied {
        let mut widened = new.access.widened_from(&self.access.load());
        widened.extend(new.routes.widened_from(&self.routes.load()));
        let old = self.auth.load_full();
        if old.token.is_some() && new.token.is_none() && new.clients.is_empty() {
            widened.push("[access] token_file removed: calls no longer need a bearer token".into());
        }
        if !old.clients.is_empty() && new.clients.is_empty() {
            widened.push("[[access.clients]] removed: access is decided per daemon again".into());
        }
        widened.extend(new.clients.widened_from(&old.clients));
        let mut auth = Auth::of(new);
        let mut clients = Clients::clone(&auth.clients);
        clients.carry_state_from(&old.clients);
        auth.clients = Arc::new(clients);
        self.routes.store(Arc::new(new.routes.clone()));
        self.access.store(Arc::new(new.access.clone()));
        self.auth.store(Arc::new(auth));
        let mut needs_restart = moved;
        needs_restart.extend(needs_restart_of(started_with, new));
        let mut status = self.lock();
        status.loaded_at = now();
        status.hash = hash;
        status.reloads += 1;
        status.last_reload_failed = false;
        status.needs_restart.clone_from(&needs_restart);
        status.widened.clone_from(&widened);
        Applied {
            needs_restart,
            widened,
        }
    }

    /// Records a refused reload.
    pub fn refused(&self, error: String) {
        let mut status = self.lock();
        status.reload_failures += 1;
        status.last_error = error;
        status.last_reload_failed = true;
    }

    /// The status, even if a holder panicked (it holds plain data).
    fn lock(&self) -> std::sync::MutexGuard<'_, ConfigStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Spooled lines are replayed to where the config in force sends them: a route as it is
/// now (a password rotated by a reload is used), a target only while the allowlist in
/// force names it.
impl Resolve for Live {
    fn resolve(&self, line: &Line) -> Result<Target, String> {
        resolve(&self.routes.load(), &self.access.load(), line)
    }
}

/// Where a spooled `line` goes under `routes` and `access`, or why they hold it (a
/// sentence saying what to change).
///
/// A route's line goes where the route points now, if it is still of the kind its
/// messages were accepted for. A target's line goes to that target while the allowlist
/// names it, or where a route now serves the same endpoint (records an older ferry
/// spooled for a route stored its target: they stay sendable under a routes-only
/// allowlist, with the route's current password).
pub fn resolve(routes: &Routes, access: &Access, line: &Line) -> Result<Target, String> {
    match line {
        Line::Route { name, kind } => match routes.get(name) {
            Some(route) if route.target.kind() == *kind => Ok(route.target.clone()),
            Some(route) => Err(format!(
                "route {name} is now a {} route and these messages were accepted for a {kind} \
                 one; give it back its kind and run ferry reload to send them",
                route.target.kind()
            )),
            None => Err(format!(
                "route {name} is not in the config in force; add it back and run ferry reload \
                 to send these messages"
            )),
        },
        Line::Target(target) => match access.check(target) {
            Ok(()) => Ok(target.clone()),
            Err(refusal) => routes
                .serving(target)
                .map(|route| route.target.clone())
                .ok_or_else(|| {
                    format!(
                        "{refusal}; allow it in [access] and run ferry reload to send these \
                         messages"
                    )
                }),
        },
    }
}

/// The fields of `new` that differ from those the daemon started with and do not change
/// live (listeners, workers, bounds, policy, producers, spool), by config section.
pub fn needs_restart_of(old: &Settings, new: &Settings) -> Vec<String> {
    // Settings holds types without PartialEq (policy, TLS identity); their Debug forms are
    // complete for every field that matters here.
    macro_rules! changed {
        ($($($field:ident).+ => $name:literal),* $(,)?) => {{
            let mut changed = Vec::new();
            $(
                if format!("{:?}", old.$($field).+) != format!("{:?}", new.$($field).+) {
                    changed.push($name.to_owned());
                }
            )*
            changed
        }};
    }
    changed!(
        server.listen => "server.listen",
        server.workers => "server.workers",
        server.max_message_bytes => "server.max_message_bytes",
        server.max_in_flight => "server.max_in_flight",
        server.max_in_flight_per_stream => "server.max_in_flight_per_stream",
        server.shutdown_grace => "server.shutdown_grace_ms",
        server.max_connections => "server.max_connections",
        server.max_in_flight_bytes => "server.max_in_flight_bytes",
        server.max_streams_per_connection => "server.max_streams_per_connection",
        server.handshake_timeout => "server.handshake_timeout_ms",
        server.idle_connection_timeout => "server.idle_connection_timeout_ms",
        server.request_timeout => "server.request_body_timeout_ms",
        server.stream_message_timeout => "server.stream_message_timeout_ms",
        max_brokers_per_target => "kafka.max_brokers_per_target",
        server.tls => "server.tls",
        ops.listen => "ops.listen",
        ops.pid_file => "ops.pid_file",
        ops.health => "ops (degraded_after_s, spool_warn_ratio, restart_loop_restarts, restart_window_s)",
        policy => "policy",
        producer => "producers / kafka / rabbitmq",
        registry => "producers",
        spool => "spool",
    )
}

/// Now, RFC 3339 in UTC with milliseconds.
fn now() -> String {
    chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The hash `/stats` shows for a config file's bytes: CRC-32, hex.
pub fn hash(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(text: &str) -> Settings {
        toml::from_str::<Config>(text).unwrap().validate().unwrap()
    }

    #[test]
    fn a_reload_swaps_routes_and_reports_what_needs_a_restart() {
        let old = settings("[routes.a]\nkind = \"kafka\"\nbrokers = [\"k:1\"]\ntopic = \"t\"\n");
        let live = Live::new(&old, hash(b"old"));
        assert!(live.routes().get("a").is_some());
        let new = settings(
            "[server]\nmax_in_flight = 7\n[routes.b]\nkind = \"kafka\"\nbrokers = [\"k:1\"]\n\
             topic = \"t\"\n",
        );
        let applied = live.apply(&old, &new, hash(b"new"), Vec::new());
        assert_eq!(applied.needs_restart, ["server.max_in_flight"]);
        assert_eq!(applied.widened, ["route b added (kafka)"]);
        assert!(live.routes().get("a").is_none() && live.routes().get("b").is_some());
        let status = live.status();
        assert_eq!(
            (status.reloads, status.hash.as_str()),
            (1, hash(b"new").as_str())
        );
        live.refused("invalid config: routes.c.topic: …".into());
        assert_eq!(live.status().reload_failures, 1);
        assert!(needs_restart_of(&old, &old).is_empty());
    }

    #[test]
    fn spooled_lines_resolve_under_the_config_in_force() {
        let dir = std::env::temp_dir().join(format!("ferry-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("mq.password");
        std::fs::write(&password, "new-secret").unwrap();
        let config = settings(&format!(
            "[server]\nlisten = \"0.0.0.0:1\"\n[routes.events]\nkind = \"rabbitmq\"\n\
             server = \"amqp://ferry@mq1/%2f\"\npassword_file = {password:?}\n\
             exchange = \"x\"\n"
        ));
        let resolve = |line: &Line| resolve(&config.routes, &config.access, line);
        let route = |kind| Line::Route {
            name: std::sync::Arc::from("events"),
            kind,
        };
        let Target::Amqp(now) = resolve(&route("rabbitmq")).unwrap() else {
            panic!("an AMQP route")
        };
        assert!(now.url().contains("new-secret"), "the password in force");
        let held = resolve(&route("kafka")).unwrap_err();
        assert!(held.contains("now a rabbitmq route"), "{held}");
        // A record an older ferry spooled for the route stored its target, with the old
        // password: routes-only access refuses the target, the route still serves it.
        let stored = Target::Amqp(
            ferry_actors::AmqpTarget::try_new("amqp://ferry:old@mq1/%2f", "x").unwrap(),
        );
        assert!(config.access.check(&stored).is_err());
        let Target::Amqp(now) = resolve(&Line::Target(stored)).unwrap() else {
            panic!("an AMQP target")
        };
        assert!(now.url().contains("new-secret"));
        let elsewhere = Target::Amqp(
            ferry_actors::AmqpTarget::try_new("amqp://ferry:old@mq2/%2f", "x").unwrap(),
        );
        assert!(resolve(&Line::Target(elsewhere)).is_err(), "held");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
