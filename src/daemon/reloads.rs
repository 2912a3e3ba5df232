//! Reloads asked for over the operations endpoint (`POST /reload`), for hosts where
//! `ferry reload` cannot signal the daemon (no pid file). The endpoint queues a request;
//! the thread that handles SIGHUP applies it exactly as a SIGHUP and then answers it, so a
//! reload is never applied twice at once and the caller learns the outcome.
//!
//! Bounded: one request waits at most; a second caller meanwhile is told to try again.

use tokio::sync::{mpsc, oneshot};

use crate::report::ConfigStatus;

/// What a reload came to, with the config's status as that reload left it (read on the
/// thread that applies reloads, so a SIGHUP just after cannot change the answer).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The file was read and serves.
    Applied(ConfigStatus),
    /// The file was refused whole (`last_error` says why); the old config serves.
    Refused(ConfigStatus),
    /// The daemon runs on its built-in defaults (no `--config`): nothing to read.
    NoConfig,
}

/// Answered once the reload a request asked for has been applied or refused.
pub type Done = oneshot::Sender<Outcome>;

/// Where the operations endpoint queues reload requests.
#[derive(Debug, Clone)]
pub struct ReloadRequests(mpsc::Sender<Done>);

/// Where the signal thread takes them from.
pub type ReloadQueue = mpsc::Receiver<Done>;

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// Another request is waiting.
    Busy,
    /// The daemon is stopping (no one takes requests any more).
    Stopping,
}

/// A queue of one request, and its two ends.
pub fn channel() -> (ReloadRequests, ReloadQueue) {
    let (requests, queue) = mpsc::channel(1);
    (ReloadRequests(requests), queue)
}

impl ReloadRequests {
    /// Queues a reload; resolves to its outcome when it is done (`Err` if it could not be
    /// queued, or the daemon stopped before doing it).
    pub async fn reload(&self) -> Result<Outcome, NotQueued> {
        let (done, finished) = oneshot::channel();
        self.0.try_send(done).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => NotQueued::Busy,
            mpsc::error::TrySendError::Closed(_) => NotQueued::Stopping,
        })?;
        finished.await.map_err(|_| NotQueued::Stopping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_request_waits_and_is_answered_when_done() {
        let (requests, mut queue) = channel();
        let first = tokio::spawn({
            let requests = requests.clone();
            async move { requests.reload().await }
        });
        // The first is queued; a second finds the queue full.
        while queue.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(requests.reload().await, Err(NotQueued::Busy));
        let done = queue.recv().await.unwrap();
        done.send(Outcome::NoConfig).unwrap();
        assert_eq!(first.await.unwrap(), Ok(Outcome::NoConfig));
        drop(queue);
        assert_eq!(requests.reload().await, Err(NotQueued::Stopping));
    }
}
