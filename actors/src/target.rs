//! Validated targets (a Kafka broker set, a RabbitMQ server + exchange) and route checks.
//!
//! A [`Target`] is also the key of the producer registry: two requests naming the same
//! brokers in another order, or with different letter case in host names, share a producer.

use std::fmt;
use std::str::FromStr;

use lapin::uri::{AMQPScheme, AMQPUri};

use crate::error::InvalidRequest;

/// Longest Kafka topic name the broker accepts.
const MAX_TOPIC_LEN: usize = 249;
/// Longest AMQP short string (exchange names and routing keys).
const MAX_SHORT_STRING: usize = 255;
/// Most bootstrap addresses accepted for one broker set.
const MAX_BROKERS: usize = 64;

/// Where a message goes: the producer actor that serves it is chosen by this value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Kafka cluster, named by its bootstrap brokers.
    Kafka(KafkaTarget),
    /// A RabbitMQ server and the exchange messages are published to.
    Amqp(AmqpTarget),
}

impl Target {
    /// The kind of middleware, as shown in logs and stats (`kafka` or `rabbitmq`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kafka(_) => "kafka",
            Self::Amqp(_) => "rabbitmq",
        }
    }
}

/// Shows the target with any password replaced by `***`.
impl Target {
    /// Where it points, without its kind and with credentials redacted: the broker list,
    /// or `URL exchange NAME`.
    pub fn endpoint(&self) -> String {
        match self {
            Self::Kafka(t) => t.bootstrap_servers().to_owned(),
            Self::Amqp(t) => format!("{} exchange {}", t.redacted_url(), t.exchange()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.endpoint())
    }
}

/// A normalised, validated set of Kafka bootstrap addresses.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KafkaTarget {
    /// `host:port` entries, host lower-cased, sorted and de-duplicated, joined by commas.
    bootstrap: String,
}

impl KafkaTarget {
    /// Validates and normalises a list of `host:port` bootstrap addresses.
    pub fn try_new<I, S>(brokers: I) -> Result<Self, InvalidRequest>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut normalised = Vec::new();
        for broker in brokers {
            let broker = broker.as_ref().trim();
            normalised.push(normalise_host_port(broker)?);
            if normalised.len() > MAX_BROKERS {
                return Err(InvalidRequest::new(
                    "brokers",
                    format!("more than {MAX_BROKERS} addresses"),
                ));
            }
        }
        if normalised.is_empty() {
            return Err(InvalidRequest::new(
                "brokers",
                "the list is empty; give at least one host:port",
            ));
        }
        normalised.sort_unstable();
        normalised.dedup();
        Ok(Self {
            bootstrap: normalised.join(","),
        })
    }

    /// The value for librdkafka's `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Each normalised `host:port` address.
    pub fn brokers(&self) -> impl Iterator<Item = &str> {
        self.bootstrap.split(',')
    }
}

impl fmt::Debug for KafkaTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KafkaTarget").field(&self.bootstrap).finish()
    }
}

/// Checks one `host:port` address and lower-cases its host (the form targets are compared
/// in).
pub fn normalise_host_port(addr: &str) -> Result<String, InvalidRequest> {
    let bad = |reason: String| InvalidRequest::new("brokers", reason);
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("{addr:?} is not host:port")))?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if !port_ok {
        return Err(bad(format!("{addr:?} has no valid port (1-65535)")));
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    if !host_ok {
        return Err(bad(format!("{addr:?} has an invalid host")));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// A validated RabbitMQ server URL and exchange.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AmqpTarget {
    /// The URL as the sender gave it (credentials included; never shown).
    url: String,
    /// The server's `host:port` (host lower-cased, port 5672 unless given).
    server: String,
    /// The exchange messages are published to.
    exchange: String,
}

impl AmqpTarget {
    /// Validates an AMQP URL (`amqp://user:pass@host:port/vhost`) and an exchange name.
    pub fn try_new(url: &str, exchange: &str) -> Result<Self, InvalidRequest> {
        let url = url.trim();
        if url.is_empty() {
            return Err(InvalidRequest::new("server", "empty; give an amqp:// URL"));
        }
        let parsed = AMQPUri::from_str(url).map_err(|e| {
            InvalidRequest::new(
                "server",
                format!("{} is not an AMQP URL: {e}", redact_url(url)),
            )
        })?;
        if parsed.scheme == AMQPScheme::AMQPS {
            return Err(InvalidRequest::new(
                "server",
                "amqps:// (TLS) is not supported by this ferry build; use amqp://",
            ));
        }
        validate_exchange(exchange)?;
        let host = parsed.authority.host.to_ascii_lowercase();
        let server = if host.contains(':') {
            format!("[{host}]:{}", parsed.authority.port)
        } else {
            format!("{host}:{}", parsed.authority.port)
        };
        Ok(Self {
            url: url.to_owned(),
            server,
            exchange: exchange.to_owned(),
        })
    }

    /// The URL to connect to. It may hold a password: never log it, log [`Self::redacted_url`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The server's `host:port`, host lower-cased, port 5672 unless the URL gives one.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The exchange messages are published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }
}

impl fmt::Debug for AmqpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTarget")
            .field("url", &self.redacted_url())
            .field("exchange", &self.exchange)
            .finish()
    }
}

/// Replaces the password in `scheme://user:password@host…` by `***`; other text is kept.
/// When an `@` comes after the authority (a password holding `/`, `?` or `#`, or a
/// malformed URL), everything between `://` and the last `@` is hidden: better too much
/// than a password.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some(at) = rest[..authority_end].rfind('@') {
        return match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        };
    }
    // An '@' past the first '/', '?' or '#' (a password holding one of them, or a
    // malformed URL): what comes before it may be a password, so all of it is hidden.
    match rest.rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Checks a Kafka topic name against the broker's rules.
pub fn validate_topic(topic: &str) -> Result<(), InvalidRequest> {
    let bad = |reason: &str| Err(InvalidRequest::new("topic", reason));
    if topic.is_empty() {
        return bad("empty; give a topic name");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return bad("longer than 249 characters");
    }
    if topic == "." || topic == ".." {
        return bad("may not be \".\" or \"..\"");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may hold only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Checks an exchange name against RabbitMQ's rules (the default exchange `""` is refused:
/// it cannot be declared, and publishing to it bypasses routing).
fn validate_exchange(exchange: &str) -> Result<(), InvalidRequest> {
    let bad = |reason: &str| Err(InvalidRequest::new("exchange", reason));
    if exchange.is_empty() {
        return bad("empty; give an exchange name");
    }
    if exchange.len() > MAX_SHORT_STRING {
        return bad("longer than 255 bytes");
    }
    if exchange.starts_with("amq.") {
        return bad("names starting with \"amq.\" are reserved by the broker");
    }
    if !exchange
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return bad("may hold only ASCII letters, digits, '.', '_', '-' and ':'");
    }
    Ok(())
}

/// Checks an AMQP routing key (any UTF-8 up to 255 bytes; empty is allowed).
pub fn validate_routing_key(key: &str) -> Result<(), InvalidRequest> {
    if key.len() > MAX_SHORT_STRING {
        return Err(InvalidRequest::new("route_key", "longer than 255 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_broker_sets_are_normalised_into_one_key() {
        let a = KafkaTarget::try_new(["Kafka-B:9092", "kafka-a:9092"]).unwrap();
        let b = KafkaTarget::try_new([" kafka-a:9092", "kafka-b:9092", "KAFKA-A:9092"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.bootstrap_servers(), "kafka-a:9092,kafka-b:9092");
    }

    #[test]
    fn kafka_brokers_must_be_host_port() {
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:70000",
            ":9092",
            "a b:1",
            "h:p",
        ] {
            let err = KafkaTarget::try_new([bad]).unwrap_err();
            assert_eq!(err.field, "brokers", "{bad}");
        }
        assert!(KafkaTarget::try_new(Vec::<String>::new()).is_err());
        assert!(KafkaTarget::try_new(["[::1]:9092"]).is_ok());
    }

    #[test]
    fn topics_follow_kafka_rules() {
        assert!(validate_topic("nwpc.production_x-1").is_ok());
        for bad in ["", ".", "..", "a b", "ü", &"x".repeat(250)] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amqp_targets_need_a_url_and_a_declarable_exchange() {
        let t = AmqpTarget::try_new("amqp://u:secret@h:5672/%2f", "nwpc.operation.workflow");
        assert!(t.is_ok());
        assert_eq!(AmqpTarget::try_new("", "x").unwrap_err().field, "server");
        assert_eq!(
            AmqpTarget::try_new("http://h", "x").unwrap_err().field,
            "server"
        );
        assert_eq!(
            AmqpTarget::try_new("amqps://h", "x").unwrap_err().field,
            "server"
        );
        for bad in ["", "amq.topic", "a b", &"x".repeat(256)] {
            assert_eq!(
                AmqpTarget::try_new("amqp://h", bad).unwrap_err().field,
                "exchange",
                "{bad}"
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        let t = AmqpTarget::try_new("amqp://user:s3cret@host:5672/%2f", "ex").unwrap();
        let shown = format!(
            "{} {:?} {:?}",
            Target::Amqp(t.clone()),
            t,
            Target::Amqp(t.clone())
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("amqp://user:***@host:5672/%2f"), "{shown}");
        let err = AmqpTarget::try_new("amqp://user:s3cret@host:notaport/", "ex").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn redaction_keeps_urls_without_password() {
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(redact_url("amqp://user@host"), "amqp://user@host");
        assert_eq!(redact_url("amqp://u:p@h/v@x"), "amqp://u:***@h/v@x");
        assert_eq!(redact_url("not a url"), "not a url");
        // Found by the fuzzer: an '@' after the first '/' hides everything before it.
        assert_eq!(
            redact_url("amqp:///:er:secretpw@mq1:5672/%2"),
            "amqp://***@mq1:5672/%2"
        );
        assert_eq!(redact_url("amqp://u:pa/ss@h"), "amqp://***@h");
        assert_eq!(redact_url("amqp:/://er:sec?etpw@mq1"), "amqp:/://***@mq1");
        assert_eq!(redact_url("amqp://h/v?x=y"), "amqp://h/v?x=y");
    }
}
