//! A whole `load` benchmark: set up, warm up each path, then rounds of every mode, each
//! followed by a count of what the broker gained.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tonic::transport::Channel;

use crate::BenchError;
use crate::broker::Counter;
use crate::direct::DirectSink;
use crate::drive;
use crate::plan::{Mode, Pace, Plan};
use crate::progress::Progress;
use crate::record::{Record, RunResult};
use crate::sink::Sink;
use crate::unary::{self, UnarySink};

/// The open paths of one benchmark.
struct Paths {
    /// The broker directly.
    direct: Option<Arc<DirectSink>>,
    /// Connections to the daemon.
    channels: Vec<Channel>,
    /// Unary calls over `channels`.
    unary: Arc<UnarySink>,
}

/// Runs `plan`, printing each run's row as it ends; returns every run.
pub async fn load(plan: &Plan) -> Result<Vec<RunResult>, BenchError> {
    let counter = match plan.count {
        true => Some(Counter::prepare(&plan.destination).await?),
        false => None,
    };
    let via_daemon = plan.modes.iter().any(|m| *m != Mode::Direct);
    let channels = if via_daemon {
        unary::connect(&plan.daemon, plan.connections).await?
    } else {
        Vec::new()
    };
    let direct = if plan.modes.contains(&Mode::Direct) {
        Some(Arc::new(DirectSink::connect(plan).await?))
    } else {
        None
    };
    // With `direct` alone there are no channels, and the daemon paths are never used.
    let paths = Paths {
        direct,
        unary: Arc::new(UnarySink::new(&channels, plan)),
        channels,
    };
    let cpu = plan.daemon_pid.map(crate::cpu::CpuClock::of).transpose()?;
    // `direct` is measured on this process: what the broker's client library (and the
    // load loop) costs without the daemon, the floor the daemon's figure compares with.
    let own_cpu = match cpu {
        Some(_) => Some(crate::cpu::CpuClock::of(std::process::id())?),
        None => None,
    };
    let mut warmed_up = 0;
    for &mode in &plan.modes {
        if plan.warm_up > 0 {
            let (record, _) = send(&paths, plan, mode, plan.warm_up, None).await?;
            warmed_up += record.delivered;
            if record.delivered == 0 {
                let reason = record.errors.keys().next().cloned().unwrap_or_default();
                return Err(BenchError::WarmUp {
                    mode: mode.name(),
                    reason,
                });
            }
        }
    }
    crate::report::print_header(plan);
    let mut results = Vec::new();
    for round in 1..=plan.runs {
        for &mode in &plan.modes {
            if let Some(counter) = &counter {
                counter.reset().await?;
            }
            // Everything sent before (warm-up, earlier runs) was answered: it is there.
            let sent_before = results
                .iter()
                .map(|r: &RunResult| r.record.delivered)
                .sum::<u64>()
                + warmed_up;
            let before = match &counter {
                Some(counter) => counter.count(sent_before).await.ok(),
                None => None,
            };
            let progress = Progress::start(
                format!("{} round {round}", mode.name()),
                plan.messages,
                plan.progress,
            );
            let clock = if mode == Mode::Direct { own_cpu } else { cpu };
            let cpu_before = clock.map(|clock| clock.now()).transpose()?;
            let (record, elapsed) =
                send(&paths, plan, mode, plan.messages, Some(progress.counter())).await?;
            let daemon_cpu = match (clock, cpu_before) {
                (Some(clock), Some(before)) => Some(clock.now()?.saturating_sub(before)),
                _ => None,
            };
            drop(progress);
            let expected = before.unwrap_or(sent_before) + record.delivered;
            let after = match &counter {
                Some(counter) => counter.count(expected).await.ok(),
                None => None,
            };
            let result = RunResult {
                mode,
                round,
                elapsed,
                record,
                broker_count: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
                daemon_cpu,
            };
            crate::report::print_run(&result);
            results.push(result);
        }
    }
    if let Some(counter) = counter {
        counter.finish().await;
    }
    if let Some(direct) = paths.direct.and_then(Arc::into_inner) {
        direct.close().await;
    }
    Ok(results)
}

/// Sends `n` messages of `plan` through `mode`'s path.
async fn send(
    paths: &Paths,
    plan: &Plan,
    mode: Mode,
    n: u64,
    done: Option<Arc<AtomicU64>>,
) -> Result<(Record, Duration), BenchError> {
    let done = done.unwrap_or_default();
    match mode {
        Mode::Direct => match &paths.direct {
            Some(direct) => Ok(paced(Arc::clone(direct), plan, n, done).await),
            None => Err(BenchError::Usage("direct mode was not set up".into())),
        },
        Mode::Unary => Ok(paced(Arc::clone(&paths.unary), plan, n, done).await),
        Mode::Stream => crate::stream::run(&paths.channels, plan, n, done).await,
    }
}

/// Drives `sink` as `plan.pace` says.
async fn paced<S: Sink>(
    sink: Arc<S>,
    plan: &Plan,
    n: u64,
    done: Arc<AtomicU64>,
) -> (Record, Duration) {
    match plan.pace {
        Pace::ClosedLoop => {
            drive::closed_loop(sink, n, plan.concurrency, plan.message_timeout, done).await
        }
        Pace::Rate(rate) => {
            drive::open_loop(sink, n, rate, plan.concurrency, plan.message_timeout, done).await
        }
    }
}
