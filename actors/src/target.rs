//! Validated targets (a Kafka broker set, a RabbitMQ server + exchange) and route checks.
//!
//! A [`Target`] is also the key of the producer registry: two requests naming the same
//! brokers in another order, or with different letter case in host names, share a producer.

use std::fmt;
use std::str::FromStr;

use lapin::uri::AMQPUri;

use crate::error::InvalidRequest;

/// Longest Kafka topic name the broker accepts.
const MAX_TOPIC_LEN: usize = 249;
/// Longest AMQP short string (exchange names and routing keys).
const MAX_SHORT_STRING: usize = 255;
/// Most bootstrap addresses a broker set may name by default. librdkafka keeps a thread
/// and a socket per broker it knows, so a long list costs threads and descriptors; a
/// bootstrap list needs only a few of a cluster's brokers.
pub const DEFAULT_MAX_BROKERS_PER_TARGET: usize = 8;

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
    /// Validates and normalises a list of at most `max_brokers` `host:port` bootstrap
    /// addresses.
    pub fn try_new<I, S>(brokers: I, max_brokers: usize) -> Result<Self, InvalidRequest>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut normalised = Vec::new();
        for broker in brokers {
            let broker = broker.as_ref().trim();
            normalised.push(normalise_host_port(broker)?);
            if normalised.len() > max_brokers {
                return Err(InvalidRequest::new(
                    "brokers",
                    format!(
                        "more than {max_brokers} addresses (kafka.max_brokers_per_target); \
                         a bootstrap list needs only a few of the cluster's brokers"
                    ),
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
        is_host_name(host)
    };
    if !host_ok {
        return Err(bad(format!("{addr:?} has an invalid host")));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// A validated RabbitMQ server URL and exchange.
#[derive(Clone)]
pub struct AmqpTarget {
    /// The URL as the sender gave it (credentials included; never shown). Two targets
    /// are the same producer when their URLs and exchanges are equal.
    url: String,
    /// The URL parsed, with the host as the URL names it (the AMQP client's own parser
    /// replaces an IPv6 literal by "localhost"): what the producer connects with.
    uri: AMQPUri,
    /// The server's `host:port` (host lower-cased, IPv6 in brackets, port 5672 unless
    /// given).
    server: String,
    /// The exchange messages are published to.
    exchange: String,
}

impl PartialEq for AmqpTarget {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.exchange == other.exchange
    }
}

impl Eq for AmqpTarget {}

impl std::hash::Hash for AmqpTarget {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.url.hash(state);
        self.exchange.hash(state);
    }
}

/// The smallest frame AMQP 0-9-1 allows.
pub const AMQP_FRAME_MIN_BYTES: u32 = 4096;

/// The AMQP URL query parameters ferry accepts, each with its allowed range. Anything else
/// is refused: a parameter ferry does not know could change how much it allocates or where
/// it connects.
pub const AMQP_URL_PARAMETERS: &str = "frame_max (4096-131072), channel_max (1-2047), heartbeat (0-3600), \
     connection_timeout (1-60000), auth_mechanism (plain, amqplain, external)";

impl AmqpTarget {
    /// Validates an AMQP URL (`amqp://user:pass@host:port/vhost?param=value`, or
    /// `amqps://` for TLS, port 5671 unless given) and an exchange name. The host may be a name, an IPv4 address or an IPv6 literal in
    /// brackets; query parameters must be among [`AMQP_URL_PARAMETERS`], in range.
    pub fn try_new(url: &str, exchange: &str) -> Result<Self, InvalidRequest> {
        let url = url.trim();
        if url.is_empty() {
            return Err(InvalidRequest::new("server", "empty; give an amqp:// URL"));
        }
        let bad = |reason: String| InvalidRequest::new("server", reason);
        let not_amqp =
            |e: &dyn fmt::Display| bad(format!("{} is not an AMQP URL: {e}", redact_url(url)));
        let parsed = url::Url::parse(url).map_err(|e| not_amqp(&e))?;
        let mut uri = AMQPUri::from_str(url).map_err(|e| not_amqp(&e))?;
        // The host as the URL names it. For a non-special scheme such as amqp, the URL
        // parser keeps a name or an IPv4 address as an opaque host and parses only a
        // bracketed IPv6 literal, which the AMQP client would turn into "localhost".
        let (host, server_host) = match parsed.host() {
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), format!("[{ip}]")),
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), ip.to_string()),
            Some(url::Host::Domain(name)) if is_host_name(name) => {
                let name = name.to_ascii_lowercase();
                (name.clone(), name)
            }
            Some(url::Host::Domain(name)) => {
                return Err(bad(format!(
                    "{} has an invalid host {name:?}",
                    redact_url(url)
                )));
            }
            None => {
                return Err(bad(format!(
                    "{} names no host; give amqp://user:pass@host:port/vhost",
                    redact_url(url)
                )));
            }
        };
        uri.authority.host = host;
        check_query(&parsed)?;
        validate_exchange(exchange)?;
        let server = format!("{server_host}:{}", uri.authority.port);
        Ok(Self {
            url: url.to_owned(),
            uri,
            server,
            exchange: exchange.to_owned(),
        })
    }

    /// The parsed URL to connect with (host, port, credentials, vhost and the accepted
    /// query parameters). It holds a password: never log it.
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// The URL to connect to. It may hold a password: never log it, log [`Self::redacted_url`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The server's `host:port`, host lower-cased (an IPv6 address in brackets), port 5672
    /// unless the URL gives one.
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

/// Whether `name` is a DNS host name ferry connects to (letters, digits, '.', '-', '_').
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// Refuses AMQP URL query parameters ferry does not accept, repeated ones, and values out
/// of their safe range (the AMQP client sizes its buffers from `frame_max`: a huge value
/// aborted the process).
fn check_query(url: &url::Url) -> Result<(), InvalidRequest> {
    let bad = |reason: String| Err(InvalidRequest::new("server", reason));
    let mut seen = Vec::new();
    for (key, value) in url.query_pairs() {
        if seen.contains(&key) {
            return bad(format!("URL parameter {key} is given more than once"));
        }
        let range = match key.as_ref() {
            "frame_max" => Some(u64::from(AMQP_FRAME_MIN_BYTES)..=131_072),
            "channel_max" => Some(1..=2047),
            "heartbeat" => Some(0..=3600),
            "connection_timeout" => Some(1..=60_000),
            "auth_mechanism" => {
                let mechanism = value.to_ascii_lowercase();
                if mechanism == "external" && url.scheme() != "amqps" {
                    return bad(
                        "URL parameter auth_mechanism=external needs amqps:// (the client \
                         certificate is the credential)"
                            .into(),
                    );
                }
                if !matches!(mechanism.as_str(), "plain" | "amqplain" | "external") {
                    return bad(format!(
                        "URL parameter auth_mechanism={value} is not supported; use plain, \
                         amqplain or external (a client certificate, with amqps://)"
                    ));
                }
                None
            }
            _ => {
                return bad(format!(
                    "URL parameter {key:?} is not supported; ferry accepts {AMQP_URL_PARAMETERS}"
                ));
            }
        };
        if let Some(range) = range
            && !value.parse::<u64>().is_ok_and(|v| range.contains(&v))
        {
            return bad(format!(
                "URL parameter {key}={value} is out of range ({}-{})",
                range.start(),
                range.end()
            ));
        }
        seen.push(key);
    }
    Ok(())
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
        let a = KafkaTarget::try_new(["Kafka-B:9092", "kafka-a:9092"], 8).unwrap();
        let b = KafkaTarget::try_new([" kafka-a:9092", "kafka-b:9092", "KAFKA-A:9092"], 8).unwrap();
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
            let err = KafkaTarget::try_new([bad], 8).unwrap_err();
            assert_eq!(err.field, "brokers", "{bad}");
        }
        assert!(KafkaTarget::try_new(Vec::<String>::new(), 8).is_err());
        assert!(KafkaTarget::try_new(["[::1]:9092"], 8).is_ok());
    }

    #[test]
    fn a_broker_set_names_at_most_the_bound_of_addresses() {
        let brokers: Vec<String> = (1..=63).map(|i| format!("k{i}:9092")).collect();
        let err = KafkaTarget::try_new(&brokers, 8).unwrap_err();
        assert_eq!(err.field, "brokers");
        assert!(err.reason.contains("max_brokers_per_target"), "{err}");
        assert!(KafkaTarget::try_new(&brokers[..8], 8).is_ok());
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
        let tls = AmqpTarget::try_new("amqps://H", "x").unwrap();
        assert_eq!(tls.server(), "h:5671");
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
    fn an_ipv6_amqp_host_is_kept_and_never_becomes_localhost() {
        let t = AmqpTarget::try_new("amqp://guest:guest@[::1]:5673/%2f", "ex").unwrap();
        assert_eq!(t.uri().authority.host, "::1");
        assert_eq!(t.server(), "[::1]:5673");
        let t = AmqpTarget::try_new("amqp://u:p@[FE80::1]/%2f", "ex").unwrap();
        assert_eq!(t.uri().authority.host, "fe80::1");
        assert_eq!(t.server(), "[fe80::1]:5672");
    }

    #[test]
    fn ipv4_and_named_amqp_hosts_are_kept() {
        let t = AmqpTarget::try_new("amqp://u:p@10.1.2.3:5673/v", "ex").unwrap();
        assert_eq!(t.uri().authority.host, "10.1.2.3");
        assert_eq!(t.server(), "10.1.2.3:5673");
        assert_eq!(t.uri().vhost, "v");
        let t = AmqpTarget::try_new("amqp://u:p@MQ1.site/%2f", "ex").unwrap();
        assert_eq!(t.uri().authority.host, "mq1.site");
        assert_eq!(t.uri().vhost, "/");
        assert_eq!(t.uri().authority.userinfo.password, "p");
    }

    #[test]
    fn an_amqp_url_must_name_a_valid_host() {
        for bad in [
            "amqp:///%2f",
            "amqp://u:p@/%2f",
            "amqp://h%20x/%2f",
            "amqp://[::1/",
        ] {
            assert_eq!(
                AmqpTarget::try_new(bad, "ex").unwrap_err().field,
                "server",
                "{bad}"
            );
        }
    }

    #[test]
    fn amqp_url_parameters_are_bounded_or_refused() {
        let ok = "amqp://h/%2f?frame_max=4096&heartbeat=30&channel_max=8\
                  &connection_timeout=500&auth_mechanism=PLAIN";
        assert!(AmqpTarget::try_new(ok, "ex").is_ok());
        for bad in [
            "amqp://guest:guest@127.0.0.1:5673/%2f?frame_max=4294967295",
            "amqp://h/%2f?frame_max=1048576",
            "amqp://h/%2f?frame_max=100",
            "amqp://h/%2f?frame_max=-1",
            "amqp://h/%2f?heartbeat=65535",
            "amqp://h/%2f?channel_max=0",
            "amqp://h/%2f?connection_timeout=0",
            "amqp://h/%2f?auth_mechanism=external",
            "amqp://h/%2f?cacertfile=/etc/passwd",
            "amqp://h/%2f?frame_max=4096&frame_max=131072",
        ] {
            let err = AmqpTarget::try_new(bad, "ex").unwrap_err();
            assert_eq!(err.field, "server", "{bad}");
        }
        assert!(AmqpTarget::try_new("amqps://h/%2f?auth_mechanism=external", "ex").is_ok());
        let err = AmqpTarget::try_new("amqp://u:s3cret@h/%2f?x=1", "ex").unwrap_err();
        assert!(err.reason.contains("\"x\" is not supported"), "{err}");
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
