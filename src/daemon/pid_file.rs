//! `ops.pid_file`: the daemon's process id, in a file the daemon holds an exclusive lock
//! (`flock`) on for as long as it runs.
//!
//! The kernel drops the lock when the process ends — cleanly, by SIGKILL or by a crash, and
//! before the process is reaped — so whether a daemon runs is read from the lock, never
//! from the number in the file: a file left behind by a crash is stale whatever PID it
//! names (a PID reused after a reboot, a zombie's), and two daemons starting at once
//! cannot both take it. `ferry reload` signals the process the kernel says holds the lock
//! ([`holder`], from `/proc/locks`), never the number in the file, which a daemon that is
//! starting has locked but not yet rewritten. The file is 0600: a lock needs only read
//! access, and another user must not be able to hold it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How often [`PidFile::create`] tries again when the file it locked was replaced in the
/// meantime (by a daemon removing it on its way out while this one opened it), or was
/// locked by someone else (a daemon holds it for its whole life; anything else briefly).
const ATTEMPTS: usize = 5;

/// The pause between two of those attempts.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(40);

/// Why the pid file cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another process holds the lock: a daemon runs with this pid file.
    #[error(
        "pid file {path} is held by a running ferry (pid {pid}): stop that daemon first, or \
         give this one a pid file of its own (ops.pid_file)"
    )]
    Held {
        /// The file.
        path: String,
        /// What the file says, as far as it could be read.
        pid: String,
    },
    /// The file cannot be opened, locked or written.
    #[error("cannot use pid file {path}: {reason}")]
    Unusable {
        /// The file.
        path: String,
        /// The system's error, or what went wrong.
        reason: String,
    },
}

/// The pid file of the running daemon: locked while this value lives, removed when it is
/// dropped.
#[derive(Debug)]
pub struct PidFile {
    /// Where it is.
    path: PathBuf,
    /// The open file, which carries the lock.
    _file: File,
}

impl PidFile {
    /// Takes the pid file at `path` (creating it, mode 0644, not following a symlink) and
    /// writes this process's id into it; refuses when another process holds it.
    pub fn create(path: &Path) -> Result<Self, PidFileError> {
        let unusable = |reason: String| PidFileError::Unusable {
            path: path.display().to_string(),
            reason,
        };
        let mut held = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(RETRY_PAUSE);
            }
            let file = open(path, true).map_err(|e| unusable(describe(&e)))?;
            match file.try_lock() {
                Ok(()) => held = false,
                Err(TryLockError::WouldBlock) => {
                    held = true;
                    continue;
                }
                Err(TryLockError::Error(error)) => return Err(unusable(error.to_string())),
            }
            // Locked, but perhaps a file that was unlinked after this open: then nobody
            // could find it, and another daemon could take a new one. Try again.
            if !names_file(path, &file).map_err(|e| unusable(e.to_string()))? {
                continue;
            }
            // A file an older ferry (or someone) left readable by others: 0600 from now on,
            // as far as this user may change it.
            let _ = file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
            write_pid(&file).map_err(|e| unusable(e.to_string()))?;
            return Ok(Self {
                path: path.to_owned(),
                _file: file,
            });
        }
        if held {
            let pid = holder(path).ok().flatten();
            return Err(PidFileError::Held {
                path: path.display().to_string(),
                pid: pid.map_or_else(|| pid_text(path), |pid| pid.to_string()),
            });
        }
        Err(unusable("it was replaced each time it was locked".into()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked (the lock goes with the file when `_file` closes), and
        // only if the path is still this file.
        if names_file(&self.path, &self._file).unwrap_or(false) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The process holding the exclusive lock on the pid file at `path`, as the kernel lists it
/// in `/proc/locks`: `None` when no process does (the file is stale).
pub fn holder(path: &Path) -> std::io::Result<Option<u32>> {
    let named = std::fs::metadata(path)?;
    let device = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(named.dev()),
        rustix::fs::minor(named.dev()),
        named.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks")?;
    Ok(locks.lines().find_map(|line| lock_holder(line, &device)))
}

/// The PID of a `/proc/locks` line (`1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF`) that
/// is an exclusive flock on the file `device` (`major:minor:inode`).
fn lock_holder(line: &str, device: &str) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields[..] {
        [_, "FLOCK", _, "WRITE", pid, file, ..] if file == device => pid.parse().ok(),
        _ => None,
    }
}

/// Opens `path` for reading and writing (creating it, 0600, when `create`), refusing a
/// symlink.
fn open(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// The reason an open failed, in words (O_NOFOLLOW's ELOOP is a symlink).
fn describe(error: &std::io::Error) -> String {
    if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        "it is a symlink, which a pid file may not be".into()
    } else {
        error.to_string()
    }
}

/// Whether `path` still names the file `file` has open.
fn names_file(path: &Path, file: &File) -> std::io::Result<bool> {
    let open = file.metadata()?;
    Ok(match std::fs::symlink_metadata(path) {
        Ok(named) => named.dev() == open.dev() && named.ino() == open.ino(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => return Err(error),
    })
}

/// Replaces the file's content with this process's id and a newline.
fn write_pid(mut file: &File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    file.sync_data()
}

/// The pid the file names, for a message ("unknown" when unreadable).
fn pid_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().chars().take(20).collect::<String>())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_locks_line_names_its_holder_only_for_an_exclusive_flock_on_the_file() {
        let device = "08:01:1234";
        let line = |kind: &str, mode: &str, file: &str| {
            format!("1: {kind}  ADVISORY  {mode} 4242 {file} 0 EOF")
        };
        assert_eq!(
            lock_holder(&line("FLOCK", "WRITE", device), device),
            Some(4242)
        );
        assert_eq!(lock_holder(&line("FLOCK", "READ", device), device), None);
        assert_eq!(lock_holder(&line("POSIX", "WRITE", device), device), None);
        assert_eq!(
            lock_holder(&line("FLOCK", "WRITE", "08:01:12345"), device),
            None
        );
        assert_eq!(lock_holder("", device), None);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-pidfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("ferry.pid")
    }

    #[test]
    fn a_file_naming_a_live_process_but_unlocked_is_stale_and_taken() {
        let path = scratch("stale");
        // PID 1 is alive and is not a ferry: the old check refused this.
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(holder(&path).unwrap(), None);
        let taken = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(holder(&path).unwrap(), Some(std::process::id()));
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        drop(taken);
        assert!(!path.exists(), "removed when dropped");
    }

    #[test]
    fn a_held_file_is_refused_and_named() {
        let path = scratch("held");
        let _taken = PidFile::create(&path).unwrap();
        // A second open file description conflicts with the first, as another process's.
        let refused = PidFile::create(&path).unwrap_err();
        let said = refused.to_string();
        assert!(matches!(refused, PidFileError::Held { .. }), "{said}");
        assert!(said.contains(&std::process::id().to_string()), "{said}");
    }

    #[test]
    fn a_symlink_is_refused() {
        let path = scratch("symlink");
        let target = path.with_file_name("elsewhere");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let refused = PidFile::create(&path).unwrap_err();
        assert!(
            matches!(refused, PidFileError::Unusable { .. }),
            "{refused}"
        );
        assert!(!target.exists());
    }
}
