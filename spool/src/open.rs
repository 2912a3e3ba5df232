//! Opening a spool: the directory's ownership and mode, the lock file, and the database,
//! telling a damaged database (moved aside, salvageable) from a spool that merely cannot
//! be used now (refused, with a sentence saying what to fix, and nothing moved).
//!
//! Why the distinction matters: a daemon that moves a busy, read-only or full spool aside
//! starts "clean" and never replays what it held. Only SQLite's own verdict that the file
//! is damaged (`SQLITE_CORRUPT`, `SQLITE_NOTADB`, or a failed `quick_check`) moves it.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::error::{SpoolError, is_corruption};
use crate::store::{BUSY_TIMEOUT, DB_FILE, SCHEMA, Store};

/// Databases up to this size are checked (`PRAGMA quick_check`) before the daemon serves;
/// a larger one is checked by a background thread after it started, since the check reads
/// every page (a 1 GiB spool took 23-29 s from a cold cache).
pub const CHECK_AT_OPEN_MAX_BYTES: u64 = 64 << 20;
/// The lock file in the spool directory.
pub const LOCK_FILE: &str = "LOCK";

/// Columns added since the first schema, added to a spool written by an older ferry (in
/// the same order to both tables).
const ADDED_COLUMNS: [&str; 1] = ["meta BLOB"];

/// What opening the spool found and repaired.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    /// The write-ahead log ended in a partial frame (a crash mid-write): SQLite keeps every
    /// whole commit before it, and the partial one was never acknowledged.
    pub torn_tail: bool,
    /// Damaged database files moved aside here (`ferry spool salvage` reads them).
    pub moved_aside: Vec<PathBuf>,
    /// The database was larger than [`CHECK_AT_OPEN_MAX_BYTES`]: its integrity check is
    /// left to [`check_in_background`].
    pub check_deferred: bool,
}

/// Why a database could not be opened.
enum OpenError {
    /// SQLite says the file is damaged: move it aside.
    Corrupt(String),
    /// Anything else: refuse, and leave the files where they are.
    Refused(SpoolError),
}

/// Creates `dir` (mode 0700) if it is missing, and refuses one that another user owns or
/// that group or others may write to: the spool holds messages and, for raw AMQP targets,
/// the URLs they were sent with.
pub fn prepare_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            SpoolError::Unusable(format!(
                "cannot create the spool directory {}: {e}; create it for the daemon's user with mode 0700",
                dir.display()
            ))
        })?;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(SpoolError::Unusable(format!(
            "the spool directory {} is not a directory",
            dir.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(SpoolError::Unusable(format!(
            "the spool directory {} is owned by uid {}, and the daemon runs as uid {me}: chown -R it to the daemon's user",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(SpoolError::Unusable(format!(
            "the spool directory {} is writable by its group or others (mode {:o}): chmod 700 it",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Opens (creating, mode 0600) the lock file without following a symlink and takes its
/// exclusive lock, or says which other process holds it.
pub fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|e| {
            SpoolError::Unusable(format!(
                "cannot open the spool's lock file {}: {e} (a symlink is refused)",
                path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked(dir.display().to_string())),
        Err(fs::TryLockError::Error(error)) => Err(error.into()),
    }
}

impl Store {
    /// Opens (creating if needed) the spool database in `dir`. A database SQLite finds
    /// damaged is moved aside into `dir/corrupt-<ms>/` and a new one started; any other
    /// failure refuses with [`SpoolError::Unusable`] and moves nothing.
    pub fn open(dir: &Path) -> Result<(Self, Recovery), SpoolError> {
        prepare_dir(dir)?;
        let size = fs::metadata(dir.join(DB_FILE)).map_or(0, |m| m.len());
        let mut recovery = Recovery {
            torn_tail: wal_has_torn_tail(&dir.join(format!("{DB_FILE}-wal")))?,
            check_deferred: size > CHECK_AT_OPEN_MAX_BYTES,
            ..Recovery::default()
        };
        let check = !recovery.check_deferred;
        match open_checked(dir, check) {
            Ok(store) => Ok((store, recovery)),
            Err(OpenError::Refused(error)) => Err(error),
            Err(OpenError::Corrupt(why)) => {
                let aside = move_aside(dir)?;
                log::error!(
                    error:% = why,
                    moved_to:% = aside.display();
                    "Spool database damaged, moved aside and started anew (ferry spool salvage reads it)"
                );
                recovery.moved_aside.push(aside);
                recovery.check_deferred = false;
                match open_checked(dir, true) {
                    Ok(store) => Ok((store, recovery)),
                    Err(OpenError::Refused(error)) => Err(error),
                    Err(OpenError::Corrupt(why)) => Err(SpoolError::Io(why)),
                }
            }
        }
    }
}

/// Opens the database, sets WAL and full sync, checks it (when `check`), creates the
/// tables.
fn open_checked(dir: &Path, check: bool) -> Result<Store, OpenError> {
    let path = dir.join(DB_FILE);
    let refuse = |e: rusqlite::Error| classify(&path, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(&path, flags).map_err(refuse)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(refuse)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| {
        OpenError::Refused(SpoolError::Unusable(format!(
            "cannot make the spool database {} private (mode 0600): {e}; chown it to the daemon's user",
            path.display()
        )))
    })?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(refuse)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Refused(SpoolError::Unusable(format!(
            "the spool database {} cannot use WAL mode (got {mode}): is its disk read-only?",
            path.display()
        ))));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(refuse)?;
    if check {
        let verdict: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(refuse)?;
        if verdict != "ok" {
            return Err(OpenError::Corrupt(format!(
                "integrity check failed: {verdict}"
            )));
        }
    }
    conn.execute_batch(SCHEMA).map_err(refuse)?;
    add_missing_columns(&conn).map_err(refuse)?;
    let store = Store { conn };
    if !store.has_table("line_totals").map_err(OpenError::Refused)? {
        // Once per spool written before the totals existed: one scan, in one transaction
        // with the triggers that keep them from then on.
        let sql = format!("BEGIN; {} COMMIT;", crate::store::line_totals_sql());
        store.conn.execute_batch(&sql).map_err(refuse)?;
    }
    Ok(store)
}

/// Runs `PRAGMA quick_check` on the database of `dir` in a thread of its own (a read-only
/// connection beside the writer's) and puts the verdict in `verdict`: `ok`, or why not. A
/// damaged page also fails the reads that meet it; this says so before they do, so an
/// operator can stop the daemon and salvage.
pub fn check_in_background(dir: &Path, verdict: std::sync::Arc<std::sync::Mutex<String>>) {
    let dir = dir.to_owned();
    let set = move |text: String| {
        *verdict
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = text;
    };
    set("running".into());
    let spawned = std::thread::Builder::new()
        .name("ferry-spool-check".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let result = Store::open_read_only(&dir).and_then(|store| {
                Ok(store
                    .conn
                    .query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))?)
            });
            match result {
                Ok(ok) if ok == "ok" => {
                    log::info!(
                        ms = started.elapsed().as_millis() as u64;
                        "Spool integrity check passed"
                    );
                    set(ok);
                }
                Ok(failed) | Err(SpoolError::Io(failed)) => {
                    log::error!(
                        error:% = failed;
                        "Spool integrity check FAILED: stop the daemon, then ferry spool salvage"
                    );
                    set(format!("failed: {failed}"));
                }
                Err(other) => set(format!("not run: {other}")),
            }
        });
    if let Err(error) = spawned {
        log::error!(error:% = error; "Cannot start the spool integrity check");
    }
}

/// Adds the columns of [`ADDED_COLUMNS`] that a spool written by an older ferry lacks.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for column in ADDED_COLUMNS {
        let name = column.split(' ').next().unwrap_or(column);
        for table in ["records", "quarantine"] {
            let present: i64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [name],
                |r| r.get(0),
            )?;
            if present == 0 {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
            }
        }
    }
    Ok(())
}

/// Damaged (move aside) or a refusal with a sentence saying what to fix.
fn classify(path: &Path, error: rusqlite::Error) -> OpenError {
    if is_corruption(&error) {
        return OpenError::Corrupt(error.to_string());
    }
    let hint = match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "another process keeps it locked (a copy or a sqlite3 shell?): stop that process, then start ferry again"
        }
        Some(ErrorCode::DiskFull) => "its disk is full: free space on it, then start ferry again",
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            "check that the daemon's user owns the directory and its files and that the disk is mounted read-write"
        }
        Some(ErrorCode::SystemIoFailure) => {
            "the disk failed to read or write (full, read-only or failing?)"
        }
        _ => "nothing was moved or deleted",
    };
    OpenError::Refused(SpoolError::Unusable(format!(
        "cannot open the spool database {}: {error}; {hint}",
        path.display()
    )))
}

/// Whether the write-ahead log ends in a partial frame (header 32 bytes, then frames of 24
/// bytes plus one page; the page size is in the header).
fn wal_has_torn_tail(wal: &Path) -> Result<bool, SpoolError> {
    let Ok(metadata) = fs::metadata(wal) else {
        return Ok(false);
    };
    let len = metadata.len();
    if len == 0 {
        return Ok(false);
    }
    if len < 32 {
        return Ok(true);
    }
    let header = {
        use std::io::Read;
        let mut header = [0u8; 32];
        File::open(wal)?.read_exact(&mut header)?;
        header
    };
    let page_size = u64::from(u32::from_be_bytes([
        header[8], header[9], header[10], header[11],
    ]));
    if page_size == 0 {
        return Ok(true);
    }
    Ok((len - 32) % (24 + page_size) != 0)
}

/// Moves the database files of `dir` into a new `corrupt-<ms>` folder beside them.
fn move_aside(dir: &Path) -> Result<PathBuf, SpoolError> {
    let aside = dir.join(format!("corrupt-{}", crate::record::now_ms()));
    fs::DirBuilder::new().mode(0o700).create(&aside)?;
    for suffix in ["", "-wal", "-shm"] {
        let name = format!("{DB_FILE}{suffix}");
        let from = dir.join(&name);
        if from.exists() {
            fs::rename(&from, aside.join(&name))?;
        }
    }
    sync_dir(dir)?;
    Ok(aside)
}

/// fsyncs a directory, so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Destination, Kind, NewRecord};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-open-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A spool in `dir` holding one record.
    fn one_record(dir: &Path) {
        let (mut store, _) = Store::open(dir).unwrap();
        let record = NewRecord {
            id: "kept".into(),
            destination: Destination {
                kind: Kind::Kafka,
                address: "k:9092".into(),
                exchange: String::new(),
            },
            route: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            meta: None,
        };
        store.append(&[record], 1).unwrap();
    }

    /// Whether `dir` still holds its record, read straight from the file.
    fn still_there(dir: &Path) -> bool {
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        conn.query_row("SELECT COUNT(*) FROM records WHERE id = 'kept'", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
            == 1
    }

    #[test]
    fn a_new_directory_is_private_and_a_writable_one_is_refused_untouched() {
        let dir = scratch("mode");
        one_record(&dir);
        let mode = fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(
            mode & 0o077,
            0,
            "created without group or other bits: {mode:o}"
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        match Store::open(&dir) {
            Err(SpoolError::Unusable(why)) => assert!(why.contains("chmod 700"), "{why}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(still_there(&dir));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused_untouched() {
        let dir = scratch("owner");
        one_record(&dir);
        let other = rustix::process::geteuid().as_raw() + 1;
        if std::os::unix::fs::chown(&dir, Some(other), None).is_err() {
            eprintln!("not root: cannot give the directory away, skipped");
            return;
        }
        match Store::open(&dir) {
            Err(SpoolError::Unusable(why)) => assert!(why.contains("chown"), "{why}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        assert!(still_there(&dir), "nothing moved aside");
        assert!(!fs::read_dir(&dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("corrupt-")
        }));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_database_another_process_keeps_locked_is_refused_untouched() {
        let dir = scratch("busy");
        one_record(&dir);
        let holder = Connection::open(dir.join(DB_FILE)).unwrap();
        holder
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
            .unwrap();
        holder
            .execute("UPDATE records SET route = route", [])
            .unwrap();
        match Store::open(&dir) {
            Err(SpoolError::Unusable(why)) => assert!(why.contains("locked"), "{why}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        holder.execute_batch("COMMIT").unwrap();
        drop(holder);
        let (store, recovery) = Store::open(&dir).unwrap();
        assert!(recovery.moved_aside.is_empty());
        assert_eq!(store.summary().unwrap()[0].count, 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = scratch("lock-link");
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let elsewhere = dir.join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, dir.join(LOCK_FILE)).unwrap();
        match lock(&dir) {
            Err(SpoolError::Unusable(why)) => assert!(why.contains("symlink"), "{why}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        assert!(!elsewhere.exists(), "the link's target was not created");
        let _ = fs::remove_dir_all(&dir);
    }
}
