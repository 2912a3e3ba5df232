//! The supervised producer actor, generic over its middleware [`Backend`].
//!
//! One actor serves one target and caches its connection. Its lifecycle:
//!
//! ```text
//! started ─► connecting (mailbox paused) ─► ready ──(connection lost)──► stop
//!    ▲                 └──(failed / timed out)──────────────────────────► stop
//!    └── actix Supervisor restarts it in place: restarting() counts the restart and
//!        started() sets the backoff; messages during the backoff are refused as
//!        unavailable, and the first message after it reconnects (a dead broker that
//!        nobody sends to costs nothing).
//! ```
//!
//! While it is ready, the actor lends its connection through a [`Direct`] publisher that
//! the forwarder calls from the ingress task itself: a message then costs no trip through
//! the actor's mailbox and back, and the ingress task awaits the broker's confirmation
//! directly. The actor stays the owner of the connection and of its supervision: it sets
//! the publisher when connected and takes it back before it closes the connection.
//! Messages that arrive while it is not ready go through its mailbox, as before, which
//! reconnects on the first of them after a backoff.
//!
//! A handler never awaits a delivery: it hands the message to the backend and returns the
//! confirmation future, so many messages to one target are in flight at once.

use std::sync::{Arc, PoisonError, RwLock};

use actix::prelude::*;
use actix::{Supervisor, WeakAddr};
use actix_rt::ArbiterHandle;
use bytes::Bytes;
use futures_util::future::{self, BoxFuture, LocalBoxFuture};
use tokio::time::Instant;

use crate::error::ProduceError;
use crate::repeats::Repeats;
use crate::settings::ProducerSettings;
use crate::stats::{ProducerState, TargetStats};

/// A middleware client: how to connect to one target and publish on that connection.
pub trait Backend: Unpin + Sized + 'static {
    /// The cached connection (a Kafka producer, an AMQP connection and channel).
    type Connection: Unpin + 'static;

    /// What a ready connection is published through from any task or thread (a Kafka
    /// producer handle, an AMQP channel). The actor keeps the connection; dropping a
    /// publisher must neither close nor block.
    type Publisher: Send + Sync + 'static;

    /// Opens a connection. The backend calls `lost.signal(..)` when it later learns that
    /// the connection is dead, which makes the actor restart.
    fn connect(
        &self,
        lost: LostSignal<Self>,
    ) -> LocalBoxFuture<'static, Result<Self::Connection, ProduceError>>;

    /// The publisher of a connection that is ready; it reports a connection it finds
    /// dead to `lost`.
    fn publisher(&self, connection: &Self::Connection, lost: LostSignal<Self>) -> Self::Publisher;

    /// Hands `message` to the broker through `publisher`; the future resolves once the
    /// broker confirmed it (or failed to). It borrows nothing.
    fn publish(publisher: &Self::Publisher, message: &Outgoing<'_>) -> Confirmation;

    /// Disposes of a connection without blocking the calling thread.
    fn close(connection: Self::Connection);
}

/// Where the broker put a confirmed message, when it says: Kafka reports the partition
/// and offset, RabbitMQ nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The partition the record was written to.
    pub partition: Option<i32>,
    /// The record's offset in that partition.
    pub offset: Option<i64>,
}

/// A published message's confirmation by its broker.
pub type Confirmation = BoxFuture<'static, Result<Delivery, ProduceError>>;

/// A message on its way to a broker, borrowed from its caller (the forwarder publishes
/// without copying; a backend copies what it must keep until the confirmation).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The Kafka topic or the AMQP routing key.
    pub route: &'a str,
    /// The message bytes.
    pub payload: &'a Bytes,
    /// The message's id, as in [`Publish::id`].
    pub id: &'a Arc<str>,
    /// Key, headers, properties: what the sender asked for besides the bytes.
    pub metadata: Option<&'a Arc<crate::metadata::Metadata>>,
}

impl Outgoing<'_> {
    /// An owned copy, to go through the actor's mailbox.
    pub fn to_publish(&self) -> Publish {
        Publish {
            route: self.route.to_owned(),
            payload: self.payload.clone(),
            id: Arc::clone(self.id),
            metadata: self.metadata.cloned(),
        }
    }
}

/// The publisher a ready producer lends, shared by the actor (which sets and clears it)
/// and every handle on the producer (which publish through it).
pub struct Direct<B: Backend> {
    /// The ready connection's publisher; `None` while the actor is not ready.
    publisher: RwLock<Option<B::Publisher>>,
}

impl<B: Backend> Default for Direct<B> {
    fn default() -> Self {
        Self {
            publisher: RwLock::new(None),
        }
    }
}

impl<B: Backend> Direct<B> {
    /// Publishes `message` if the producer is ready, or returns `None` (the caller then
    /// goes through the actor's mailbox, which reconnects or answers why it is down).
    pub fn try_publish(&self, message: &Outgoing<'_>) -> Option<Confirmation> {
        // The lock is held only while the message is handed over, never across an await:
        // once the actor took the publisher back, nothing publishes through it.
        let publisher = self
            .publisher
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        publisher.as_ref().map(|p| B::publish(p, message))
    }

    /// Lends `publisher`, or (with `None`) takes the current one back.
    fn set(&self, publisher: Option<B::Publisher>) {
        let previous = std::mem::replace(
            &mut *self
                .publisher
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            publisher,
        );
        drop(previous);
    }
}

/// One target's producer as its callers hold it: the actor, the publisher it lends while
/// ready, and the target's counters. Cloning it is cheap; while a clone is held the actor
/// keeps running.
#[derive(Clone)]
pub struct Producer {
    /// The actor and its lent publisher, whatever the backend.
    actor: Arc<dyn Publishing>,
    /// The target's counters, shared with the actor.
    stats: Arc<TargetStats>,
}

impl Producer {
    /// Starts a supervised producer actor over `backend` on `arbiter`; `label` names the
    /// target in logs (credentials redacted).
    pub fn start<B: Backend + Send>(
        arbiter: &ArbiterHandle,
        backend: B,
        label: String,
        settings: Arc<ProducerSettings>,
        stats: Arc<TargetStats>,
    ) -> Self {
        let direct = Arc::default();
        let lent = Arc::clone(&direct);
        let actor_stats = Arc::clone(&stats);
        let addr = Supervisor::start_in_arbiter(arbiter, move |_| {
            ProducerActor::new(backend, label, settings, actor_stats, lent)
        });
        Self {
            actor: Arc::new(Handle { addr, direct }),
            stats,
        }
    }

    /// The producer's counters.
    pub fn stats(&self) -> &Arc<TargetStats> {
        &self.stats
    }

    /// Publishes one message and waits for the broker's confirmation (unbounded in time:
    /// the caller applies the policy's timeout). It goes through the ready connection's
    /// publisher, or through the actor's mailbox when the actor is not ready (the actor
    /// then reconnects, or answers why it cannot).
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<Delivery, ProduceError> {
        let outcome = match self.actor.try_publish(&message) {
            Some(confirmation) => confirmation.await,
            None => self.actor.send(message.to_publish()).await,
        };
        if outcome.is_ok() {
            self.stats().note_delivered();
        }
        outcome
    }

    /// [`Self::publish`] of a message the future owns.
    pub async fn publish_owned(&self, message: Publish) -> Result<Delivery, ProduceError> {
        let outgoing = Outgoing {
            route: &message.route,
            payload: &message.payload,
            id: &message.id,
            metadata: message.metadata.as_ref(),
        };
        self.publish(outgoing).await
    }

    /// Whether the actor still runs (its supervisor restarts it in place; it ends only
    /// when every handle is dropped).
    pub fn is_alive(&self) -> bool {
        self.actor.is_alive()
    }
}

/// A producer actor of any backend, as a [`Producer`] publishes through it.
trait Publishing: Send + Sync {
    /// Publishes through the publisher the actor lends, if it is ready.
    fn try_publish(&self, message: &Outgoing<'_>) -> Option<Confirmation>;

    /// Publishes through the actor's mailbox.
    fn send(&self, message: Publish) -> Confirmation;

    /// Whether the actor still runs.
    fn is_alive(&self) -> bool;
}

/// A producer actor's address and the publisher it lends while ready.
struct Handle<B: Backend> {
    /// The actor (holding it keeps the actor running).
    addr: Addr<ProducerActor<B>>,
    /// Its ready connection's publisher.
    direct: Arc<Direct<B>>,
}

impl<B: Backend> Publishing for Handle<B> {
    fn try_publish(&self, message: &Outgoing<'_>) -> Option<Confirmation> {
        self.direct.try_publish(message)
    }

    fn send(&self, message: Publish) -> Confirmation {
        let sent = self.addr.send(message);
        Box::pin(async move { sent.await.unwrap_or_else(|e| Err(mailbox_error(e))) })
    }

    fn is_alive(&self) -> bool {
        self.addr.connected()
    }
}

/// Publish one message to the actor's target.
#[derive(Debug, Message)]
#[rtype(result = "Result<Delivery, ProduceError>")]
pub struct Publish {
    /// The Kafka topic or the AMQP routing key.
    pub route: String,
    /// The message bytes, passed on unchanged.
    pub payload: Bytes,
    /// The message's id (UUIDv7), sent as the Kafka header `ferry-id` and the AMQP
    /// `message_id` (or header `ferry-id` when the sender set a `message_id`), the same on
    /// every attempt and replay.
    pub id: std::sync::Arc<str>,
    /// Key, headers, properties: what the sender asked for besides the bytes.
    pub metadata: Option<std::sync::Arc<crate::metadata::Metadata>>,
}

/// The connection of generation `generation` is dead; sent by the backend via [`LostSignal`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct ConnectionLost {
    /// Which connection died; reports about an older one are ignored.
    generation: u64,
    /// Why it died: the error messages get while the actor backs off.
    error: ProduceError,
}

/// Lets a backend tell its actor that a connection died, from any thread, without keeping
/// the actor alive.
pub struct LostSignal<B: Backend> {
    /// The actor, weakly held so an idle actor can still stop.
    actor: WeakAddr<ProducerActor<B>>,
    /// The connection generation this signal belongs to.
    generation: u64,
}

impl<B: Backend> Clone for LostSignal<B> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            generation: self.generation,
        }
    }
}

impl<B: Backend> LostSignal<B> {
    /// Reports the connection dead; the actor restarts unless it already moved on.
    pub fn signal(&self, error: ProduceError) {
        if let Some(actor) = self.actor.upgrade() {
            actor.do_send(ConnectionLost {
                generation: self.generation,
                error,
            });
        }
    }
}

/// The actor's link to its broker.
enum Link<C> {
    /// A connection attempt is under way (the mailbox is paused meanwhile).
    Connecting,
    /// Connected since the instant given.
    Ready(C, Instant),
    /// Not connected, for the reason given.
    Down(ProduceError),
}

/// One target's producer: a cached connection, supervised and restarted on failure.
pub struct ProducerActor<B: Backend> {
    /// Connects to the target and publishes on the connection.
    backend: B,
    /// The target for logs (credentials redacted).
    label: String,
    /// Timeouts, backoff and bounds.
    settings: Arc<ProducerSettings>,
    /// Counters shared with the registry and forwarder.
    stats: Arc<TargetStats>,
    /// The current connection, or why there is none.
    link: Link<B::Connection>,
    /// Incremented per connection attempt, so stale loss reports are ignored.
    generation: u64,
    /// Failures since the last connection that stayed up for `restart_backoff_max`.
    consecutive_failures: u32,
    /// While down, the earliest time a message may trigger a reconnection.
    reconnect_at: Instant,
    /// Deliveries confirmed when the current connection became ready: losing it after
    /// more is a drop (it had proved itself); failing before is a failed connect.
    delivered_at_ready: u64,
    /// Where the ready connection is lent to publishers outside the actor.
    direct: Arc<Direct<B>>,
    /// The failure last warned about: one that repeats on every restart is logged once a
    /// minute, until a delivery shows it is over.
    repeats: Repeats,
    /// Deliveries confirmed when the last failure was logged.
    delivered_at_warning: u64,
}

impl<B: Backend> ProducerActor<B> {
    /// A producer for one target; it connects when started.
    pub fn new(
        backend: B,
        label: String,
        settings: Arc<ProducerSettings>,
        stats: Arc<TargetStats>,
        direct: Arc<Direct<B>>,
    ) -> Self {
        Self {
            backend,
            label,
            settings,
            stats,
            link: Link::Down(ProduceError::Unavailable("not connected yet".into())),
            generation: 0,
            consecutive_failures: 0,
            delivered_at_ready: 0,
            reconnect_at: Instant::now(),
            direct,
            repeats: Repeats::default(),
            delivered_at_warning: 0,
        }
    }

    /// The signal a connection of the current generation reports its death to.
    fn lost_signal(&self, ctx: &Context<Self>) -> LostSignal<B> {
        LostSignal {
            actor: ctx.address().downgrade(),
            generation: self.generation,
        }
    }

    /// Opens the connection, holding the mailbox until it is up or has failed.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        self.link = Link::Connecting;
        self.stats.set_state(ProducerState::Connecting);
        let lost = self.lost_signal(ctx);
        let timeout = self.settings.connect_timeout;
        let attempt = tokio::time::timeout(timeout, self.backend.connect(lost));
        ctx.wait(
            attempt
                .into_actor(self)
                .map(move |outcome, act, ctx| match outcome {
                    Ok(Ok(connection)) => {
                        if act.repeats.is_quiet() {
                            log::info!("target":% = act.label; "Producer connected");
                        } else {
                            // Between two failures that repeat (Kafka "connects" without
                            // reaching a broker): not news.
                            log::debug!("target":% = act.label; "Producer connected");
                        }
                        let publisher = act.backend.publisher(&connection, act.lost_signal(ctx));
                        act.direct.set(Some(publisher));
                        act.link = Link::Ready(connection, Instant::now());
                        act.delivered_at_ready = act.stats.delivered();
                        act.stats.set_state(ProducerState::Ready);
                    }
                    Ok(Err(error)) => act.fail(error, ctx),
                    Err(_) => {
                        let error = ProduceError::Unavailable(format!(
                            "no connection within {} ms: packets dropped on the way, or a \
                             port that does not speak the broker's protocol",
                            timeout.as_millis()
                        ));
                        act.fail(error, ctx)
                    }
                }),
        );
    }

    /// Gives up the current connection; the supervisor restarts the actor.
    fn fail(&mut self, error: ProduceError, ctx: &mut Context<Self>) {
        let delivered = self.stats.delivered();
        if delivered != self.delivered_at_warning {
            self.repeats.clear();
            self.delivered_at_warning = delivered;
        }
        match self.repeats.warn(&error.to_string()) {
            Some(left_out) => log::warn!(
                "target":% = self.label,
                error:% = error,
                suppressed_before = left_out;
                "Producer failed, restarting"
            ),
            None => {
                log::debug!("target":% = self.label, error:% = error; "Producer failed, restarting")
            }
        }
        self.stats
            .record_error(format!("producer restarted: {error}"));
        if matches!(self.link, Link::Ready(..)) && self.stats.delivered() > self.delivered_at_ready
        {
            self.stats.note_drop();
        }
        self.drop_link(error);
        ctx.stop();
    }

    /// Closes the connection (if any) and records why the actor is down.
    fn drop_link(&mut self, reason: ProduceError) {
        // Nothing publishes on the connection once it is taken back.
        self.direct.set(None);
        if let Link::Ready(connection, since) =
            std::mem::replace(&mut self.link, Link::Down(reason))
        {
            if since.elapsed() >= self.settings.restart_backoff_max {
                self.consecutive_failures = 0;
            }
            B::close(connection);
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
    }
}

impl<B: Backend> Actor for ProducerActor<B> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.settings.max_in_flight_per_target);
        if self.consecutive_failures == 0 {
            self.connect(ctx);
        } else {
            let delay = self.settings.restart_delay(self.consecutive_failures);
            self.reconnect_at = Instant::now() + delay;
            self.stats.set_state(ProducerState::Restarting);
            ctx.run_later(delay, |act, _| {
                if matches!(act.link, Link::Down(_)) {
                    act.stats.set_state(ProducerState::Idle);
                }
            });
        }
    }

    /// Runs at every stop, including the one before each supervisor restart.
    fn stopped(&mut self, _: &mut Context<Self>) {
        if matches!(self.link, Link::Ready(..)) {
            self.drop_link(ProduceError::Unavailable("the producer stopped".into()));
            log::info!("target":% = self.label; "Producer stopped");
        }
        self.stats.set_state(ProducerState::Stopped);
    }
}

impl<B: Backend> Supervised for ProducerActor<B> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.set_state(ProducerState::Restarting);
    }
}

impl<B: Backend> Handler<Publish> for ProducerActor<B> {
    type Result = ResponseFuture<Result<Delivery, ProduceError>>;

    fn handle(&mut self, message: Publish, ctx: &mut Context<Self>) -> Self::Result {
        if matches!(self.link, Link::Down(_)) && Instant::now() >= self.reconnect_at {
            // Reconnect (pausing the mailbox), then handle this message again behind it.
            self.connect(ctx);
            let actor = ctx.address();
            return Box::pin(async move {
                actor
                    .send(message)
                    .await
                    .unwrap_or_else(|e| Err(mailbox_error(e)))
            });
        }
        match &self.link {
            Link::Ready(..) => {
                let outgoing = Outgoing {
                    route: &message.route,
                    payload: &message.payload,
                    id: &message.id,
                    metadata: message.metadata.as_ref(),
                };
                match self.direct.try_publish(&outgoing) {
                    Some(confirmation) => confirmation,
                    None => Box::pin(future::ready(Err(ProduceError::Unavailable(
                        "the producer is closing its connection".into(),
                    )))),
                }
            }
            Link::Down(reason) => Box::pin(future::ready(Err(down(reason)))),
            Link::Connecting => Box::pin(future::ready(Err(ProduceError::Unavailable(
                "connecting".into(),
            )))),
        }
    }
}

/// The error for a message its producer dropped (it failed while handling it, or stopped).
fn mailbox_error(error: MailboxError) -> ProduceError {
    ProduceError::Unavailable(format!("the producer restarted while sending ({error})"))
}

/// The error for a message that arrives while the producer is down: the reason it went
/// down, so a broker that refused the connection (bad credentials, an exchange of another
/// type) is reported as a rejection, not retried as an outage.
fn down(reason: &ProduceError) -> ProduceError {
    match reason {
        ProduceError::Unavailable(_) | ProduceError::Rejected(_) => reason.clone(),
        other => ProduceError::Unavailable(other.to_string()),
    }
}

impl<B: Backend> Handler<ConnectionLost> for ProducerActor<B> {
    type Result = ();

    fn handle(&mut self, lost: ConnectionLost, ctx: &mut Context<Self>) {
        if lost.generation == self.generation && matches!(self.link, Link::Ready(..)) {
            self.fail(lost.error, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use actix_rt::Arbiter;

    use super::*;
    use crate::fake::{self, FakeBackend, Script};

    /// A producer over `script`'s fake broker, on the test's arbiter.
    fn producer(script: &Arc<Script>) -> Producer {
        Producer::start(
            &Arbiter::current(),
            FakeBackend::new(script),
            "fake".into(),
            fake::settings(),
            Arc::default(),
        )
    }

    /// Publishes `payload` through `producer`.
    async fn send(producer: &Producer, payload: &str) -> Result<Delivery, ProduceError> {
        producer
            .publish_owned(Publish {
                route: "topic".into(),
                payload: Bytes::from(payload.to_owned()),
                id: Arc::from("id"),
                metadata: None,
            })
            .await
    }

    /// Asserts that `instants` came `expected` after `start`, give or take the timer's
    /// tick: tokio fires a deadline at the next whole millisecond, up to 1 ms late.
    #[track_caller]
    fn assert_at(start: Instant, instants: &[Instant], expected: &[Duration]) {
        let after: Vec<Duration> = instants.iter().map(|i| *i - start).collect();
        let on_time = after.len() == expected.len()
            && after
                .iter()
                .zip(expected)
                .all(|(a, e)| *a >= *e && *a <= *e + Duration::from_millis(1));
        assert!(on_time, "at {after:?}, expected {expected:?}");
    }

    /// `ms` milliseconds, as a duration.
    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn refused() -> ProduceError {
        ProduceError::Unavailable("the fake broker refused".into())
    }

    #[actix_rt::test]
    async fn a_failed_connect_restarts_the_actor_after_a_doubling_backoff() {
        tokio::time::pause();
        let start = Instant::now();
        let script = Script::new();
        script.fail_connects(2);
        let producer = producer(&script);
        let stats = Arc::clone(producer.stats());
        fake::until("the first restart", || stats.restarts.load(Relaxed) == 1).await;
        assert_eq!(stats.state(), ProducerState::Restarting);
        let down = stats.snapshot("fake", String::new());
        assert!(
            down.failing_for.is_some(),
            "failing since the first connect failed"
        );
        assert!(down.drop_ages.is_empty(), "a failed connect is not a drop");
        assert_eq!(
            send(&producer, "during the backoff").await,
            Err(refused()),
            "a message during the backoff gets the connection's error, without an attempt"
        );
        tokio::time::sleep_until(start + Duration::from_millis(100)).await;
        assert_eq!(
            send(&producer, "after 100 ms").await,
            Err(refused()),
            "the first message after the backoff reconnects, and the attempt fails again"
        );
        tokio::time::sleep_until(start + Duration::from_millis(250)).await;
        assert_eq!(send(&producer, "still backing off").await, Err(refused()));
        tokio::time::sleep_until(start + Duration::from_millis(300)).await;
        assert!(send(&producer, "after 200 ms more").await.is_ok());
        assert_at(start, &script.connects(), &[ms(0), ms(100), ms(300)]);
        assert_eq!(stats.restarts.load(Relaxed), 2);
        assert_eq!(stats.state(), ProducerState::Ready);
        assert_eq!(script.payloads(), ["after 200 ms more"]);
        let up = stats.snapshot("fake", String::new());
        assert_eq!((up.failing_for, up.drop_ages.len()), (None, 0), "delivered");
    }

    #[actix_rt::test]
    async fn a_connect_that_never_completes_times_out_and_restarts() {
        tokio::time::pause();
        let start = Instant::now();
        let script = Script::new();
        script.silence_connects(true);
        let producer = producer(&script);
        assert_eq!(
            send(&producer, "m").await,
            Err(ProduceError::Unavailable(
                "no connection within 2000 ms: packets dropped on the way, or a port that \
                 does not speak the broker's protocol"
                    .into()
            )),
            "the message waited in the mailbox for the attempt, then got its error"
        );
        assert_at(start, &[Instant::now()], &[ms(2000)]);
        assert_eq!(producer.stats().restarts.load(Relaxed), 1);
        assert!(script.payloads().is_empty());
    }

    #[actix_rt::test]
    async fn a_ready_actor_lends_its_publisher_and_takes_it_back_when_the_connection_is_lost() {
        tokio::time::pause();
        let script = Script::new();
        let producer = producer(&script);
        let stats = Arc::clone(producer.stats());
        assert!(send(&producer, "first").await.is_ok());
        assert_eq!(stats.state(), ProducerState::Ready);
        let payload = Bytes::from_static(b"lent");
        let id: Arc<str> = Arc::from("id");
        let outgoing = Outgoing {
            route: "topic",
            payload: &payload,
            id: &id,
            metadata: None,
        };
        assert!(
            producer.actor.try_publish(&outgoing).is_some(),
            "ready: messages go through the lent publisher, not the mailbox"
        );

        assert_eq!(stats.snapshot("fake", String::new()).failing_for, None);
        script.lose_connection();
        fake::until("the restart", || stats.restarts.load(Relaxed) == 1).await;
        let dropped = stats.snapshot("fake", String::new());
        assert_eq!(
            dropped.drop_ages.len(),
            1,
            "a connection that delivered, lost: a drop"
        );
        assert!(dropped.failing_for.is_some());
        assert!(
            producer.actor.try_publish(&outgoing).is_none(),
            "the publisher was taken back"
        );
        assert_eq!(script.closed(), [1], "then the connection was closed");
        assert_eq!(
            send(&producer, "during the backoff").await,
            Err(ProduceError::Unavailable(
                "the fake broker went away".into()
            ))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(send(&producer, "reconnected").await.is_ok());
        let on: Vec<_> = script
            .received()
            .into_iter()
            .map(|r| (r.payload, r.connection, r.after_close))
            .collect();
        assert_eq!(
            on,
            [
                ("first".to_owned(), 1, false),
                ("lent".to_owned(), 1, false),
                ("reconnected".to_owned(), 2, false)
            ]
        );
    }

    #[actix_rt::test]
    async fn a_connection_that_lived_the_longest_backoff_resets_it() {
        tokio::time::pause();
        let start = Instant::now();
        let script = Script::new();
        let producer = producer(&script);
        let stats = Arc::clone(producer.stats());
        assert!(send(&producer, "m").await.is_ok());
        script.lose_connection();
        fake::until("the first restart", || stats.restarts.load(Relaxed) == 1).await;
        tokio::time::sleep_until(start + Duration::from_millis(100)).await;
        assert!(send(&producer, "m").await.is_ok(), "reconnected at 100 ms");
        script.lose_connection();
        fake::until("the second restart", || stats.restarts.load(Relaxed) == 2).await;
        tokio::time::sleep_until(start + Duration::from_millis(300)).await;
        assert!(
            send(&producer, "m").await.is_ok(),
            "a short life doubled it"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        script.lose_connection();
        fake::until("the third restart", || stats.restarts.load(Relaxed) == 3).await;
        let lost_at = Instant::now();
        tokio::time::sleep_until(lost_at + Duration::from_millis(100)).await;
        assert!(send(&producer, "m").await.is_ok(), "1 s up: back to 100 ms");
        let connects = script.connects();
        assert_at(start, &connects[..3], &[ms(0), ms(100), ms(300)]);
        assert_at(lost_at, &connects[3..], &[ms(100)]);
    }
}
