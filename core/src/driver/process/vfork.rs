//! Starting a plugin without copying the host's address space (Linux only).
//!
//! `fork` copies the page tables of the whole host: the more memory the host maps, the
//! longer a launch takes (a host with a heap of several GiB spends hundreds of ms in it).
//! [`spawn`] uses `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does: the child borrows
//! the parent's memory on a stack of its own, does its setup with async-signal-safe calls
//! only and `exec`s, while the calling thread waits. Its cost does not depend on the
//! host's heap. Unlike `posix_spawn`, the child can do everything a plugin needs before
//! `exec`, so there is no window in which the plugin runs without it:
//!
//! - it starts in the generation's cgroup: created there by `clone3(CLONE_INTO_CGROUP)`
//!   (Linux 5.7+, x86_64), else it joins by writing `0` to the cgroup's `cgroup.procs`
//!   first thing. Moving a running process costs the kernel an RCU grace period (the
//!   write side of the cgroup migration lock: milliseconds, tens of them on a busy host);
//!   being born there costs nothing;
//! - it leads a process group of its own;
//! - it gets the operator's umask, `RLIMIT_FSIZE` and `SIGXFSZ` ignored (log bounds);
//! - every signal disposition is reset to the default, then the signal mask is emptied.
//!
//! [`wait`] reaps the child through a pidfd (Linux 5.3+), or a blocking `waitpid` where
//! pidfds are missing.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// The child's stack: its setup calls a handful of libc functions, nothing deep.
const CHILD_STACK: usize = 64 * 1024;

/// What the child does before `exec`.
pub struct Exec<'a> {
    /// The executable (a path; a bare name is looked up in `PATH` of `env`).
    pub program: &'a Path,
    /// Arguments after the program name.
    pub args: &'a [String],
    /// The complete environment.
    pub env: &'a [(String, String)],
    /// Working directory.
    pub cwd: &'a Path,
    /// Descriptors for stdin, stdout and stderr.
    pub stdio: [RawFd; 3],
    /// The umask to set, if any.
    pub umask: Option<libc::mode_t>,
    /// `RLIMIT_FSIZE` to set (soft and hard), with `SIGXFSZ` ignored.
    pub fsize_limit: Option<libc::rlim_t>,
    /// An open `cgroup.procs` to join.
    pub cgroup_procs: Option<RawFd>,
    /// The same cgroup's directory, open: the child is created in it where the kernel can
    /// (then `cgroup_procs` is not written).
    pub cgroup_dir: Option<RawFd>,
}

/// Everything the child reads, prepared by the parent (the child allocates nothing).
struct ChildArgs {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    stdio: [RawFd; 3],
    umask: Option<libc::mode_t>,
    fsize_limit: Option<libc::rlim_t>,
    cgroup_procs: Option<RawFd>,
    /// `SIGRTMIN`, read by the parent (a libc call the child had better not make).
    sigrtmin: libc::c_int,
    /// Set by the child when a step failed: the errno. The parent reads it after the
    /// child has `exec`ed or exited (CLONE_VFORK), from the memory they share.
    errno: i32,
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// `program` as `execve` takes it: a path as is, a bare name searched in `PATH` of `env`
/// (as `std::process::Command` does).
fn resolve(program: &Path, env: &[(String, String)]) -> PathBuf {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return program.to_path_buf();
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v.as_str());
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| program.to_path_buf())
}

/// Starts `exec` as described in the module documentation; returns the child's pid once
/// it has `exec`ed. An error of any step before `exec` (the `exec` included) is returned
/// as that step's errno, and the child is reaped.
pub fn spawn(exec: &Exec<'_>) -> io::Result<u32> {
    let program = resolve(exec.program, exec.env);
    let program = cstring(program.as_os_str().as_bytes(), "the program path")?;
    let mut strings: Vec<CString> = Vec::with_capacity(exec.args.len() + 1);
    strings.push(program.clone());
    for arg in exec.args {
        strings.push(cstring(arg.as_bytes(), "an argument")?);
    }
    let env: Vec<CString> = exec
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes(), "the environment"))
        .collect::<io::Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut args = ChildArgs {
        program,
        argv,
        envp,
        cwd: cstring(
            OsStr::as_bytes(exec.cwd.as_os_str()),
            "the working directory",
        )?,
        stdio: exec.stdio,
        umask: exec.umask,
        fsize_limit: exec.fsize_limit,
        cgroup_procs: exec.cgroup_procs,
        sigrtmin: libc::SIGRTMIN(),
        errno: 0,
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down: the child starts at the (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;

    // Signals are blocked around the clone: a handler of the host must never run in the
    // child, which shares the host's memory; the child resets every handler before it
    // unblocks anything.
    // SAFETY: plain libc calls on stack values we own; the child gets its own stack.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let born_in_cgroup = match exec.cgroup_dir {
            Some(dir) => {
                // Born in the cgroup: nothing to join. Restored if clone3 cannot do it.
                let join = args.cgroup_procs.take();
                let pid = clone3_into_cgroup(dir, top, stack.as_ptr() as usize, &mut args);
                if pid.is_none() {
                    args.cgroup_procs = join;
                }
                pid
            }
            None => None,
        };
        let (pid, clone_error) = match born_in_cgroup {
            Some(pid) => (pid, None),
            None => {
                let pid = libc::clone(
                    child_main,
                    top as *mut libc::c_void,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                    (&mut args as *mut ChildArgs).cast(),
                );
                (pid, Some(io::Error::last_os_error()))
            }
        };
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)));
        }
        pid
    };
    drop(stack);
    if args.errno != 0 {
        // The child exited without `exec`: reap it.
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(args.errno));
    }
    u32::try_from(pid).map_err(|_| io::Error::other(format!("clone returned pid {pid}")))
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`: the child runs [`child_main`] on
/// the stack `[stack_low, top)`, created inside the cgroup whose directory is open as
/// `cgroup_dir`. Returns the child's pid once it has `exec`ed or exited, or `None` when the
/// kernel cannot do it (before Linux 5.7, or a cgroup it refuses): no child was created,
/// and the caller clones the classic way.
///
/// # Safety
/// `args` must stay valid and untouched until this returns (the parent is suspended while
/// the child uses it); signals must be blocked; `[stack_low, top)` must be writable memory
/// nothing else uses, `top` 16-byte aligned.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe fn clone3_into_cgroup(
    cgroup_dir: RawFd,
    top: usize,
    stack_low: usize,
    args: &mut ChildArgs,
) -> Option<libc::pid_t> {
    /// `CLONE_INTO_CGROUP` (Linux 5.7).
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    /// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let cgroup = u64::try_from(cgroup_dir).ok()?;
    let clone_args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack_low as u64,
        stack_size: (top - stack_low) as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup,
    };
    let entry: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_main;
    let arg: *mut ChildArgs = args;
    let ret: i64;
    // The kernel starts the child right after `syscall` with rax = 0 and rsp = top; every
    // other register as the parent had it. The child calls `child_main(arg)`, which
    // `exec`s or `_exit`s: it never comes back here (ud2 if it did). The parent gets the
    // child's pid (or -errno) once the child has `exec`ed or exited (CLONE_VFORK).
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r12",
        "call r13",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") &clone_args as *const CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") arg,
        in("r13") entry,
        lateout("rcx") _,
        lateout("r11") _,
    );
    if ret < 0 {
        tracing::debug!(
            errno = -ret,
            "clone3 into a cgroup refused: joining after the clone"
        );
        return None;
    }
    libc::pid_t::try_from(ret).ok()
}

/// [`clone3_into_cgroup`] where it is not implemented: always the classic clone.
///
/// # Safety
/// None needed: it does nothing.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
unsafe fn clone3_into_cgroup(
    _cgroup_dir: RawFd,
    _top: usize,
    _stack_low: usize,
    _args: &mut ChildArgs,
) -> Option<libc::pid_t> {
    None
}

/// The child: runs on its own stack in the parent's memory until `exec`. Only
/// async-signal-safe libc calls; no allocation, no panic.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive and untouched by the parent until
    // this child has `exec`ed or exited (CLONE_VFORK suspends the parent meanwhile).
    unsafe {
        let args = &mut *(arg as *mut ChildArgs);
        let errno = child_setup(args);
        args.errno = if errno == 0 { libc::EINVAL } else { errno };
        libc::_exit(127)
    }
}

/// Does the child's setup and `exec`s; returns the errno of the step that failed.
///
/// # Safety
/// Only in the child of [`spawn`].
unsafe fn child_setup(args: &ChildArgs) -> i32 {
    // Every handler reset first: nothing of the host may run here once signals are
    // unblocked. Errors (signals the kernel reserves) are harmless.
    let mut action: libc::sigaction = std::mem::zeroed();
    action.sa_sigaction = libc::SIG_DFL;
    libc::sigemptyset(&mut action.sa_mask);
    for sig in 1..args.sigrtmin {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    // Into the generation's cgroup, before it can fork anything.
    if let Some(fd) = args.cgroup_procs {
        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            return errno();
        }
    }
    if libc::setpgid(0, 0) != 0 {
        return errno();
    }
    for (target, &fd) in args.stdio.iter().enumerate() {
        let target = target as RawFd;
        if fd == target {
            // Already in place: only keep it open across exec.
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) != 0 {
                return errno();
            }
        } else if libc::dup2(fd, target) < 0 {
            return errno();
        }
    }
    if libc::chdir(args.cwd.as_ptr()) != 0 {
        return errno();
    }
    if let Some(mask) = args.umask {
        libc::umask(mask);
    }
    if let Some(limit) = args.fsize_limit {
        action.sa_sigaction = libc::SIG_IGN;
        if libc::sigaction(libc::SIGXFSZ, &action, std::ptr::null_mut()) != 0 {
            return errno();
        }
        let rlim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        if libc::setrlimit(libc::RLIMIT_FSIZE, &rlim) != 0 {
            return errno();
        }
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
        return errno();
    }
    libc::execve(
        args.program.as_ptr(),
        args.argv.as_ptr(),
        args.envp.as_ptr(),
    );
    errno()
}

/// Waits until our child `pid` exits and reaps it: on its pidfd where there is one, else
/// with a blocking `waitpid` off the async workers. `None` if `waitpid` fails.
pub async fn wait(pid: u32) -> Option<ExitStatus> {
    let raw = libc::pid_t::try_from(pid).ok()?;
    if let Ok(fd) = super::os::pidfd_open(raw) {
        // SAFETY: the OwnedFd stays open, and the same descriptor, until the AsyncFd
        // that owns it is dropped.
        if let Ok(ready) = unsafe { tokio::io::unix::AsyncFd::register(fd) } {
            // The pidfd turns readable once the process has exited.
            if ready.readable().await.is_ok() {
                // Tests: the process stays a zombie this many milliseconds before it
                // is reaped (what a busy host does to the reaping task).
                #[cfg(feature = "failpoints")]
                if let Some(Some(ms)) = fail::eval("plugin-reap-delay", |v| {
                    v.and_then(|ms| ms.parse::<u64>().ok())
                }) {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                return reap(raw, 0);
            }
        }
    }
    tokio::task::spawn_blocking(move || reap(raw, 0))
        .await
        .ok()
        .flatten()
}

/// The calling thread's errno (in the child: the parent thread's slot, which it borrows).
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// `waitpid(pid)`, retried on `EINTR`.
fn reap(pid: libc::pid_t, flags: libc::c_int) -> Option<ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child into a value we own.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Some(ExitStatus::from_raw(status));
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}
