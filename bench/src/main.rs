//! `tryswap-bench`: one run, one Markdown report of tryswap against the bare floor.
//!
//! ```sh
//! cargo run --release -p tryswap-bench -- [--quick] [--out docs/performance.md]
//! ```
//!
//! Sections (docs/performance.md explains each):
//! 1. one safe reload (library, CLI, daemon) vs the floor done by hand, with a per-stage
//!    breakdown; the same with 2,000 extra idle processes on the host (1d);
//! 2. legacy unload→load vs safe reload under continuous calls: failed calls, gap in service;
//! 3. journal flushes per reload, appends per second, and the sync syscalls the kernel
//!    sees per one-shot reload (`strace -f -c`); time and bytes written per reload after
//!    10,000 reloads of one slot against the first ones (3e);
//! 4. recovery time at 10^3 … 10^6 events, with and without compaction;
//! 5. 100 slots reloaded at once vs one and vs the floor doing the same, and memory; the
//!    daemon's own RSS with 1 and 100 slots, after 10,000 reloads and over 20,000 (5c);
//! 6. memory over time: the journal alone, then a bounded soak of `tryswap serve` (random
//!    reloads, kills, config reloads and reads; invariants checked every second). Not in
//!    the default run: ask for it with `--sections 6`;
//! 7. outside callers: a plugin followed from another process across swaps (legacy
//!    unload→load, a daemon whose callers re-read the address, the stable endpoint);
//! 8. staging a new 12 MiB executable against one read + hash + write pass, and an
//!    unchanged one in a later command against one hash.
//!
//! Every loop is bounded in count and in time; only loopback TCP and Unix sockets are used.

mod bake;
mod concurrency;
mod contract_floor;
mod daemon;
mod floor;
mod host_processes;
mod journal;
mod memory;
mod outside;
mod reload;
mod report;
mod setup;
mod soak;
mod staging;
mod swaps;
mod syscalls;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::report::Table;

/// Marks the part of `--out` the bench rewrites.
const BEGIN: &str = "<!-- tryswap-bench:begin -->";
const END: &str = "<!-- tryswap-bench:end -->";

#[derive(Parser, Debug)]
#[command(
    name = "tryswap-bench",
    about = "Measures tryswap against the bare floor and prints a Markdown report"
)]
struct Args {
    /// Fewer iterations (section 1: 15 reloads, section 2: 30 swaps, section 4 up to 10^5
    /// events, section 5: one round).
    #[arg(long)]
    quick: bool,
    /// Also write the report into this Markdown file, between
    /// `<!-- tryswap-bench:begin -->` and `<!-- tryswap-bench:end -->` (appended if the
    /// markers are missing).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these sections (comma-separated numbers, default all).
    #[arg(long, value_delimiter = ',')]
    sections: Vec<u8>,
    /// Reloads per column in section 1 (default 50, quick 15).
    #[arg(long)]
    reloads: Option<usize>,
    /// Section 1c: how long the realistic plugin initialises before its handshake (0 skips
    /// section 1c).
    #[arg(long, default_value_t = 100)]
    startup_delay_ms: u64,
    /// Swaps per strategy in sections 2 and 7 (default 200, quick 30).
    #[arg(long)]
    swaps: Option<usize>,
    /// Largest history in section 4 (default 1000000, quick 100000).
    #[arg(long)]
    max_events: Option<u64>,
    /// Slots in section 5 (default 100).
    #[arg(long, default_value_t = 100)]
    slots: usize,
    /// Section 5c: reloads of the one-slot daemon whose RSS is followed (default 20000,
    /// quick 2000).
    #[arg(long)]
    memory_reloads: Option<usize>,
    /// Seconds section 4 may spend generating histories in this run (a rerun resumes).
    #[arg(long, default_value_t = 900)]
    gen_budget: u64,
    /// Where generated journals are cached (default `<target>/bench-journals`).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Section 6: seconds of random operations in the soak (default 180, quick 30).
    #[arg(long)]
    soak_secs: Option<u64>,
    /// Section 6: slots in the soak.
    #[arg(long, default_value_t = 10)]
    soak_slots: usize,
    /// Section 6: concurrent workers in the soak.
    #[arg(long, default_value_t = 6)]
    soak_workers: usize,
    /// Section 6: 2 % of the soak's operations compact the journal.
    #[arg(long)]
    soak_compact: bool,
    /// Section 6: seed of the soak's random operations.
    #[arg(long, default_value_t = 18)]
    soak_seed: u64,
    /// Do not build the fixture plugin and the tryswap binary first.
    #[arg(long)]
    no_build: bool,
    /// Section 4's child process: one recovery of this state dir, its times on stdout.
    #[arg(long, hide = true)]
    recover_once: Option<PathBuf>,
}

fn default_cache() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
        .join("bench-journals")
}

fn write_out(path: &Path, report: &str) -> std::io::Result<()> {
    let block = format!("{BEGIN}\n{report}{END}\n");
    let text = match std::fs::read_to_string(path) {
        Ok(existing) => match (existing.find(BEGIN), existing.find(END)) {
            (Some(b), Some(e)) if b < e => {
                format!(
                    "{}{block}{}",
                    &existing[..b],
                    existing[e + END.len()..].trim_start_matches('\n')
                )
            }
            _ => format!("{}\n\n{block}", existing.trim_end()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => block,
        Err(e) => return Err(e),
    };
    std::fs::write(path, text)
}

struct Report {
    text: String,
}

impl Report {
    fn add(&mut self, tables: &[Table]) {
        for table in tables {
            let md = table.markdown();
            println!("{md}");
            self.text.push_str(&md);
            self.text.push('\n');
        }
    }

    fn failed(&mut self, section: u8, error: &str) {
        let md = format!("### Section {section} failed\n\n{error}\n");
        println!("{md}");
        eprintln!("bench: section {section} failed: {error}");
        self.text.push_str(&md);
        self.text.push('\n');
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(state) = &args.recover_once {
        return match journal::recover_once_here(state).await {
            Ok(line) => {
                println!("{line}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let wanted = |n: u8| args.sections.is_empty() || args.sections.contains(&n);
    let asked = |n: u8| args.sections.contains(&n);
    let bins = match setup::Bins::find(args.no_build) {
        Ok(bins) => bins,
        Err(e) => {
            eprintln!("bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut report = Report {
        text: String::new(),
    };
    let command = {
        let mut words = vec!["cargo run --release -p tryswap-bench --".to_owned()];
        let mut skip_value = false;
        for arg in std::env::args().skip(1) {
            if std::mem::take(&mut skip_value) {
                continue;
            }
            if arg == "--out" {
                skip_value = true;
            } else if !arg.starts_with("--out=") {
                words.push(arg);
            }
        }
        words.join(" ")
    };
    let mut machine = Table::new("Machine", &["what", "value"]);
    for (k, v) in setup::machine() {
        machine.row([k, v]);
    }
    machine.row([
        "tryswap binary / daemon".to_owned(),
        format!(
            "{} / {}",
            if bins.tryswap.is_some() {
                "built"
            } else {
                "not built"
            },
            if bins.daemon {
                "`tryswap serve` available"
            } else {
                "pending (no `tryswap serve`)"
            }
        ),
    ]);
    machine.note(format!("Command: `{command}`"));
    report.add(&[machine]);

    let quick = args.quick;
    if wanted(1) || wanted(3) {
        let reloads = args.reloads.unwrap_or(if quick { 15 } else { 50 });
        let budget = Duration::from_secs(if quick { 120 } else { 600 });
        match reload::run(&bins, reloads, budget, 0).await {
            Ok(outcomes) => report.add(&outcomes.tables),
            Err(e) => report.failed(1, &e),
        }
        if wanted(1) && args.startup_delay_ms > 0 {
            let reloads = (reloads / 2).max(5);
            match reload::run(&bins, reloads, budget, args.startup_delay_ms).await {
                Ok(outcomes) => report.add(&outcomes.tables),
                Err(e) => report.failed(1, &e),
            }
        }
    }
    if wanted(1) {
        let reloads = args.reloads.unwrap_or(if quick { 15 } else { 50 }).min(60);
        match host_processes::run(&bins, reloads, Duration::from_secs(180)).await {
            Ok(table) => report.add(&[table]),
            Err(e) => report.failed(1, &e),
        }
    }
    if wanted(2) {
        let swaps = args.swaps.unwrap_or(if quick { 30 } else { 200 });
        let budget = Duration::from_secs(if quick { 120 } else { 600 });
        match swaps::run(&bins, swaps, budget).await {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(2, &e),
        }
    }
    if wanted(7) {
        let swaps = args.swaps.unwrap_or(if quick { 30 } else { 200 });
        let budget = Duration::from_secs(if quick { 120 } else { 600 });
        match outside::run(&bins, swaps, budget).await {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(7, &e),
        }
    }
    if wanted(3) {
        let temp = tempfile::tempdir().expect("temp dir");
        match journal::history_growth(temp.path(), 10_000) {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(3, &e),
        }
        let budget = Duration::from_millis(if quick { 500 } else { 2000 });
        match journal::append_rate(temp.path(), budget) {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(3, &e),
        }
        match syscalls::run(&bins, if quick { 3 } else { 10 }) {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(3, &e),
        }
    }
    if wanted(8) {
        match staging::run(if quick { 5 } else { 15 }) {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(8, &e),
        }
    }
    if asked(6) {
        let records = if quick { 30_000 } else { 90_000 };
        match soak::journal_rss(records, Duration::from_secs(300)) {
            Ok(table) => report.add(&[table]),
            Err(e) => report.failed(6, &e),
        }
        let secs = args.soak_secs.unwrap_or(if quick { 30 } else { 180 });
        match soak::daemon_soak(
            &bins,
            args.soak_slots.max(1),
            args.soak_workers.max(1),
            Duration::from_secs(secs),
            200_000,
            args.soak_seed,
            args.soak_compact,
        )
        .await
        {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(6, &e),
        }
    }
    // Section 5 runs before section 4: verifying 10^6 records leaves this process with a
    // heap of some GB, and every fork of a plugin then copies its page tables.
    if wanted(5) {
        let rounds = if quick { 1 } else { 3 };
        match concurrency::run(&bins, args.slots.max(2), rounds).await {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(5, &e),
        }
        let reloads = args
            .memory_reloads
            .unwrap_or(if quick { 2_000 } else { 20_000 });
        let budget = Duration::from_secs(if quick { 600 } else { 1_800 });
        match memory::run(&bins, reloads, args.slots.max(2), budget).await {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(5, &e),
        }
    }
    if wanted(4) {
        let max = args
            .max_events
            .unwrap_or(if quick { 100_000 } else { 1_000_000 });
        let sizes: Vec<u64> = [1_000, 10_000, 100_000, 1_000_000]
            .into_iter()
            .filter(|n| *n <= max)
            .collect();
        let cache = args.cache.clone().unwrap_or_else(default_cache);
        let budget = Duration::from_secs(args.gen_budget);
        match journal::recovery(&cache, &sizes, budget).await {
            Ok(tables) => report.add(&tables),
            Err(e) => report.failed(4, &e),
        }
    }
    let footer = format!("Whole run: {:.0} s.\n", started.elapsed().as_secs_f64());
    println!("{footer}");
    report.text.push_str(&footer);
    if let Some(out) = &args.out {
        if let Err(e) = write_out(out, &report.text) {
            eprintln!("bench: writing {}: {e}", out.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_replaces_only_the_marked_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perf.md");
        write_out(&path, "first\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{BEGIN}\nfirst\n{END}\n"));
        std::fs::write(&path, format!("# Title\n\n{text}\n## After\n")).unwrap();
        write_out(&path, "second\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("# Title\n\n{BEGIN}\nsecond\n{END}\n## After\n")
        );
        std::fs::write(&path, "no markers\n").unwrap();
        write_out(&path, "third\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("no markers\n\n{BEGIN}\nthird\n{END}\n")
        );
    }
}
