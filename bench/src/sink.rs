//! One way to deliver one message and learn whether the broker has it.

use std::future::Future;

/// Delivers messages of one workload; shared by every task of a run.
pub trait Sink: Send + Sync + 'static {
    /// Delivers message `seq`; resolves once the path reports it delivered, or with a
    /// short reason it was not (a reason is a table row, so keep it free of ids).
    fn send(&self, seq: u64) -> impl Future<Output = Result<(), String>> + Send + '_;
}
