//! A scripted [`Backend`] for unit tests of the actor core: connections that fail a given
//! number of times or never complete, per-message answers (ack, nack, error, no answer),
//! and a connection lost on demand. It records what it was asked, so a test can check
//! where each message went.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_rt::ArbiterHandle;
use futures_util::future::{self, FutureExt, LocalBoxFuture};
use tokio::time::Instant;

use ferry_spool::{Spool, SpoolLimits};

use crate::backends::StartProducer;
use crate::error::ProduceError;
use crate::line::{AsStored, Line, Resolve};
use crate::policy::RetryPolicy;
use crate::producer::{Backend, Confirmation, Delivery, LostSignal, Outgoing, Producer};
use crate::registry::Registry;
use crate::settings::{ProducerSettings, RegistrySettings};
use crate::spool::{ReplaySettings, Spooler};
use crate::stats::TargetStats;
use crate::target::Target;

/// How the fake broker answers one published message.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// Confirmed.
    Ack,
    /// Refused by the broker (not retriable).
    Nack,
    /// Failed with this error.
    Fail(ProduceError),
    /// Never answered: the caller's budget runs out.
    Silent,
}

/// One message as the fake broker received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    /// Its payload, as text.
    pub(crate) payload: String,
    /// The connection (1, 2, …) it was published on.
    pub(crate) connection: u32,
    /// Whether that connection had been closed already (a publisher used after the actor
    /// took it back).
    pub(crate) after_close: bool,
    /// Whether the broker confirmed it.
    pub(crate) acked: bool,
}

/// The script and the record of one fake broker, shared by a test and its actors.
#[derive(Default)]
pub(crate) struct Script {
    /// The mutable part.
    state: Mutex<State>,
}

/// What the script says and what happened.
#[derive(Default)]
struct State {
    /// Connection attempts still to fail.
    connect_failures: u32,
    /// Connection attempts never complete while set.
    connect_silent: bool,
    /// When each connection attempt was made.
    connects: Vec<Instant>,
    /// The answers still to give, by payload; a payload with none left is acked.
    answers: HashMap<String, VecDeque<Answer>>,
    /// Every message published, in order.
    received: Vec<Received>,
    /// Connections closed, by number.
    closed: Vec<u32>,
    /// The loss signal of the last connection made.
    lost: Option<LostSignal<FakeBackend>>,
}

impl Script {
    /// A broker that accepts connections and acks every message.
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The next `count` connection attempts fail as unavailable.
    pub(crate) fn fail_connects(&self, count: u32) {
        self.lock().connect_failures = count;
    }

    /// Connection attempts never complete (`true`) or behave again (`false`).
    pub(crate) fn silence_connects(&self, silent: bool) {
        self.lock().connect_silent = silent;
    }

    /// The answers to the next publishes of `payload`, in order (then acks).
    pub(crate) fn answer(&self, payload: &str, answers: impl IntoIterator<Item = Answer>) {
        self.lock()
            .answers
            .entry(payload.to_owned())
            .or_default()
            .extend(answers);
    }

    /// Reports the current connection lost, as a backend does when its broker goes away.
    pub(crate) fn lose_connection(&self) {
        let lost = self.lock().lost.clone();
        if let Some(lost) = lost {
            lost.signal(ProduceError::Unavailable(
                "the fake broker went away".into(),
            ));
        }
    }

    /// When each connection attempt was made.
    pub(crate) fn connects(&self) -> Vec<Instant> {
        self.lock().connects.clone()
    }

    /// Every message published, in order.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// The payloads published, in order.
    pub(crate) fn payloads(&self) -> Vec<String> {
        self.lock()
            .received
            .iter()
            .map(|r| r.payload.clone())
            .collect()
    }

    /// The payloads the broker confirmed, in the order it received them.
    pub(crate) fn acked(&self) -> Vec<String> {
        self.lock()
            .received
            .iter()
            .filter(|r| r.acked)
            .map(|r| r.payload.clone())
            .collect()
    }

    /// The connections closed, by number.
    pub(crate) fn closed(&self) -> Vec<u32> {
        self.lock().closed.clone()
    }

    /// Locks the state (a test that panicked with it held has failed anyway).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`Backend`] that plays a [`Script`].
pub(crate) struct FakeBackend {
    /// The script it plays.
    script: Arc<Script>,
}

impl FakeBackend {
    /// A backend playing `script`.
    pub(crate) fn new(script: &Arc<Script>) -> Self {
        Self {
            script: Arc::clone(script),
        }
    }
}

/// A connection of the fake broker.
pub(crate) struct FakeConnection {
    /// Where its closing is recorded.
    script: Arc<Script>,
    /// Its number: the connection attempt (1, 2, …) that opened it.
    number: u32,
}

/// What a ready fake connection is published through.
pub(crate) struct FakePublisher {
    /// The script that answers.
    script: Arc<Script>,
    /// The connection it publishes on.
    connection: u32,
}

impl Backend for FakeBackend {
    type Connection = FakeConnection;
    type Publisher = FakePublisher;

    fn connect(
        &self,
        lost: LostSignal<Self>,
    ) -> LocalBoxFuture<'static, Result<FakeConnection, ProduceError>> {
        let mut state = self.script.lock();
        state.connects.push(Instant::now());
        if state.connect_silent {
            return future::pending().boxed_local();
        }
        if state.connect_failures > 0 {
            state.connect_failures -= 1;
            let refused = ProduceError::Unavailable("the fake broker refused".into());
            return future::ready(Err(refused)).boxed_local();
        }
        state.lost = Some(lost);
        let number = u32::try_from(state.connects.len()).unwrap_or(u32::MAX);
        let connection = FakeConnection {
            script: Arc::clone(&self.script),
            number,
        };
        future::ready(Ok(connection)).boxed_local()
    }

    fn publisher(&self, connection: &FakeConnection, _lost: LostSignal<Self>) -> FakePublisher {
        FakePublisher {
            script: Arc::clone(&self.script),
            connection: connection.number,
        }
    }

    fn publish(publisher: &FakePublisher, message: &Outgoing<'_>) -> Confirmation {
        let payload = String::from_utf8_lossy(message.payload).into_owned();
        let mut state = publisher.script.lock();
        let answer = state
            .answers
            .get_mut(&payload)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Answer::Ack);
        let after_close = state.closed.contains(&publisher.connection);
        state.received.push(Received {
            payload,
            connection: publisher.connection,
            after_close,
            acked: matches!(answer, Answer::Ack),
        });
        let offset = i64::try_from(state.received.len()).unwrap_or(i64::MAX);
        match answer {
            Answer::Ack => future::ready(Ok(Delivery {
                partition: Some(0),
                offset: Some(offset),
            }))
            .boxed(),
            Answer::Nack => {
                future::ready(Err(ProduceError::Rejected("the fake broker nacked".into()))).boxed()
            }
            Answer::Fail(error) => future::ready(Err(error)).boxed(),
            Answer::Silent => future::pending().boxed(),
        }
    }

    fn close(connection: FakeConnection) {
        connection.script.lock().closed.push(connection.number);
    }
}

/// Starts producers over a [`FakeBackend`] for any target, in place of the brokers.
pub(crate) struct FakeBrokers {
    /// The script every producer plays.
    pub(crate) script: Arc<Script>,
    /// The producers' settings.
    pub(crate) settings: Arc<ProducerSettings>,
}

impl StartProducer for FakeBrokers {
    fn start(&self, target: &Target, arbiter: &ArbiterHandle) -> Producer {
        Producer::start(
            arbiter,
            FakeBackend::new(&self.script),
            target.to_string(),
            Arc::clone(&self.settings),
            Arc::new(TargetStats::default()),
        )
    }
}

/// Producer settings with small, round numbers: connections time out after 2 s, the
/// backoff starts at 100 ms and stops doubling at 1 s.
pub(crate) fn settings() -> Arc<ProducerSettings> {
    Arc::new(ProducerSettings {
        connect_timeout: Duration::from_secs(2),
        restart_backoff_initial: Duration::from_millis(100),
        restart_backoff_max: Duration::from_secs(1),
        max_in_flight_per_target: 100,
        ..ProducerSettings::default()
    })
}

/// Waits (in the test's paused time, 10 ms a step) until `done` holds; fails the test
/// when it does not within 10 s of real time (the spool's writer thread runs in real
/// time).
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A Kafka target named after `n` (the fake serves any target).
pub(crate) fn target(n: u32) -> Target {
    Target::Kafka(crate::target::KafkaTarget::try_new([format!("k{n}:9092")], 8).unwrap())
}

/// A registry of producers over `script`'s fake broker, within `limits`, on the test's
/// arbiter.
pub(crate) fn registry(script: &Arc<Script>, limits: RegistrySettings) -> Arc<Registry> {
    let settings = settings();
    let brokers = FakeBrokers {
        script: Arc::clone(script),
        settings: Arc::clone(&settings),
    };
    Registry::with_starter(
        vec![actix_rt::Arbiter::current()],
        settings,
        limits,
        Box::new(brokers),
    )
}

/// A config that holds every spooled line until it is opened, then sends each to the
/// target it names.
#[derive(Default)]
pub(crate) struct Gate(AtomicBool);

impl Gate {
    /// Lets the lines through.
    pub(crate) fn open(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Resolve for Gate {
    fn resolve(&self, line: &Line) -> Result<Target, String> {
        if self.0.load(Ordering::Acquire) {
            AsStored.resolve(line)
        } else {
            Err("the gate is closed".into())
        }
    }
}

/// A spool directory, removed when dropped.
pub(crate) struct SpoolDir(PathBuf);

impl Drop for SpoolDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A spooler over a new spool named `name`, replaying through `registry` with
/// `replay_in_flight` records in flight, each under the default policy's first attempt
/// (2 s), to where `resolver` says; records are never given up.
pub(crate) fn spooler(
    name: &str,
    registry: &Arc<Registry>,
    replay_in_flight: usize,
    resolver: Arc<dyn Resolve>,
) -> (Arc<Spooler>, SpoolDir) {
    let dir = std::env::temp_dir().join(format!("ferry-actors-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let limits = SpoolLimits {
        max_bytes: 1 << 20,
        min_free_bytes: 0,
        max_bytes_per_target: 1 << 20,
        max_targets: 16,
    };
    let (spool, _, _) = Spool::open(&dir, limits).unwrap();
    let settings = ReplaySettings {
        replay_in_flight,
        replay_max_rate: 0,
        max_age: None,
        dead_letter_after: Duration::from_secs(3600),
    };
    let policy = RetryPolicy::default();
    let spooler = Spooler::new(spool, Arc::clone(registry), policy, settings, resolver);
    (spooler, SpoolDir(dir))
}
