//! Serving a librdkafka producer's events on the current arbiter instead of on a thread of
//! its own: librdkafka writes a byte to a pipe when the producer's event queue gets an
//! event after it was last served (`rd_kafka_queue_io_event_enable`; one byte per serving,
//! however many events), and a task on the arbiter then serves every event queued.
//!
//! The librdkafka queue calls this needs (a handle on the main queue, its length, the pipe
//! signal) are not wrapped by rdkafka, so this is the one module of ferry with `unsafe`
//! code (the workspace denies it everywhere else).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use tokio::sync::oneshot;

use crate::error::ProduceError;

/// Most events (each a batch of delivery reports, or an error) served per wake-up before
/// the serving task yields to the rest of the arbiter.
const EVENTS_PER_WAKE: usize = 64;

/// The event task of one producer.
pub(crate) struct Events {
    /// The pipe's write end that librdkafka signals on. It must stay open until the
    /// producer is destroyed, so librdkafka never writes to a closed (or reused) fd.
    pub(crate) wakeup: OwnedFd,
    /// Stops the task, which then lets go of its producer handle.
    pub(crate) stop: oneshot::Sender<()>,
}

/// Starts serving `producer`'s events on the current arbiter.
pub(crate) fn serve<C: ProducerContext + 'static>(
    producer: &Arc<BaseProducer<C>>,
) -> Result<Events, ProduceError> {
    let pipe_failed = |e: std::io::Error| {
        ProduceError::Unavailable(format!("cannot create the Kafka event pipe: {e}"))
    };
    let (sender, receiver) = tokio::net::unix::pipe::pipe().map_err(pipe_failed)?;
    let wakeup = sender.into_nonblocking_fd().map_err(pipe_failed)?;
    let queue = EventQueue::of(Arc::clone(producer))?;
    queue.signal_on(&wakeup);
    let (stop, stopped) = oneshot::channel();
    actix_rt::spawn(serve_events(queue, receiver, stopped));
    Ok(Events { wakeup, stop })
}

/// Serves `queue` each time librdkafka signals it on `wakeups`, until `stop` fires or the
/// pipe fails.
async fn serve_events<C: ProducerContext>(
    queue: EventQueue<C>,
    wakeups: tokio::net::unix::pipe::Receiver,
    mut stop: oneshot::Receiver<()>,
) {
    let mut drained = [0u8; 64];
    // A queue created before the pipe was set up may hold events already.
    let mut pending = true;
    loop {
        if !pending {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                ready = wakeups.readable() => if ready.is_err() { break },
            }
        }
        loop {
            match wakeups.try_read(&mut drained) {
                Ok(n) if n > 0 => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Ok(_) | Err(_) => return,
            }
        }
        // Each poll serves one event and re-arms the signal; serve until the queue is
        // empty, or yield and come back when a burst holds more than a round's worth.
        pending = false;
        for served in 1.. {
            queue.producer.poll(Duration::ZERO);
            if queue.len() == 0 {
                break;
            }
            if served == EVENTS_PER_WAKE {
                pending = true;
                tokio::task::yield_now().await;
                break;
            }
        }
        if stop.try_recv().is_ok() {
            break;
        }
    }
}

/// A producer and a handle on its main (event) queue, released before the producer.
struct EventQueue<C: ProducerContext> {
    /// The producer whose events are served.
    producer: Arc<BaseProducer<C>>,
    /// Its main queue: valid while this holds `producer`, destroyed in `drop`.
    queue: *mut rdkafka_sys::rd_kafka_queue_t,
}

impl<C: ProducerContext> EventQueue<C> {
    /// A handle on `producer`'s main queue.
    fn of(producer: Arc<BaseProducer<C>>) -> Result<Self, ProduceError> {
        // SAFETY: the client pointer is valid while `producer` is, which this holds.
        let queue = unsafe { rdkafka_sys::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        if queue.is_null() {
            return Err(ProduceError::Unavailable(
                "the Kafka producer has no event queue".into(),
            ));
        }
        Ok(Self { producer, queue })
    }

    /// Events waiting in the queue.
    fn len(&self) -> usize {
        // SAFETY: `queue` is valid until `drop`.
        unsafe { rdkafka_sys::rd_kafka_queue_length(self.queue) }
    }

    /// Has librdkafka write a byte to `wakeup` whenever the queue gets an event after it
    /// was served.
    fn signal_on(&self, wakeup: &OwnedFd) {
        const PAYLOAD: &[u8] = b"e";
        // SAFETY: `queue` is valid; librdkafka copies the payload, and the fd stays open
        // until the producer is destroyed (`KafkaConnection` keeps it).
        unsafe {
            rdkafka_sys::rd_kafka_queue_io_event_enable(
                self.queue,
                wakeup.as_raw_fd(),
                PAYLOAD.as_ptr().cast(),
                PAYLOAD.len(),
            );
        }
    }
}

impl<C: ProducerContext> Drop for EventQueue<C> {
    /// Releases the queue handle, before the producer handle is let go (fields drop after
    /// this body), as librdkafka requires of every queue handle.
    fn drop(&mut self) {
        // SAFETY: `queue` came from `rd_kafka_queue_get_main` and is released only here.
        unsafe { rdkafka_sys::rd_kafka_queue_destroy(self.queue) };
    }
}
