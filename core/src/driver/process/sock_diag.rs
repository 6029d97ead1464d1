//! The kernel's socket tables by `sock_diag` (`NETLINK_SOCK_DIAG`, Linux only): the sockets
//! of one state and port, filtered by the kernel.
//!
//! Reading `/proc/net/tcp{,6}` formats every socket of the network namespace as text and
//! walks the whole established hash table (262,144 buckets on a host with 24 GiB) once per
//! `read(2)` of the file: milliseconds of CPU per look, more with many `TIME_WAIT` sockets,
//! and a reload looked twice (who listens at the candidate's address, who is still
//! connected to the retiring one). `inet_diag` with a state mask and a port answers with
//! the matching sockets only; a dump of listeners never touches the established table.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue,
/// wqueue, uid, inode.
const INET_DIAG_MSG: usize = 72;
const INET_DIAG_NOCOOKIE: [u8; 8] = [0xff; 8];

/// `1 << TCP_ESTABLISHED`.
pub const TCP_ESTABLISHED: u32 = 1 << 1;
/// `1 << TCP_LISTEN`.
pub const TCP_LISTEN: u32 = 1 << 10;

/// Reads a native-endian `u16` at `at` (0 past the end).
pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |x| u16::from_ne_bytes([x[0], x[1]]))
}

/// Reads a native-endian `u32` at `at` (0 past the end).
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
}

/// Sends one `SOCK_DIAG_BY_FAMILY` dump request whose body (after the netlink header) is
/// `body`, and calls `each` with the body of every answer until the dump is done.
pub(super) fn dump(body: &[u8], each: impl FnMut(&[u8])) -> io::Result<()> {
    let fd = send_request(body, libc::NLM_F_REQUEST | libc::NLM_F_DUMP)?;
    read_answers(&fd, true, each)
}

/// Sends one `SOCK_DIAG_BY_FAMILY` request for a single socket (no dump: the kernel looks
/// it up in its hash tables, walking none) and returns the body of its answer; `None` when
/// no socket matches (`ENOENT`).
fn lookup_one(body: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let fd = send_request(body, libc::NLM_F_REQUEST)?;
    let mut answer = None;
    match read_answers(&fd, false, |msg| answer = Some(msg.to_vec())) {
        Ok(()) => Ok(answer),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A `NETLINK_SOCK_DIAG` socket that has sent `body` with `flags`.
fn send_request(body: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = owned.as_raw_fd();

    let mut request = Vec::with_capacity(NLMSG_HDR + body.len());
    request.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(flags as u16).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // seq
    request.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    request.extend_from_slice(body);
    // SAFETY: `request` is a valid buffer of its length; a zeroed sockaddr_nl is the kernel.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd,
            request.as_ptr().cast(),
            request.len(),
            0,
            std::ptr::addr_of!(kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// Reads the answers to the request sent on `fd` and calls `each` with each body: until
/// `NLMSG_DONE` for a dump, after the first datagram otherwise (a lookup's one answer).
fn read_answers(fd: &OwnedFd, dump: bool, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag: the dump ended without NLMSG_DONE",
            ));
        }
        let mut rest = buf.get(..n as usize).unwrap_or(&[]);
        while rest.len() >= NLMSG_HDR {
            let len = u32_at(rest, 0) as usize;
            let kind = u16_at(rest, 4);
            if len < NLMSG_HDR || len > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "sock_diag: truncated message",
                ));
            }
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(()),
                k if k == libc::NLMSG_ERROR as u16 => {
                    let errno = rest
                        .get(NLMSG_HDR..NLMSG_HDR + 4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => {
                    if let Some(body) = rest.get(NLMSG_HDR..len) {
                        each(body);
                    }
                }
            }
            let advance = (len + 3) & !3;
            rest = rest.get(advance..).unwrap_or(&[]);
        }
        if !dump {
            return Ok(());
        }
    }
}

/// One TCP socket as `inet_diag` reports it; v4-mapped IPv6 addresses come back as v4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// Its local address.
    pub local: SocketAddr,
    /// Its peer's address (unspecified for a listener).
    pub remote: SocketAddr,
    /// Its inode (what `/proc/<pid>/fd/*` links name as `socket:[inode]`).
    pub inode: u64,
    /// Whether it is an IPv6 socket (`AF_INET6`; a dual-stack listener's connections from
    /// IPv4 peers are too, though their addresses read as IPv4).
    pub v6: bool,
}

/// Which address families' tables a dump walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    /// `AF_INET`.
    pub v4: bool,
    /// `AF_INET6`.
    pub v6: bool,
}

impl Families {
    /// Both tables.
    pub const BOTH: Families = Families { v4: true, v6: true };

    fn list(self) -> impl Iterator<Item = libc::c_int> {
        [(self.v4, libc::AF_INET), (self.v6, libc::AF_INET6)]
            .into_iter()
            .filter_map(|(wanted, family)| wanted.then_some(family))
    }
}

/// The TCP sockets (IPv4 and IPv6) in one of `states` (a mask of `1 << TCP_*`) whose
/// local port is `local_port` and whose peer's port is `remote_port` (0: any). The kernel
/// filters by state and port; the ports are checked again here.
pub fn tcp(states: u32, local_port: u16, remote_port: u16) -> io::Result<Vec<TcpSocket>> {
    tcp_dump(
        Families::BOTH,
        states,
        local_port,
        remote_port,
        &[],
        |socket| {
            (local_port == 0 || socket.local.port() == local_port)
                && (remote_port == 0 || socket.remote.port() == remote_port)
        },
    )
}

/// The TCP sockets of `families` in one of `states` with `port` at either end: both
/// sides of the connections to a local server at `port`, in one walk of the kernel's
/// established table per address family instead of two (a filter in `inet_diag`'s
/// bytecode, `sport == port || dport == port`). Kernels without that bytecode (before
/// Linux 4.16) get the two walks, in both families.
pub fn tcp_on_port(families: Families, states: u32, port: u16) -> io::Result<Vec<TcpSocket>> {
    let filter = either_port_filter(port);
    match tcp_dump(families, states, 0, 0, &filter, |socket| {
        socket.local.port() == port || socket.remote.port() == port
    }) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut sockets = tcp(states, port, 0)?;
            sockets.extend(tcp(states, 0, port)?);
            Ok(sockets)
        }
        result => result,
    }
}

/// `INET_DIAG_REQ_BYTECODE` for `sport == port || dport == port`, as `ss` compiles it:
/// a failed first test jumps to the second; a passed one to a jump over the second.
fn either_port_filter(port: u16) -> Vec<u8> {
    const REQ_BYTECODE: u16 = 1;
    const BC_JMP: u8 = 1;
    const BC_S_EQ: u8 = 11;
    const BC_D_EQ: u8 = 12;
    // `struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }`: a port test is the op and
    // a second op holding the port in `no`; `yes`/`no` are byte offsets to jump by, and
    // a program accepts when it ends exactly at its end.
    let op = |code: u8, yes: u8, no: u16| {
        let mut b = vec![code, yes];
        b.extend_from_slice(&no.to_ne_bytes());
        b
    };
    let mut code = Vec::with_capacity(20);
    code.extend(op(BC_S_EQ, 8, 12));
    code.extend(op(0, 0, port));
    code.extend(op(BC_JMP, 4, 12));
    code.extend(op(BC_D_EQ, 8, 12));
    code.extend(op(0, 0, port));
    let mut attr = Vec::with_capacity(4 + code.len());
    attr.extend_from_slice(&((4 + code.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&REQ_BYTECODE.to_ne_bytes());
    attr.extend(code);
    attr
}

/// One dump per address family of `families` of the TCP sockets in `states` (and at the
/// ports, 0: any), with `attributes` after the request; keeps the sockets `keep` accepts.
fn tcp_dump(
    families: Families,
    states: u32,
    local_port: u16,
    remote_port: u16,
    attributes: &[u8],
    keep: impl Fn(&TcpSocket) -> bool,
) -> io::Result<Vec<TcpSocket>> {
    let mut sockets = Vec::new();
    for family in families.list() {
        // Any source, any destination.
        let body = tcp_request(
            family,
            states,
            (local_port, [0; 16]),
            (remote_port, [0; 16]),
            attributes,
        );
        let result = dump(&body, |msg| {
            if let Some(socket) = parse_inet_msg(msg).filter(&keep) {
                sockets.push(socket);
            }
        });
        match result {
            Ok(()) => {}
            // A kernel without IPv6 has no AF_INET6 table.
            Err(e) if family == libc::AF_INET6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sockets)
}

/// The listening TCP socket that takes connections made to `wanted` (as the kernel picks
/// it for a new connection: the most specific bound address, one member of a `SO_REUSEPORT`
/// group), by one lookup in the kernel's listening hash: no table is walked. `None` when
/// nothing listens there.
pub fn tcp_listener_for(wanted: SocketAddr) -> io::Result<Option<TcpSocket>> {
    // The socket id of a packet to `wanted` from nobody finds it: local = `wanted`.
    let nobody = match wanted {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    tcp_lookup(TCP_LISTEN, wanted, nobody)
}

/// The TCP socket of this network namespace whose local address is `local` and whose peer
/// is `remote` (one end of an established connection), by one lookup in the kernel's
/// established hash; `None` when there is none. Both addresses of one family.
pub fn tcp_connection(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpSocket>> {
    tcp_lookup(TCP_ESTABLISHED, local, remote)
}

/// One `inet_diag` lookup (no dump) of the TCP socket with this local and remote address.
fn tcp_lookup(states: u32, local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpSocket>> {
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let octets = |addr: SocketAddr| -> [u8; 16] {
        match addr.ip() {
            IpAddr::V4(v4) => {
                let mut ip = [0u8; 16];
                ip[..4].copy_from_slice(&v4.octets());
                ip
            }
            IpAddr::V6(v6) => v6.octets(),
        }
    };
    let body = tcp_request(
        family,
        states,
        (local.port(), octets(local)),
        (remote.port(), octets(remote)),
        &[],
    );
    Ok(lookup_one(&body)?.and_then(|msg| parse_inet_msg(&msg)))
}

/// The body of an `inet_diag_req_v2` for TCP sockets of `family` in `states`, with the
/// socket id's local and remote (port, address: IPv4 in the first 4 bytes), any interface,
/// no cookie, then `attributes`.
fn tcp_request(
    family: libc::c_int,
    states: u32,
    local: (u16, [u8; 16]),
    remote: (u16, [u8; 16]),
    attributes: &[u8],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(56 + attributes.len());
    body.push(family as u8);
    body.push(libc::IPPROTO_TCP as u8);
    body.push(0); // no extensions
    body.push(0); // pad
    body.extend_from_slice(&states.to_ne_bytes());
    body.extend_from_slice(&local.0.to_be_bytes());
    body.extend_from_slice(&remote.0.to_be_bytes());
    body.extend_from_slice(&local.1);
    body.extend_from_slice(&remote.1);
    body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    body.extend_from_slice(&INET_DIAG_NOCOOKIE);
    body.extend_from_slice(attributes);
    body
}

/// One `inet_diag_msg`.
fn parse_inet_msg(msg: &[u8]) -> Option<TcpSocket> {
    if msg.len() < INET_DIAG_MSG {
        return None;
    }
    let family = i32::from(*msg.first()?);
    let port = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let ip = |at: usize| -> Option<IpAddr> {
        if family == libc::AF_INET {
            let b: [u8; 4] = msg.get(at..at + 4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        } else if family == libc::AF_INET6 {
            let b: [u8; 16] = msg.get(at..at + 16)?.try_into().ok()?;
            Some(super::sockets::canonical_ip(IpAddr::V6(Ipv6Addr::from(b))))
        } else {
            None
        }
    };
    Some(TcpSocket {
        local: SocketAddr::new(ip(8)?, port(4)),
        remote: SocketAddr::new(ip(24)?, port(6)),
        inode: u64::from(u32_at(msg, 68)),
        v6: family == libc::AF_INET6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inodes_of_this_process() -> std::collections::HashSet<u64> {
        super::super::sockets::socket_inodes_of(std::process::id()).unwrap_or_default()
    }

    #[test]
    fn listeners_and_connections_of_one_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let Ok(listening) = tcp(TCP_LISTEN, addr.port(), 0) else {
            assert!(
                std::env::var_os("TRYSWAP_REQUIRE_ALL").is_none(),
                "inet_diag is not available here"
            );
            eprintln!("skipping: inet_diag (tcp_diag) is not available here");
            return;
        };
        assert_eq!(listening.len(), 1, "{listening:?}");
        assert_eq!(listening[0].local, addr);
        assert!(inodes_of_this_process().contains(&listening[0].inode));
        // Nothing established yet, and nothing listens on another port of ours.
        assert!(tcp(TCP_ESTABLISHED, addr.port(), 0).unwrap().is_empty());

        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_served, _) = listener.accept().unwrap();
        let servers = tcp(TCP_ESTABLISHED, addr.port(), 0).unwrap();
        assert_eq!(servers.len(), 1, "{servers:?}");
        assert_eq!(servers[0].remote, client.local_addr().unwrap());
        let clients = tcp(TCP_ESTABLISHED, 0, addr.port()).unwrap();
        assert_eq!(clients.len(), 1, "{clients:?}");
        assert_eq!(clients[0].remote, addr);
        assert!(inodes_of_this_process().contains(&clients[0].inode));

        // Both ends in one walk per family; nothing of another port.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _other_client = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (_other_served, _) = other.accept().unwrap();
        let mut both = tcp_on_port(Families::BOTH, TCP_ESTABLISHED, addr.port()).unwrap();
        both.sort_by_key(|s| s.inode);
        let mut expected = [servers[0], clients[0]];
        expected.sort_by_key(|s| s.inode);
        assert_eq!(both, expected);
        assert!(both.iter().all(|s| !s.v6));
        // An IPv4 listener's connections are all in the IPv4 table.
        let v4 = Families {
            v4: true,
            v6: false,
        };
        let mut in_v4 = tcp_on_port(v4, TCP_ESTABLISHED, addr.port()).unwrap();
        in_v4.sort_by_key(|s| s.inode);
        assert_eq!(in_v4, both);
        let v6 = Families {
            v4: false,
            v6: true,
        };
        assert!(tcp_on_port(v6, TCP_ESTABLISHED, addr.port())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_listener_of_an_address_is_looked_up_without_a_dump() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let found = match tcp_listener_for(addr) {
            Ok(found) => found,
            Err(e) => {
                eprintln!("skipping: inet_diag is not available here: {e}");
                return;
            }
        };
        let found = found.expect("the listener");
        assert_eq!(found.local, addr);
        assert!(inodes_of_this_process().contains(&found.inode));
        // Connections at the port do not hide it.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (_served, _) = listener.accept().unwrap();
        assert_eq!(
            tcp_listener_for(addr).unwrap().map(|l| l.inode),
            Some(found.inode)
        );
        // Nothing listens once it is closed.
        drop(listener);
        assert_eq!(tcp_listener_for(addr).unwrap(), None);
    }

    #[test]
    fn one_end_of_a_connection_is_looked_up_by_its_addresses() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (served, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        let found = match tcp_connection(local, addr) {
            Ok(found) => found.expect("the client end"),
            Err(e) => {
                eprintln!("skipping: inet_diag is not available here: {e}");
                return;
            }
        };
        assert_eq!((found.local, found.remote), (local, addr));
        let fstat_inode = |s: &std::net::TcpStream| {
            use std::os::fd::AsFd;
            let file = std::fs::File::from(s.as_fd().try_clone_to_owned().unwrap());
            std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap())
        };
        assert_eq!(found.inode, fstat_inode(&client));
        // The other direction is the server end.
        let server_end = tcp_connection(addr, local)
            .unwrap()
            .expect("the server end");
        assert_eq!(server_end.inode, fstat_inode(&served));
        // Closed, the end is gone or an orphan (FIN_WAIT, TIME_WAIT) without an inode: a
        // recorded inode never matches it again.
        let client_inode = found.inode;
        drop(client);
        let after = tcp_connection(local, addr).unwrap().map_or(0, |s| s.inode);
        assert_ne!(after, client_inode);
        assert_eq!(after, 0);
        drop(served);
    }

    #[test]
    fn an_ipv4_address_finds_a_dual_stack_listener() {
        let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
            eprintln!("skipping: no IPv6 here");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let Ok(found) = tcp_listener_for(SocketAddr::from(([127, 0, 0, 1], port))) else {
            eprintln!("skipping: inet_diag is not available here");
            return;
        };
        let found = found.expect("the dual-stack listener");
        assert!(found.v6);
        assert!(inodes_of_this_process().contains(&found.inode));
    }

    #[test]
    fn messages_parse_v4_and_mapped_v6() {
        let mut msg = vec![0u8; INET_DIAG_MSG];
        msg[0] = libc::AF_INET6 as u8;
        msg[4..6].copy_from_slice(&8000u16.to_be_bytes());
        msg[6..8].copy_from_slice(&40000u16.to_be_bytes());
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        msg[8..24].copy_from_slice(&mapped.octets());
        msg[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        msg[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        let socket = parse_inet_msg(&msg).unwrap();
        assert_eq!(socket.local, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(socket.remote, "[::1]:40000".parse().unwrap());
        assert_eq!(socket.inode, 4242);
        msg[0] = libc::AF_INET as u8;
        msg[8..12].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            parse_inet_msg(&msg).unwrap().local,
            "10.0.0.1:8000".parse().unwrap()
        );
        assert!(parse_inet_msg(&msg[..40]).is_none());
    }
}
