//! glibc's allocator tuned for a long-running daemon (docs/performance.md, "Memory over
//! time" and section 5c): with its defaults, memory the daemon frees (sled's large I/O
//! buffers above all) stays with glibc's per-thread arenas and under a dynamic mmap
//! threshold that only grows, so the RSS creeps up with the journal although the live heap
//! is bounded. One arena and a fixed 128 KiB mmap threshold give large buffers back to the
//! system when freed, and [`give_back`] after a compaction and after every period in which
//! the journal grew returns the free pages of that arena.

/// Arenas the daemon's allocator may create (glibc's default is 8 per core). One: with two,
/// what one thread freed (a compaction's transaction, on a blocking thread) was reused only
/// by the threads of its arena, and the RSS swung by 3–4 MiB with the compactions (section
/// 5c: 22.4–27.9 MiB with two, 22.0–24.8 MiB with one). The daemon's threads mostly wait,
/// so one arena's lock costs nothing measurable.
const ARENA_MAX: libc::c_int = 1;
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
/// RSS 61 MiB; docs/performance.md, section 5c). Also called every period in which the
/// journal grew ([`Trim`]): reloads reuse the trimmed free chunks and fault their pages in
/// again, so between two compactions the RSS climbed back by 2–3 MiB.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages of glibc's heaps to the kernel.
        unsafe { libc::malloc_trim(0) };
    }
}

/// The bytes the program holds allocated from glibc's allocator, as glibc counts them
/// (`mallinfo2`): in its arenas and in chunks it mapped on their own (allocations of
/// [`MMAP_THRESHOLD`] and more, counted at their mapped size, touched or not). The live
/// heap, without the free memory the allocator keeps and without how its pages lie in the
/// RSS: a leak grows it, fragmentation does not. `None` where the allocator is not glibc's.
pub fn heap_in_use() -> Option<HeapInUse> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics under its arena locks.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapInUse {
            arenas: info.uordblks as u64,
            mapped: info.hblkhd as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// What [`heap_in_use`] found, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapInUse {
    /// Allocated from the allocator's arenas.
    pub arenas: u64,
    /// Allocated as chunks mapped on their own.
    pub mapped: u64,
}

/// When the daemon gives free memory back besides after a compaction: once per period, if
/// the journal grew since the last time (an idle daemon allocates nothing, so there is
/// nothing to return and the trim is skipped).
#[derive(Debug, Default)]
pub(crate) struct Trim {
    /// The journal's tip at the last trim.
    trimmed_at: u64,
}

impl Trim {
    /// Whether to trim now, the journal's tip being `last_seq`; remembers it if so.
    pub(crate) fn due(&mut self, last_seq: u64) -> bool {
        if last_seq == self.trimmed_at {
            return false;
        }
        self.trimmed_at = last_seq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Trim;

    #[test]
    fn a_trim_is_due_only_after_the_journal_grew() {
        let mut trim = Trim::default();
        assert!(!trim.due(0), "nothing appended yet");
        assert!(trim.due(6));
        assert!(!trim.due(6), "idle since the last trim");
        assert!(trim.due(12));
        assert!(!trim.due(12));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_heap_in_use_counts_an_allocation_until_it_is_freed() {
        // Other tests of this binary allocate and free meanwhile: 16 MiB of slack for them,
        // against a 64 MiB allocation (touched, so it cannot be optimised away).
        const BIG: u64 = 64 << 20;
        const SLACK: u64 = 16 << 20;
        let total = || {
            let heap = super::heap_in_use().expect("glibc reports its heap");
            heap.arenas + heap.mapped
        };
        let before = total();
        let big = vec![1u8; BIG as usize];
        let during = total();
        assert!(during + SLACK >= before + BIG, "{before} -> {during}");
        assert_eq!(big.iter().map(|&b| u64::from(b)).sum::<u64>(), BIG);
        drop(big);
        let after = total();
        assert!(
            after + BIG <= during + SLACK,
            "{during} -> {after} after the free"
        );
    }
}
