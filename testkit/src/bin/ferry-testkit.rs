//! Broker chores for the demo and for people trying ferry by hand:
//!
//! ```text
//! ferry-testkit create-topic BROKERS TOPIC
//! ferry-testkit bind-queue AMQP_URL EXCHANGE QUEUE BINDING_KEY
//! ferry-testkit read-topic BROKERS TOPIC COUNT      prints each message on its own line
//! ferry-testkit read-queue AMQP_URL QUEUE COUNT     prints each message on its own line
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::ExitCode;
use std::time::Duration;

use ferry_testkit::{amqp, kafka};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let count = |n: &str| n.parse::<usize>().expect("COUNT is a number");
    let messages: Vec<Vec<u8>> = match args.as_slice() {
        ["create-topic", brokers, topic] => {
            kafka::create_topic(brokers, topic).await;
            return ExitCode::SUCCESS;
        }
        ["bind-queue", url, exchange, queue, key] => {
            amqp::bind_queue(url, exchange, queue, key).await;
            return ExitCode::SUCCESS;
        }
        ["read-topic", brokers, topic, n] => {
            let (b, t, n) = (brokers.to_string(), topic.to_string(), count(n));
            tokio::task::spawn_blocking(move || kafka::read_topic(&b, &t, n, WAIT))
                .await
                .unwrap()
        }
        ["read-queue", url, queue, n] => amqp::read_queue(url, queue, count(n), WAIT)
            .await
            .into_iter()
            .map(|m| m.data)
            .collect(),
        _ => {
            eprintln!("usage: see the top of testkit/src/bin/ferry-testkit.rs");
            return ExitCode::from(2);
        }
    };
    for message in &messages {
        println!("{}", String::from_utf8_lossy(message));
    }
    if messages.is_empty() {
        eprintln!("no message arrived within {WAIT:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
