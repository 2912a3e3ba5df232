//! A progress line on stderr every second while a run goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts answered messages and prints the count and rate every second until dropped.
pub struct Progress {
    /// Messages answered so far.
    done: Arc<AtomicU64>,
    /// The ticker task, aborted on drop.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts the ticker for a run of `total` messages labelled `label` (silent if
    /// `enabled` is false).
    pub fn start(label: String, total: u64, enabled: bool) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let ticker = enabled.then(|| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let started = Instant::now();
                let mut last = 0;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let now = done.load(Ordering::Relaxed);
                    eprintln!(
                        "  {label}: {now}/{total} answered, {} msg/s now, {:.0} s",
                        now - last,
                        started.elapsed().as_secs_f64()
                    );
                    last = now;
                }
            })
        });
        Self { done, ticker }
    }

    /// The counter tasks add to.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.done)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}
