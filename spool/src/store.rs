//! The spool's SQLite database: open and recover, append in one transaction, read a
//! destination's records in order, remove confirmed ones, move corrupt ones aside.
//!
//! Durability comes from SQLite: WAL mode with `synchronous = FULL` makes a commit durable
//! (the WAL is fsynced) before it returns, and recovery after a crash replays the WAL up to
//! the last whole, checksummed commit. A payload's CRC32 is stored beside it because
//! SQLite does not checksum its pages.

use std::path::Path;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::SpoolError;
use crate::record::{Destination, Kind, NewRecord, Record};

/// The database file in the spool directory.
pub const DB_FILE: &str = "spool.db";
/// How long a connection waits for another connection's lock before refusing.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The tables. `seq` is AUTOINCREMENT so a position is never reused, even after removals;
/// a dead letter keeps its seq, so a requeued record goes back to its place in line.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    exchange TEXT NOT NULL,
    route TEXT NOT NULL,
    id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    crc INTEGER NOT NULL,
    meta BLOB
);
CREATE INDEX IF NOT EXISTS records_by_destination ON records (kind, address, exchange, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    exchange TEXT NOT NULL,
    route TEXT NOT NULL,
    id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    crc INTEGER NOT NULL,
    meta BLOB
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    exchange TEXT NOT NULL,
    route TEXT NOT NULL,
    id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    crc INTEGER NOT NULL,
    meta BLOB,
    last_error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    dead_ms INTEGER NOT NULL
);
";

/// The columns a record has in every table, in this order.
pub(crate) const COLUMNS: &str =
    "seq, kind, address, exchange, route, id, created_ms, payload, crc, meta";

/// The bytes a record counts against `max_bytes`, in SQL: the same sum as
/// `Record::bytes` (text measured in bytes, not characters).
pub(crate) const RECORD_BYTES_SQL: &str = "LENGTH(payload) + LENGTH(CAST(route AS BLOB)) \
    + LENGTH(CAST(id AS BLOB)) + LENGTH(CAST(address AS BLOB)) \
    + LENGTH(CAST(exchange AS BLOB)) + IFNULL(LENGTH(meta), 0)";

/// [`RECORD_BYTES_SQL`] over the columns of the row `row` (`NEW` or `OLD` in a trigger).
fn bytes_of(row: &str) -> String {
    RECORD_BYTES_SQL
        .replace("payload", &format!("{row}.payload"))
        .replace("route", &format!("{row}.route"))
        .replace("(id ", &format!("({row}.id "))
        .replace("address", &format!("{row}.address"))
        .replace("exchange", &format!("{row}.exchange"))
        .replace("meta", &format!("{row}.meta"))
}

/// The per-destination count and bytes of the records, kept by triggers in the same
/// transaction as every insert and delete, so that opening a large spool reads a few rows
/// instead of scanning every record (a 1 GiB spool took 23-29 s to start with the scan).
pub(crate) fn line_totals_sql() -> String {
    format!(
        "CREATE TABLE line_totals (
            kind TEXT NOT NULL, address TEXT NOT NULL, exchange TEXT NOT NULL,
            count INTEGER NOT NULL, bytes INTEGER NOT NULL,
            PRIMARY KEY (kind, address, exchange)
        );
        INSERT INTO line_totals
            SELECT kind, address, exchange, COUNT(*), SUM({RECORD_BYTES_SQL})
            FROM records GROUP BY kind, address, exchange;
        CREATE TRIGGER line_added AFTER INSERT ON records BEGIN
            INSERT INTO line_totals VALUES (NEW.kind, NEW.address, NEW.exchange, 1, {new})
            ON CONFLICT (kind, address, exchange)
            DO UPDATE SET count = count + 1, bytes = bytes + excluded.bytes;
        END;
        CREATE TRIGGER line_removed AFTER DELETE ON records BEGIN
            UPDATE line_totals SET count = count - 1, bytes = bytes - ({old})
            WHERE kind = OLD.kind AND address = OLD.address AND exchange = OLD.exchange;
            DELETE FROM line_totals
            WHERE kind = OLD.kind AND address = OLD.address AND exchange = OLD.exchange
            AND count <= 0;
        END;",
        new = bytes_of("NEW"),
        old = bytes_of("OLD"),
    )
}

/// A record's checksum: CRC-32 of its payload, then of its metadata if it has any (so a
/// record written before metadata existed keeps its checksum).
pub(crate) fn checksum(payload: &[u8], meta: Option<&[u8]>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(payload);
    if let Some(meta) = meta {
        hasher.update(meta);
    }
    hasher.finalize()
}

/// The records of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Where they go.
    pub destination: Destination,
    /// How many.
    pub count: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// When the oldest was spooled, in milliseconds since the Unix epoch.
    pub oldest_ms: i64,
}

/// The open database.
pub struct Store {
    /// The one connection (used by the spool's writer thread only).
    pub(crate) conn: Connection,
}

impl Store {
    /// Appends `batch` in one transaction (one fsync); returns each record's seq. When it
    /// returns, every record is durable.
    pub fn append(&mut self, batch: &[NewRecord], now_ms: i64) -> Result<Vec<i64>, SpoolError> {
        let tx = self.conn.transaction()?;
        let mut seqs = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (kind, address, exchange, route, id, created_ms, payload, crc, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for record in batch {
                let d = &record.destination;
                insert.execute(params![
                    d.kind.as_str(),
                    d.address,
                    d.exchange,
                    record.route,
                    record.id,
                    now_ms,
                    &record.payload[..],
                    checksum(&record.payload, record.meta.as_deref()),
                    record.meta.as_deref(),
                ])?;
                seqs.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(seqs)
    }

    /// Up to `limit` records of `destination` after `after`, in order. Records whose
    /// checksum fails are moved to the quarantine table and their ids returned apart.
    pub fn read(
        &mut self,
        destination: &Destination,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<Record>, Vec<String>), SpoolError> {
        let mut records = Vec::new();
        let mut corrupt = Vec::new();
        {
            let mut select = self.conn.prepare_cached(
                "SELECT seq, route, id, created_ms, payload, crc, meta FROM records
                 WHERE kind = ?1 AND address = ?2 AND exchange = ?3 AND seq > ?4
                 ORDER BY seq LIMIT ?5",
            )?;
            let rows = select.query_map(
                params![
                    destination.kind.as_str(),
                    destination.address,
                    destination.exchange,
                    after,
                    limit as i64
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, u32>(5)?,
                        r.get::<_, Option<Vec<u8>>>(6)?,
                    ))
                },
            )?;
            for row in rows {
                let (seq, route, id, created_ms, payload, crc, meta) = row?;
                if checksum(&payload, meta.as_deref()) != crc {
                    corrupt.push((seq, id));
                    continue;
                }
                records.push(Record {
                    seq,
                    id,
                    destination: destination.clone(),
                    route,
                    payload: Bytes::from(payload),
                    meta: meta.map(Bytes::from),
                    created_ms,
                });
            }
        }
        if !corrupt.is_empty() {
            let seqs: Vec<i64> = corrupt.iter().map(|(seq, _)| *seq).collect();
            self.quarantine(&seqs)?;
        }
        Ok((records, corrupt.into_iter().map(|(_, id)| id).collect()))
    }

    /// Moves records to the quarantine table (kept for an operator, never replayed).
    fn quarantine(&mut self, seqs: &[i64]) -> Result<(), SpoolError> {
        let tx = self.conn.transaction()?;
        for seq in seqs {
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO quarantine ({COLUMNS}) SELECT {COLUMNS} FROM records WHERE seq = ?1"
                ),
                [seq],
            )?;
            tx.execute("DELETE FROM records WHERE seq = ?1", [seq])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes records (their broker confirmed them) in one transaction.
    pub fn remove(&mut self, seqs: &[i64]) -> Result<(), SpoolError> {
        let tx = self.conn.transaction()?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM records WHERE seq = ?1")?;
            for seq in seqs {
                delete.execute([seq])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every destination with records, with their count, bytes and oldest time.
    pub fn summary(&self) -> Result<Vec<Summary>, SpoolError> {
        if !self.has_table("line_totals")? {
            return self.summary_of("records");
        }
        let mut select = self.conn.prepare(
            "SELECT t.kind, t.address, t.exchange, t.count, t.bytes,
                (SELECT r.created_ms FROM records r
                 WHERE r.kind = t.kind AND r.address = t.address AND r.exchange = t.exchange
                 ORDER BY r.seq LIMIT 1)
             FROM line_totals t ORDER BY t.kind, t.address, t.exchange",
        )?;
        let rows = select.query_map([], read_summary)?;
        collect_summaries(rows)
    }

    /// Every destination with dead letters, with their count, bytes and oldest time.
    pub fn dead_summary(&self) -> Result<Vec<Summary>, SpoolError> {
        if !self.has_dead_letters_table()? {
            return Ok(Vec::new());
        }
        self.summary_of("dead_letters")
    }

    /// Every destination with rows in `table`, with their count, bytes and oldest time.
    fn summary_of(&self, table: &str) -> Result<Vec<Summary>, SpoolError> {
        let mut select = self.conn.prepare(&format!(
            "SELECT kind, address, exchange, COUNT(*), SUM({RECORD_BYTES_SQL}), MIN(created_ms)
             FROM {table} GROUP BY kind, address, exchange ORDER BY kind, address, exchange"
        ))?;
        let rows = select.query_map([], read_summary)?;
        collect_summaries(rows)
    }

    /// Whether the database has the table `name`.
    pub(crate) fn has_table(&self, name: &str) -> Result<bool, SpoolError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Records in quarantine.
    pub fn quarantined(&self) -> Result<u64, SpoolError> {
        let n: Option<i64> = self
            .conn
            .query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))
            .optional()?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }
}

/// A summary row: kind, address, exchange, count, bytes, oldest time.
type SummaryRow = (String, String, String, i64, i64, Option<i64>);

/// Reads a summary row.
fn read_summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

/// The summaries of `rows`, skipping kinds this ferry does not know.
fn collect_summaries(
    rows: impl Iterator<Item = rusqlite::Result<SummaryRow>>,
) -> Result<Vec<Summary>, SpoolError> {
    let mut summaries = Vec::new();
    for row in rows {
        let (kind, address, exchange, count, bytes, oldest_ms) = row?;
        let Some(kind) = Kind::parse(&kind) else {
            continue;
        };
        summaries.push(Summary {
            destination: Destination {
                kind,
                address,
                exchange,
            },
            count: count.max(0) as u64,
            bytes: bytes.max(0) as u64,
            oldest_ms: oldest_ms.unwrap_or(0),
        });
    }
    Ok(summaries)
}

/// What a spool holds, as `ferry spool` lists it.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The destinations with records waiting for replay.
    pub records: Vec<Summary>,
    /// The destinations with dead letters.
    pub dead_letters: Vec<Summary>,
    /// Records in quarantine (their checksum failed).
    pub quarantined: u64,
}

impl Store {
    /// What the spool holds, per destination.
    pub fn inventory(&self) -> Result<Inventory, SpoolError> {
        Ok(Inventory {
            records: self.summary()?,
            dead_letters: self.dead_summary()?,
            quarantined: self.quarantined()?,
        })
    }

    /// Opens the database of `dir` read-only, without taking its lock or changing it (it
    /// may be in use by a daemon, or damaged and moved aside); an error names the file.
    pub fn open_read_only(dir: &Path) -> Result<Self, SpoolError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(SpoolError::Unusable(format!(
                "no spool in {}: {DB_FILE} is missing",
                dir.display()
            )));
        }
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| {
            SpoolError::Unusable(format!("cannot read {}: {e}", path.display()))
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Self { conn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn dest(n: u32) -> Destination {
        Destination {
            kind: Kind::Kafka,
            address: format!("k{n}:9092"),
            exchange: String::new(),
        }
    }

    fn record(n: u32, id: &str) -> NewRecord {
        NewRecord {
            id: id.to_owned(),
            destination: dest(n),
            route: "topic".into(),
            payload: Bytes::from(format!("payload {id}")),
            meta: n
                .is_multiple_of(2)
                .then(|| Bytes::from(format!("meta {id}"))),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_survive_a_reopen_and_come_back_per_destination_in_order() {
        let dir = scratch("reopen");
        {
            let (mut store, _) = Store::open(&dir).unwrap();
            store
                .append(&[record(1, "a"), record(2, "x"), record(1, "b")], 5)
                .unwrap();
            store.append(&[record(1, "c")], 6).unwrap();
        }
        let (mut store, recovery) = Store::open(&dir).unwrap();
        assert!(!recovery.torn_tail && recovery.moved_aside.is_empty());
        let (records, corrupt) = store.read(&dest(1), 0, 10).unwrap();
        let ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(corrupt.is_empty());
        store.remove(&[records[0].seq]).unwrap();
        let (rest, _) = store.read(&dest(1), 0, 10).unwrap();
        assert_eq!(rest.len(), 2);
        let summary = store.summary().unwrap();
        assert_eq!(summary.len(), 2);
        assert_eq!((summary[0].count, summary[0].oldest_ms), (2, 5));
        let (with_meta, _) = store.read(&dest(2), 0, 10).unwrap();
        assert_eq!(with_meta[0].meta.as_deref(), Some(&b"meta x"[..]));
        assert_eq!(rest[0].meta, None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn expired_records_are_buried_per_target_with_the_bytes_they_counted() {
        let dir = scratch("expire-bytes");
        let (mut store, _) = Store::open(&dir).unwrap();
        let mut unicode = record(2, "ü-id");
        unicode.route = "routé.キー".into();
        let mut kept = record(2, "ß");
        kept.route = "ü.route".into();
        let batch = [record(1, "a"), unicode, kept];
        store.append(&batch[..2], 5).unwrap();
        store.append(&batch[2..], 50).unwrap();
        let expired = store
            .bury_expired(&dest(2), 10, 0, "max_age_s", 60)
            .unwrap();
        let ids: Vec<&str> = expired.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["ü-id"], "only this target's, spooled before the time");
        assert_eq!(expired[0].bytes, batch[1].bytes());
        let (left, _) = store.read(&dest(1), 0, 10).unwrap();
        assert_eq!(
            left.len(),
            1,
            "another target's record is its own task's business"
        );
        let summary = store.summary().unwrap();
        assert_eq!(summary.len(), 2);
        assert_eq!(
            summary[1].bytes,
            batch[2].bytes(),
            "the summary counts bytes the same way"
        );
        let dead = store.dead_summary().unwrap();
        assert_eq!((dead[0].count, dead[0].bytes), (1, batch[1].bytes()));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_spool_written_before_metadata_existed_is_read_and_extended() {
        let dir = scratch("old-schema");
        fs::create_dir_all(&dir).unwrap();
        {
            let old = Connection::open(dir.join(DB_FILE)).unwrap();
            let schema = SCHEMA.replace(",\n    meta BLOB", "");
            assert!(!schema.contains("meta"));
            old.execute_batch(&schema).unwrap();
            old.execute(
                "INSERT INTO records (kind, address, exchange, route, id, created_ms, payload, crc)
                 VALUES ('kafka', 'b:9092', '', 't', 'old', 1, x'6869', ?1)",
                [crc32fast::hash(b"hi")],
            )
            .unwrap();
        }
        let (mut store, recovery) = Store::open(&dir).unwrap();
        assert!(recovery.moved_aside.is_empty());
        let old = Destination {
            kind: Kind::Kafka,
            address: "b:9092".into(),
            exchange: String::new(),
        };
        let (records, corrupt) = store.read(&old, 0, 10).unwrap();
        assert!(corrupt.is_empty(), "the old checksum still holds");
        assert_eq!(
            (records[0].payload.as_ref(), records[0].meta.as_ref()),
            (&b"hi"[..], None)
        );
        store.append(&[record(2, "new")], 2).unwrap();
        let (records, _) = store.read(&dest(2), 0, 10).unwrap();
        assert_eq!(records[0].meta.as_deref(), Some(&b"meta new"[..]));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_whose_checksum_fails_is_moved_aside_and_counted() {
        let dir = scratch("crc");
        let (mut store, _) = Store::open(&dir).unwrap();
        store
            .append(&[record(1, "a"), record(1, "b"), record(1, "c")], 1)
            .unwrap();
        // Bit rot in b's payload.
        store
            .conn
            .execute("UPDATE records SET payload = X'00FF' WHERE id = 'b'", [])
            .unwrap();
        let (records, corrupt) = store.read(&dest(1), 0, 10).unwrap();
        let ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(corrupt, ["b"]);
        assert_eq!(store.quarantined().unwrap(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_database_is_moved_aside_and_a_new_one_started() {
        let dir = scratch("garbage");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let (mut store, recovery) = Store::open(&dir).unwrap();
        assert_eq!(recovery.moved_aside.len(), 1);
        assert!(recovery.moved_aside[0].join(DB_FILE).exists());
        store.append(&[record(1, "a")], 1).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_wal_tail_is_detected_and_the_whole_commits_before_it_kept() {
        let dir = scratch("torn");
        let (mut store, _) = Store::open(&dir).unwrap();
        for id in ["a", "b", "c"] {
            store.append(&[record(1, id)], 1).unwrap();
        }
        // A crash: the WAL is not checkpointed; copy the files as they are on disk.
        let copy = scratch("torn-copy");
        fs::create_dir_all(&copy).unwrap();
        for suffix in ["", "-wal"] {
            let name = format!("{DB_FILE}{suffix}");
            fs::copy(dir.join(&name), copy.join(&name)).unwrap();
        }
        drop(store);
        let wal = copy.join(format!("{DB_FILE}-wal"));
        let len = fs::metadata(&wal).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let (mut store, recovery) = Store::open(&copy).unwrap();
        assert!(recovery.torn_tail);
        let (records, _) = store.read(&dest(1), 0, 10).unwrap();
        let ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["a", "b"],
            "the last commit was torn; the rest is intact"
        );
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&copy);
    }
}
