//! The alert rules and the dashboard in a real Prometheus scraping a real daemon: the
//! dashboard's every query answers (the main panels with series under load), and with the
//! broker stopped and a message spooled, FerrySpoolNotDraining and FerryDegraded fire, then
//! resolve once the broker is back and the spool drained. The rules' own unit tests are
//! `config/prometheus/ferry-rules.test.yml` (promtool, run by scripts/test).

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::{client, rabbitmq, send_rabbitmq, start, unique};
use ferry_testkit::{BrokerKind, PrivateBroker};
use serde_json::Value;

/// The rule file as shipped, with durations short enough for a test: every `for:` 2 s,
/// every range 10 s, the spool's age threshold 3 s. Each replaced text must occur, so a
/// rule file that changes shape fails here rather than testing something else.
fn test_rules() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/ferry-rules.yml");
    let mut rules = std::fs::read_to_string(path).unwrap();
    for (from, to) in [
        ("for: 1m", "for: 2s"),
        ("for: 2m", "for: 2s"),
        ("for: 5m", "for: 2s"),
        ("for: 10m", "for: 2s"),
        ("[5m]", "[10s]"),
        ("[10m]", "[10s]"),
        ("oldest_age_seconds > 900", "oldest_age_seconds > 3"),
    ] {
        assert!(rules.contains(from), "the rule file has no {from:?}");
        rules = rules.replace(from, to);
    }
    rules
}

/// Every query of the dashboard, with the title of its panel; Grafana's variables given
/// the values a dashboard showing every daemon would give them.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/ferry.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$instance", ".+")
                .replace("$__rate_interval", "10s");
            assert!(!expr.contains('$'), "a variable left in {expr}");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

/// The panels that must show series while the daemon delivers messages.
const MAIN_PANELS: [&str; 6] = [
    "Health",
    "Messages/s by outcome",
    "In flight",
    "Messages/s per target",
    "Delivery latency p50 / p99",
    "Producer ready",
];

/// The panels that must show series while a message waits in the spool.
const SPOOL_PANELS: [&str; 3] = [
    "Spool depth per target",
    "Oldest spooled message",
    "Spool bytes",
];

/// Runs every dashboard query; each must answer without error, and those of `panels` with
/// at least one series.
async fn check_dashboard(prometheus: &Prometheus, panels: &[&str]) {
    for (title, expr) in dashboard_queries() {
        let result = prometheus.query(&expr).await;
        let series = result.unwrap_or_else(|e| panic!("{title}: {expr}: {e}"));
        if panels.contains(&title.as_str()) {
            assert!(!series.is_empty(), "{title}: no series for {expr}");
        }
    }
}

/// Waits until `await_state` holds for the alerts named `names` (`Some("firing")`: each
/// firing; `None`: none pending or firing), for at most `within`; the time it took.
async fn await_alerts(
    prometheus: &Prometheus,
    names: &[&str],
    state: Option<&str>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let alerts = prometheus.alerts().await;
        let holds = names.iter().all(|name| {
            let of_name: Vec<_> = alerts.iter().filter(|(n, _, _)| n == name).collect();
            match state {
                Some(state) => of_name.iter().any(|(_, s, _)| s == state),
                None => of_name.is_empty(),
            }
        });
        if holds {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{names:?} never reached {state:?} in {within:?}: {alerts:?}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_and_resolve_and_every_dashboard_query_answers_in_a_real_prometheus() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let url = broker.amqp_url();
    let exchange = unique("ferry.prom");
    let queue = unique("prom");
    ferry_testkit::amqp::bind_queue(&url, &exchange, &queue, "#").await;
    let dir = common::process::scratch_dir("prometheus");
    let mut config = common::config();
    config.spool.dir = dir.join("spool").to_str().unwrap().to_owned();
    config.ops.degraded_after_s = 1;
    let daemon = start(config.validate().unwrap());
    let ops = daemon.ops_addr().to_string();
    let prometheus = Prometheus::start(&dir.join("prometheus"), &ops, &test_rules()).await;

    // Under load: messages delivered while Prometheus scrapes, until the rates have two
    // scrapes of traffic in their 10 s window.
    let sending = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn({
        let (mut grpc, sending) = (client(&daemon).await, Arc::clone(&sending));
        let (url, exchange) = (url.clone(), exchange.clone());
        async move {
            let mut sent = 0u64;
            while sending.load(Ordering::Relaxed) {
                let answer = send_rabbitmq(&mut grpc, rabbitmq(&url, &exchange, "k", "load")).await;
                assert_eq!(answer.0.error_no, 0, "{answer:?}");
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus
        .query("rate(ferry_producer_sent_total[10s]) > 0")
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no delivery rate in Prometheus");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_dashboard(&prometheus, &MAIN_PANELS).await;
    sending.store(false, Ordering::Relaxed);
    let sent = load.await.unwrap();
    assert!(sent > 0);
    let quiet = ["FerrySpoolNotDraining", "FerryDegraded", "FerryDown"];
    await_alerts(&prometheus, &quiet, None, Duration::from_secs(1)).await;

    // The broker stopped and a message spooled: both alerts fire.
    broker.stop();
    let mut grpc = client(&daemon).await;
    let answer = send_rabbitmq(&mut grpc, rabbitmq(&url, &exchange, "k", "held"))
        .await
        .0;
    assert!(answer.error_no == 0 && answer.spooled, "{answer:?}");
    let firing = ["FerrySpoolNotDraining", "FerryDegraded"];
    let fired = await_alerts(
        &prometheus,
        &firing,
        Some("firing"),
        Duration::from_secs(60),
    )
    .await;
    println!(
        "alerts {firing:?} firing {:.1} s after the message was spooled",
        fired.as_secs_f64()
    );
    check_dashboard(&prometheus, &SPOOL_PANELS).await;
    let alerts = prometheus.alerts().await;
    let not_draining = alerts
        .iter()
        .find(|(n, _, _)| n == "FerrySpoolNotDraining")
        .unwrap();
    assert_eq!(not_draining.2["kind"], "rabbitmq", "{alerts:?}");
    assert!(
        !alerts
            .iter()
            .any(|(_, _, labels)| labels.to_string().contains(":guest@")),
        "a password in an alert's labels: {alerts:?}"
    );

    // The broker back: the spool drains and both alerts resolve (timed from the restart's
    // beginning, so the broker's boot counts).
    await_alerts(&prometheus, &firing, Some("firing"), Duration::ZERO).await;
    let restarting = Instant::now();
    broker.restart();
    let boot = restarting.elapsed();
    await_alerts(&prometheus, &firing, None, Duration::from_secs(90)).await;
    println!(
        "alerts {firing:?} resolved {:.1} s after the broker's restart began (its boot took {:.1} s)",
        restarting.elapsed().as_secs_f64(),
        boot.as_secs_f64()
    );
    let delivered =
        ferry_testkit::amqp::read_queue(&url, &queue, sent as usize + 1, Duration::from_secs(10))
            .await;
    assert_eq!(
        delivered.len() as u64,
        sent + 1,
        "every message, the spooled one too"
    );
    drop(prometheus);
    drop(daemon);
    broker.stop();
}
