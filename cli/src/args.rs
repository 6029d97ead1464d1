//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tryswap_fsm::SlotName;

/// Safe plugin reloads: stage, launch, validate, probe, swap — or roll back.
#[derive(Debug, Parser)]
#[command(name = "tryswap", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML). Default: ./tryswap.toml if it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (journal, store, logs). Default: the config's state_dir, else .tryswap.
    #[arg(long, global = true, value_name = "DIR", env = "TRYSWAP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Safe reload: make ARTIFACT the slot's active generation, or roll back and keep the
    /// old one. Exit 0 active, 2 rejected, 3 conflict, 1 error.
    Activate {
        /// Slot name.
        slot: SlotName,
        /// The candidate plugin executable (copied into the store).
        artifact: PathBuf,
        /// A config file for the candidate (substituted for {config} in the slot's args).
        #[arg(long, value_name = "F")]
        config_file: Option<PathBuf>,
        /// Bake window (overrides the slot's `bake`): the old generation stays up as a warm
        /// standby and the command waits, reverting if the candidate fails; exit 2 reverted.
        #[arg(long, value_name = "DUR", value_parser = tryswap::config::parse_bake)]
        bake: Option<std::time::Duration>,
    },
    /// Dry run through the probe; the active generation is untouched. Exit 0 passed, 2 failed.
    Try {
        /// Slot name.
        slot: SlotName,
        /// The candidate plugin executable.
        artifact: PathBuf,
        /// A config file for the candidate.
        #[arg(long, value_name = "F")]
        config_file: Option<PathBuf>,
    },
    /// Safe reload of the previous (or given) generation from the store.
    Rollback {
        /// Slot name.
        slot: SlotName,
        /// The generation to bring back (default: the one active before the current one).
        #[arg(long, value_name = "GENERATION")]
        to: Option<u64>,
        /// Bake window (overrides the slot's `bake`), as for `activate`.
        #[arg(long, value_name = "DUR", value_parser = tryswap::config::parse_bake)]
        bake: Option<std::time::Duration>,
    },
    /// Slots, active generation, pid, alive, address, in-flight reload.
    Status {
        /// Only this slot.
        slot: Option<SlotName>,
    },
    /// Reloads of a slot with outcome, failed stage and durations.
    History {
        /// Slot name.
        slot: SlotName,
    },
    /// (Re)launch the slot's active generation from the store if it is not running.
    Start {
        /// Slot name.
        slot: SlotName,
    },
    /// Stop the slot's active generation (the active marker stays).
    Stop {
        /// Slot name.
        slot: SlotName,
    },
    /// Run crash recovery now (it also runs whenever a command opens the journal).
    Recover,
    /// End the slot's bake now with the candidate active; the standby is stopped.
    Confirm {
        /// Slot name.
        slot: SlotName,
    },
    /// End the slot's bake now: the standby serves again, the candidate is stopped. Exit 2.
    Revert {
        /// Slot name.
        slot: SlotName,
    },
    /// The daemon: recovery, then keeps active generations alive (restarts with backoff),
    /// serves the admin API on <state-dir>/<admin.socket>, streams events. Runs until
    /// SIGTERM or SIGINT (exit 0); SIGHUP re-reads the config.
    Serve {
        /// On shutdown, leave the plugins running (the next `serve` reattaches them).
        #[arg(long)]
        keep_plugins: bool,
    },
    /// Ask the daemon to re-read its config file: added slots start, removed slots stop,
    /// changed slots reload, all in one transaction; any failure keeps every slot as it
    /// was. Exit 0 applied, 2 rolled back, 1 invalid config.
    ReloadConfig {
        /// Launch and probe the changed slots' candidates, then discard them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Journal records (and, with --follow, keep-alive and health events) as they happen.
    /// Without --follow: the records from --from (default the first) to the journal's end,
    /// then exit.
    Events {
        /// First record sequence number (with --follow, default: only new events).
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        /// Keep printing until interrupted (needs a running daemon).
        #[arg(long)]
        follow: bool,
    },
    /// Audit and replay the journal.
    Journal {
        /// What to do with it.
        #[command(subcommand)]
        command: JournalCommand,
    },
}

/// `tryswap journal …`.
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Print every record.
    Show {
        /// Start at this sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Re-fold events and compare with projections; check sequence, chain and legality.
    /// Exit 0 ok, 4 corrupt.
    Verify,
    /// The state of every slot and reload as of sequence SEQ.
    Replay {
        /// Last sequence number to apply.
        #[arg(long, value_name = "SEQ")]
        until: u64,
    },
    /// Every record as JSON lines on stdout.
    Export,
    /// Keep the last N terminal reloads per slot (and every unfinished one).
    Compact {
        /// How many finished reloads to keep per slot.
        #[arg(long, default_value_t = 100)]
        keep: usize,
    },
}
