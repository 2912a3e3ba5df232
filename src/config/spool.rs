//! `[spool]`: the durable spool for messages a broker cannot take now — its directory, its
//! bounds, how it is replayed and when a record becomes a dead letter.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, positive};

/// `[spool]`: the durable spool for messages a broker cannot take now (off unless `dir`
/// is set).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory on node-local disk ("" = no spool); one daemon per directory.
    pub dir: String,
    /// Most bytes the spool may hold; beyond it, messages that need it get error_no 5.
    pub max_bytes: u64,
    /// Free space the spool's disk must keep, in bytes; below it, as above.
    pub min_free_bytes: u64,
    /// Most bytes the spooled messages of one target may hold (at most `max_bytes`), so
    /// one dead target cannot take the whole spool from the others.
    pub max_bytes_per_target: u64,
    /// Most targets with spooled messages at once; a message for another gets error_no 5.
    pub max_targets: usize,
    /// Spooled messages older than this many seconds move to the dead letters, counted
    /// and logged with their ids; 0 = kept until delivered.
    pub max_age_s: u64,
    /// A spooled message its broker has refused (nack, access refused, no such exchange…)
    /// for this many seconds moves to the dead letters. An unreachable broker does not
    /// count: it has not answered.
    pub dead_letter_after_s: u64,
    /// Spooled messages of one target in flight at once while replaying.
    pub replay_in_flight: usize,
    /// Spooled messages of one target started per second while replaying; 0 = unlimited.
    pub replay_max_rate: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            max_bytes: 1024 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
            max_bytes_per_target: 512 * 1024 * 1024,
            max_targets: 1_000,
            max_age_s: 0,
            dead_letter_after_s: 86_400,
            replay_in_flight: 64,
            replay_max_rate: 0,
        }
    }
}

/// The validated spool settings.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// The spool directory, which one daemon holds locked.
    pub dir: PathBuf,
    /// Bytes in all and per target, targets at most, free space to keep.
    pub limits: ferry_spool::SpoolLimits,
    /// How it is replayed.
    pub replay: ferry_actors::spool::ReplaySettings,
}

impl SpoolConfig {
    /// The spool settings, or `None` when no directory is set.
    pub fn validate(&self) -> Result<Option<SpoolSettings>, ConfigError> {
        if self.dir.is_empty() {
            return Ok(None);
        }
        positive("spool.max_bytes", self.max_bytes)?;
        positive("spool.max_bytes_per_target", self.max_bytes_per_target)?;
        positive("spool.dead_letter_after_s", self.dead_letter_after_s)?;
        if !(1..=1_000_000).contains(&self.max_targets) {
            return Err(ConfigError::Invalid {
                field: "spool.max_targets",
                reason: "must be 1 to 1000000".into(),
            });
        }
        if !(1..=4096).contains(&self.replay_in_flight) {
            return Err(ConfigError::Invalid {
                field: "spool.replay_in_flight",
                reason: "must be 1 to 4096".into(),
            });
        }
        Ok(Some(SpoolSettings {
            dir: PathBuf::from(&self.dir),
            limits: ferry_spool::SpoolLimits {
                max_bytes: self.max_bytes,
                min_free_bytes: self.min_free_bytes,
                max_bytes_per_target: self.max_bytes_per_target.min(self.max_bytes),
                max_targets: self.max_targets,
            },
            replay: ferry_actors::spool::ReplaySettings {
                replay_in_flight: self.replay_in_flight,
                replay_max_rate: self.replay_max_rate,
                max_age: (self.max_age_s > 0).then(|| Duration::from_secs(self.max_age_s)),
                dead_letter_after: Duration::from_secs(self.dead_letter_after_s),
            },
        }))
    }
}
