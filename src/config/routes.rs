//! Named routes (`[routes.NAME]` in the config): a job names a route and the daemon supplies
//! the target, so job scripts carry no broker address and no password. A route's target is
//! allowed by definition; what a sender may change (the topic or routing key) is limited by
//! the route's patterns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::report::RouteSummary;
use bytes::Bytes;
use ferry_actors::target::{validate_routing_key, validate_topic};
use ferry_actors::{AmqpTarget, InvalidRequest, KafkaTarget, Target};
use serde::Deserialize;

/// Most routes one config may hold.
pub const MAX_ROUTES: usize = 1024;
/// Longest route name, in bytes.
pub const MAX_ROUTE_NAME_BYTES: usize = 64;
/// Most patterns in one `allow_topic` / `allow_routing_key`.
pub const MAX_PATTERNS: usize = 64;

/// One `[routes.NAME]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RouteConfig {
    /// `kind = "kafka"`.
    Kafka {
        /// Bootstrap brokers, `host:port`.
        brokers: Vec<String>,
        /// The topic.
        topic: String,
        /// A key for messages that bring none (UTF-8 text).
        #[serde(default)]
        key: Option<String>,
        /// Topics a sender may name instead of `topic` (`*` any run of characters, `?`
        /// one); none by default.
        #[serde(default)]
        allow_topic: Vec<String>,
    },
    /// `kind = "rabbitmq"`.
    Rabbitmq {
        /// The AMQP URL, with the user name but never the password.
        server: String,
        /// File holding the password (its first line; readable by the daemon only).
        #[serde(default)]
        password_file: Option<PathBuf>,
        /// The exchange.
        exchange: String,
        /// The routing key.
        #[serde(default)]
        routing_key: String,
        /// Routing keys a sender may use instead of `routing_key` (`*`, `?`); none by
        /// default.
        #[serde(default)]
        allow_routing_key: Vec<String>,
    },
}

/// A route that cannot be used; the daemon refuses to start (or to reload).
#[derive(Debug, thiserror::Error)]
#[error("routes.{route}.{field}: {reason}")]
pub struct RouteError {
    /// The route's name.
    pub route: String,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub reason: String,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name: what a spooled message sent through it is filed under.
    pub name: Arc<str>,
    /// Where its messages go (for RabbitMQ, the URL with the password from its file).
    pub target: Target,
    /// The topic or routing key when the sender names none.
    pub subject: String,
    /// Subjects a sender may name instead.
    allow: Vec<String>,
    /// The Kafka key for messages that bring none.
    pub default_key: Option<Bytes>,
}

/// Every route of the config, by name.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// The routes.
    by_name: BTreeMap<String, Route>,
    /// What is accepted but should be fixed (a password file others may read), one
    /// sentence each: logged by the daemon once its log format is set.
    warnings: Vec<String>,
}

impl Routes {
    /// Validates the `[routes]` tables; `max_brokers` bounds a Kafka route's brokers as it
    /// bounds a request's.
    pub fn from_config(
        config: &BTreeMap<String, RouteConfig>,
        max_brokers: usize,
    ) -> Result<Self, RouteError> {
        if config.len() > MAX_ROUTES {
            return Err(RouteError {
                route: "*".into(),
                field: "name",
                reason: format!(
                    "{} routes is more than the {MAX_ROUTES} allowed",
                    config.len()
                ),
            });
        }
        let mut by_name = BTreeMap::new();
        let mut warnings = Vec::new();
        for (name, route) in config {
            let error = |field, reason: String| RouteError {
                route: name.clone(),
                field,
                reason,
            };
            check_name("route", name).map_err(|reason| error("name", reason))?;
            let field_error = |e: InvalidRequest| error(e.field, e.reason);
            let route = match route {
                RouteConfig::Kafka {
                    brokers,
                    topic,
                    key,
                    allow_topic,
                } => {
                    let kafka = KafkaTarget::try_new(brokers, max_brokers).map_err(field_error)?;
                    validate_topic(topic).map_err(field_error)?;
                    check_patterns(allow_topic).map_err(|r| error("allow_topic", r))?;
                    Route {
                        name: Arc::from(name.as_str()),
                        target: Target::Kafka(kafka),
                        subject: topic.clone(),
                        allow: allow_topic.clone(),
                        default_key: key.as_ref().map(|key| Bytes::from(key.clone())),
                    }
                }
                RouteConfig::Rabbitmq {
                    server,
                    password_file,
                    exchange,
                    routing_key,
                    allow_routing_key,
                } => {
                    let url = with_password(server, password_file.as_ref())
                        .map_err(|(field, reason)| error(field, reason))?;
                    warnings.extend(password_warning(name, server, password_file.as_deref()));
                    let amqp = AmqpTarget::try_new(&url, exchange).map_err(field_error)?;
                    validate_routing_key(routing_key).map_err(field_error)?;
                    check_patterns(allow_routing_key).map_err(|r| error("allow_routing_key", r))?;
                    Route {
                        name: Arc::from(name.as_str()),
                        target: Target::Amqp(amqp),
                        subject: routing_key.clone(),
                        allow: allow_routing_key.clone(),
                        default_key: None,
                    }
                }
            };
            by_name.insert(name.clone(), route);
        }
        Ok(Self { by_name, warnings })
    }

    /// What the config's routes should fix, though accepted (see [`Routes::warnings`]).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The route called `name`.
    pub fn get(&self, name: &str) -> Option<&Route> {
        self.by_name.get(name)
    }

    /// Names and kinds, for the ops endpoint.
    pub fn summaries(&self) -> Vec<RouteSummary> {
        self.by_name
            .iter()
            .map(|(name, route)| RouteSummary {
                name: name.clone(),
                kind: route.target.kind().to_owned(),
            })
            .collect()
    }

    /// What these routes allow that `old` did not, one sentence each (no address or
    /// credential in them): a route added, a route now pointing elsewhere, a route whose
    /// senders may name more topics or routing keys. A rotated password is not a widening.
    pub fn widened_from(&self, old: &Self) -> Vec<String> {
        let mut widened = Vec::new();
        for (name, route) in &self.by_name {
            let Some(was) = old.by_name.get(name) else {
                widened.push(format!("route {name} added ({})", route.target.kind()));
                continue;
            };
            if route.target.kind() != was.target.kind()
                || route.target.endpoint() != was.target.endpoint()
            {
                widened.push(format!(
                    "route {name} now points to another server or exchange"
                ));
            }
            let added: Vec<&String> = route
                .allow
                .iter()
                .filter(|p| !was.allow.contains(p))
                .collect();
            if !added.is_empty() || route.subject != was.subject {
                widened.push(format!(
                    "route {name} lets senders name other topics or routing keys"
                ));
            }
        }
        widened
    }

    /// A route whose target is `target`'s endpoint (same kind, brokers or server, user,
    /// vhost and exchange; the password may differ).
    pub fn serving(&self, target: &Target) -> Option<&Route> {
        self.by_name.values().find(|route| {
            route.target.kind() == target.kind() && route.target.endpoint() == target.endpoint()
        })
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl Route {
    /// The topic or routing key for a message that asks for `wanted` (or none): the
    /// route's own, or `wanted` where an allow pattern matches it; `field` names the
    /// request field in an error.
    pub fn subject(
        &self,
        wanted: Option<&str>,
        field: &'static str,
    ) -> Result<String, InvalidRequest> {
        let Some(wanted) = wanted else {
            return Ok(self.subject.clone());
        };
        if wanted == self.subject || self.allow.iter().any(|p| matches(p, wanted)) {
            return Ok(wanted.to_owned());
        }
        let allowed = if self.allow.is_empty() {
            "this route allows none (its config has no allow pattern)".to_owned()
        } else {
            format!("this route allows {}", self.allow.join(", "))
        };
        Err(InvalidRequest::new(
            field,
            format!(
                "{wanted:?} is not the route's own ({:?}) and {allowed}",
                self.subject
            ),
        ))
    }
}

/// A name a config gives (a route's, a client's; `what` says which): 1 to
/// [`MAX_ROUTE_NAME_BYTES`] of ASCII letters, digits, `.`, `_`, `-`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let fine = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty() || name.len() > MAX_ROUTE_NAME_BYTES || !name.bytes().all(fine) {
        return Err(format!(
            "{name:?}: a {what} name is 1 to {MAX_ROUTE_NAME_BYTES} ASCII letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// Allow patterns: at most [`MAX_PATTERNS`], each non-empty.
fn check_patterns(patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_PATTERNS {
        return Err(format!(
            "{} patterns is more than the {MAX_PATTERNS} allowed",
            patterns.len()
        ));
    }
    if patterns.iter().any(String::is_empty) {
        return Err("a pattern is empty (\"*\" allows every name)".into());
    }
    Ok(())
}

/// The AMQP URL with the password read from `password_file`. A URL that holds a password
/// itself is refused: the config is not where a password goes.
fn with_password(
    server: &str,
    password_file: Option<&PathBuf>,
) -> Result<String, (&'static str, String)> {
    let mut url = url::Url::parse(server).map_err(|e| {
        (
            "server",
            format!("not a URL ({e}); e.g. amqp://ferry@mq1:5672/%2f"),
        )
    })?;
    if url.password().is_some() {
        return Err((
            "server",
            "holds a password: write the password in a file named by password_file and leave \
             it out of the URL"
                .into(),
        ));
    }
    let Some(path) = password_file else {
        return Ok(server.to_owned());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            "password_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let password = text.lines().next().unwrap_or("").trim_end();
    if password.is_empty() {
        return Err(("password_file", format!("{} is empty", path.display())));
    }
    if url.username().is_empty() {
        return Err((
            "server",
            "names no user: a password_file needs a user in the URL, e.g. amqp://ferry@mq1/%2f"
                .into(),
        ));
    }
    url.set_password(Some(password))
        .map_err(|()| ("server", "cannot carry a password".to_owned()))?;
    Ok(url.to_string())
}

/// What route `name`'s password set-up should fix, though it works: a password file every
/// user may read, or a user named in `server` with no password file (the client library
/// then logs in with the password "guest"; not said of `auth_mechanism=external`, which
/// logs in by client certificate).
fn password_warning(name: &str, server: &str, password_file: Option<&Path>) -> Option<String> {
    match password_file {
        Some(path) => readable_by_others(path).map(|mode| {
            format!(
                "routes.{name}.password_file is readable by every user (mode {mode:o}): \
                 chmod o-r it (600, owned by the daemon's user)"
            )
        }),
        None => {
            let url = url::Url::parse(server).ok()?;
            let external = url
                .query_pairs()
                .any(|(key, value)| key == "auth_mechanism" && value == "external");
            (!url.username().is_empty() && !external).then(|| {
                format!(
                    "routes.{name}.server names user {:?} but there is no password_file: the \
                     login uses the password \"guest\"; write the password in a file (mode \
                     600) and name it in password_file",
                    url.username()
                )
            })
        }
    }
}

/// The permission bits of `path` when every user may read it (the password is only as
/// safe as the file's mode; a group is the admins' choice).
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (none
/// included) and `?` for exactly one. Iterative, with one backtrack point: linear in
/// practice, never exponential.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == b'?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((star_i, star_j)) = star {
            i = star_i + 1;
            j = star_j + 1;
            star = Some((star_i, star_j + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BTreeMap<String, RouteConfig> {
        #[derive(Deserialize)]
        struct File {
            routes: BTreeMap<String, RouteConfig>,
        }
        toml::from_str::<File>(text).unwrap().routes
    }

    #[test]
    fn a_reload_names_what_its_routes_open_up() {
        let routes = |text: &str| Routes::from_config(&parse(text), 8).unwrap();
        let kafka = |name: &str, brokers: &str, extra: &str| {
            format!(
                "[routes.{name}]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"t\"\n{extra}\n"
            )
        };
        let old = routes(&(kafka("a", "k:1", "") + &kafka("b", "k:1", "allow_topic = [\"x\"]")));
        assert!(old.widened_from(&old).is_empty());
        let narrower = routes(&kafka("a", "k:1", ""));
        assert!(narrower.widened_from(&old).is_empty(), "a route removed");
        let wider = routes(
            &(kafka("a", "k:2", "")
                + &kafka("b", "k:1", "allow_topic = [\"x\", \"y*\"]")
                + &kafka("c", "k:1", "")),
        );
        let said = wider.widened_from(&old);
        assert_eq!(
            said,
            [
                "route a now points to another server or exchange",
                "route b lets senders name other topics or routing keys",
                "route c added (kafka)"
            ]
        );
    }

    #[test]
    fn patterns_match_runs_and_single_characters() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything.at.all"));
        assert!(matches("nwp.*", "nwp.events"));
        assert!(!matches("nwp.*", "nwpx"));
        assert!(matches("*.production.*", "grapes_gfs_gmf.production.grib2"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }

    #[test]
    fn a_route_validates_like_a_request_and_names_the_field() {
        let routes = parse(
            "[routes.events]\nkind = \"kafka\"\nbrokers = [\"k1:9092\"]\ntopic = \"bad topic\"\n",
        );
        let error = Routes::from_config(&routes, 8).unwrap_err().to_string();
        assert!(error.starts_with("routes.events.topic:"), "{error}");
        let routes = parse(
            "[routes.mq]\nkind = \"rabbitmq\"\nserver = \"amqp://u:secret@mq/%2f\"\nexchange = \"x\"\n",
        );
        let error = Routes::from_config(&routes, 8).unwrap_err().to_string();
        assert!(
            error.starts_with("routes.mq.server: holds a password"),
            "{error}"
        );
        assert!(!error.contains("secret"));
        // A user with no password would log in with the password "guest": warned of.
        let routes = parse(
            "[routes.mq]\nkind = \"rabbitmq\"\nserver = \"amqp://ferry@mq/%2f\"\nexchange = \"x\"\n",
        );
        let warned = Routes::from_config(&routes, 8).unwrap();
        assert!(
            warned.warnings()[0]
                .starts_with("routes.mq.server names user \"ferry\" but there is no password_file"),
            "{:?}",
            warned.warnings()
        );
        let external = parse(
            "[routes.mq]\nkind = \"rabbitmq\"\nserver = \"amqps://ferry@mq/%2f?auth_mechanism=external\"\nexchange = \"x\"\n",
        );
        assert!(
            Routes::from_config(&external, 8)
                .unwrap()
                .warnings()
                .is_empty()
        );
        let routes =
            parse("[routes.\"bad name\"]\nkind = \"kafka\"\nbrokers = [\"k:1\"]\ntopic = \"t\"\n");
        assert!(Routes::from_config(&routes, 8).is_err());
    }

    #[test]
    fn the_password_comes_from_its_file_and_stays_out_of_what_is_shown() {
        let dir = std::env::temp_dir().join(format!("ferry-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mq.password");
        std::fs::write(&file, "s3cret/with:odd@chars\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(readable_by_others(&file), Some(0o604), "warned of");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            readable_by_others(&file),
            None,
            "root:ferry 0640 is a usual set-up"
        );
        let routes = parse(&format!(
            "[routes.mq]\nkind = \"rabbitmq\"\nserver = \"amqp://ferry@mq1:5672/%2f\"\n\
             password_file = \"{}\"\nexchange = \"x\"\nrouting_key = \"a.b\"\n\
             allow_routing_key = [\"a.*\"]\n",
            file.display()
        ));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warned = Routes::from_config(&routes, 8).unwrap();
        assert_eq!(warned.warnings().len(), 1, "{:?}", warned.warnings());
        assert!(
            warned.warnings()[0]
                .starts_with("routes.mq.password_file is readable by every user (mode 644)")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let routes = Routes::from_config(&routes, 8).unwrap();
        assert!(routes.warnings().is_empty());
        let route = routes.get("mq").unwrap();
        let Target::Amqp(amqp) = &route.target else {
            panic!("an AMQP route");
        };
        assert_eq!(
            amqp.uri().authority.userinfo.password,
            "s3cret/with:odd@chars"
        );
        assert!(!route.target.to_string().contains("s3cret"));
        assert!(!format!("{routes:?}").contains("s3cret"));
        assert_eq!(
            routes.summaries(),
            [RouteSummary {
                name: "mq".into(),
                kind: "rabbitmq".into()
            }]
        );
        assert_eq!(route.subject(None, "routing_key").unwrap(), "a.b");
        assert_eq!(route.subject(Some("a.c"), "routing_key").unwrap(), "a.c");
        let error = route.subject(Some("b.c"), "routing_key").unwrap_err();
        assert_eq!(error.field, "routing_key");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
