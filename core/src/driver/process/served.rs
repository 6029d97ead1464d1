//! The TCP connections a generation's processes serve, read from their own fd tables
//! (Linux 5.6+, `pidfd_getfd`): what a drain counts when the generation has a cgroup of
//! its own, so that every process that can hold its connections is listed.
//!
//! The kernel's tables answer the same question ([`super::connections`]) but a dump of
//! established sockets walks the whole established hash (262,144 buckets on a host with
//! 24 GiB: half a millisecond of CPU per look, once per retirement, and once per slot when
//! many slots are reloaded at once). A generation's fd tables hold a dozen entries: each of
//! its sockets is borrowed for a moment (`pidfd_getfd` makes a second descriptor of the same
//! socket in this process), asked for its addresses and TCP state, and closed again. Only
//! sockets are borrowed (`/proc/<pid>/fd` names them `socket:[inode]`): closing a borrowed
//! descriptor of a regular file would release this process's POSIX locks on that file.
//!
//! Where a process's descriptors cannot be borrowed (no `pidfd_getfd`, ptrace access denied
//! by Yama or an LSM, a plugin that made itself non-dumpable), [`served_peers`] says so and
//! the caller counts from the kernel's tables instead.

use std::io;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `TCP_ESTABLISHED` as `tcp_info.tcpi_state` reports it.
const STATE_ESTABLISHED: u8 = 1;

/// The most fd-table entries [`served_peers`] looks at, over all processes: a generation
/// that forked hundreds of processes or opened thousands of descriptors is counted from
/// the kernel's tables instead, whose cost does not grow with what a plugin opens.
const MAX_ENTRIES: usize = 4096;

/// The peers of the ESTABLISHED TCP connections whose server end is at `wanted` and is held
/// by one of `pids` (a connection held by two of them counts once per holder, as the
/// kernel's socket is one per connection: a fork shares it, so it is counted once per
/// distinct socket). Processes that exited meanwhile hold nothing. `Err` when a process's
/// descriptors cannot be read or borrowed (the answer would be incomplete), or when the
/// processes hold more than [`MAX_ENTRIES`] descriptors in all.
pub fn served_peers(pids: &[u32], wanted: SocketAddr) -> io::Result<Vec<SocketAddr>> {
    served_peers_within(pids, wanted, MAX_ENTRIES)
}

/// [`served_peers`] looking at no more than `max_entries` fd-table entries.
fn served_peers_within(
    pids: &[u32],
    wanted: SocketAddr,
    max_entries: usize,
) -> io::Result<Vec<SocketAddr>> {
    let wanted = canonical(wanted);
    let mut seen_inodes = std::collections::HashSet::new();
    let mut peers = Vec::new();
    let mut entries_seen = 0usize;
    let too_many = || {
        io::Error::other(format!(
            "the generation's processes hold more than {max_entries} descriptors"
        ))
    };
    if pids.len() > max_entries {
        return Err(too_many());
    }
    for &pid in pids {
        let Some(pidfd) = pidfd_of(pid)? else {
            continue;
        };
        let dir = format!("/proc/{pid}/fd");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Gone since its pidfd was opened.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            entries_seen += 1;
            if entries_seen > max_entries {
                return Err(too_many());
            }
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            // Closed meanwhile, or not a socket: nothing to borrow.
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let Some(inode) = super::sockets::socket_link_inode(&target) else {
                continue;
            };
            if !seen_inodes.insert(inode) {
                continue;
            }
            let Some(socket) = borrow_fd(&pidfd, fd)? else {
                continue;
            };
            if let Some(peer) = served_peer(&socket, wanted) {
                peers.push(peer);
            }
        }
    }
    Ok(peers)
}

/// A pidfd of `pid`; `None` when no process has that pid any more.
fn pidfd_of(pid: u32) -> io::Result<Option<OwnedFd>> {
    let raw = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    match super::os::pidfd_open(raw) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A descriptor of this process for the file behind `fd` in the process of `pidfd`;
/// `None` when that fd was closed meanwhile or the process exited.
fn borrow_fd(pidfd: &OwnedFd, fd: RawFd) -> io::Result<Option<TcpStream>> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags, and returns a new
    // descriptor (close-on-exec) or -1.
    let ours = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if ours < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EBADF) | Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    let ours = RawFd::try_from(ours).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a descriptor just made that nobody else owns; a `TcpStream` closes it when
    // dropped, and its address calls fail harmlessly on a socket that is not TCP.
    Ok(Some(unsafe { TcpStream::from_raw_fd(ours) }))
}

/// The peer of `socket` if it is the server end of an ESTABLISHED connection at `wanted`.
fn served_peer(socket: &TcpStream, wanted: SocketAddr) -> Option<SocketAddr> {
    let local = canonical(socket.local_addr().ok()?);
    if local != wanted || tcp_state(socket)? != STATE_ESTABLISHED {
        return None;
    }
    socket.peer_addr().ok().map(canonical)
}

/// `tcp_info.tcpi_state` of a socket; `None` for a socket that is not TCP.
fn tcp_state(socket: &TcpStream) -> Option<u8> {
    use std::os::fd::AsRawFd;
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a zeroed tcp_info.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || len < 1 {
        return None;
    }
    // SAFETY: zero-initialised, then partly written by the kernel: every byte is valid.
    Some(unsafe { info.assume_init() }.tcpi_state)
}

/// The local addresses of this process's TCP sockets connected to `wanted`: the client ends
/// of its own connections (the stdio stream, probes, forwarders), by one look at every slot
/// of its fd table.
pub fn own_clients_of(wanted: SocketAddr) -> std::collections::HashSet<SocketAddr> {
    let wanted = canonical(wanted);
    let mut locals = std::collections::HashSet::new();
    let table = super::sockets::own_fd_table_size().unwrap_or(1024);
    for (fd, _) in super::sockets::own_socket_fds(table) {
        // SAFETY: the stream is never dropped (ManuallyDrop), so the descriptor, which this
        // process owns elsewhere, is only read from; calls on a non-TCP socket fail.
        let socket = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        if socket.peer_addr().ok().map(canonical) == Some(wanted) {
            if let Ok(local) = socket.local_addr() {
                locals.insert(canonical(local));
            }
        }
    }
    locals
}

/// `addr` with a v4-mapped IPv6 address written as IPv4, as the kernel's tables report it.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(super::sockets::canonical_ip(addr.ip()), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_server_ends_of_this_process_are_read_from_its_fd_table() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let me = [std::process::id()];
        let before = match served_peers(&me, addr) {
            Ok(peers) => peers,
            Err(e) => {
                eprintln!("skipping: pidfd_getfd is not available here: {e}");
                return;
            }
        };
        assert!(before.is_empty(), "a listener serves nobody: {before:?}");
        let client = TcpStream::connect(addr).unwrap();
        let (served, _) = listener.accept().unwrap();
        let peers = served_peers(&me, addr).unwrap();
        assert_eq!(peers, vec![client.local_addr().unwrap()]);
        // The client end is ours, and it is the only one connected to `addr`.
        let own = own_clients_of(addr);
        assert_eq!(own.len(), 1);
        assert!(own.contains(&client.local_addr().unwrap()));
        // A connection its caller closed is no longer counted (CLOSE_WAIT).
        drop(client);
        let mut waited = 0;
        while !served_peers(&me, addr).unwrap().is_empty() {
            waited += 1;
            assert!(waited < 1000, "the closed connection stays ESTABLISHED");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(served);
    }

    #[test]
    fn a_generation_with_too_many_descriptors_is_left_to_the_kernels_tables() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let me = [std::process::id()];
        if served_peers(&me, addr).is_err() {
            eprintln!("skipping: pidfd_getfd is not available here");
            return;
        }
        // This process holds more than three descriptors (stdio and the listener).
        let err = served_peers_within(&me, addr, 3).unwrap_err();
        assert!(err.to_string().contains("more than 3 descriptors"), "{err}");
        // So many processes are not looked at one by one either.
        let many = vec![std::process::id(); MAX_ENTRIES + 1];
        assert!(served_peers(&many, addr).is_err());
    }

    #[test]
    fn a_pid_without_a_process_holds_nothing() {
        // pid_max is at most 2^22: this pid names no process.
        match served_peers(&[u32::MAX / 2], "127.0.0.1:1".parse().unwrap()) {
            Ok(peers) => assert!(peers.is_empty()),
            Err(e) => eprintln!("skipping: no pidfd here: {e}"),
        }
    }

    #[test]
    fn socket_link_targets_name_their_inode() {
        use super::super::sockets::socket_link_inode;
        assert_eq!(socket_link_inode("socket:[1234]".as_ref()), Some(1234));
        assert_eq!(socket_link_inode("pipe:[1234]".as_ref()), None);
        assert_eq!(socket_link_inode("/tmp/x".as_ref()), None);
    }
}
