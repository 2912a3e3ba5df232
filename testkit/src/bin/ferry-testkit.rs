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

/// What `ferry-testkit --help` prints.
const USAGE: &str = "\
ferry-testkit: broker chores for the demo and for trying ferry by hand

Usage:
  ferry-testkit create-topic BROKERS TOPIC
  ferry-testkit bind-queue AMQP_URL EXCHANGE QUEUE BINDING_KEY
  ferry-testkit read-topic BROKERS TOPIC COUNT    print COUNT messages, one per line
  ferry-testkit read-queue AMQP_URL QUEUE COUNT   print COUNT messages, one per line

read-* wait up to 10 s and exit 1 if nothing arrived. read-topic reads partition 0 from its
start; read-queue takes the messages off the queue (bind it before sending).

Examples:
  ferry-testkit create-topic 127.0.0.1:9092 nwp.events
  ferry-testkit read-topic 127.0.0.1:9092 nwp.events 1
  ferry-testkit bind-queue amqp://guest:guest@127.0.0.1:5672/%2f nwp.events mine '#'
  ferry-testkit read-queue amqp://guest:guest@127.0.0.1:5672/%2f mine 1
";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if matches!(args.as_slice(), ["--help" | "-h" | "help", ..]) {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
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
            eprint!("{USAGE}");
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
