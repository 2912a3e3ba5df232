use std::time::Duration;

use super::allowlist::{Allowlist, ServerAccess};
use super::*;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Config::from_text(std::path::Path::new("test.toml"), text)?.validate()
}

#[test]
fn a_mistyped_key_is_placed_at_its_own_line_on_one_line() {
    let text = "[routes.a]\nkind = \"kafka\"\nbrokers = [\"k:9092\"]\ntopc = \"t\"\n";
    let error = parse(text).unwrap_err().to_string();
    assert!(
        error.starts_with("invalid config file test.toml: line 4, column 1: unknown field `topc`"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");
    let error = parse("[routes.a\n").unwrap_err().to_string();
    assert!(
        error.starts_with("invalid config file test.toml: line 1, column 10: "),
        "{error}"
    );
}

#[test]
fn an_empty_file_gives_the_documented_defaults() {
    let s = parse("").unwrap();
    assert_eq!(s.server.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(s.policy, RetryPolicy::default());
    assert_eq!(s.producer.kafka.message_timeout, Duration::from_secs(6));
    assert_eq!(s.server.workers, 1);
}

#[test]
fn localhost_is_a_listen_address_and_other_names_are_not() {
    let s = parse("[server]\nlisten = \"localhost:4000\"\n[ops]\nlisten = \"localhost:4001\"\n")
        .unwrap();
    assert_eq!(s.server.listen, "127.0.0.1:4000".parse().unwrap());
    assert_eq!(s.ops.listen, "127.0.0.1:4001".parse().unwrap());
    let refused = parse("[server]\nlisten = \"login1:4000\"\n").unwrap_err();
    assert!(
        refused.to_string().contains("or localhost:PORT"),
        "{refused}"
    );
    assert_eq!(
        listen_address("[::1]:4000"),
        Some("[::1]:4000".parse().unwrap())
    );
    assert_eq!(listen_address("localhost:x"), None);
}

#[test]
fn the_sample_config_is_valid_and_holds_the_defaults() {
    let sample = include_str!("../../config/ferry.toml");
    let s = parse(sample).unwrap();
    let d = parse("").unwrap();
    assert_eq!(format!("{s:?}"), format!("{d:?}"));
}

#[test]
fn rabbitmq_tls_files_are_read_per_server_and_checked() {
    let dir = std::env::temp_dir().join(format!("ferry-amqp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = |name: &str| {
        let path = dir.join(name);
        let text = format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n");
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (site, research, cert, key) = (pem("site"), pem("research"), pem("c"), pem("k"));
    let s = parse(&format!(
        "[rabbitmq]\ntls_ca_file = \"{site}\"\ntls_cert_file = \"{cert}\"\n\
         tls_key_file = \"{key}\"\n[rabbitmq.servers.\"MQ.Example:5671\"]\n\
         tls_ca_file = \"{research}\""
    ))
    .unwrap();
    let amqp = &s.producer.amqp;
    assert!(
        amqp.tls_for("other:5671")
            .ca_pem
            .as_ref()
            .unwrap()
            .contains("site")
    );
    assert!(amqp.tls_for("other:5671").identity.is_some());
    let research_tls = amqp.tls_for("mq.example:5671");
    assert!(research_tls.ca_pem.as_ref().unwrap().contains("research"));
    assert!(research_tls.identity.is_none(), "per server, not merged");

    let field = |text: String| match parse(&text).unwrap_err() {
        ConfigError::Invalid { field, .. } => field,
        other => panic!("{other}"),
    };
    assert_eq!(
        field(format!("[rabbitmq]\ntls_cert_file = \"{cert}\"")),
        "rabbitmq.tls_key_file"
    );
    assert_eq!(
        field("[rabbitmq.servers.\"no port\"]\ntls_ca_file = \"\"".into()),
        "rabbitmq.servers"
    );
    let not_pem = dir.join("not-pem");
    std::fs::write(&not_pem, "hello").unwrap();
    assert_eq!(
        field(format!(
            "[rabbitmq]\ntls_ca_file = \"{}\"",
            not_pem.display()
        )),
        "rabbitmq.tls_ca_file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kafka_clusters_take_properties_and_secret_files_and_this_build_has_tls_and_sasl() {
    let dir = std::env::temp_dir().join(format!("ferry-kafka-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("pw");
    std::fs::write(&password, "s3cret\n").unwrap();
    let cluster = |properties: &str, secret: &str| {
        format!(
            "[[kafka.clusters]]\nbrokers = [\"K1:9093\", \"k2:9093\"]\n\
             properties = {{ {properties} }}\nsecret_files = {{ {secret} }}"
        )
    };
    let secret = format!("\"sasl.password\" = \"{}\"", password.display());
    // SCRAM over TLS, and Kerberos: librdkafka refuses a mechanism it was built without.
    // (Kerberos takes its keytab; librdkafka's kinit command names it.)
    for (mechanism, more) in [
        ("SCRAM-SHA-512", ""),
        ("PLAIN", ""),
        (
            "GSSAPI",
            ", \"sasl.kerberos.keytab\" = \"/etc/ferry/ferry.keytab\"",
        ),
    ] {
        let s = parse(&cluster(
            &format!(
                "\"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"{mechanism}\", \
                 \"sasl.username\" = \"ferry\"{more}"
            ),
            &secret,
        ))
        .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        let target = ferry_actors::KafkaTarget::try_new(["k2:9093"], 8).unwrap();
        let found = s.producer.kafka.cluster_for(&target).unwrap();
        assert!(
            found
                .secrets
                .contains(&("sasl.password".into(), "s3cret".into()))
        );
        assert!(!format!("{s:?}").contains("s3cret"), "a secret in Debug");
    }
    let other = ferry_actors::KafkaTarget::try_new(["k3:9092"], 8).unwrap();
    assert!(
        parse("")
            .unwrap()
            .producer
            .kafka
            .cluster_for(&other)
            .is_none()
    );

    let field = |text: String| match parse(&text).unwrap_err() {
        ConfigError::Invalid { field, reason } => (field, reason),
        other => panic!("{other}"),
    };
    let (f, reason) = field(cluster("\"sasl.password\" = \"inline\"", ""));
    assert_eq!(f, "kafka.clusters");
    assert!(reason.contains("secret_files"), "{reason}");
    let (f, _) = field(cluster("\"acks\" = \"1\"", ""));
    assert_eq!(f, "kafka.clusters");
    let (f, reason) = field(format!("{}\n{}", cluster("", ""), cluster("", "")));
    assert!(reason.contains("two clusters"), "{f}: {reason}");
    let (f, _) = field(cluster("\"security.protocol\" = \"NOPE\"", ""));
    assert_eq!(f, "kafka");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn beyond_loopback_an_allowlist_or_an_explicit_any_is_needed() {
    let open = parse("[server]\nlisten = \"0.0.0.0:1\"\n[access]\nallow_any_target = true");
    assert_eq!(open.unwrap().access, Access::Any);
    let listed = parse(
        "[server]\nlisten = \"0.0.0.0:1\"\n[access]\nkafka_brokers = [\"K:9092\"]\n\
         [[access.rabbitmq]]\nserver = \"MQ\"\nexchanges = [\"*\"]",
    )
    .unwrap();
    let Access::Only(list) = listed.access else {
        panic!("an allowlist")
    };
    assert!(list.kafka_brokers.contains("k:9092"));
    assert_eq!(list.rabbitmq.get("mq:5672"), Some(&ServerAccess::ANY));
    assert_eq!(parse("").unwrap().access, Access::Any, "loopback");
}

#[test]
fn beyond_loopback_routes_alone_allow_only_the_routes() {
    let routes_only = parse(
        "[server]\nlisten = \"0.0.0.0:1\"\n[routes.events]\nkind = \"kafka\"\n\
         brokers = [\"k1:9092\"]\ntopic = \"nwp.events\"\n",
    )
    .unwrap();
    assert_eq!(routes_only.access, Access::Only(Allowlist::default()));
    assert_eq!(routes_only.routes.len(), 1);
    let error = parse("[server]\nlisten = \"0.0.0.0:1\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("needs routes, an allowlist"), "{error}");
    let bad_route =
        parse("[routes.events]\nkind = \"kafka\"\nbrokers = [\"k1:9092\"]\ntopic = \"\"\n")
            .unwrap_err()
            .to_string();
    assert!(bad_route.contains("routes.events.topic"), "{bad_route}");
}

#[test]
fn unknown_fields_are_refused() {
    let err = parse("[server]\nlisten_addr = \"x\"").unwrap_err();
    assert!(err.to_string().contains("listen_addr"), "{err}");
}

#[test]
fn bad_values_name_their_field() {
    for (text, field) in [
        ("[server]\nlisten = \"nowhere\"", "server.listen"),
        (
            "[server]\nshutdown_grace_ms = 0",
            "server.shutdown_grace_ms",
        ),
        ("[ops]\nlisten = \"localhost\"", "ops.listen"),
        ("[server]\nlisten = \"0.0.0.0:1\"", "access"),
        (
            "[access]\nallow_any_target = true\nkafka_brokers = [\"k:1\"]",
            "access.allow_any_target",
        ),
        (
            "[access]\nkafka_brokers = [\"nohost\"]",
            "access.kafka_brokers",
        ),
        (
            "[[access.rabbitmq]]\nserver = \"mq\"\nexchanges = []",
            "access.rabbitmq.exchanges",
        ),
        ("[policy]\nmax_attempts = 0", "policy.max_attempts"),
        ("[policy]\ntimeout_step_ms = 0", "policy.timeout_step_ms"),
        ("[producers]\nmax_targets = 0", "producers.max_targets"),
        (
            "[producers]\nmax_kafka_targets = 0",
            "producers.max_kafka_targets",
        ),
        (
            "[server]\nmax_in_flight_bytes = 1000",
            "server.max_in_flight_bytes",
        ),
        (
            "[server]\nmax_streams_per_connection = 0",
            "server.max_streams_per_connection",
        ),
        (
            "[server]\nidle_connection_timeout_ms = 6000",
            "server.idle_connection_timeout_ms",
        ),
        (
            "[server]\nhandshake_timeout_ms = 0",
            "server.handshake_timeout_ms",
        ),
        (
            "[kafka]\nmax_brokers_per_target = 65",
            "kafka.max_brokers_per_target",
        ),
        ("[kafka.properties]\nacks = \"1\"", "kafka.properties"),
        ("[kafka.properties]\n\"no.such.property\" = \"1\"", "kafka"),
    ] {
        match parse(text) {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn with_several_bad_fields_the_first_in_checking_order_is_named() {
    // The order is part of the interface: a fix for one field must not reveal an error
    // "before" it. Server, ops, policy, the server's timeouts, Kafka's broker bound,
    // spool, access, producers, RabbitMQ, Kafka's properties, routes, clients.
    for (text, field) in [
        (
            "[server]\nlisten = \"nowhere\"\n[policy]\nmax_attempts = 0",
            "server.listen",
        ),
        (
            "[ops]\nlisten = \"x\"\n[policy]\nmax_attempts = 0",
            "ops.listen",
        ),
        (
            "[policy]\nmax_attempts = 0\n[server]\nidle_connection_timeout_ms = 1",
            "policy.max_attempts",
        ),
        (
            "[kafka]\nmax_brokers_per_target = 65\n[spool]\ndir = \"/x\"\nmax_bytes = 0",
            "kafka.max_brokers_per_target",
        ),
        (
            "[producers]\nmax_targets = 0\n[rabbitmq]\nframe_max_bytes = 1",
            "producers.max_targets",
        ),
        (
            "[rabbitmq]\nframe_max_bytes = 1\n[kafka.properties]\nacks = \"0\"",
            "rabbitmq.frame_max_bytes",
        ),
    ] {
        match parse(text) {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}
