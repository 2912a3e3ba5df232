//! Who is at the other end of a TCP connection made from the daemon's own host: the user id
//! the kernel lists for the peer's socket in `/proc/net/tcp` (or `tcp6`), the lookup that
//! `ss -e` makes. A login node has many users, and loopback alone says only that one of them
//! asked; the ops endpoint uses this to answer `POST /reload` to root and to the daemon's
//! own user only.
//!
//! The table lists every socket of the network namespace with its owner, one line each:
//! `sl local_address rem_address st tx:rx tr:when retrnsmt uid …`, an address being the
//! kernel's 32-bit words in hex, each in the host's byte order, then `:` and the port in hex.
//! The peer's socket is the line whose local address is the peer and whose remote address is
//! the daemon's end.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;

/// Both ends of an accepted connection, as the daemon's socket sees them.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    /// The daemon's end (the ops listener's address, or the address it was reached at).
    pub local: SocketAddr,
    /// The peer's end.
    pub peer: SocketAddr,
}

impl Connected<IncomingStream<'_, TcpListener>> for Ends {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        let peer = *stream.remote_addr();
        // An accepted socket always has a local address; the fallback (the peer's own)
        // matches no line of the table, so the peer is refused as unknown.
        let local = stream.io().local_addr().unwrap_or(peer);
        Self { local, peer }
    }
}

/// Why the owner of a peer's socket is not known.
#[derive(Debug, thiserror::Error)]
pub enum UnknownPeer {
    /// The kernel's table could not be read.
    #[error("cannot read {path}: {source}")]
    Table {
        /// The table read.
        path: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// No socket of this host is the peer (it closed, or is on another host).
    #[error("no socket of this host is {peer} connected to {local}")]
    NotListed {
        /// The peer's address.
        peer: SocketAddr,
        /// The daemon's end.
        local: SocketAddr,
    },
}

/// The user id owning the peer's socket of the connection `ends`. An IPv4 peer of a
/// dual-stack listener (`[::]`) shows as `::ffff:127.0.0.1` to the daemon but is listed
/// in the IPv4 table (unless it too used an IPv6 socket): both tables are searched.
pub fn peer_uid(ends: Ends) -> Result<u32, UnknownPeer> {
    let canonical = Ends {
        local: canonical(ends.local),
        peer: canonical(ends.peer),
    };
    let tables: &[&'static str] = if canonical.local.is_ipv4() {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/tcp6"]
    };
    for &path in tables {
        let table =
            std::fs::read_to_string(path).map_err(|source| UnknownPeer::Table { path, source })?;
        if let Some(uid) = uid_in(&table, canonical) {
            return Ok(uid);
        }
    }
    Err(UnknownPeer::NotListed {
        peer: ends.peer,
        local: ends.local,
    })
}

/// `address` with an IPv4-mapped IPv6 address as the IPv4 one.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// The uid on the line of `table` whose local address is `ends.peer` and whose remote
/// address is `ends.local` (both compared in canonical form), if that socket is still held
/// by a process. A socket its process has closed (in TIME_WAIT, or orphaned while closing)
/// shows inode 0 and uid 0, root's: it names no one, and must never pass for root.
fn uid_in(table: &str, ends: Ends) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = canonical(address(fields.get(1)?)?);
        let remote = canonical(address(fields.get(2)?)?);
        if local != ends.peer || remote != ends.local {
            return None;
        }
        let inode: u64 = fields.get(9)?.parse().ok()?;
        if inode == 0 {
            return None;
        }
        fields.get(7)?.parse().ok()
    })
}

/// An address as the table prints it: `0100007F:1F90` is 127.0.0.1:8080 on a
/// little-endian host; IPv6 addresses are four such words.
fn address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        let hex = ip.get(8 * i..8 * i + 8)?;
        u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes)
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether the user `uid` may ask a daemon running as `own` to reload: root, or the
/// daemon's own user (who can send it SIGHUP anyway).
pub fn may_reload(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(local: &str, peer: &str) -> Ends {
        Ends {
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
        }
    }

    #[test]
    fn the_peer_is_the_line_whose_local_end_is_the_peer() {
        // 127.0.0.1:33384 listening, 127.0.0.1:33384 ← 127.0.0.1:40000 (uid 0) and
        // 127.0.0.1:40000 → 127.0.0.1:33384 (uid 1000), as a little-endian host prints them.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:8268 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n\
            1: 0100007F:8268 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 0 10 -1\n\
            2: 0100007F:9C40 0100007F:8268 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 20 4 0 10 -1\n\
            3: 0100007F:9C41 0100007F:8268 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000\n";
        if cfg!(target_endian = "little") {
            let asked = ends("127.0.0.1:33384", "127.0.0.1:40000");
            assert_eq!(uid_in(table, asked), Some(1000));
            assert_eq!(
                uid_in(table, ends("127.0.0.1:33384", "127.0.0.1:40002")),
                None
            );
            // A peer that closed its socket (TIME_WAIT, inode 0) is listed with uid 0: it
            // must not pass for root.
            assert_eq!(
                uid_in(table, ends("127.0.0.1:33384", "127.0.0.1:40001")),
                None
            );
        }
    }

    #[test]
    fn ipv6_and_mapped_ipv4_addresses_are_read() {
        if cfg!(target_endian = "little") {
            let loopback = address("00000000000000000000000001000000:0050").unwrap();
            assert_eq!(loopback, "[::1]:80".parse().unwrap());
            let mapped = address("0000000000000000FFFF00000100007F:0050").unwrap();
            assert_eq!(mapped, "[::ffff:127.0.0.1]:80".parse().unwrap());
        }
        assert_eq!(address("0100007F"), None);
        assert_eq!(address("0100007:0050"), None);
    }

    /// The real table, for a real connection: the peer is this test's own process. An IPv4
    /// peer of a dual-stack listener is found too.
    #[test]
    fn a_loopback_peer_is_found_with_its_uid() {
        for (bind, connect) in [
            ("127.0.0.1:0", "127.0.0.1"),
            ("[::1]:0", "::1"),
            ("[::]:0", "127.0.0.1"),
        ] {
            let Ok(listener) = std::net::TcpListener::bind(bind) else {
                continue; // no IPv6 on this host
            };
            let port = listener.local_addr().unwrap().port();
            let ip: IpAddr = connect.parse().unwrap();
            let _client = std::net::TcpStream::connect((ip, port)).unwrap();
            let (accepted, peer) = listener.accept().unwrap();
            let local = accepted.local_addr().unwrap();
            let uid = peer_uid(Ends { local, peer }).unwrap();
            assert_eq!(uid, rustix::process::geteuid().as_raw(), "{bind}");
        }
    }

    /// A peer that has closed its socket is not known: its uid is no longer listed.
    #[test]
    fn a_peer_that_closed_its_socket_is_unknown() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        drop(client);
        let local = accepted.local_addr().unwrap();
        let looked_up = peer_uid(Ends { local, peer });
        assert!(looked_up.is_err(), "{looked_up:?}");
    }

    #[test]
    fn root_and_the_daemons_user_may_reload() {
        assert!(may_reload(0, 998));
        assert!(may_reload(998, 998));
        assert!(!may_reload(1000, 998));
        assert!(may_reload(0, 0));
        assert!(!may_reload(1000, 0));
    }
}
