//! The forwarding core the daemon serves over: the producer registry (its actors spread
//! over the workers' arbiters), the spooler with what the spool held at start, and the
//! forwarder with the daemon-wide bounds.

use std::sync::Arc;

use actix_rt::Arbiter;
use ferry_actors::spool::Spooler;
use ferry_actors::{Forwarder, Registry};

use crate::config::Settings;
use crate::daemon::error::ServeError;
use crate::daemon::live::Live;

/// The spool as opened at start: the store and what it held.
pub struct OpenedSpool {
    /// The store, opened and locked.
    spool: ferry_spool::Spool,
    /// The destinations that had records.
    summary: Vec<ferry_spool::Summary>,
    /// What opening it repaired.
    recovery: ferry_spool::Recovery,
}

/// Opens (and recovers) the configured spool, logging what recovery found.
pub fn open_spool(settings: &Settings) -> Result<Option<OpenedSpool>, ServeError> {
    let Some(config) = &settings.spool else {
        return Ok(None);
    };
    let (spool, recovery, summary) = ferry_spool::Spool::open(&config.dir, config.limits)?;
    if recovery.torn_tail {
        log::warn!(
            dir:% = config.dir.display();
            "Spool recovered from a crash mid-write: its log ended in a partial commit, which was never acknowledged; every whole commit is kept"
        );
    }
    for aside in &recovery.moved_aside {
        log::error!(
            moved_to:% = aside.display();
            "Spool database was unusable and was moved aside; its records are not replayed"
        );
    }
    log::info!(
        dir:% = config.dir.display(),
        targets = summary.len() as u64,
        records = summary.iter().map(|s| s.count).sum::<u64>(),
        bytes = spool.bytes(),
        max_bytes = config.limits.max_bytes;
        "Spool open"
    );
    Ok(Some(OpenedSpool {
        spool,
        summary,
        recovery,
    }))
}

/// The forwarder over a new registry on `arbiters` and, with a spool, a spooler that
/// resumes replaying what `spool` held; replayed records resolve under `live`.
pub fn build(
    settings: &Settings,
    live: &Arc<Live>,
    spool: Option<OpenedSpool>,
    arbiters: &[Arbiter],
) -> Arc<Forwarder> {
    let registry = Registry::new(
        arbiters.iter().map(Arbiter::handle).collect(),
        settings.producer.clone(),
        settings.registry.clone(),
    );
    registry.spawn_idle_sweeper();
    let spooler = match (spool, &settings.spool) {
        (Some(opened), Some(config)) => {
            let spooler = Spooler::new(
                opened.spool,
                Arc::clone(&registry),
                settings.policy,
                config.replay,
                Arc::clone(live) as Arc<dyn ferry_actors::Resolve>,
            );
            spooler.note_recovery(&opened.recovery);
            spooler.resume(&opened.summary);
            Some(spooler)
        }
        _ => None,
    };
    Arc::new(Forwarder::new(
        registry,
        settings.policy,
        settings.server.max_in_flight,
        settings.server.max_in_flight_bytes,
        spooler,
    ))
}
