//! Dead letters: records the daemon stopped replaying by an explicit, configured rule
//! (`max_age_s`, or rejected by their broker for longer than `dead_letter_after_s`). They
//! are moved, never deleted: a row keeps its seq, payload, metadata and checksum, with the
//! last error, the attempts made and when it was moved. `ferry spool requeue` puts rows
//! back into `records` at their old place in line; `ferry spool export` writes them out.

use bytes::Bytes;
use rusqlite::{OptionalExtension, ToSql, params, params_from_iter};

use crate::error::SpoolError;
use crate::record::{Destination, Kind, Record};
use crate::store::{COLUMNS, RECORD_BYTES_SQL, Store, checksum};

/// Records one expiry pass looks at, at most.
pub const EXPIRE_BATCH: i64 = 1_000;

/// Which dead letters an operation takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every one.
    All,
    /// Those with these message ids.
    Ids(Vec<String>),
    /// Those of one target: a Kafka bootstrap list (as `ferry spool` prints it), an AMQP
    /// exchange, or `route:NAME` for a route's.
    Target(String),
}

impl Selection {
    /// The SQL condition and its parameters.
    fn condition(&self) -> (String, Vec<String>) {
        match self {
            Self::All => ("1".to_owned(), Vec::new()),
            Self::Ids(ids) => {
                let marks = vec!["?"; ids.len()].join(", ");
                (format!("id IN ({marks})"), ids.clone())
            }
            // A route is named `route:NAME`, so that a route and an exchange of the same
            // name are never taken together.
            Self::Target(target) => match target.strip_prefix("route:") {
                Some(route) => (
                    "(kind = 'route' AND address = ?)".to_owned(),
                    vec![route.to_owned()],
                ),
                None => (
                    "((kind = 'kafka' AND address = ?) OR (kind = 'rabbitmq' AND exchange = ?))"
                        .to_owned(),
                    vec![target.clone(), target.clone()],
                ),
            },
        }
    }
}

/// A record to move to the dead letters, and why.
#[derive(Debug, Clone)]
pub struct Burial {
    /// Its seq.
    pub seq: i64,
    /// The error that decided it (the broker's last answer, or the expiry rule).
    pub last_error: String,
    /// Publish attempts made on it since the daemon started.
    pub attempts: u32,
}

/// A record moved to the dead letters, as the spooler counts and logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Its seq.
    pub seq: i64,
    /// Its message id.
    pub id: String,
    /// The bytes it counts against the spool's bounds.
    pub bytes: u64,
}

/// A dead letter as `ferry spool export` writes it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The record as it was spooled (its seq is its old place in line).
    pub record: Record,
    /// Why it was moved.
    pub last_error: String,
    /// Attempts made on it.
    pub attempts: u32,
    /// When it was moved (ms since the Unix epoch).
    pub dead_ms: i64,
    /// Whether its checksum still holds.
    pub intact: bool,
}

impl Store {
    /// Moves `burials` from the records to the dead letters in one transaction; returns
    /// those moved (a seq no longer in the records is skipped).
    pub fn bury(&mut self, burials: &[Burial], now_ms: i64) -> Result<Vec<Moved>, SpoolError> {
        let tx = self.conn.transaction()?;
        let mut moved = Vec::with_capacity(burials.len());
        {
            let mut select = tx.prepare_cached(&format!(
                "SELECT id, {RECORD_BYTES_SQL} FROM records WHERE seq = ?1"
            ))?;
            let mut insert = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO dead_letters ({COLUMNS}, last_error, attempts, dead_ms)
                 SELECT {COLUMNS}, ?2, ?3, ?4 FROM records WHERE seq = ?1"
            ))?;
            let mut delete = tx.prepare_cached("DELETE FROM records WHERE seq = ?1")?;
            for burial in burials {
                let found = select
                    .query_row([burial.seq], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })
                    .ok();
                let Some((id, bytes)) = found else { continue };
                insert.execute(params![
                    burial.seq,
                    burial.last_error,
                    burial.attempts,
                    now_ms
                ])?;
                delete.execute([burial.seq])?;
                moved.push(Moved {
                    seq: burial.seq,
                    id,
                    bytes: u64::try_from(bytes).unwrap_or(0),
                });
            }
        }
        tx.commit()?;
        Ok(moved)
    }

    /// Moves the records of `destination` spooled before `before_ms` and positioned after
    /// seq `after` (those at or before it may be in flight) to the dead letters, with
    /// `reason` as their last error; returns them. Bounded work per call: it walks the
    /// line from `after` and stops at the first record not expired, or after
    /// [`EXPIRE_BATCH`] records (the next call takes the rest).
    pub fn bury_expired(
        &mut self,
        destination: &Destination,
        before_ms: i64,
        after: i64,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<Moved>, SpoolError> {
        let seqs: Vec<i64> = {
            let mut select = self.conn.prepare_cached(
                "SELECT seq, created_ms FROM records
                 WHERE kind = ?1 AND address = ?2 AND exchange = ?3 AND seq > ?4
                 ORDER BY seq LIMIT ?5",
            )?;
            let rows = select.query_map(
                params![
                    destination.kind.as_str(),
                    destination.address,
                    destination.exchange,
                    after,
                    EXPIRE_BATCH
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )?;
            let mut seqs = Vec::new();
            for row in rows {
                let (seq, created_ms) = row?;
                if created_ms >= before_ms {
                    break;
                }
                seqs.push(seq);
            }
            seqs
        };
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let burials: Vec<Burial> = seqs
            .into_iter()
            .map(|seq| Burial {
                seq,
                last_error: reason.to_owned(),
                attempts: 0,
            })
            .collect();
        self.bury(&burials, now_ms)
    }

    /// The last error of the dead letter of `destination` moved last.
    pub fn last_dead_error(&self, destination: &Destination) -> Result<Option<String>, SpoolError> {
        if !self.has_dead_letters_table()? {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT last_error FROM dead_letters
                 WHERE kind = ?1 AND address = ?2 AND exchange = ?3
                 ORDER BY dead_ms DESC, seq DESC LIMIT 1",
                params![
                    destination.kind.as_str(),
                    destination.address,
                    destination.exchange
                ],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Puts the dead letters `selection` takes back into the records, each at its old
    /// place in line, in one transaction; returns how many. Their spooled time becomes
    /// `now_ms`, so `max_age_s` counts from the requeue.
    pub fn requeue(&mut self, selection: &Selection, now_ms: i64) -> Result<u64, SpoolError> {
        let (condition, values) = selection.condition();
        let params: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
        let tx = self.conn.transaction()?;
        let requeued = COLUMNS.replace("created_ms", "?");
        let insert_params: Vec<&dyn ToSql> = std::iter::once(&now_ms as &dyn ToSql)
            .chain(params.iter().copied())
            .collect();
        let moved = tx.execute(
            &format!(
                "INSERT OR IGNORE INTO records ({COLUMNS}) SELECT {requeued} FROM dead_letters
                 WHERE {condition} ORDER BY seq"
            ),
            insert_params.as_slice(),
        )?;
        tx.execute(
            &format!(
                "DELETE FROM dead_letters WHERE {condition}
                 AND seq IN (SELECT seq FROM records)"
            ),
            params.as_slice(),
        )?;
        tx.commit()?;
        Ok(moved as u64)
    }

    /// Deletes the dead letters `selection` takes (an operator's decision, after export);
    /// returns how many.
    pub fn purge(&mut self, selection: &Selection) -> Result<u64, SpoolError> {
        let (condition, values) = selection.condition();
        let deleted = self.conn.execute(
            &format!("DELETE FROM dead_letters WHERE {condition}"),
            params_from_iter(values.iter()),
        )?;
        Ok(deleted as u64)
    }

    /// Calls `each` with every dead letter `selection` takes, in spool order, one row in
    /// memory at a time; returns how many.
    pub fn each_dead_letter(
        &self,
        selection: &Selection,
        mut each: impl FnMut(&DeadLetter) -> Result<(), SpoolError>,
    ) -> Result<u64, SpoolError> {
        if !self.has_dead_letters_table()? {
            return Ok(0);
        }
        let (condition, values) = selection.condition();
        let mut select = self.conn.prepare(&format!(
            "SELECT {COLUMNS}, last_error, attempts, dead_ms FROM dead_letters
             WHERE {condition} ORDER BY seq"
        ))?;
        let mut rows = select.query(params_from_iter(values.iter()))?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            if let Some(letter) = read_dead_letter(row)? {
                each(&letter)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Whether the database has the dead-letter table (a spool of an older ferry, opened
    /// read-only, does not).
    pub(crate) fn has_dead_letters_table(&self) -> Result<bool, SpoolError> {
        self.has_table("dead_letters")
    }
}

/// One dead-letter row (`COLUMNS`, then last error, attempts and when); `None` for a kind
/// this ferry does not know.
fn read_dead_letter(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<DeadLetter>> {
    let Some(kind) = Kind::parse(&r.get::<_, String>(1)?) else {
        return Ok(None);
    };
    let payload: Vec<u8> = r.get(7)?;
    let crc: u32 = r.get(8)?;
    let meta: Option<Vec<u8>> = r.get(9)?;
    let intact = checksum(&payload, meta.as_deref()) == crc;
    Ok(Some(DeadLetter {
        record: Record {
            seq: r.get(0)?,
            destination: Destination {
                kind,
                address: r.get(2)?,
                exchange: r.get(3)?,
            },
            route: r.get(4)?,
            id: r.get(5)?,
            created_ms: r.get(6)?,
            payload: Bytes::from(payload),
            meta: meta.map(Bytes::from),
        },
        intact,
        last_error: r.get(10)?,
        attempts: r.get(11)?,
        dead_ms: r.get(12)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::NewRecord;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-dead-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn to(exchange: &str) -> Destination {
        Destination {
            kind: Kind::Amqp,
            address: "amqp://mq:5672/%2f".into(),
            exchange: exchange.into(),
        }
    }

    fn record(exchange: &str, id: &str) -> NewRecord {
        NewRecord {
            id: id.into(),
            destination: to(exchange),
            route: "k".into(),
            payload: Bytes::from(format!("body {id}")),
            meta: Some(Bytes::from_static(b"{}")),
        }
    }

    fn ids(store: &mut Store, exchange: &str) -> Vec<String> {
        let (records, _) = store.read(&to(exchange), 0, 100).unwrap();
        records.into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn buried_records_keep_their_error_and_go_back_to_their_place_in_line() {
        let dir = scratch("requeue");
        let (mut store, _) = Store::open(&dir).unwrap();
        let batch: Vec<_> = ["a", "b", "c", "d"].map(|id| record("x", id)).into();
        let seqs = store.append(&batch, 1).unwrap();
        store.append(&[record("y", "other")], 2).unwrap();
        let burials = [seqs[1], seqs[2]].map(|seq| Burial {
            seq,
            last_error: "nack: queue full".into(),
            attempts: 7,
        });
        let moved = store.bury(&burials, 3).unwrap();
        assert_eq!(moved.len(), 2);
        assert_eq!(ids(&mut store, "x"), ["a", "d"]);
        let mut letters = Vec::new();
        store
            .each_dead_letter(&Selection::All, |l| {
                letters.push(l.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(
            (
                letters[0].record.id.as_str(),
                letters[0].last_error.as_str()
            ),
            ("b", "nack: queue full")
        );
        assert_eq!((letters[0].attempts, letters[0].dead_ms), (7, 3));
        assert!(letters.iter().all(|l| l.intact && l.record.meta.is_some()));
        assert_eq!(
            store.requeue(&Selection::Ids(vec!["c".into()]), 9).unwrap(),
            1
        );
        assert_eq!(ids(&mut store, "x"), ["a", "c", "d"], "c at its old place");
        let (line, _) = store.read(&to("x"), 0, 10).unwrap();
        assert_eq!(
            (line[0].created_ms, line[1].created_ms),
            (1, 9),
            "max_age_s counts from the requeue"
        );
        assert_eq!(store.requeue(&Selection::Target("y".into()), 9).unwrap(), 0);
        let route_x = Selection::Target("route:x".into());
        assert_eq!(
            store.requeue(&route_x, 9).unwrap(),
            0,
            "exchange x is no route"
        );
        assert_eq!(store.requeue(&Selection::Target("x".into()), 9).unwrap(), 1);
        assert_eq!(ids(&mut store, "x"), ["a", "b", "c", "d"]);
        assert!(store.dead_summary().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn expiry_leaves_records_that_may_be_in_flight() {
        let dir = scratch("in-flight");
        let (mut store, _) = Store::open(&dir).unwrap();
        let seqs = store
            .append(&[record("x", "a"), record("x", "b"), record("x", "c")], 1)
            .unwrap();
        let moved = store
            .bury_expired(&to("x"), 10, seqs[0], "max_age_s", 20)
            .unwrap();
        let moved: Vec<_> = moved.into_iter().map(|m| m.id).collect();
        assert_eq!(
            moved,
            ["b", "c"],
            "a (at or before the cursor) may be in flight"
        );
        assert_eq!(ids(&mut store, "x"), ["a"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
