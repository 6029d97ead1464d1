//! Established connections to a plugin's endpoint held by outside callers (Linux only):
//! what a drain waits on before it stops a retiring generation.
//!
//! Connections this process holds itself (the stdio stream, probes) are not counted: they
//! end with the plugin and would keep every drain waiting. TCP: the server ends of
//! ESTABLISHED sockets whose local address is the plugin's (`inet_diag`, filtered by state
//! and port in the kernel; `/proc/net/tcp{,6}` where it is missing), minus those whose peer
//! is one of this process's sockets. Unix: `sock_diag` (`NETLINK_SOCK_DIAG`,
//! `AF_UNIX`) lists connected sockets with their bound name and peer inode; the server ends
//! carry the listener's path.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;

use tryswap_fsm::{Endpoint, Network};

use super::sock_diag::{self, u16_at, u32_at};
use super::sockets::own_socket_inodes;

/// Established connections to `endpoint` from outside this process; `None` when they
/// cannot be counted (no `/proc`, no `sock_diag`, an address that does not parse).
pub fn outside_connections(endpoint: &Endpoint) -> Option<usize> {
    match endpoint.network {
        Network::Tcp => {
            let wanted: SocketAddr = endpoint.address.parse().ok()?;
            match tcp_by_diag(wanted) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::debug!(error = %e, "inet_diag unavailable: reading /proc/net/tcp");
                    tcp_by_proc(wanted)
                }
            }
        }
        Network::Unix => {
            let own = own_socket_inodes();
            let sockets = unix_diag().ok()?;
            Some(
                sockets
                    .iter()
                    .filter(|s| s.name.as_deref() == Some(endpoint.address.as_str()))
                    .filter(|s| s.peer.is_some_and(|p| !own.contains(&u64::from(p))))
                    .count(),
            )
        }
    }
}

/// [`outside_connections`] when `holders` are all the processes that can hold the server
/// ends (the generation's cgroup lists them): for TCP, read from their fd tables
/// ([`super::served`]), O(their descriptors) instead of a walk of the kernel's established
/// table. A caller at a local address in `dialed` (connections this process dialed:
/// local address, socket inode) is this process when the kernel still has that very
/// socket there (one lookup, no walk); any other caller is looked for among this
/// process's sockets. Counts from the kernel's tables where the generation's descriptors
/// cannot be read.
pub fn outside_connections_held_by(
    endpoint: &Endpoint,
    holders: &[u32],
    dialed: &[(SocketAddr, u64)],
) -> Option<usize> {
    if endpoint.network == Network::Tcp {
        if let Ok(wanted) = endpoint.address.parse::<SocketAddr>() {
            match super::served::served_peers(holders, wanted) {
                Ok(peers) => {
                    let unexplained: Vec<SocketAddr> = peers
                        .into_iter()
                        .filter(|peer| !dialed_from(*peer, wanted, dialed))
                        .collect();
                    if unexplained.is_empty() {
                        return Some(0);
                    }
                    let own = super::served::own_clients_of(wanted);
                    return Some(unexplained.iter().filter(|p| !own.contains(p)).count());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the generation's sockets cannot be read: asking inet_diag");
                }
            }
        }
    }
    outside_connections(endpoint)
}

/// Whether the connection from `peer` to `wanted` is one this process dialed (per
/// `dialed`) and still holds: the kernel's socket at `peer` → `wanted` has the inode
/// recorded when it was dialed. A port reused since by another process's connection has
/// another inode.
fn dialed_from(peer: SocketAddr, wanted: SocketAddr, dialed: &[(SocketAddr, u64)]) -> bool {
    dialed.iter().any(|(local, inode)| {
        *local == peer
            && sock_diag::tcp_connection(peer, wanted)
                .ok()
                .flatten()
                .is_some_and(|socket| socket.inode == *inode)
    })
}

/// [`outside_connections`] of a TCP address by `inet_diag`: the server ends at `wanted`,
/// minus those whose peer is a client socket of this process. Costs a look at the port's
/// listeners (the kernel's listening table only), one walk of the established table per
/// address family that can hold the connections (one, unless an IPv6 listener takes IPv4
/// callers) and O(sockets of the port).
fn tcp_by_diag(wanted: SocketAddr) -> io::Result<usize> {
    let sockets = sock_diag::tcp_on_port(
        connection_families(wanted)?,
        sock_diag::TCP_ESTABLISHED,
        wanted.port(),
    )?;
    let server_peers: Vec<SocketAddr> = sockets
        .iter()
        .filter(|s| s.local == wanted)
        .map(|s| s.remote)
        .collect();
    // The client ends on this host: the callers that may be this process.
    let local_clients: Vec<_> = sockets
        .iter()
        .filter(|s| s.remote == wanted && server_peers.contains(&s.local))
        .collect();
    if local_clients.is_empty() {
        return Ok(server_peers.len());
    }
    let own = own_socket_inodes();
    let own_locals: HashSet<SocketAddr> = local_clients
        .iter()
        .filter(|s| own.contains(&s.inode))
        .map(|s| s.local)
        .collect();
    Ok(server_peers
        .iter()
        .filter(|peer| !own_locals.contains(peer))
        .count())
}

/// The tables the connections to `wanted` are in: the family of the sockets that listen
/// for it (their connections' server ends have it: an IPv6 `[::]` listener accepts IPv4
/// callers as IPv6 sockets) and that of `wanted` itself (this process's clients dial it as
/// it is). Both when nothing listens any more: its connections may be in either.
fn connection_families(wanted: SocketAddr) -> io::Result<sock_diag::Families> {
    let listeners: Vec<_> = sock_diag::tcp(sock_diag::TCP_LISTEN, wanted.port(), 0)?
        .into_iter()
        .filter(|l| super::sockets::accepts(l.local.ip(), l.local.port(), wanted))
        .collect();
    if listeners.is_empty() {
        return Ok(sock_diag::Families::BOTH);
    }
    Ok(sock_diag::Families {
        v4: wanted.is_ipv4() || listeners.iter().any(|l| !l.v6),
        v6: wanted.is_ipv6() || listeners.iter().any(|l| l.v6),
    })
}

/// [`tcp_by_diag`] from `/proc/net/tcp{,6}`, where `inet_diag` is not available.
fn tcp_by_proc(wanted: SocketAddr) -> Option<usize> {
    let own = own_socket_inodes();
    let mut server_peers = Vec::new();
    let mut own_locals = HashSet::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(path) else {
            continue;
        };
        for row in tcp_rows(&table) {
            if own.contains(&row.inode) {
                own_locals.insert(row.local);
            }
            if row.state == TCP_ESTABLISHED && row.local == wanted {
                server_peers.push(row.remote);
            }
        }
    }
    Some(
        server_peers
            .iter()
            .filter(|peer| !own_locals.contains(peer))
            .count(),
    )
}

/// `TCP_ESTABLISHED` in `/proc/net/tcp*`'s `st` column.
const TCP_ESTABLISHED: &str = "01";

struct TcpRow<'a> {
    local: SocketAddr,
    remote: SocketAddr,
    state: &'a str,
    inode: u64,
}

fn tcp_rows(table: &str) -> impl Iterator<Item = TcpRow<'_>> {
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        Some(TcpRow {
            local: proc_addr(fields.get(1)?)?,
            remote: proc_addr(fields.get(2)?)?,
            state: fields.get(3)?,
            inode: fields.get(9)?.parse().ok()?,
        })
    })
}

/// `0100007F:1F40` (v4) or 32 hex digits + port (v6), as `/proc/net/tcp*` prints them;
/// v4-mapped v6 addresses come back as v4.
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = super::sockets::parse_proc_ip(ip, ip.len() == 32)?;
    Some(SocketAddr::new(super::sockets::canonical_ip(ip), port))
}

/// One connected unix socket as `sock_diag` reports it.
#[derive(Debug)]
struct UnixSocket {
    name: Option<String>,
    peer: Option<u32>,
}

const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
/// `1 << TCP_ESTABLISHED`: connected stream sockets.
const STATE_ESTABLISHED: u32 = 1 << 1;
const UNIX_DIAG_MSG: usize = 16;

/// Every connected unix stream socket of this network namespace, by `sock_diag`.
fn unix_diag() -> io::Result<Vec<UnixSocket>> {
    let mut body = Vec::with_capacity(24);
    body.push(libc::AF_UNIX as u8);
    body.push(0); // protocol
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&STATE_ESTABLISHED.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    body.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    body.extend_from_slice(&[0xff; 8]); // no cookie
    let mut sockets = Vec::new();
    sock_diag::dump(&body, |msg| {
        if let Some(s) = parse_unix_msg(msg) {
            sockets.push(s);
        }
    })?;
    Ok(sockets)
}

/// One `unix_diag_msg` and its attributes.
fn parse_unix_msg(body: &[u8]) -> Option<UnixSocket> {
    let mut attrs = body.get(UNIX_DIAG_MSG..)?;
    let mut socket = UnixSocket {
        name: None,
        peer: None,
    };
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0) as usize;
        let kind = u16_at(attrs, 2);
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = attrs.get(4..len)?;
        match kind {
            UNIX_DIAG_NAME => {
                // Abstract names start with NUL; paths may carry a trailing NUL.
                let name = data.split(|b| *b == 0).next().unwrap_or(&[]);
                if !name.is_empty() {
                    socket.name = Some(String::from_utf8_lossy(name).into_owned());
                }
            }
            UNIX_DIAG_PEER => socket.peer = Some(u32_at(data, 0)),
            _ => {}
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Some(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tryswap_fsm::Protocol;

    fn endpoint(network: Network, address: String) -> Endpoint {
        Endpoint {
            core_version: 1,
            app_version: 1,
            network,
            address,
            protocol: Protocol::Grpc,
            server_cert: None,
        }
    }

    #[test]
    fn own_unix_connections_are_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ep = endpoint(Network::Unix, path.display().to_string());
        let Some(before) = outside_connections(&ep) else {
            eprintln!("skipping: sock_diag for AF_UNIX is not available here");
            return;
        };
        assert_eq!(before, 0);
        // A connection from this process: not an outside caller.
        let _ours = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (_served, _) = listener.accept().unwrap();
        assert_eq!(outside_connections(&ep), Some(0));
    }

    /// A caller in another process (bash's `/dev/tcp`) connected to a listener, with the
    /// server end accepted; killed and reaped when dropped.
    struct OutsideCaller {
        child: std::process::Child,
        _served: std::net::TcpStream,
    }

    impl OutsideCaller {
        fn connect(listener: &std::net::TcpListener, addr: SocketAddr) -> Self {
            let script = format!(
                "exec 3<>/dev/tcp/{}/{} && echo connected && exec sleep 30",
                addr.ip(),
                addr.port()
            );
            let mut child = std::process::Command::new("bash")
                .args(["-c", &script])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                &mut line,
            )
            .unwrap();
            assert_eq!(line.trim(), "connected");
            let (served, _) = listener.accept().unwrap();
            OutsideCaller {
                child,
                _served: served,
            }
        }
    }

    impl Drop for OutsideCaller {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn an_ipv4_caller_of_a_dual_stack_listener_is_counted() {
        // `[::]` takes IPv4 callers too, as IPv6 sockets: the IPv6 table must be walked
        // although the plugin announced an IPv4 address.
        let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
            eprintln!("skipping: no IPv6 here");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let announced: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let ep = endpoint(Network::Tcp, announced.to_string());
        assert_eq!(outside_connections(&ep), Some(0));
        let _caller = OutsideCaller::connect(&listener, announced);
        assert_eq!(outside_connections(&ep), Some(1));
        // Read from the server's fd table: the server end's v4-mapped address is the same.
        assert_eq!(
            outside_connections_held_by(&ep, &[std::process::id()], &[]),
            Some(1)
        );
    }

    #[test]
    fn an_ipv4_caller_of_an_ipv4_listener_is_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = endpoint(Network::Tcp, addr.to_string());
        let _caller = OutsideCaller::connect(&listener, addr);
        let _ours = std::net::TcpStream::connect(addr).unwrap();
        let (_ours_served, _) = listener.accept().unwrap();
        assert_eq!(outside_connections(&ep), Some(1));
    }

    #[test]
    fn outside_callers_are_counted_from_the_holders_fd_tables() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = endpoint(Network::Tcp, addr.to_string());
        // This process holds the server ends, as a plugin in its cgroup would.
        let holders = [std::process::id()];
        assert_eq!(outside_connections_held_by(&ep, &holders, &[]), Some(0));
        let _ours = std::net::TcpStream::connect(addr).unwrap();
        let (_ours_served, _) = listener.accept().unwrap();
        assert_eq!(outside_connections_held_by(&ep, &holders, &[]), Some(0));
        let _caller = OutsideCaller::connect(&listener, addr);
        assert_eq!(outside_connections_held_by(&ep, &holders, &[]), Some(1));
        // The kernel's tables agree.
        assert_eq!(outside_connections(&ep), Some(1));
    }

    #[test]
    fn a_recorded_dial_is_recognised_only_while_its_socket_is_there() {
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_served, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        if sock_diag::tcp_connection(local, addr).is_err() {
            eprintln!("skipping: inet_diag is not available here");
            return;
        }
        let inode = {
            use std::os::fd::AsFd;
            let file = std::fs::File::from(client.as_fd().try_clone_to_owned().unwrap());
            file.metadata().unwrap().ino()
        };
        assert!(dialed_from(local, addr, &[(local, inode)]));
        // Another socket's inode at the same address (a port reused since): not ours.
        assert!(!dialed_from(local, addr, &[(local, inode + 1)]));
        assert!(!dialed_from(local, addr, &[]));
        drop(client);
        assert!(!dialed_from(local, addr, &[(local, inode)]));
    }

    #[test]
    fn own_tcp_connections_are_not_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = endpoint(Network::Tcp, addr.to_string());
        assert_eq!(outside_connections(&ep), Some(0));
        let _ours = std::net::TcpStream::connect(addr).unwrap();
        let (_served, _) = listener.accept().unwrap();
        assert_eq!(outside_connections(&ep), Some(0));
    }

    #[test]
    fn proc_addresses_parse() {
        assert_eq!(
            proc_addr("0100007F:1F40"),
            Some("127.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(
            proc_addr("0000000000000000FFFF00000100007F:1F40"),
            Some("127.0.0.1:8000".parse().unwrap())
        );
    }
}
