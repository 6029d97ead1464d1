//! One inotify instance for the whole host process, shared by every wait on a file
//! (Linux only).
//!
//! Closing an inotify descriptor that holds a watch blocks the closing thread until the
//! kernel has freed the watch's marks (`fsnotify_destroy_group` waits for an SRCU grace
//! period): 7–20 ms, often, on the bench machine. A handshake wait that opened and closed an
//! instance of its own paid that on an async worker right after it had read the line,
//! which was most of the `validated` stage (15 ms of 17), and a host waiting for 100
//! handshakes at once also ran into `fs.inotify.max_user_instances` (128 by default).
//!
//! Here one descriptor, opened on first use and never closed, carries every [`FileWatch`]:
//! a watch is added with `inotify_add_watch` and removed with `inotify_rm_watch`, which only
//! queues the release of its marks. One thread blocks reading the descriptor and wakes the
//! watchers of each event's watch, whatever tokio runtime they wait on.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify as Instance, WatchDescriptor};
use tokio::sync::watch;

use super::lock;

/// What a [`FileWatch`] is woken by: the file was written, or closed after writing.
const WATCH_MASK: AddWatchFlags = AddWatchFlags::IN_MODIFY.union(AddWatchFlags::IN_CLOSE_WRITE);

/// The shared instance: its descriptor and, per watch descriptor, who waits on it.
struct Inotify {
    instance: Instance,
    watches: Mutex<HashMap<WatchDescriptor, Watched>>,
}

/// The waiters of one watch descriptor (one inode: two watches of the same file share it).
struct Watched {
    /// How many [`FileWatch`]es use the watch; the last one to go removes it.
    users: usize,
    /// Bumped at every event; `None` once the kernel dropped the watch (`IN_IGNORED`: the
    /// file was deleted or its file system unmounted), which fails the waits.
    events: Option<watch::Sender<u64>>,
}

/// The process's instance; `None` until first used, or after its reader failed.
static SHARED: Mutex<Option<Arc<Inotify>>> = Mutex::new(None);

impl Inotify {
    /// The process's instance, opened (with its reader thread) on first use.
    fn shared() -> io::Result<Arc<Inotify>> {
        let mut shared = lock(&SHARED);
        if let Some(inotify) = shared.as_ref() {
            return Ok(Arc::clone(inotify));
        }
        // Blocking: only the reader thread reads it.
        let instance = Instance::init(InitFlags::IN_CLOEXEC)?;
        let inotify = Arc::new(Inotify {
            instance,
            watches: Mutex::new(HashMap::new()),
        });
        let reader = Arc::clone(&inotify);
        std::thread::Builder::new()
            .name("tryswap-inotify".into())
            .spawn(move || reader.read_events())?;
        *shared = Some(Arc::clone(&inotify));
        Ok(inotify)
    }

    /// The reader thread: wakes the waiters of every event's watch, until a read fails.
    fn read_events(&self) {
        loop {
            let events = match self.instance.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    self.fail(&io::Error::from(e));
                    return;
                }
            };
            let mut watches = lock(&self.watches);
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    // Events were lost: wake everyone, they look at their files again.
                    watches.values().for_each(Watched::wake);
                } else if let Some(watched) = watches.get_mut(&event.wd) {
                    watched.wake();
                    if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                        watched.events = None;
                    }
                }
            }
        }
    }

    /// Ends every wait (the waiters fall back to polling) and lets the next wait open a new
    /// instance.
    fn fail(&self, error: &io::Error) {
        tracing::warn!(error = %error, "reading the shared inotify descriptor failed; handshake waits poll their files");
        let mut shared = lock(&SHARED);
        if shared
            .as_ref()
            .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), self))
        {
            *shared = None;
        }
        for watched in lock(&self.watches).values_mut() {
            watched.events = None;
        }
    }
}

impl Watched {
    fn wake(&self) {
        if let Some(events) = &self.events {
            events.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// A watch on one file, on the shared instance: [`FileWatch::written`] completes once the
/// file was written (or closed after writing) since the watch was made or since the last
/// call. Dropping it removes the watch (when no other [`FileWatch`] uses it) without
/// closing any descriptor.
pub(super) struct FileWatch {
    inotify: Arc<Inotify>,
    wd: WatchDescriptor,
    events: watch::Receiver<u64>,
}

impl FileWatch {
    /// Watches `path` (which must exist). Fails where inotify is unavailable or its watch
    /// limit is reached: the caller polls instead.
    pub(super) fn new(path: &Path) -> io::Result<FileWatch> {
        let inotify = Inotify::shared()?;
        // Held from the watch's creation to the subscription: an event of the new watch
        // is counted after the subscription, so it wakes this watcher.
        let mut watches = lock(&inotify.watches);
        let wd = inotify.instance.add_watch(path, WATCH_MASK)?;
        let watched = watches.entry(wd).or_insert(Watched {
            users: 0,
            events: None,
        });
        watched.users += 1;
        let events = watched
            .events
            .get_or_insert_with(|| watch::channel(0).0)
            .subscribe();
        drop(watches);
        Ok(FileWatch {
            inotify,
            wd,
            events,
        })
    }

    /// Completes once the file was written since the last call (or since the watch was
    /// made). Fails once the watch is gone (the file was deleted, or the reader failed).
    pub(super) async fn written(&mut self) -> io::Result<()> {
        self.events
            .changed()
            .await
            .map_err(|_| io::Error::other("the inotify watch on the file is gone"))
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        let mut watches = lock(&self.inotify.watches);
        let Some(watched) = watches.get_mut(&self.wd) else {
            return;
        };
        watched.users = watched.users.saturating_sub(1);
        if watched.users == 0 {
            let live = watched.events.is_some();
            watches.remove(&self.wd);
            if live {
                // Only queues the release of the watch's marks: it does not wait for it. A
                // stale descriptor only makes it fail, which changes nothing here.
                let _ = self.inotify.instance.rm_watch(self.wd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    const WAKE_DEADLINE: Duration = Duration::from_secs(10);

    /// This process's inotify descriptors.
    fn inotify_fds() -> Vec<String> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let target = std::fs::read_link(entry.path()).ok()?;
                (target.to_str()? == "anon_inode:inotify")
                    .then(|| entry.file_name().to_string_lossy().into_owned())
            })
            .collect()
    }

    /// How many watches this process's inotify descriptors hold on `inode`.
    fn watches_on(inode: u64) -> usize {
        let wanted = format!("ino:{inode:x} ");
        inotify_fds()
            .iter()
            .filter_map(|fd| std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok())
            .map(|info| {
                info.lines()
                    .filter(|l| l.starts_with("inotify wd:") && l.contains(&wanted))
                    .count()
            })
            .sum()
    }

    /// Waits (bounded) until `watch` is woken; panics naming `what` otherwise.
    async fn woken(watch: &mut FileWatch, what: &str) {
        tokio::time::timeout(WAKE_DEADLINE, watch.written())
            .await
            .unwrap_or_else(|_| panic!("not woken within {WAKE_DEADLINE:?}: {what}"))
            .unwrap();
    }

    fn append(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    /// More waits at once than `fs.inotify.max_user_instances` allows instances (128 by
    /// default): they share one descriptor, and dropping them removes their watches
    /// without closing it. With an instance per wait (each close blocking 7–20 ms for an
    /// SRCU grace period), this process held one inotify descriptor per wait.
    #[test]
    fn many_waits_share_one_descriptor_and_release_their_watches() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = (0..150)
            .map(|i| {
                let path = dir.path().join(format!("{i}.stdout"));
                std::fs::write(&path, b"").unwrap();
                path
            })
            .collect();
        let watches: Vec<_> = files.iter().map(|p| FileWatch::new(p).unwrap()).collect();
        assert_eq!(inotify_fds().len(), 1, "{:?}", inotify_fds());
        let inodes: Vec<u64> = files
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect();
        assert!(inodes.iter().all(|&ino| watches_on(ino) == 1));
        drop(watches);
        assert_eq!(inotify_fds().len(), 1, "{:?}", inotify_fds());
        assert!(inodes.iter().all(|&ino| watches_on(ino) == 0));
    }

    #[tokio::test]
    async fn a_write_wakes_the_watchers_of_its_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let (mut a1, mut a2) = (FileWatch::new(&a).unwrap(), FileWatch::new(&a).unwrap());
        let mut b1 = FileWatch::new(&b).unwrap();
        let ino_a = std::fs::metadata(&a).unwrap().ino();
        assert_eq!(
            watches_on(ino_a),
            1,
            "two watchers of a file share its watch"
        );

        append(&a, b"1|1|tcp|127.0.0.1:1|grpc\n");
        woken(&mut a1, "a write wakes a watcher of its file").await;
        woken(&mut a2, "and every other watcher of it").await;
        // The reader handles an event batch under one lock: a's wake-ups are done.
        assert!(!b1.events.has_changed().unwrap(), "b was not written");

        // The first watcher to go leaves the watch to the other.
        drop(a1);
        assert_eq!(watches_on(ino_a), 1);
        append(&a, b"more\n");
        woken(&mut a2, "the remaining watcher is still woken").await;
        drop(a2);
        assert_eq!(watches_on(ino_a), 0);

        append(&b, b"x\n");
        woken(&mut b1, "b's watcher is woken by b's write").await;
    }

    #[tokio::test]
    async fn a_deleted_file_fails_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.stdout");
        std::fs::write(&path, b"").unwrap();
        let mut watch = FileWatch::new(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // IN_ATTRIB (not watched), then IN_IGNORED once the inode is freed.
        let result = tokio::time::timeout(WAKE_DEADLINE, async {
            loop {
                if watch.written().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(result.is_ok(), "a wait on a deleted file ends");
    }
}
