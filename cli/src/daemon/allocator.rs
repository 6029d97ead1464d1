//! glibc's allocator tuned for a long-running daemon (docs/performance.md, "Memory over
//! time"): with its defaults, memory the daemon frees (sled's large I/O buffers above all)
//! stays with glibc's per-thread arenas and under a dynamic mmap threshold that only grows,
//! so the RSS creeps up with the journal although the live heap is bounded. Two arenas and
//! a fixed 128 KiB mmap threshold give large buffers back to the system when freed.

/// Arenas the daemon's allocator may create (glibc's default is 8 per core).
const ARENA_MAX: libc::c_int = 2;
/// Allocations of at least this many bytes are mmapped, and unmapped when freed.
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Applies the tuning, before any thread starts, unless the operator set the matching
/// `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` variables (theirs win).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only changes allocator parameters; called before threads.
            if unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) } != 1 {
                tracing::debug!("mallopt(M_ARENA_MAX) was refused");
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } != 1 {
                tracing::debug!("mallopt(M_MMAP_THRESHOLD) was refused");
            }
        }
    }
}

/// Gives the memory glibc holds free back to the system (`malloc_trim(0)`). Called after
/// a journal compaction: its one large transaction peaks at tens of MiB of small
/// allocations, and without this the daemon's RSS stayed at that peak (heap 30 MiB,
/// RSS 61 MiB; docs/performance.md, section 5c).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages of glibc's heaps to the kernel.
        unsafe { libc::malloc_trim(0) };
    }
}
