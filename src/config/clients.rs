//! Who may send what, per caller (`[[access.clients]]`).
//!
//! Without client entries the daemon decides per daemon: the allowlist and one bearer token
//! for every caller. With them, **every call must identify as one client** — by its own
//! bearer token (a file per token), or by the subject of the TLS client certificate it
//! presented (`server.tls_client_ca_file` verifies the certificate first) — or it is
//! answered `UNAUTHENTICATED`. Each client has:
//!
//! - the routes it may use (`routes`, `"*"` for all) and the raw targets it may name (its
//!   own `kafka_brokers` and `rabbitmq`, within `[access]`); anything else is answered 7;
//! - `max_rate`: messages per second (a token bucket holding one second's worth); beyond
//!   it, 5 naming the bound, and no other client is slowed;
//! - `max_in_flight`: its messages in flight at once; beyond it, 5.
//!
//! `/stats` and `/metrics` count per client by name, never by token. A reload keeps each
//! client's counters and bucket by name.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ferry_actors::Target;
use ferry_actors::stats::{InFlight, InFlightGuard};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::ConfigError;
use crate::config::allowlist::{
    Access, AllowlistFields, Names, NotAllowed, RabbitMqAccess, allowlist,
};
use crate::config::files::read_token;
use crate::config::routes::{Routes, check_name};
pub use crate::report::ClientReport;

/// Most client entries one config may hold.
pub const MAX_CLIENTS: usize = 1024;
/// Highest `max_rate`, messages per second.
pub const MAX_RATE: u32 = 1_000_000;

/// One `[[access.clients]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's name, as stats show it (1-64 of A-Z a-z 0-9 . _ -).
    pub name: String,
    /// File holding the bearer token this client sends (16-4096 printable characters).
    #[serde(default)]
    pub token_file: String,
    /// The subject of the TLS client certificate this client presents, as ferry prints it
    /// when it refuses an unknown one (e.g. `CN=nwp-jobs, O=Weather`).
    #[serde(default)]
    pub certificate_subject: String,
    /// Routes it may use (`"*"`: every route); none by default.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Kafka bootstrap addresses it may name itself; none by default.
    #[serde(default)]
    pub kafka_brokers: Vec<String>,
    /// RabbitMQ servers (with exchanges, vhosts, users) it may name itself.
    #[serde(default)]
    pub rabbitmq: Vec<RabbitMqAccess>,
    /// Messages per second (0 = unlimited).
    #[serde(default)]
    pub max_rate: u32,
    /// Its messages in flight at once (0 = only the daemon's bounds).
    #[serde(default)]
    pub max_in_flight: usize,
}

/// How a client proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token (never shown).
    Token(Vec<u8>),
    /// A TLS client certificate's subject.
    Subject(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(***)"),
            Self::Subject(subject) => f.debug_tuple("Subject").field(subject).finish(),
        }
    }
}

/// A validated client: what it may do, and its counters, which outlive a reload.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its name, as `/stats` and `/metrics` show it (never its credential).
    pub name: Arc<str>,
    /// How it is recognised.
    credential: Credential,
    /// Routes it may use.
    routes: Names,
    /// Raw targets it may name (within `[access]`).
    targets: Access,
    /// Messages per second (0 = unlimited).
    max_rate: u32,
    /// Messages in flight at once (0 = unlimited).
    max_in_flight: usize,
    /// Counters and bucket, kept across reloads by name.
    state: Arc<ClientState>,
}

/// What a client may do, to compare two configs' clients (a reload reports widening).
type Grants<'a> = (&'a Credential, &'a Names, &'a Access, u32, usize);

/// A config error of `[[access.clients]]`.
fn invalid(reason: String) -> ConfigError {
    ConfigError::Invalid {
        field: "access.clients",
        reason,
    }
}

impl Client {
    /// Validates one entry.
    fn from_config(
        config: &ClientConfig,
        routes: &Routes,
        mtls: bool,
    ) -> Result<Self, ConfigError> {
        let name = &config.name;
        check_name("client", name).map_err(invalid)?;
        let credential = match (
            config.token_file.as_str(),
            config.certificate_subject.as_str(),
        ) {
            (path, "") if !path.is_empty() => {
                let token = read_token("access.clients.token_file", path)?.unwrap_or_default();
                Credential::Token(token.into_bytes())
            }
            ("", subject) if !subject.is_empty() && mtls => Credential::Subject(subject.to_owned()),
            ("", subject) if !subject.is_empty() => {
                return Err(invalid(format!(
                    "{name}: certificate_subject needs server.tls_client_ca_file (mTLS)"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "{name}: give exactly one of token_file and certificate_subject"
                )));
            }
        };
        if let Some(unknown) = config
            .routes
            .iter()
            .find(|r| *r != "*" && routes.get(r).is_none())
        {
            return Err(invalid(format!(
                "{name}: routes names {unknown:?}, which is not a route"
            )));
        }
        let routes = if config.routes.is_empty() {
            Names::Only(Default::default())
        } else {
            Names::of(&config.routes)
        };
        let targets = Access::Only(allowlist(
            &config.kafka_brokers,
            &config.rabbitmq,
            &CLIENT_FIELDS,
        )?);
        if config.max_rate > MAX_RATE {
            return Err(invalid(format!("{name}: max_rate is at most {MAX_RATE}")));
        }
        Ok(Self::new(
            name,
            credential,
            routes,
            targets,
            (config.max_rate, config.max_in_flight),
        ))
    }

    /// A client named `name` with its `credential`, `routes`, `targets` and limits.
    pub fn new(
        name: &str,
        credential: Credential,
        routes: Names,
        targets: Access,
        limits: (u32, usize),
    ) -> Self {
        Self {
            name: Arc::from(name),
            credential,
            routes,
            targets,
            max_rate: limits.0,
            max_in_flight: limits.1,
            state: Arc::default(),
        }
    }

    /// Whether this client may use the route `name`.
    pub fn check_route(&self, route: &str) -> Result<(), NotAllowed> {
        if self.routes.allows(route) {
            return Ok(());
        }
        self.state.not_allowed.fetch_add(1, Ordering::Relaxed);
        Err(NotAllowed(format!(
            "route {route} is not given to client {}",
            self.name
        )))
    }

    /// Whether this client may name `target` itself.
    pub fn check_target(&self, target: &Target) -> Result<(), NotAllowed> {
        self.targets.check(target).map_err(|refusal| {
            self.state.not_allowed.fetch_add(1, Ordering::Relaxed);
            NotAllowed(format!(
                "client {} may not name this target ({}): its own kafka_brokers and rabbitmq \
                 in [[access.clients]] decide",
                self.name, refusal.0
            ))
        })
    }

    /// Counts a message from this client (before any check).
    pub fn note_request(&self) {
        self.state.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message of this client refused by the daemon's own allowlist.
    pub fn note_not_allowed(&self) {
        self.state.not_allowed.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a message's place under the client's in-flight and rate bounds, or says
    /// which bound it is over (answered 5). A message refused for its in-flight bound
    /// takes no rate token.
    pub fn admit(&self) -> Result<Option<InFlightGuard>, String> {
        let state = &self.state;
        let guard = match self.max_in_flight {
            0 => None,
            max => match state.in_flight.try_enter(max) {
                Some(guard) => Some(guard),
                None => {
                    state.rate_limited.fetch_add(1, Ordering::Relaxed);
                    return Err(format!(
                        "client {} has {max} messages in flight (its max_in_flight)",
                        self.name
                    ));
                }
            },
        };
        if self.max_rate > 0 && !state.take_token(self.max_rate) {
            state.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "client {} is over its max_rate ({} messages/s)",
                self.name, self.max_rate
            ));
        }
        Ok(guard)
    }

    /// What it may do, for comparing configs.
    fn grants(&self) -> Grants<'_> {
        (
            &self.credential,
            &self.routes,
            &self.targets,
            self.max_rate,
            self.max_in_flight,
        )
    }
}

/// A client's counters and rate bucket.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Calls and streamed messages it made.
    requests: AtomicU64,
    /// Refused over its `max_rate` or `max_in_flight` (answered 5).
    rate_limited: AtomicU64,
    /// Refused as not given to it (answered 7).
    not_allowed: AtomicU64,
    /// Its messages in flight.
    in_flight: InFlight,
    /// The token bucket: tokens, and when it was last topped up.
    bucket: Mutex<Option<(f64, Instant)>>,
}

impl ClientState {
    /// Takes one token of a bucket filled at `rate` a second, holding one second's worth.
    fn take_token(&self, rate: u32) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let rate = f64::from(rate);
        let (tokens, at) = bucket.get_or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The clients of a config, by name, with indexes by credential.
#[derive(Debug, Default, Clone)]
pub struct Clients {
    /// The clients.
    by_name: BTreeMap<String, Arc<Client>>,
    /// Token clients by a keyed hash of their token (a random key per config, so lookup
    /// timing tells nothing of a token); the token itself is then compared in constant
    /// time. One hash per call instead of a comparison with every token.
    by_token: HashMap<u64, Vec<Arc<Client>>>,
    /// The hasher of `by_token`.
    token_hasher: RandomState,
    /// Certificate clients by subject.
    by_subject: HashMap<String, Arc<Client>>,
}

/// The fields a client's own allowlist's errors name.
const CLIENT_FIELDS: AllowlistFields = AllowlistFields(
    "access.clients.kafka_brokers",
    "access.clients.rabbitmq.server",
    "access.clients.rabbitmq.exchanges",
);

impl Clients {
    /// Validates the `[[access.clients]]` entries against the `routes` of the same config;
    /// `mtls` says whether the ingress verifies client certificates.
    pub fn from_config(
        configs: &[ClientConfig],
        routes: &Routes,
        mtls: bool,
    ) -> Result<Self, ConfigError> {
        if configs.len() > MAX_CLIENTS {
            return Err(invalid(format!("more than {MAX_CLIENTS} clients")));
        }
        let mut list: Vec<Client> = Vec::with_capacity(configs.len());
        for config in configs {
            let client = Client::from_config(config, routes, mtls)?;
            let clash = list
                .iter()
                .find(|other| other.name == client.name || other.credential == client.credential);
            if let Some(other) = clash {
                return Err(invalid(format!(
                    "clients {} and {} share a name or a credential",
                    other.name, client.name
                )));
            }
            list.push(client);
        }
        Ok(Self::new(list))
    }

    /// The clients `list` holds (already validated one by one; names are unique).
    pub fn new(list: Vec<Client>) -> Self {
        let mut clients = Self {
            by_name: list
                .into_iter()
                .map(|client| (client.name.to_string(), Arc::new(client)))
                .collect(),
            ..Self::default()
        };
        clients.index();
        clients
    }

    /// Builds the indexes by credential from `by_name`.
    fn index(&mut self) {
        self.by_token.clear();
        self.by_subject.clear();
        for client in self.by_name.values() {
            match &client.credential {
                Credential::Token(token) => self
                    .by_token
                    .entry(self.token_hasher.hash_one(token))
                    .or_default()
                    .push(Arc::clone(client)),
                Credential::Subject(subject) => {
                    self.by_subject.insert(subject.clone(), Arc::clone(client));
                }
            }
        }
    }

    /// The client now configured under `client`'s name with the same credential (a call
    /// identified before a reload is held to the client as it is now), if any.
    pub fn current(&self, client: &Client) -> Option<Arc<Client>> {
        self.by_name
            .get(&*client.name)
            .filter(|now| now.credential == client.credential)
            .cloned()
    }

    /// Whether the config names no client (access is then decided per daemon).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The client presenting `subject` (a verified client certificate's) or else `token`;
    /// or why the call is refused.
    pub fn identify(
        &self,
        subject: Option<&str>,
        token: Option<&[u8]>,
    ) -> Result<Arc<Client>, String> {
        if let Some(subject) = subject {
            return self.by_subject.get(subject).cloned().ok_or_else(|| {
                format!("client certificate {subject:?} is not a client of this daemon")
            });
        }
        let Some(token) = token else {
            return Err("this daemon needs a bearer token or a client certificate".into());
        };
        let candidates = self.by_token.get(&self.token_hasher.hash_one(token));
        candidates
            .into_iter()
            .flatten()
            .find(|client| {
                matches!(&client.credential,
                    Credential::Token(expected) if bool::from(expected.as_slice().ct_eq(token)))
            })
            .cloned()
            .ok_or_else(|| "wrong bearer token".to_owned())
    }

    /// Takes over the counters and buckets of `old`'s clients of the same name (a reload).
    pub fn carry_state_from(&mut self, old: &Self) {
        for (name, client) in &mut self.by_name {
            // Another credential is another principal: it starts afresh.
            if let Some(was) = old.by_name.get(name)
                && was.credential == client.credential
            {
                let mut carried = Client::clone(client);
                carried.state = Arc::clone(&was.state);
                *client = Arc::new(carried);
            }
        }
        self.index();
    }

    /// What these clients may do that `old`'s could not, one sentence each.
    pub fn widened_from(&self, old: &Self) -> Vec<String> {
        self.by_name
            .iter()
            .filter_map(|(name, client)| match old.by_name.get(name) {
                None => Some(format!("client {name} added")),
                Some(was) if was.grants() != client.grants() => Some(format!(
                    "client {name} changed (its credential, routes, targets or limits)"
                )),
                Some(_) => None,
            })
            .collect()
    }

    /// Every client's counts, by name.
    pub fn report(&self) -> Vec<ClientReport> {
        self.by_name
            .values()
            .map(|client| {
                let s = &client.state;
                ClientReport {
                    name: client.name.to_string(),
                    requests: s.requests.load(Ordering::Relaxed),
                    rate_limited: s.rate_limited.load(Ordering::Relaxed),
                    not_allowed: s.not_allowed.load(Ordering::Relaxed),
                    in_flight: s.in_flight.get(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, credential: Credential, rate: u32) -> Client {
        let routes = Names::Only(["events".to_owned()].into());
        Client::new(name, credential, routes, Access::Any, (rate, 0))
    }

    #[test]
    fn a_call_is_identified_by_certificate_subject_or_token() {
        let clients = Clients::new(vec![
            client("a", Credential::Token(b"token-of-a-0123456".to_vec()), 0),
            client("b", Credential::Subject("CN=b".into()), 0),
        ]);
        let who = |subject, token: Option<&[u8]>| {
            clients.identify(subject, token).map(|c| c.name.to_string())
        };
        assert_eq!(who(None, Some(b"token-of-a-0123456")).unwrap(), "a");
        assert_eq!(who(Some("CN=b"), None).unwrap(), "b");
        assert!(
            who(Some("CN=x"), Some(b"token-of-a-0123456")).is_err(),
            "a certificate decides"
        );
        assert!(who(None, Some(b"wrong")).is_err());
        assert!(who(None, None).is_err());
        assert!(
            !format!("{clients:?}").contains("token-of-a"),
            "no token in Debug"
        );
    }

    #[test]
    fn a_client_is_held_to_its_routes_and_its_rate() {
        let c = client("a", Credential::Subject("CN=a".into()), 5);
        assert!(c.check_route("events").is_ok());
        assert!(
            c.check_route("other")
                .unwrap_err()
                .0
                .contains("not given to client a")
        );
        let admitted = (0..20)
            .filter(|_| {
                c.note_request();
                c.admit().is_ok()
            })
            .count();
        assert_eq!(admitted, 5, "one second's worth at once");
        let report = Clients::new(vec![c]).report();
        assert_eq!(
            (
                report[0].requests,
                report[0].rate_limited,
                report[0].not_allowed
            ),
            (20, 15, 1)
        );
    }

    #[test]
    fn a_reload_keeps_counts_by_name_and_names_what_it_widens() {
        let old = Clients::new(vec![client("a", Credential::Subject("CN=a".into()), 5)]);
        old.by_name["a"].note_request();
        let mut new = Clients::new(vec![
            client("a", Credential::Subject("CN=a".into()), 50),
            client("b", Credential::Subject("CN=b".into()), 0),
        ]);
        new.carry_state_from(&old);
        assert_eq!(new.report()[0].requests, 1);
        assert_eq!(
            new.widened_from(&old),
            [
                "client a changed (its credential, routes, targets or limits)",
                "client b added"
            ]
        );
        assert!(old.widened_from(&old).is_empty());
    }
}
