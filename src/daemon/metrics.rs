//! `/metrics`: a [`Report`] in the OpenMetrics text format (which Prometheus scrapes),
//! encoded by `prometheus-client`. Per-producer series carry two labels, `kind` and
//! `target`; their number is bounded by `producers.max_targets`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::daemon::health::State;
use crate::report::{ProducerReport, Report};
use ferry_actors::stats::LATENCY_BUCKETS_US;

/// The content type of the text this module writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders `report` as OpenMetrics text.
pub fn render(report: Report) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("ferry");
    registry.register_collector(Box::new(Snapshot(report)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// A report, collected once.
#[derive(Debug)]
struct Snapshot(Report);

/// A per-producer counter: name, help, and how to read it.
type ProducerCounter = (&'static str, &'static str, fn(&ProducerReport) -> u64);

/// The per-producer counters.
const PRODUCER_COUNTERS: [ProducerCounter; 6] = [
    ("producer_sent", "Messages delivered to this target.", |p| {
        p.sent
    }),
    (
        "producer_failed",
        "Messages not delivered to this target.",
        |p| p.failed,
    ),
    (
        "producer_retried",
        "Attempts beyond the first for this target.",
        |p| p.retried,
    ),
    (
        "producer_restarts",
        "Supervisor restarts of this target's producer.",
        |p| p.restarts,
    ),
    (
        "producer_drops",
        "Connections to this target lost after carrying a delivery (failed connects do not \
         count): many in a short time is a broker that accepts connections and drops them.",
        |p| p.drops,
    ),
    (
        "producer_returned",
        "Messages the broker returned as unroutable (RabbitMQ, rabbitmq.mandatory).",
        |p| p.returned,
    ),
];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let report = &self.0;
        encode_daemon(&mut encoder, report)?;
        if let Some(spool) = &report.spool {
            encode_spool(&mut encoder, spool)?;
        }
        encode_clients(&mut encoder, &report.clients)?;
        encode_producers(&mut encoder, &report.producers)?;
        encode_latency(&mut encoder, &report.producers)
    }
}

/// The daemon-wide counters and gauges.
fn encode_daemon(encoder: &mut DescriptorEncoder<'_>, report: &Report) -> std::fmt::Result {
    for (name, help, value) in daemon_counters(report) {
        let counter = ConstCounter::new(value);
        counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
    }
    for (name, help, value) in daemon_gauges(report) {
        let gauge = ConstGauge::new(value);
        gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
    }
    Ok(())
}

/// The daemon-wide counters: name, help, value.
fn daemon_counters(report: &Report) -> [(&'static str, &'static str, u64); 10] {
    let totals = &report.totals;
    [
        (
            "messages_sent",
            "Messages delivered since start.",
            totals.sent,
        ),
        (
            "messages_failed",
            "Messages not delivered since start.",
            totals.failed,
        ),
        (
            "requests_invalid",
            "Requests refused as invalid since start.",
            totals.invalid,
        ),
        (
            "requests_not_allowed",
            "Requests naming a target outside the allowlist since start.",
            totals.not_allowed,
        ),
        (
            "attempts_retried",
            "Attempts beyond the first since start.",
            totals.retried,
        ),
        (
            "connections_refused",
            "Client connections closed at once because max_connections was reached.",
            totals.connections_refused,
        ),
        (
            "connections_timed_out",
            "Client connections closed for sending nothing or for idleness.",
            totals.connections_timed_out,
        ),
        (
            "producer_evictions",
            "Producers evicted to make room.",
            totals.evictions,
        ),
        (
            "config_reloads",
            "Config reloads applied (SIGHUP, ferry reload).",
            report.config.reloads,
        ),
        (
            "config_reload_failures",
            "Config reloads refused (the old config kept serving).",
            report.config.reload_failures,
        ),
    ]
}

/// The daemon-wide gauges: name, help, value.
fn daemon_gauges(report: &Report) -> [(&'static str, &'static str, i64); 9] {
    let totals = &report.totals;
    [
        (
            "in_flight",
            "Messages accepted and not yet answered.",
            report.in_flight as i64,
        ),
        (
            "in_flight_bytes",
            "Payload bytes of the messages accepted and not yet answered.",
            report.in_flight_bytes as i64,
        ),
        (
            "producers",
            "Producer actors cached now.",
            totals.producers as i64,
        ),
        (
            "serving",
            "1 while the daemon accepts messages.",
            i64::from(report.serving),
        ),
        (
            "degraded",
            "1 while the daemon accepts messages but is degraded (see /healthz for why).",
            i64::from(report.health().state == State::Degraded),
        ),
        (
            "uptime_seconds",
            "Seconds since start.",
            report.uptime_s as i64,
        ),
        (
            "in_flight_limit",
            "Most messages in flight (server.max_in_flight); beyond it error_no 5.",
            report.limits.max_in_flight as i64,
        ),
        (
            "in_flight_bytes_limit",
            "Most payload bytes in flight (server.max_in_flight_bytes); beyond it error_no 5.",
            report.limits.max_in_flight_bytes as i64,
        ),
        (
            "config_last_reload_failed",
            "1 while the last reload was refused (the config before it still serving).",
            i64::from(report.config.last_reload_failed),
        ),
    ]
}

/// Per-producer counters and gauges, labelled by kind and target.
fn encode_producers(
    encoder: &mut DescriptorEncoder<'_>,
    producers: &[ProducerReport],
) -> std::fmt::Result {
    for (name, help, value) in PRODUCER_COUNTERS {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for producer in producers {
            let labels = labels(producer);
            ConstCounter::new(value(producer)).encode(family.encode_family(&labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "producer_in_flight",
        "Messages in flight to this target.",
        None,
        MetricType::Gauge,
    )?;
    for producer in producers {
        let labels = labels(producer);
        ConstGauge::new(producer.in_flight as i64).encode(family.encode_family(&labels)?)?;
    }
    let mut family = encoder.encode_descriptor(
        "producer_ready",
        "1 while this target's producer is connected.",
        None,
        MetricType::Gauge,
    )?;
    for producer in producers {
        let labels = labels(producer);
        let ready = i64::from(producer.state == "ready");
        ConstGauge::new(ready).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Per-producer histograms of the time from a message's arrival to its confirmation.
fn encode_latency(
    encoder: &mut DescriptorEncoder<'_>,
    producers: &[ProducerReport],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(
        "producer_delivery_seconds",
        "Time from a message's arrival to the broker's confirmation.",
        None,
        MetricType::Histogram,
    )?;
    for producer in producers {
        let labels = labels(producer);
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
            .iter()
            .zip(&producer.latency.buckets)
            .map(|(bound, count)| {
                let bound = if *bound == u64::MAX {
                    f64::MAX
                } else {
                    *bound as f64 / 1e6
                };
                (bound, *count)
            })
            .collect();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(
                producer.latency.sum_us as f64 / 1e6,
                producer.latency.count(),
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// Per-client counters and in-flight gauge, labelled by the client's name.
fn encode_clients(
    encoder: &mut DescriptorEncoder<'_>,
    clients: &[crate::config::clients::ClientReport],
) -> std::fmt::Result {
    type Count = fn(&crate::config::clients::ClientReport) -> u64;
    let counters: [(&str, &str, Count); 3] = [
        (
            "client_requests",
            "Messages this client sent (calls and streamed messages).",
            |c| c.requests,
        ),
        (
            "client_rate_limited",
            "Messages of this client refused over its max_rate or max_in_flight (5).",
            |c| c.rate_limited,
        ),
        (
            "client_not_allowed",
            "Messages of this client naming a route or target not given to it (7).",
            |c| c.not_allowed,
        ),
    ];
    for (name, help, value) in counters {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for client in clients {
            let labels = [("client", client.name.as_str())];
            ConstCounter::new(value(client)).encode(family.encode_family(&labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "client_in_flight",
        "Messages of this client in flight.",
        None,
        MetricType::Gauge,
    )?;
    for client in clients {
        let labels = [("client", client.name.as_str())];
        ConstGauge::new(client.in_flight as i64).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The spool's gauges and counters, overall and per target with spooled messages.
fn encode_spool(
    encoder: &mut DescriptorEncoder<'_>,
    spool: &crate::report::SpoolReport,
) -> std::fmt::Result {
    encode_spool_overall(encoder, spool)?;
    encode_spool_targets(encoder, spool)
}

/// The spool's daemon-wide gauges and counters.
fn encode_spool_overall(
    encoder: &mut DescriptorEncoder<'_>,
    spool: &crate::report::SpoolReport,
) -> std::fmt::Result {
    let overall: [(&str, &str, u64, MetricType); 6] = [
        (
            "spool_bytes",
            "Bytes the spool holds (records and dead letters).",
            spool.bytes,
            MetricType::Gauge,
        ),
        (
            "spool_max_bytes",
            "Most bytes the spool may hold (spool.max_bytes).",
            spool.max_bytes,
            MetricType::Gauge,
        ),
        (
            "spool_dead_letters",
            "Dead letters the spool holds (ferry spool requeue puts them back).",
            spool.dead_letters,
            MetricType::Gauge,
        ),
        (
            "spool_replayed",
            "Spooled messages confirmed by their broker since start.",
            spool.replayed_total,
            MetricType::Counter,
        ),
        (
            "spool_dead_lettered",
            "Spooled messages moved to the dead letters since start.",
            spool.dead_lettered_total,
            MetricType::Counter,
        ),
        (
            "spool_lost",
            "Spooled messages whose checksum failed (quarantined) since start.",
            spool.lost_total,
            MetricType::Counter,
        ),
    ];
    for (name, help, value, kind) in overall {
        let family = encoder.encode_descriptor(name, help, None, kind)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(family)?,
            _ => ConstGauge::new(value as i64).encode(family)?,
        }
    }
    Ok(())
}

/// The spool's gauges and counters of each target with spooled messages.
fn encode_spool_targets(
    encoder: &mut DescriptorEncoder<'_>,
    spool: &crate::report::SpoolReport,
) -> std::fmt::Result {
    type Value = fn(&crate::report::SpoolTarget) -> f64;
    let gauges: [(&str, &str, Value); 4] = [
        (
            "spool_target_messages",
            "Messages of this target in the spool.",
            |t| t.spooled as f64,
        ),
        (
            "spool_target_bytes",
            "Bytes of this target in the spool.",
            |t| t.bytes as f64,
        ),
        (
            "spool_target_oldest_age_seconds",
            "Age of this target's oldest spooled message.",
            |t| t.oldest_age_s,
        ),
        (
            "spool_target_held",
            "1 while the config in force holds this target's spooled messages (a route \
             removed, a target the allowlist no longer names), else 0.",
            |t| f64::from(u8::from(!t.held.is_empty())),
        ),
    ];
    for (name, help, value) in gauges {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for target in &spool.targets {
            let labels = [
                ("kind", target.kind.as_str()),
                ("target", target.target.as_str()),
            ];
            ConstGauge::new(value(target)).encode(family.encode_family(&labels)?)?;
        }
    }
    type Count = fn(&crate::report::SpoolTarget) -> u64;
    let counters: [(&str, &str, Count); 5] = [
        (
            "spool_target_spooled",
            "Messages of this target spooled since start.",
            |t| t.spooled_total,
        ),
        (
            "spool_target_replayed",
            "Messages of this target replayed since start.",
            |t| t.replayed_total,
        ),
        (
            "spool_target_expired",
            "Messages of this target moved to the dead letters by max_age_s since start.",
            |t| t.expired_total,
        ),
        (
            "spool_target_dead_lettered",
            "Messages of this target moved to the dead letters since start.",
            |t| t.dead_lettered_total,
        ),
        (
            "spool_target_lost",
            "Messages of this target whose checksum failed (quarantined).",
            |t| t.lost_total,
        ),
    ];
    for (name, help, value) in counters {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for target in &spool.targets {
            let labels = [
                ("kind", target.kind.as_str()),
                ("target", target.target.as_str()),
            ];
            ConstCounter::new(value(target)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn labels(producer: &ProducerReport) -> [(&'static str, &str); 2] {
    [("kind", &producer.kind), ("target", &producer.target)]
}
