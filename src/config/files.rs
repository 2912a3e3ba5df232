//! Reading the files a config names — tokens, certificates and keys, secrets — each
//! bounded in size (a config naming /dev/zero must not hang start-up) and named in errors.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Largest certificate chain or key file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// Largest token file read.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Reads at most `limit` bytes of `path` (a config naming /dev/zero must not hang start-up).
pub fn read_bounded(path: &str, limit: u64) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit).read_to_end(&mut bytes))
        .map_err(|source| ConfigError::Read {
            path: PathBuf::from(path),
            source,
        })?;
    Ok(bytes)
}

/// Reads a PEM file (at most [`MAX_PEM_BYTES`]); `field` names it in errors.
pub fn read_pem(field: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes = read_bounded(path, MAX_PEM_BYTES)?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Err(ConfigError::Invalid {
            field,
            reason: format!("{path} is not a PEM file"),
        });
    }
    Ok(bytes)
}

/// Reads the bearer token from `path` ("" = no token); errors name `field`.
pub fn read_token(field: &'static str, path: &str) -> Result<Option<String>, ConfigError> {
    if path.is_empty() {
        return Ok(None);
    }
    let bytes = read_bounded(path, MAX_TOKEN_BYTES)?;
    let text = String::from_utf8_lossy(&bytes);
    let token = text.trim();
    if !(16..=4096).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Invalid {
            field,
            reason: format!("{path}: the token must be 16 to 4096 printable characters"),
        });
    }
    Ok(Some(token.to_owned()))
}
