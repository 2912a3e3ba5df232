//! How the operator commands (`check`, `stats`, `routes`, `top`, `reload`) find their
//! daemon: an explicit flag first, then the daemon's own config file (`--config`, or
//! `FERRY_CONFIG` as `ferry serve` reads it), then the built-in default.
//!
//! Only `server.listen`, `ops.listen` and `ops.pid_file` are read, leniently: the file may
//! hold anything else, even what the daemon would refuse, and still say where it listens.
//! An address that listens on every interface (`0.0.0.0:P`, `[::]:P`) is reached on
//! loopback.

use std::path::{Path, PathBuf};

use clap::Args;

/// The config file an operator command reads its daemon's addresses from.
#[derive(Debug, Args, Default, Clone)]
pub struct ConfigArg {
    /// The daemon's config file: its server.listen, ops.listen and ops.pid_file say where
    /// the daemon is (an explicit --address, --http or --pid-file wins).
    /// Example: --config /etc/ferry/ferry.toml
    #[arg(long, env = "FERRY_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Where a config file says its daemon is; each `None` when the file does not set it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Located {
    /// `server.listen`, as a client reaches it.
    pub listen: Option<String>,
    /// `ops.listen`, as a client reaches it.
    pub ops_listen: Option<String>,
    /// `ops.pid_file`.
    pub pid_file: Option<PathBuf>,
}

impl ConfigArg {
    /// What the config file (if one is given) says; an unreadable file, or one that is not
    /// TOML, is an error that names it.
    pub fn locate(&self) -> Result<Located, String> {
        match &self.config {
            Some(path) => read(path),
            None => Ok(Located::default()),
        }
    }

    /// [`Self::locate`], unless `flags_suffice` (the command's flags already say all it
    /// needs): then the file is not read at all, so an unreadable `FERRY_CONFIG` in the
    /// environment does not fail a command that named its daemon.
    pub fn locate_unless(&self, flags_suffice: bool) -> Result<Located, String> {
        if flags_suffice {
            return Ok(Located::default());
        }
        self.locate()
    }
}

impl Located {
    /// The operations endpoint: `flag` if given, else the config's, else the default.
    pub fn ops_address(&self, flag: Option<&str>) -> String {
        flag.map(str::to_owned)
            .or_else(|| self.ops_listen.clone())
            .unwrap_or_else(|| crate::contract::DEFAULT_OPS_LISTEN.to_owned())
    }
}

/// Reads the addresses of the config at `path`.
fn read(path: &Path) -> Result<Located, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (place, message) = crate::toml_place::describe(&text, &e);
        format!(
            "{} is not TOML ({place}{message}); give the daemon's addresses as flags instead",
            path.display()
        )
    })?;
    let text_of = |section: &str, key: &str| {
        table
            .get(section)
            .and_then(toml::Value::as_table)
            .and_then(|section| section.get(key))
            .and_then(toml::Value::as_str)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    Ok(Located {
        listen: text_of("server", "listen").map(|a: String| reachable(&a)),
        ops_listen: text_of("ops", "listen").map(|a: String| reachable(&a)),
        pid_file: text_of("ops", "pid_file").map(PathBuf::from),
    })
}

/// `address` as a client on this machine reaches it: a listener on every interface is
/// reached on loopback.
fn reachable(address: &str) -> String {
    if let Some(port) = address.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = address.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        address.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(name: &str, text: &str) -> ConfigArg {
        let dir = std::env::temp_dir().join(format!("ferry-locate-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ferry.toml");
        std::fs::write(&path, text).unwrap();
        ConfigArg { config: Some(path) }
    }

    #[test]
    fn the_addresses_come_from_the_file_and_every_interface_means_loopback() {
        let config = written(
            "full",
            "[server]\nlisten = \"0.0.0.0:4000\"\nworkers = \"not checked here\"\n\
             [ops]\nlisten = \"127.0.0.1:4001\"\npid_file = \"/run/ferry.pid\"\n",
        );
        assert_eq!(
            config.locate().unwrap(),
            Located {
                listen: Some("127.0.0.1:4000".into()),
                ops_listen: Some("127.0.0.1:4001".into()),
                pid_file: Some("/run/ferry.pid".into()),
            }
        );
        let ipv6 = written("ipv6", "[server]\nlisten = \"[::]:4000\"\n");
        assert_eq!(ipv6.locate().unwrap().listen.as_deref(), Some("[::1]:4000"));
        assert_eq!(ipv6.locate().unwrap().ops_listen, None);
    }

    #[test]
    fn a_file_that_is_not_toml_is_named() {
        let broken = written("broken", "[server\n");
        let error = broken.locate().unwrap_err();
        assert!(error.contains("is not TOML"), "{error}");
        assert!(!error.contains('\n'), "{error}");
        assert_eq!(ConfigArg::default().locate().unwrap(), Located::default());
        assert_eq!(
            broken.locate_unless(true).unwrap(),
            Located::default(),
            "not read"
        );
        assert!(broken.locate_unless(false).is_err());
    }
}
