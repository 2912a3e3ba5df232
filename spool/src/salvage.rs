//! `ferry spool salvage`: copies every record that still reads, with a good checksum, out
//! of a damaged database that opening moved aside (`corrupt-<ms>/`) into a live spool.
//!
//! A damaged b-tree may fail a scan part-way. The salvage then looks up each remaining seq
//! one by one (a point lookup touches only the pages on its path, so one bad page costs
//! the records on it, not the rest). Records keep their id, time, metadata and, when it is
//! free in the live spool, their seq (their place in line); a record whose id the live
//! spool already holds is skipped, so salvaging twice copies nothing twice. Dead letters
//! stay dead letters. Rows are copied as they are read, one in memory at a time.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::SpoolError;
use crate::store::{COLUMNS, Store};

/// Most seqs looked up one by one after a scan failed.
const MAX_PROBES: i64 = 50_000_000;

/// What a salvage copied and left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// Records copied into the live spool (waiting for replay).
    pub records: u64,
    /// Dead letters copied (still dead letters).
    pub dead_letters: u64,
    /// Rows that read but whose checksum failed, or with a column of the wrong type or an
    /// unknown kind: not copied.
    pub bad_checksum: u64,
    /// Rows already in the live spool (by id): not copied again.
    pub already_there: u64,
    /// Whether a scan failed part-way, so seqs were looked up one by one.
    pub probed: bool,
}

/// One row as read from the damaged database: the record's columns, and the dead letter's
/// last error, attempts and time when it is one.
struct Row {
    seq: i64,
    columns: [rusqlite::types::Value; 9],
    dead: Option<(String, i64, i64)>,
}

/// Copies what still reads from the spool database in `from` into `into`, one row in
/// memory at a time.
pub fn salvage(from: &Path, into: &mut Store) -> Result<Salvaged, SpoolError> {
    let old = Store::open_read_only(from)?;
    let mut known = into.known_ids()?;
    let mut salvaged = Salvaged::default();
    for table in ["records", "dead_letters"] {
        let tx = into.conn.transaction()?;
        let mut failed = None;
        let mut probed = false;
        read_all(&old.conn, table, &mut probed, &mut |row| {
            if failed.is_none()
                && let Err(error) = copy(&tx, row, &mut known, &mut salvaged)
            {
                failed = Some(error);
            }
        });
        if let Some(error) = failed {
            return Err(error);
        }
        salvaged.probed |= probed;
        tx.commit()?;
    }
    Ok(salvaged)
}

/// Calls `each` with every row of `table` that reads: a scan, then point lookups past
/// where it failed (at most [`MAX_PROBES`] seqs, the highest ones).
fn read_all(conn: &Connection, table: &str, probed: &mut bool, each: &mut dyn FnMut(Row)) {
    let dead = table == "dead_letters";
    let mut last = 0;
    let scan = (|| -> rusqlite::Result<()> {
        let mut select = conn.prepare(&select_sql(table, "seq > ?1 ORDER BY seq"))?;
        let mut cursor = select.query([0])?;
        while let Some(r) = cursor.next()? {
            let row = to_row(r, dead)?;
            last = row.seq;
            each(row);
        }
        Ok(())
    })();
    let Err(error) = scan else { return };
    if dead && error.to_string().contains("no such table") {
        return;
    }
    log::warn!(
        "Salvage: scan of {table} failed after seq {last}, looking up the rest one by one error={error}"
    );
    *probed = true;
    let end = max_seq(conn, table).unwrap_or_else(|| last.saturating_add(MAX_PROBES));
    let start = last.saturating_add(1).max(end.saturating_sub(MAX_PROBES));
    let Ok(mut select) = conn.prepare(&select_sql(table, "seq = ?1")) else {
        return;
    };
    for seq in start..=end {
        if let Ok(Some(row)) = select.query_row([seq], |r| to_row(r, dead)).optional() {
            each(row);
        }
    }
}

/// The SELECT of a record's columns (and a dead letter's) from `table` WHERE `condition`.
fn select_sql(table: &str, condition: &str) -> String {
    let extra = if table == "dead_letters" {
        ", last_error, attempts, dead_ms"
    } else {
        ""
    };
    format!("SELECT {COLUMNS}{extra} FROM {table} WHERE {condition}")
}

/// The highest seq of `table`, from the table or from SQLite's sequence record.
fn max_seq(conn: &Connection, table: &str) -> Option<i64> {
    conn.query_row(&format!("SELECT MAX(seq) FROM {table}"), [], |r| r.get(0))
        .ok()
        .flatten()
        .or_else(|| {
            conn.query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'records'",
                [],
                |r| r.get(0),
            )
            .ok()
        })
}

/// A row read from the damaged database.
fn to_row(r: &rusqlite::Row<'_>, dead: bool) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: r.get(0)?,
        columns: [
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
        ],
        dead: if dead {
            Some((r.get(10)?, r.get(11)?, r.get(12)?))
        } else {
            None
        },
    })
}

/// Copies one row into the live spool, at its old seq when that is free, unless a column
/// has the wrong type or kind, its checksum fails, or its id is there already.
fn copy(
    tx: &rusqlite::Transaction<'_>,
    row: Row,
    known: &mut HashSet<String>,
    salvaged: &mut Salvaged,
) -> Result<(), SpoolError> {
    use rusqlite::types::Value;
    let [
        kind,
        address,
        exchange,
        route,
        id,
        created,
        payload,
        crc,
        meta,
    ] = row.columns;
    let (
        Value::Text(kind),
        Value::Text(address),
        Value::Text(exchange),
        Value::Text(route),
        Value::Text(id),
        Value::Integer(created),
        Value::Blob(payload),
        Value::Integer(crc),
    ) = (kind, address, exchange, route, id, created, payload, crc)
    else {
        salvaged.bad_checksum += 1;
        return Ok(());
    };
    let meta = match meta {
        Value::Blob(meta) => Some(meta),
        Value::Null => None,
        _ => {
            salvaged.bad_checksum += 1;
            return Ok(());
        }
    };
    let intact = crate::record::Kind::parse(&kind).is_some()
        && i64::from(crate::store::checksum(&payload, meta.as_deref())) == crc;
    if !intact {
        salvaged.bad_checksum += 1;
        return Ok(());
    }
    if !known.insert(id.clone()) {
        salvaged.already_there += 1;
        return Ok(());
    }
    let taken: i64 = tx.query_row(
        "SELECT (SELECT COUNT(*) FROM records WHERE seq = ?1)
              + (SELECT COUNT(*) FROM dead_letters WHERE seq = ?1)",
        [row.seq],
        |r| r.get(0),
    )?;
    let seq = (taken == 0).then_some(row.seq);
    tx.execute(
        "INSERT INTO records (seq, kind, address, exchange, route, id, created_ms, payload, crc, meta)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![seq, kind, address, exchange, route, id, created, payload, crc, meta],
    )?;
    let Some((last_error, attempts, dead_ms)) = row.dead else {
        salvaged.records += 1;
        return Ok(());
    };
    let seq = tx.last_insert_rowid();
    tx.execute(
        &format!(
            "INSERT INTO dead_letters ({COLUMNS}, last_error, attempts, dead_ms)
             SELECT {COLUMNS}, ?2, ?3, ?4 FROM records WHERE seq = ?1"
        ),
        params![seq, last_error, attempts, dead_ms],
    )?;
    tx.execute("DELETE FROM records WHERE seq = ?1", [seq])?;
    salvaged.dead_letters += 1;
    Ok(())
}

impl Store {
    /// The ids of every record and dead letter.
    fn known_ids(&self) -> Result<HashSet<String>, SpoolError> {
        let mut ids = HashSet::new();
        for table in ["records", "dead_letters"] {
            let mut select = self.conn.prepare(&format!("SELECT id FROM {table}"))?;
            for id in select.query_map([], |r| r.get::<_, String>(0))? {
                ids.insert(id?);
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Destination, Kind, NewRecord};
    use std::io::{Seek, SeekFrom, Write};
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-salvage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn destination() -> Destination {
        Destination {
            kind: Kind::Kafka,
            address: "k:9092".into(),
            exchange: String::new(),
        }
    }

    #[test]
    fn a_damaged_database_is_moved_aside_and_salvage_recovers_every_intact_record() {
        let dir = scratch("damaged");
        const N: usize = 2_000;
        {
            let (mut store, _) = Store::open(&dir).unwrap();
            let batch: Vec<_> = (0..N)
                .map(|i| NewRecord {
                    id: format!("id-{i:05}"),
                    destination: destination(),
                    route: "t".into(),
                    payload: bytes::Bytes::from(format!("{i:05}{}", "p".repeat(500))),
                    meta: None,
                })
                .collect();
            store.append(&batch, 1).unwrap();
        }
        // Closing checkpointed the log into the database: damage two pages in its middle.
        let file = dir.join(crate::store::DB_FILE);
        let len = std::fs::metadata(&file).unwrap().len();
        let mut db = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        for page in [len / 4096 / 3, len / 4096 / 2] {
            db.seek(SeekFrom::Start(page * 4096)).unwrap();
            db.write_all(&[0xA5; 4096]).unwrap();
        }
        drop(db);
        let (mut store, recovery) = Store::open(&dir).unwrap();
        assert_eq!(
            recovery.moved_aside.len(),
            1,
            "the damaged file was moved aside"
        );
        assert!(store.summary().unwrap().is_empty(), "a new spool");
        let salvaged = salvage(&recovery.moved_aside[0], &mut store).unwrap();
        let (records, corrupt) = store.read(&destination(), 0, N).unwrap();
        assert!(corrupt.is_empty());
        assert_eq!(records.len() as u64, salvaged.records);
        // Two pages of about seven 500-byte records each are all that may be lost.
        assert!(
            records.len() >= N - 40,
            "salvaged {} of {N}: {salvaged:?}",
            records.len()
        );
        assert!(records.windows(2).all(|w| w[0].id < w[1].id), "in order");
        for record in &records {
            let n = &record.id[3..];
            assert!(record.payload.starts_with(n.as_bytes()), "{}", record.id);
        }
        let again = salvage(&recovery.moved_aside[0], &mut store).unwrap();
        assert_eq!(again.records, 0, "nothing copied twice: {again:?}");
        println!("salvaged {} of {N}: {salvaged:?}", records.len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
