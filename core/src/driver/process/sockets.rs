//! Who holds the socket a plugin announced (Linux only).
//!
//! A handshake line is only a claim: a candidate could print the address of the active
//! generation (or of any other server) and pass its probe on someone else's socket.
//! [`check_endpoint_owner`] accepts an announced address only if a LISTENING socket at that
//! address (TCP: from `inet_diag`, or `/proc/net/{tcp,tcp6}` without it; unix:
//! `/proc/net/unix`) is held by the candidate's own process tree:
//! the socket's inode is one of the fds (`/proc/<pid>/fd/* -> socket:[inode]`) of the
//! candidate, of one of its descendants, or of a process carrying the candidate's
//! `TRYSWAP_RELOAD_ID` (a child that daemonized and left the tree).

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use tryswap_fsm::{Network, ProcessIdentity};

use super::os;

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s Flags column: the socket listens.
const UNIX_ACCEPTCON: u64 = 0x0001_0000;
/// `TCP_LISTEN` in `/proc/net/tcp*`'s `st` column.
const TCP_LISTEN: &str = "0A";

/// Why an announced address is not accepted as the candidate's.
#[derive(Debug, thiserror::Error)]
pub enum EndpointOwnerError {
    /// No socket listens at the address.
    #[error("nothing listens at the announced {network} address {address}")]
    NotListening {
        /// `tcp` or `unix`.
        network: Network,
        /// The announced address.
        address: String,
    },
    /// Sockets listen at the address, but none of them belongs to the candidate.
    #[error(
        "the announced {network} address {address} is held by {}, not by the candidate \
         (pid {pid}) or its descendants",
        holders_text(.holders)
    )]
    HeldByOthers {
        /// `tcp` or `unix`.
        network: Network,
        /// The announced address.
        address: String,
        /// The candidate's pid.
        pid: u32,
        /// Who holds the listening sockets (empty: nobody we can see).
        holders: Vec<SocketHolder>,
    },
    /// The address does not have the shape the handshake promised.
    #[error("announced {network} address {address:?} is not {expected}")]
    BadAddress {
        /// `tcp` or `unix`.
        network: Network,
        /// The announced address.
        address: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A `/proc` file could not be read.
    #[error("cannot read {path} to check who holds the announced address: {source}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn holders_text(holders: &[SocketHolder]) -> String {
    if holders.is_empty() {
        return "a process this host cannot inspect".to_owned();
    }
    holders
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A process holding a listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketHolder {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`), if readable.
    pub command: Option<String>,
    /// Its `TRYSWAP_RELOAD_ID`, if it is a tryswap plugin.
    pub reload_tag: Option<String>,
}

impl fmt::Display for SocketHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(command) = &self.command {
            write!(f, " ({command})")?;
        }
        if let Some(tag) = &self.reload_tag {
            write!(f, " [tryswap plugin of reload {tag}]")?;
        }
        Ok(())
    }
}

/// Accepts `address` as the candidate's only if a listening socket there is held by the
/// candidate `identity`, one of its descendants, or a process tagged with `reload_tag`.
///
/// The candidate's own fds are looked at first (no scan of other processes in the common
/// case); otherwise every process's fds are scanned once to find who holds the socket.
pub fn check_endpoint_owner(
    network: Network,
    address: &str,
    identity: &ProcessIdentity,
    reload_tag: &str,
) -> Result<(), EndpointOwnerError> {
    if network == Network::Tcp && kernel_picks_the_candidates_listener(address, identity.pid) {
        return Ok(());
    }
    let inodes = listening_inodes(network, address)?;
    if inodes.is_empty() {
        return Err(EndpointOwnerError::NotListening {
            network,
            address: address.to_owned(),
        });
    }
    if socket_inodes_of(identity.pid).is_some_and(|held| !held.is_disjoint(&inodes)) {
        return Ok(());
    }
    let mut others = Vec::new();
    for pid in os::all_pids() {
        let Some(held) = socket_inodes_of(pid) else {
            continue;
        };
        if held.is_disjoint(&inodes) {
            continue;
        }
        let tag = os::reload_tag_of(pid);
        if tag.as_deref() == Some(reload_tag) || descends_from(pid, identity.pid) {
            return Ok(());
        }
        others.push(SocketHolder {
            pid,
            command: fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim_end().to_owned()),
            reload_tag: tag,
        });
    }
    Err(EndpointOwnerError::HeldByOthers {
        network,
        address: address.to_owned(),
        pid: identity.pid,
        holders: others,
    })
}

/// Whether the listener the kernel gives a connection to the TCP `address` is a socket
/// `pid` holds: one lookup in the kernel's listening hash and a look at `pid`'s fds, the
/// common case of [`check_endpoint_owner`] without a dump of the listening table. `false`
/// says only that this quick look did not decide (the full check follows).
fn kernel_picks_the_candidates_listener(address: &str, pid: u32) -> bool {
    let Ok(wanted) = address.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(Some(listener)) = super::sock_diag::tcp_listener_for(wanted) else {
        return false;
    };
    accepts(listener.local.ip(), listener.local.port(), wanted)
        && socket_inodes_of(pid).is_some_and(|held| held.contains(&listener.inode))
}

/// True if `root` is an ancestor of `pid` (following parent pids).
fn descends_from(pid: u32, root: u32) -> bool {
    let mut current = pid;
    // Bounded: a pid chain is never deeper than the number of processes.
    for _ in 0..4096 {
        let Ok(Some(stat)) = os::read_stat(current) else {
            return false;
        };
        let parent = stat.ppid();
        if parent == root {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// The socket inodes among `pid`'s open fds; `None` if they cannot be read (gone, or
/// another user's).
pub(super) fn socket_inodes_of(pid: u32) -> Option<HashSet<u64>> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let inodes = dir
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .filter_map(|target| socket_link_inode(&target))
        .collect();
    Some(inodes)
}

/// The inode a `/proc/<pid>/fd/*` link names when it is a socket (`socket:[inode]`).
pub(super) fn socket_link_inode(target: &std::path::Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The socket inodes among this process's open fds, by `fstat` of every slot of its fd
/// table (the table's size is `FDSize` in `/proc/self/status`). [`socket_inodes_of`] of
/// this process gives the same set, but `/proc/self/fd` makes the kernel build an entry
/// and resolve a link per fd: a host process holding many plugins' fds paid milliseconds
/// for it at every retirement. Falls back to [`socket_inodes_of`] when the size cannot be
/// read.
pub(super) fn own_socket_inodes() -> HashSet<u64> {
    let Some(table) = own_fd_table_size() else {
        return socket_inodes_of(std::process::id()).unwrap_or_default();
    };
    own_socket_fds(table).map(|(_, inode)| inode).collect()
}

/// This process's socket fds below `table` (its fd table's size) with their inodes, by
/// `fstat` of every slot.
pub(super) fn own_socket_fds(table: i32) -> impl Iterator<Item = (std::os::fd::RawFd, u64)> {
    (0..table).filter_map(|fd| {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `fstat` only writes into `stat`, which is read only when it succeeded; an
        // fd that is not open (or closed meanwhile by another thread) fails with EBADF.
        if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: initialised by the successful `fstat` above.
        let stat = unsafe { stat.assume_init() };
        (stat.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some((fd, stat.st_ino))
    })
}

/// The size of this process's fd table (every open fd is below it).
pub(super) fn own_fd_table_size() -> Option<i32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("FDSize:"))
        .and_then(|n| n.trim().parse().ok())
}

fn read_proc(path: &str) -> Result<String, EndpointOwnerError> {
    fs::read_to_string(path).map_err(|source| EndpointOwnerError::Proc {
        path: PathBuf::from(path),
        source,
    })
}

/// Inodes of the listening sockets that accept connections made to `address`.
pub fn listening_inodes(
    network: Network,
    address: &str,
) -> Result<HashSet<u64>, EndpointOwnerError> {
    match network {
        Network::Tcp => {
            let wanted: SocketAddr =
                address
                    .parse()
                    .map_err(|_| EndpointOwnerError::BadAddress {
                        network,
                        address: address.to_owned(),
                        expected: "an ip:port",
                    })?;
            match super::sock_diag::tcp(super::sock_diag::TCP_LISTEN, wanted.port(), 0) {
                Ok(listeners) => {
                    return Ok(listeners
                        .into_iter()
                        .filter(|s| accepts(s.local.ip(), s.local.port(), wanted))
                        .map(|s| s.inode)
                        .collect())
                }
                Err(e) => {
                    tracing::debug!(error = %e, "inet_diag unavailable: reading /proc/net/tcp")
                }
            }
            let mut inodes = HashSet::new();
            for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
                let text = match read_proc(path) {
                    Ok(text) => text,
                    // A kernel without IPv6 has no tcp6 table.
                    Err(EndpointOwnerError::Proc { source, .. })
                        if v6 && source.kind() == io::ErrorKind::NotFound =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                };
                inodes.extend(tcp_listeners(&text, v6, wanted));
            }
            Ok(inodes)
        }
        Network::Unix => Ok(unix_listeners(&read_proc("/proc/net/unix")?, address)),
    }
}

/// Listening sockets of a `/proc/net/tcp` (or `tcp6`) table that accept `wanted`.
fn tcp_listeners(table: &str, v6: bool, wanted: SocketAddr) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != TCP_LISTEN {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = parse_proc_ip(ip, v6)?;
            accepts(ip, port, wanted).then(|| inode.parse().ok())?
        })
        .collect()
}

/// `/proc/net/tcp*` prints addresses as 32-bit words in host byte order.
pub(super) fn parse_proc_ip(hex: &str, v6: bool) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    if v6 {
        if hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        Some(IpAddr::V6(Ipv6Addr::from(bytes)))
    } else {
        if hex.len() != 8 {
            return None;
        }
        Some(IpAddr::V4(Ipv4Addr::from(word(0)?)))
    }
}

/// `ip` with a v4-mapped IPv6 address written as IPv4, as the kernel's tables report it.
pub(super) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a listener bound to `ip:port` accepts connections made to `wanted`.
pub(super) fn accepts(ip: IpAddr, port: u16, wanted: SocketAddr) -> bool {
    if port != wanted.port() {
        return false;
    }
    let (ip, want) = (canonical_ip(ip), canonical_ip(wanted.ip()));
    ip == want
        || match ip {
            IpAddr::V4(v4) => v4.is_unspecified() && want.is_ipv4(),
            // A dual-stack `[::]` listener takes IPv4 connections too.
            IpAddr::V6(v6) => v6.is_unspecified(),
        }
}

/// Listening sockets of `/proc/net/unix` bound to `path`.
fn unix_listeners(table: &str, path: &str) -> HashSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode Path (the path may hold spaces).
            let mut rest = line;
            let mut fields = [""; 7];
            for field in &mut fields {
                rest = rest.trim_start();
                let end = rest.find(' ').unwrap_or(rest.len());
                (*field, rest) = rest.split_at(end);
            }
            let flags = u64::from_str_radix(fields[3], 16).ok()?;
            let inode = fields[6].parse::<u64>().ok()?;
            let bound = rest.strip_prefix(' ')?;
            (flags & UNIX_ACCEPTCON != 0 && bound == path).then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_owner_check_accepts_only_the_holder_of_the_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        if super::super::sock_diag::tcp_listener_for(listener.local_addr().unwrap()).is_err() {
            eprintln!("skipping: inet_diag is not available here");
            return;
        }
        assert!(kernel_picks_the_candidates_listener(
            &addr,
            std::process::id()
        ));
        // Another process (a child that holds no socket) does not hold it.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!kernel_picks_the_candidates_listener(&addr, child.id()));
        let _ = child.kill();
        let _ = child.wait();
        drop(listener);
        assert!(!kernel_picks_the_candidates_listener(
            &addr,
            std::process::id()
        ));
    }

    /// The `fstat` walk of the fd table finds this process's sockets (as `/proc/self/fd`
    /// names them), not its files, and not a socket closed before it ran. (Other tests
    /// open sockets meanwhile: only these ones are checked.)
    #[test]
    fn own_socket_inodes_are_the_sockets_proc_lists() {
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (served, _) = listener.accept().unwrap();
        let as_file = |s: std::net::TcpStream| std::fs::File::from(std::os::fd::OwnedFd::from(s));
        let (client, served) = (as_file(client), as_file(served));
        let inode = |f: &std::fs::File| f.metadata().unwrap().ino();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let (client_ino, served_ino) = (inode(&client), inode(&served));
        let listed = socket_inodes_of(std::process::id()).unwrap();
        let own = own_socket_inodes();
        for ino in [client_ino, served_ino] {
            assert!(listed.contains(&ino) && own.contains(&ino), "socket {ino}");
        }
        assert!(!own.contains(&inode(&file)), "a file counted as a socket");
        drop(served);
        assert!(
            !own_socket_inodes().contains(&served_ino),
            "a closed socket"
        );
        assert!(own_socket_inodes().contains(&client_ino));
        drop((client, listener));
    }

    #[test]
    fn tcp_table_matches_exact_and_wildcard_listeners() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:04D2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 00000000:04D3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n\
   2: 0100007F:04D2 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n";
        let to = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(tcp_listeners(table, false, to("127.0.0.1:1234")), vec![111]);
        assert_eq!(tcp_listeners(table, false, to("127.0.0.1:1235")), vec![222]);
        assert!(tcp_listeners(table, false, to("127.0.0.2:1234")).is_empty());
    }

    #[test]
    fn unix_table_matches_listening_path_only() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 4242 /tmp/plugin 1\n\
0000000000000000: 00000003 00000000 00000000 0001 03 4343 /tmp/plugin 1\n\
0000000000000000: 00000002 00000000 00010000 0001 01 4444 /tmp/other\n";
        assert_eq!(
            unix_listeners(table, "/tmp/plugin 1"),
            HashSet::from([4242])
        );
        assert!(unix_listeners(table, "/tmp/plugin").is_empty());
    }

    #[test]
    fn v6_words_and_mapped_addresses() {
        let any = parse_proc_ip("00000000000000000000000000000000", true).unwrap();
        assert!(accepts(any, 80, "127.0.0.1:80".parse().unwrap()));
        let lo6 = parse_proc_ip("00000000000000000000000001000000", true).unwrap();
        assert_eq!(lo6, "::1".parse::<IpAddr>().unwrap());
        assert!(!accepts(lo6, 80, "127.0.0.1:80".parse().unwrap()));
    }
}
