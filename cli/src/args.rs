//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use tryswap_fsm::SlotName;

const EXAMPLES: &str = "\
Examples:
  tryswap serve                                   run the daemon (other commands go through it)
  tryswap activate demo ./plugin --config-file v2.toml
  tryswap status
  tryswap history demo -n 10 --timeline
  tryswap events --follow --from 1
  tryswap logs demo -f
  tryswap report --html reloads.html

Exit codes: 0 done, 1 error, 2 rejected (rolled back), 3 conflict, 4 journal corrupt,
64 usage error.";

/// Safe plugin reloads: stage, launch, validate, probe, swap — or roll back.
#[derive(Debug, Parser)]
#[command(name = "tryswap", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// Config file (TOML). Default: ./tryswap.toml if it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (journal, store, logs). Default: the config's state_dir, else .tryswap.
    #[arg(long, global = true, value_name = "DIR", env = "TRYSWAP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print results as JSON on stdout (errors too: {"error":…, "exit_code":n}).
    #[arg(long, global = true)]
    pub json: bool,
    /// Without a daemon, when another tryswap process holds the state directory, wait up
    /// to DUR for it (default 5s; `--wait` alone: until it is free; `--wait=0`: fail at once).
    #[arg(
        long,
        global = true,
        value_name = "DUR",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "forever",
        value_parser = parse_wait
    )]
    pub wait: Option<Wait>,
    /// Why (commands that change something: activate, try, rollback, start, stop, confirm,
    /// revert, recover, reload-config): kept on every journal record the command writes and
    /// shown by `history`, `status` and `journal export`.
    #[arg(long, global = true, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Log format on stderr (logs are filtered by TRYSWAP_LOG, else RUST_LOG).
    #[arg(long, global = true, value_enum, env = "TRYSWAP_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Safe reload: make ARTIFACT the slot's active generation, or roll back and keep the
    /// old one. Exit 0 active, 2 rejected, 3 conflict, 1 error.
    #[command(
        after_help = "Examples:\n  tryswap activate demo ./plugin --config-file v2.toml\n  \
                            tryswap --json activate demo ./plugin --force"
    )]
    Activate {
        /// Slot name.
        slot: SlotName,
        /// The candidate plugin executable (copied into the store).
        artifact: PathBuf,
        /// A config file for the candidate (substituted for {config} in the slot's args).
        #[arg(long, value_name = "F")]
        config_file: Option<PathBuf>,
        /// Reload even when this artifact and config are already active.
        #[arg(long)]
        force: bool,
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
    /// Reloads of a slot with outcome, failed stage and durations, oldest first.
    #[command(after_help = "Examples:\n  tryswap history demo -n 5\n  \
                            tryswap history demo --since 1h --timeline")]
    History {
        /// Slot name.
        slot: SlotName,
        /// Only the last N reloads.
        #[arg(short = 'n', long, value_name = "N")]
        limit: Option<usize>,
        /// Only reloads started since then: a duration ago (`1h`, `30m`) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN", value_parser = parse_since)]
        since: Option<DateTime<Utc>>,
        /// A chart of the reloads on one time axis, a bar per stage.
        #[arg(long)]
        timeline: bool,
    },
    /// The plugin log of a slot's active (or given) generation.
    #[command(
        after_help = "Examples:\n  tryswap logs demo\n  tryswap logs demo -f\n  \
                            tryswap logs demo --generation 3"
    )]
    Logs {
        /// Slot name.
        slot: SlotName,
        /// Keep printing what is appended until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// This generation's log instead of the active one's.
        #[arg(long, value_name = "N")]
        generation: Option<u64>,
    },
    /// A static, self-contained HTML page of journals: a timeline per slot, the generation
    /// lineage with digests, and the failures with their reasons.
    #[command(after_help = "Examples:\n  tryswap report --html reloads.html\n  \
                            tryswap report --html fleet.html web1=web1/state web2=web2-export.jsonl")]
    Report {
        /// Where to write the page.
        #[arg(long, value_name = "FILE")]
        html: PathBuf,
        /// State directories or `tryswap journal export` files (default: this state
        /// directory), each optionally labelled with its host as `HOST=PATH` (else the
        /// page labels it with the path as given).
        #[arg(value_name = "[HOST=]SOURCE")]
        sources: Vec<PathBuf>,
    },
    /// Shell completions on stdout.
    #[command(
        after_help = "Example:\n  tryswap completions bash > /etc/bash_completion.d/tryswap"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The man page (roff) on stdout.
    #[command(after_help = "Example:\n  tryswap man | man -l -")]
    Man,
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
    /// Run crash recovery now (it also runs whenever a command opens the journal for
    /// writing). Refused while processes of this state directory run reloads the journal
    /// does not know (a journal restored from an older backup).
    Recover {
        /// First stop the processes of this state directory that the journal does not know.
        #[arg(long, conflicts_with = "adopt")]
        stop_unknown: bool,
        /// First take over the processes of this state directory that the journal does not
        /// know as their slots' active generations (one per slot, newer than the journal's;
        /// refused, with nothing changed, when that is ambiguous).
        #[arg(long)]
        adopt: bool,
    },
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
    /// then exit. With --follow, ends with exit 1 when the daemon goes away.
    #[command(
        after_help = "Examples:\n  tryswap events | head\n  tryswap events --follow --from 1"
    )]
    Events {
        /// First record sequence number (with --follow: the backlog from SEQ first, then
        /// live; default: only new events).
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
    /// The artifact store.
    Store {
        /// What to do with it.
        #[command(subcommand)]
        command: StoreCommand,
    },
}

impl Command {
    /// Whether the command may change the state directory (and so takes `--reason`).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Command::Activate { .. }
                | Command::Try { .. }
                | Command::Rollback { .. }
                | Command::Start { .. }
                | Command::Stop { .. }
                | Command::Recover { .. }
                | Command::Confirm { .. }
                | Command::Revert { .. }
                | Command::ReloadConfig { .. }
        )
    }
}

/// `tryswap store …`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Remove every stored artifact no kept generation references (active, retiring, or
    /// in a slot's history). The daemon also does this every hour.
    Gc,
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
    Export {
        /// Read the segment log directly (no lock, no sled): every record before the first
        /// damage, then exit 4 naming it if there is one.
        #[arg(long)]
        salvage: bool,
    },
    /// Keep the last N terminal reloads per slot (and every unfinished one).
    Compact {
        /// How many finished reloads to keep per slot.
        #[arg(long, default_value_t = 100)]
        keep: usize,
        /// Drop the trimmed records instead of appending them to `journal/archive/`.
        #[arg(long)]
        no_archive: bool,
    },
    /// Derive sled's files (projections and indexes) again from the segment log.
    Rebuild,
}

/// How long to wait for a state directory another process holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// At most this long.
    Up(Duration),
    /// Until it is free.
    Forever,
}

/// The default `--wait`.
pub const DEFAULT_WAIT: Wait = Wait::Up(Duration::from_secs(5));

fn parse_wait(text: &str) -> Result<Wait, String> {
    if text == "forever" {
        return Ok(Wait::Forever);
    }
    if text == "0" {
        return Ok(Wait::Up(Duration::ZERO));
    }
    humantime::parse_duration(text)
        .map(Wait::Up)
        .map_err(|e| format!("{e} (e.g. 10s, 2m)"))
}

fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text)
        .map_err(|e| format!("{e}: give a duration ago (1h, 30m) or an RFC 3339 time"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(Utc::now() - ago)
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for journald, Loki and the like).
    Json,
}
