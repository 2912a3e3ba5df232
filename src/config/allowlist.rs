//! The access rule every request is checked against: which Kafka brokers and RabbitMQ
//! servers (with their exchanges, virtual hosts and users) a target may name — for the
//! daemon (`[access]`) and for each client (`[[access.clients]]`) — built from the
//! entries as written, and compared across a reload to report what a new config widens.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ferry_actors::Target;
use ferry_actors::target::normalise_host_port;
use serde::Deserialize;

use crate::config::ConfigError;

/// The targets requests may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Any target (the daemon listens on loopback only, or `allow_any_target = true`).
    Any,
    /// Only those listed.
    Only(Allowlist),
}

/// Listed Kafka broker addresses and RabbitMQ servers with their exchanges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Normalised `host:port` Kafka bootstrap addresses.
    pub kafka_brokers: BTreeSet<String>,
    /// Normalised RabbitMQ `host:port` → what is allowed there.
    pub rabbitmq: BTreeMap<String, ServerAccess>,
}

/// What one RabbitMQ server of the allowlist may be used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAccess {
    /// The exchanges.
    pub exchanges: Names,
    /// The virtual hosts (any unless `vhosts` is given).
    pub vhosts: Names,
    /// The users a URL may log in as (any unless `users` is given).
    pub users: Names,
}

impl ServerAccess {
    /// Any exchange, vhost and user.
    pub const ANY: Self = Self {
        exchanges: Names::Any,
        vhosts: Names::Any,
        users: Names::Any,
    };

    /// What this entry allows that `old` did not, as phrases ("any exchange", "vhosts …").
    fn widened_from(&self, old: &Self) -> Vec<String> {
        let fields = [
            ("exchange", &self.exchanges, &old.exchanges),
            ("vhost", &self.vhosts, &old.vhosts),
            ("user", &self.users, &old.users),
        ];
        fields
            .into_iter()
            .filter_map(|(what, new, old)| {
                new.widened_from(old).map(|more| format!("{what}s {more}"))
            })
            .collect()
    }
}

/// Names allowed for one part of a target: any, or only these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// Any (`"*"`, or the field left out).
    Any,
    /// Only these.
    Only(BTreeSet<String>),
}

impl Names {
    /// The names a config lists: any when none is given or one is `"*"`.
    pub fn of(given: &[String]) -> Self {
        if given.is_empty() || given.iter().any(|e| e == "*") {
            Self::Any
        } else {
            Self::Only(given.iter().cloned().collect())
        }
    }

    /// Whether `name` is allowed.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(names) => names.contains(name),
        }
    }

    /// What this allows that `old` did not (`any`, or the names added), if anything.
    fn widened_from(&self, old: &Self) -> Option<String> {
        match (old, self) {
            (Self::Any, _) => None,
            (Self::Only(_), Self::Any) => Some("any".to_owned()),
            (Self::Only(was), Self::Only(names)) => {
                let added: BTreeSet<_> = names.difference(was).collect();
                (!added.is_empty()).then(|| format!("{added:?}"))
            }
        }
    }
}

/// A request named a target outside the allowlist; answered `error_no` 7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target not allowed: {0}")]
pub struct NotAllowed(pub String);

impl Access {
    /// Whether a request may name `target`. Nothing is connected to decide it.
    pub fn check(&self, target: &Target) -> Result<(), NotAllowed> {
        let Self::Only(list) = self else {
            return Ok(());
        };
        match target {
            Target::Kafka(kafka) => {
                match kafka.brokers().find(|b| !list.kafka_brokers.contains(*b)) {
                    Some(broker) => Err(NotAllowed(format!(
                        "Kafka broker {broker} is not in [access] kafka_brokers"
                    ))),
                    None => Ok(()),
                }
            }
            Target::Amqp(amqp) => {
                let server = amqp.server();
                let Some(allowed) = list.rabbitmq.get(server) else {
                    return Err(NotAllowed(format!(
                        "RabbitMQ server {server} is not in [access] rabbitmq"
                    )));
                };
                let uri = amqp.uri();
                let parts = [
                    ("exchange", amqp.exchange(), &allowed.exchanges),
                    ("vhost", uri.vhost.as_str(), &allowed.vhosts),
                    (
                        "user",
                        uri.authority.userinfo.username.as_str(),
                        &allowed.users,
                    ),
                ];
                match parts.iter().find(|(_, name, names)| !names.allows(name)) {
                    Some((what, name, _)) => Err(NotAllowed(format!(
                        "{what} {name:?} is not allowed on {server}"
                    ))),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Access {
    /// What this access allows that `old` did not, one sentence each; empty when it allows
    /// nothing more (a reload says these in `ferry reload`'s output and the log).
    pub fn widened_from(&self, old: &Self) -> Vec<String> {
        match (old, self) {
            (Self::Any, _) => Vec::new(),
            (Self::Only(_), Self::Any) => {
                vec!["[access]: requests may now name any target".to_owned()]
            }
            (Self::Only(old), Self::Only(new)) => new.widened_from(old),
        }
    }
}

impl Allowlist {
    /// What this list allows that `old` did not, one sentence each.
    fn widened_from(&self, old: &Self) -> Vec<String> {
        let mut widened: Vec<String> = self
            .kafka_brokers
            .difference(&old.kafka_brokers)
            .map(|broker| format!("[access]: Kafka broker {broker} is now allowed"))
            .collect();
        for (server, allowed) in &self.rabbitmq {
            let more = match old.rabbitmq.get(server) {
                None => vec!["now allowed".to_owned()],
                Some(was) => allowed
                    .widened_from(was)
                    .into_iter()
                    .map(|more| format!("now allows {more}"))
                    .collect(),
            };
            widened.extend(
                more.into_iter()
                    .map(|more| format!("[access]: RabbitMQ server {server} {more}")),
            );
        }
        widened
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any target"),
            Self::Only(list) => write!(
                f,
                "allowlist of {} Kafka brokers and {} RabbitMQ servers",
                list.kafka_brokers.len(),
                list.rabbitmq.len()
            ),
        }
    }
}

/// One `[[access.rabbitmq]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqAccess {
    /// `host:port` of the server (port 5672 if omitted).
    pub server: String,
    /// Exchanges allowed on it; `"*"` allows any.
    pub exchanges: Vec<String>,
    /// Virtual hosts allowed on it (decoded, e.g. `"/"`); left out or `"*"`: any.
    #[serde(default)]
    pub vhosts: Vec<String>,
    /// Users a URL may log in as; left out or `"*"`: any.
    #[serde(default)]
    pub users: Vec<String>,
}

/// The config fields an allowlist's errors name: Kafka brokers, RabbitMQ servers, and
/// their exchanges.
pub struct AllowlistFields(pub &'static str, pub &'static str, pub &'static str);

/// The allowlist of `kafka_brokers` and `rabbitmq` entries, normalised; errors name
/// `fields`.
pub fn allowlist(
    kafka_brokers: &[String],
    rabbitmq: &[RabbitMqAccess],
    fields: &AllowlistFields,
) -> Result<Allowlist, ConfigError> {
    let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
    let mut list = Allowlist::default();
    for broker in kafka_brokers {
        let broker = normalise_host_port(broker).map_err(|e| invalid(fields.0, e.reason))?;
        list.kafka_brokers.insert(broker);
    }
    for entry in rabbitmq {
        let server = if entry
            .server
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            entry.server.clone()
        } else {
            format!("{}:5672", entry.server)
        };
        let server = normalise_host_port(&server).map_err(|e| invalid(fields.1, e.reason))?;
        if entry.exchanges.is_empty() {
            return Err(invalid(
                fields.2,
                format!("{server}: list the exchanges allowed, or \"*\" for any"),
            ));
        }
        let allowed = ServerAccess {
            exchanges: Names::of(&entry.exchanges),
            vhosts: Names::of(&entry.vhosts),
            users: Names::of(&entry.users),
        };
        list.rabbitmq.insert(server, allowed);
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_actors::{AmqpTarget, KafkaTarget};

    fn list() -> Access {
        let mut list = Allowlist::default();
        list.kafka_brokers.insert("kafka1:9092".into());
        list.kafka_brokers.insert("kafka2:9092".into());
        list.rabbitmq.insert(
            "mq1:5672".into(),
            ServerAccess {
                exchanges: Names::Only(["nwpc.operation.workflow".to_owned()].into()),
                ..ServerAccess::ANY
            },
        );
        list.rabbitmq.insert("mq2:5673".into(), ServerAccess::ANY);
        list.rabbitmq.insert(
            "mq4:5672".into(),
            ServerAccess {
                vhosts: Names::Only(["nwp".to_owned()].into()),
                users: Names::Only(["ferry".to_owned()].into()),
                ..ServerAccess::ANY
            },
        );
        Access::Only(list)
    }

    fn kafka(brokers: &[&str]) -> Target {
        Target::Kafka(KafkaTarget::try_new(brokers, 8).unwrap())
    }

    fn amqp(url: &str, exchange: &str) -> Target {
        Target::Amqp(AmqpTarget::try_new(url, exchange).unwrap())
    }

    #[test]
    fn widening_is_named_and_narrowing_is_not() {
        let old = list();
        assert!(old.widened_from(&old).is_empty());
        assert!(old.widened_from(&Access::Any).is_empty(), "narrower");
        assert_eq!(Access::Any.widened_from(&old).len(), 1);
        let Access::Only(mut wider) = old.clone() else {
            unreachable!()
        };
        wider.kafka_brokers.insert("kafka3:9092".into());
        wider.kafka_brokers.remove("kafka1:9092");
        wider.rabbitmq.insert("mq1:5672".into(), ServerAccess::ANY);
        wider.rabbitmq.insert("mq3:5672".into(), ServerAccess::ANY);
        wider.rabbitmq.insert(
            "mq4:5672".into(),
            ServerAccess {
                vhosts: Names::Only(["nwp".to_owned(), "other".to_owned()].into()),
                users: Names::Only(["ferry".to_owned()].into()),
                ..ServerAccess::ANY
            },
        );
        let said = Access::Only(wider).widened_from(&old);
        assert_eq!(
            said,
            [
                "[access]: Kafka broker kafka3:9092 is now allowed",
                "[access]: RabbitMQ server mq1:5672 now allows exchanges any",
                "[access]: RabbitMQ server mq3:5672 now allowed",
                "[access]: RabbitMQ server mq4:5672 now allows vhosts {\"other\"}",
            ]
        );
    }

    #[test]
    fn only_listed_targets_pass() {
        let access = list();
        assert!(access.check(&kafka(&["KAFKA1:9092"])).is_ok());
        assert!(
            access
                .check(&kafka(&["kafka1:9092", "kafka2:9092"]))
                .is_ok()
        );
        let error = access
            .check(&kafka(&["kafka1:9092", "intranet:22"]))
            .unwrap_err();
        assert!(error.to_string().contains("intranet:22"), "{error}");
        assert!(access.check(&kafka(&["kafka1:9093"])).is_err());

        let workflow = "nwpc.operation.workflow";
        assert!(access.check(&amqp("amqp://u:p@MQ1/%2f", workflow)).is_ok());
        assert!(access.check(&amqp("amqp://mq1:5672", workflow)).is_ok());
        assert!(access.check(&amqp("amqp://mq1:5672", "other")).is_err());
        assert!(access.check(&amqp("amqp://mq1:5673", workflow)).is_err());
        assert!(access.check(&amqp("amqp://mq2:5673", "anything")).is_ok());
        assert!(access.check(&amqp("amqp://mq3", workflow)).is_err());
        // Vhost and user, where the entry names them.
        assert!(access.check(&amqp("amqp://ferry:p@mq4/nwp", "x")).is_ok());
        let vhost = access.check(&amqp("amqp://ferry:p@mq4/other", "x"));
        assert!(vhost.unwrap_err().to_string().contains("vhost \"other\""));
        let user = access.check(&amqp("amqp://admin:p@mq4/nwp", "x"));
        assert!(user.unwrap_err().to_string().contains("user \"admin\""));
        assert!(access.check(&amqp("amqp://ferry:p@mq4/%2f", "x")).is_err());
        assert!(Access::Any.check(&kafka(&["intranet:22"])).is_ok());
    }
}
