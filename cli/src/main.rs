//! `tryswap`: safe plugin reloads from the shell.
//!
//! Exit codes (a contract, see DESIGN.md): 0 done, 1 error, 2 candidate rejected (rolled
//! back) or dry run failed, 3 conflict (a reload in progress, or the state directory is held
//! by another tryswap process), 4 journal corrupt (`journal verify`), 5 `stop` done without
//! the journal (it is damaged: processes stopped, nothing recorded), 64 usage error.
//! Writing into a closed pipe ends quietly with exit 0.

mod args;
mod client;
mod daemon;
mod html_report;
mod journal_cmd;
mod operator;
mod render;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tryswap::config::{Config, ConfigError};
use tryswap::report::{Outcome, ReloadReport};
use tryswap::{BakeEnd, CandidateSpec, Origin, Supervisor, SupervisorError};
use tryswap_fsm::{Generation, Mode, Reason, SlotName};
use tryswap_journal::{Journal, JournalError, ReadScope};

use crate::args::{Cli, Command, LogFormat, Wait, DEFAULT_WAIT};

/// Exit code: the command did what it was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: an error (bad input, I/O, journal failure).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: the candidate was rejected and rolled back; the slot is as it was.
pub const EXIT_REJECTED: u8 = 2;
/// Exit code: a reload is already in progress, or another process holds the state dir.
pub const EXIT_CONFLICT: u8 = 3;
/// Exit code: `journal verify` found corruption.
pub const EXIT_CORRUPT: u8 = 4;
/// Exit code: `stop` stopped the slot's processes without the journal, which is damaged:
/// nothing was recorded.
pub const EXIT_UNRECORDED: u8 = 5;
/// Exit code: the command line is wrong (BSD `EX_USAGE`; never 2, which means rejected).
pub const EXIT_USAGE: u8 = 64;

/// The one error type at the binary's edge: a message with its context, and an exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    /// Context-rich message.
    pub message: String,
}

impl CliError {
    fn new(code: u8, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }

    /// stdout is a closed pipe (`tryswap events | head -1`): end quietly with exit 0.
    pub fn pipe_closed() -> Self {
        CliError::new(EXIT_OK, "")
    }

    fn is_pipe_closed(&self) -> bool {
        self.code == EXIT_OK
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::new(EXIT_ERROR, e.to_string())
    }
}

impl From<SupervisorError> for CliError {
    fn from(e: SupervisorError) -> Self {
        let code = match &e {
            SupervisorError::Conflict { .. } | SupervisorError::Busy { .. } => EXIT_CONFLICT,
            SupervisorError::Journal(JournalError::Locked { .. }) => EXIT_CONFLICT,
            SupervisorError::Journal(e) if e.is_corrupt() => EXIT_CORRUPT,
            _ => EXIT_ERROR,
        };
        // Advice that names commands belongs to the CLI, not to the library's messages.
        let hint = match &e {
            SupervisorError::UnknownGeneration { slot, .. } => {
                format!("; `tryswap history {slot}` lists the generations that can be brought back")
            }
            SupervisorError::UnknownProcesses { .. } => {
                "\nhint: `tryswap recover --adopt` takes them over as their slots' active \
                 generations (one newer generation per slot); `tryswap recover --stop-unknown` \
                 stops them (then the journal's active generations start); or restore the \
                 journal that knows them"
                    .to_owned()
            }
            SupervisorError::AdoptionRefused { .. } => {
                "\nhint: `tryswap recover --stop-unknown` stops every process the journal does \
                 not know instead"
                    .to_owned()
            }
            SupervisorError::Journal(e) if e.is_corrupt() => {
                "\nhint: `tryswap journal verify` shows what is damaged; `tryswap journal \
                 export --salvage` prints the readable records"
                    .to_owned()
            }
            _ => String::new(),
        };
        CliError::new(code, format!("{e}{hint}"))
    }
}

impl From<JournalError> for CliError {
    fn from(e: JournalError) -> Self {
        CliError::from(SupervisorError::Journal(e))
    }
}

/// The config file and state directory a command works on.
pub struct Context {
    /// The config (empty if no file exists and none was named).
    pub config: Config,
    /// The state directory.
    pub state_dir: PathBuf,
    /// `--json`.
    pub json: bool,
    /// The config file read (or that would be read): what the daemon re-reads on
    /// `reload-config` and SIGHUP.
    pub config_path: PathBuf,
    /// `--wait`: how long to wait for a state directory another process holds.
    pub wait: Wait,
    /// `--reason`: why (mutating commands only).
    pub reason: Option<String>,
    /// The state directories this command opened for writing, closed by
    /// [`Context::close_for_exit`].
    opened: std::sync::Mutex<Vec<Supervisor>>,
}

impl Context {
    fn load(cli: &Cli) -> Result<Context, CliError> {
        let path = cli
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("tryswap.toml"));
        let config = if cli.config.is_some() || path.exists() {
            Config::load(&path)?
        } else {
            Config::default()
        };
        let state_dir = match (&cli.state_dir, &config.state_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) if dir.is_relative() => {
                let base = path.parent().filter(|p| !p.as_os_str().is_empty());
                base.map_or_else(|| dir.clone(), |b| b.join(dir))
            }
            (None, Some(dir)) => dir.clone(),
            (None, None) => PathBuf::from(".tryswap"),
        };
        Ok(Context {
            config,
            state_dir,
            json: cli.json,
            config_path: absolute(&path),
            wait: cli.wait.unwrap_or(DEFAULT_WAIT),
            reason: cli.reason.clone(),
            opened: std::sync::Mutex::default(),
        })
    }

    /// The command is done and the process exits next: every journal it opened is made
    /// durable and left open until the exit ([`Supervisor::close_for_exit`]: sled's close
    /// is an `fsync` and a thread join that protect nothing the log does not). A failed
    /// flush is logged, as when dropping the journal.
    fn close_for_exit(&self) {
        let opened = std::mem::take(
            &mut *self
                .opened
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for supervisor in opened {
            if let Err(e) = supervisor.close_for_exit() {
                tracing::warn!(error = %e, "flushing the journal before exiting");
            }
        }
    }

    /// Opens the state directory with every configured slot registered and finishes what
    /// a crashed run left behind (`Supervisor::recover_needed`: active generations that
    /// still run are left as they are, for the command to act on).
    pub async fn supervisor(&self) -> Result<Supervisor, CliError> {
        let supervisor = self
            .open_unregistered(|dir| Supervisor::open_for_command(dir))
            .await?;
        // A recovery that fails drops (closes) the journal here: `stop` may then go on
        // without it, taking the lock itself.
        supervisor.recover_needed().await?;
        Ok(self.register(supervisor))
    }

    /// The state directory for a read command (`status`, `history`): every configured slot
    /// registered, nothing recovered, relaunched or written. The projection snapshot
    /// answers at once while another process holds the journal, and for `status`
    /// ([`ReadScope::Current`]) whenever it holds the journal's last record; without one,
    /// waits as `--wait` says.
    pub async fn reader(&self, scope: ReadScope) -> Result<Supervisor, CliError> {
        let dir = self.state_dir.join("journal");
        let journal = self
            .wait_for_lock(
                || tryswap_journal::open_for_reading(&dir, scope),
                |e| matches!(e, JournalError::Locked { .. }),
            )
            .await?;
        let supervisor = Supervisor::for_reading(&self.state_dir, journal)?;
        for slot in &self.config.slots {
            supervisor.add_process_slot(slot.clone());
        }
        Ok(supervisor)
    }

    /// Opens the state directory with every configured slot registered, and the journal
    /// with its index (sled), which the open heals from the log if it is damaged or
    /// behind: what `recover` wants. When another process holds it, waits as `--wait`
    /// says (telling so once on stderr).
    pub async fn open_supervisor(&self) -> Result<Supervisor, CliError> {
        let supervisor = self.open_unregistered(|dir| Supervisor::open(dir)).await?;
        Ok(self.register(supervisor))
    }

    /// Opens the state directory with `open` ([`Supervisor::open_for_command`] or
    /// [`Supervisor::open`]) and registers every configured slot; not yet kept for
    /// [`Context::close_for_exit`].
    async fn open_unregistered(
        &self,
        open: fn(&Path) -> Result<Supervisor, SupervisorError>,
    ) -> Result<Supervisor, CliError> {
        let supervisor = self
            .wait_for_lock(
                || open(&self.state_dir),
                |e| matches!(e, SupervisorError::Journal(JournalError::Locked { .. })),
            )
            .await?;
        for slot in &self.config.slots {
            supervisor.add_process_slot(slot.clone());
        }
        Ok(supervisor)
    }

    /// Keeps `supervisor`'s journal for [`Context::close_for_exit`].
    fn register(&self, supervisor: Supervisor) -> Supervisor {
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(supervisor.clone());
        supervisor
    }

    /// Opens the journal in `dir` (for inspection, or for writing), waiting as `--wait`
    /// says while another process holds it.
    pub async fn open_journal(&self, dir: &Path, write: bool) -> Result<Journal, JournalError> {
        self.wait_for_lock(
            || {
                if write {
                    Journal::open(dir)
                } else {
                    Journal::open_for_inspection(dir)
                }
            },
            |e| matches!(e, JournalError::Locked { .. }),
        )
        .await
    }

    /// Runs `open` until it does not find the state directory `locked` by another
    /// process, for as long as `--wait` allows; says once on stderr that it waits, and
    /// when the wait runs out, suggests `tryswap serve`.
    pub async fn wait_for_lock<T, E: std::fmt::Display>(
        &self,
        mut open: impl FnMut() -> Result<T, E>,
        locked: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let started = tokio::time::Instant::now();
        let limit = match self.wait {
            Wait::Up(limit) => Some(limit),
            Wait::Forever => None,
        };
        let mut told = false;
        loop {
            match open() {
                Err(e) if locked(&e) => {
                    if limit.is_some_and(|l| started.elapsed() >= l) {
                        eprintln!(
                            "tryswap: gave up after {:.1} s (--wait=DUR waits longer). Tip: run \
                             `tryswap serve` for this state directory and every command goes \
                             through it instead of waiting for the lock",
                            started.elapsed().as_secs_f64()
                        );
                        return Err(e);
                    }
                    if !told {
                        told = true;
                        let how_long = limit.map_or_else(
                            || "until it is free".to_owned(),
                            |l| format!("up to {}", humantime::format_duration(l)),
                        );
                        eprintln!(
                            "tryswap: {e}; waiting {how_long} (`tryswap serve` lets commands \
                             share the state directory)"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub(crate) fn slot(&self, name: &SlotName) -> Result<(), CliError> {
        if self.config.slot(name).is_none() {
            let file = self
                .config
                .source
                .as_deref()
                .map_or_else(|| "no config file".to_owned(), |p| p.display().to_string());
            return Err(CliError::new(
                EXIT_ERROR,
                format!("unknown slot {name}: it is not configured in {file}"),
            ));
        }
        Ok(())
    }
}

pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

async fn reload_command(ctx: &Context, slot: &SlotName, what: ReloadKind) -> Result<u8, CliError> {
    ctx.slot(slot)?;
    let supervisor = ctx.supervisor().await?;
    if let ReloadKind::Activate(spec, false, _) = &what {
        // Inline: a one-shot command's runtime has one thread (see `main`), which would only
        // wait for a blocking-pool thread, and then join it at exit.
        if let Some(generation) = supervisor.already_active(slot, spec)? {
            return operator::print_already_active(ctx, &supervisor, slot, generation.0);
        }
    }
    let progress =
        (!ctx.json).then(|| render::progress(supervisor.subscribe(), ctx.config.slot(slot)));
    let reload = async {
        match what {
            ReloadKind::Activate(spec, _, bake) => {
                supervisor
                    .reload_with_bake(slot, Mode::Activate, Some(spec), bake)
                    .await
            }
            ReloadKind::Try(spec) => supervisor.try_activate(slot, spec).await,
            ReloadKind::Rollback(to, bake) => supervisor.rollback_with_bake(slot, to, bake).await,
        }
    };
    // Ctrl-C or SIGTERM mid-reload: abandon it and let recovery stop the candidate and
    // journal the rollback (or finish retiring the old generation if the swap committed).
    let result = tokio::select! {
        result = reload => Some(result),
        _ = interrupted() => None,
    };
    if let Some(progress) = progress {
        progress.finish().await;
    }
    let Some(result) = result else {
        // Interrupted during a bake: revert to the standby (journaled before the candidate
        // is stopped), then let recovery finish anything else.
        match supervisor
            .end_bake(
                slot,
                BakeEnd::Revert(Reason::cancelled(
                    "interrupted (SIGINT/SIGTERM) during the bake",
                )),
            )
            .await
        {
            Ok(report) => {
                if ctx.json {
                    render::json(&report)?;
                } else {
                    render::reload_summary(&report)?;
                }
                return Ok(EXIT_REJECTED);
            }
            Err(SupervisorError::NoBake(_)) => {}
            Err(e) => eprintln!("tryswap: interrupted: reverting the bake: {e}"),
        }
        let recovery = supervisor.recover().await?;
        for action in &recovery.actions {
            eprintln!("tryswap: interrupted: {action}");
        }
        let _ = render::out("");
        return Err(CliError::new(
            EXIT_ERROR,
            format!(
                "slot {slot}: interrupted; the reload was undone (see `tryswap history {slot}`)"
            ),
        ));
    };
    let report: ReloadReport = result?;
    if ctx.json {
        render::json(&report)?;
    } else {
        render::reload_summary(&report)?;
    }
    Ok(match report.outcome {
        Outcome::Active | Outcome::DryRunPassed => EXIT_OK,
        Outcome::RolledBack | Outcome::Reverted | Outcome::InProgress => EXIT_REJECTED,
    })
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the default disposition applies; never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

enum ReloadKind {
    /// The candidate, `--force`, and `--bake`.
    Activate(CandidateSpec, bool, Option<std::time::Duration>),
    Try(CandidateSpec),
    Rollback(Option<Generation>, Option<std::time::Duration>),
}

fn candidate(artifact: &Path, config_file: Option<&Path>) -> CandidateSpec {
    CandidateSpec {
        executable: Some(absolute(artifact)),
        config: config_file.map(absolute),
    }
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    match &cli.command {
        Command::Completions { shell } => return operator::completions(*shell),
        Command::Man => return operator::man(),
        _ => {}
    }
    if let Some(reason) = &cli.reason {
        if !cli.command.mutates() {
            return Err(CliError::new(
                EXIT_USAGE,
                "--reason is for commands that change something (activate, try, rollback, \
                 start, stop, confirm, revert, recover, reload-config)",
            ));
        }
        tryswap::admin_body::check_reason(reason)
            .map_err(|why| CliError::new(EXIT_USAGE, format!("--reason: {why}")))?;
    }
    let ctx = Context::load(&cli)?;
    // A daemon serving the state dir runs the command (same output); else do it here.
    // Logs are files; a report reads its sources itself.
    let local = matches!(
        cli.command,
        Command::Serve { .. } | Command::Logs { .. } | Command::Report { .. }
    );
    if !local {
        let socket = daemon::server::socket_path(&ctx.state_dir, &ctx.config.admin);
        if let Some(client) = client::Client::detect(&socket).await {
            return client::run(&client, &ctx, &cli.command).await;
        }
    }
    // Every record this command writes says who (this process) and why.
    let result = tryswap::acting(Origin::cli(cli.reason.clone()), run_here(&ctx, &cli)).await;
    ctx.close_for_exit();
    result
}

/// Runs the command in this process (no daemon serves the state directory).
async fn run_here(ctx: &Context, cli: &Cli) -> Result<u8, CliError> {
    match &cli.command {
        Command::Activate {
            slot,
            artifact,
            config_file,
            force,
            bake,
        } => {
            let spec = candidate(artifact, config_file.as_deref());
            reload_command(ctx, slot, ReloadKind::Activate(spec, *force, *bake)).await
        }
        Command::Try {
            slot,
            artifact,
            config_file,
        } => {
            let spec = candidate(artifact, config_file.as_deref());
            reload_command(ctx, slot, ReloadKind::Try(spec)).await
        }
        Command::Rollback { slot, to, bake } => {
            reload_command(ctx, slot, ReloadKind::Rollback(to.map(Generation), *bake)).await
        }
        Command::Status { slot } => {
            let supervisor = ctx.reader(ReadScope::Current).await?;
            let report = operator::status(&supervisor, slot.as_ref(), None)?;
            if ctx.json {
                render::json(&report)?;
            } else {
                render::status(&report)?;
            }
            Ok(EXIT_OK)
        }
        Command::History {
            slot,
            limit,
            since,
            timeline,
        } => {
            let supervisor = ctx.reader(ReadScope::Full).await?;
            let query = crate::operator::HistoryQuery::new(*limit, *since, *timeline);
            let text = operator::history(&supervisor, slot, &query, ctx.json)?;
            render::out(&text)?;
            Ok(EXIT_OK)
        }
        Command::Logs {
            slot,
            follow,
            generation,
        } => operator::logs(ctx, slot, *generation, *follow).await,
        Command::Report { html, sources } => html_report::run(ctx, html, sources).await,
        Command::Completions { shell } => operator::completions(*shell),
        Command::Man => operator::man(),
        Command::Start { slot } => {
            ctx.slot(slot)?;
            let supervisor = ctx.supervisor().await?;
            let generation = supervisor.start(slot).await?;
            let status = supervisor.status(Some(slot))?;
            if ctx.json {
                render::json(&status)?;
            } else {
                render::out(&render::started_text(slot.as_str(), generation.0))?;
            }
            Ok(EXIT_OK)
        }
        Command::Stop { slot } => {
            ctx.slot(slot)?;
            let supervisor = match ctx.supervisor().await {
                Ok(supervisor) => supervisor,
                // It only needs the processes' identities, which their tags give.
                Err(damage) if damage.code == EXIT_CORRUPT => {
                    return operator::stop_without_journal(ctx, slot, &damage).await
                }
                Err(e) => return Err(e),
            };
            let stopped = supervisor.stop(slot).await?.map(|g| g.0);
            if ctx.json {
                render::json(&render::stopped_json(slot.as_str(), stopped))?;
            } else {
                render::out(&render::stopped_text(slot.as_str(), stopped))?;
            }
            Ok(EXIT_OK)
        }
        Command::Confirm { slot } | Command::Revert { slot } => {
            ctx.slot(slot)?;
            let supervisor = ctx.supervisor().await?;
            let end = match &cli.command {
                Command::Confirm { .. } => BakeEnd::Confirm,
                _ => BakeEnd::Revert(Reason::cancelled("reverted by hand (tryswap revert)")),
            };
            let report = supervisor.end_bake(slot, end).await?;
            if ctx.json {
                render::json(&report)?;
            } else {
                render::reload_summary(&report)?;
            }
            Ok(match report.outcome {
                Outcome::Reverted => EXIT_REJECTED,
                _ => EXIT_OK,
            })
        }
        Command::Recover {
            stop_unknown,
            adopt,
        } => {
            let supervisor = ctx.open_supervisor().await?;
            let adopted = if *adopt {
                supervisor.adopt_unknown().await?
            } else {
                Vec::new()
            };
            if *stop_unknown {
                for pid in supervisor.stop_unknown().await? {
                    eprintln!("tryswap: stopped pid {pid}, unknown to the journal");
                }
            }
            let mut report = supervisor.recover().await?;
            report.actions.splice(0..0, adopted);
            if ctx.json {
                render::json(&report)?;
            } else {
                render::recovery(&report)?;
            }
            // A slot whose recovery failed is reported; the others were recovered.
            let slot_failed = report
                .actions
                .iter()
                .any(|a| matches!(a, tryswap::RecoveryAction::SlotFailed { .. }));
            Ok(if slot_failed { EXIT_ERROR } else { EXIT_OK })
        }
        Command::Journal { command } => journal_cmd::run(ctx, command).await,
        Command::Store {
            command: args::StoreCommand::Gc,
        } => {
            let supervisor = ctx.supervisor().await?;
            let report = supervisor.store_gc().await?;
            if ctx.json {
                render::json(&report)?;
            } else {
                print!("{}", render::store_gc_text(&report));
            }
            Ok(EXIT_OK)
        }
        Command::Serve { keep_plugins } => daemon::serve(ctx, *keep_plugins).await,
        Command::ReloadConfig { .. } => Err(CliError::new(
            EXIT_ERROR,
            format!(
                "no tryswap daemon serves {} (no answer on {}): reload-config asks a running \
                 daemon (`tryswap serve`) to re-read its config; without one, every command \
                 reads the config file itself",
                ctx.state_dir.display(),
                daemon::server::socket_path(&ctx.state_dir, &ctx.config.admin).display()
            ),
        )),
        Command::Events { from, follow } => client::events_direct(ctx, *from, *follow).await,
    }
}

/// Logs go to stderr; results to stdout. The filter is `TRYSWAP_LOG`, else `RUST_LOG`,
/// else `error` (`info` for `serve`); `NO_COLOR` turns colours off; `--log-format json`
/// writes one JSON object per line with the event's fields as keys.
fn init_tracing(format: LogFormat, serving: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let fallback = if serving { "info" } else { "error" };
    let filter = EnvFilter::try_from_env("TRYSWAP_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(fallback));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// The command line, or exit 0 for `--help`/`--version` and 64 for a usage error (as JSON
/// on stdout too with `--json`).
fn parse_args() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            if std::env::args_os().any(|a| a == "--json") {
                let text = e.to_string();
                let message = text
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ")
                    .to_owned();
                let body = serde_json::json!({
                    "schema": render::SCHEMA, "error": message, "exit_code": EXIT_USAGE
                });
                let _ = render::out(&format!("{body}\n"));
            }
            let _ = e.print();
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_tracing(cli.log_format, matches!(cli.command, Command::Serve { .. }));
    if matches!(cli.command, Command::Serve { .. }) {
        // Before the runtime's threads exist: the daemon's RSS stays flat (issue 18).
        daemon::allocator::tune();
    }
    // Journal, store and sockets private whatever the umask; plugins get it back.
    tryswap::internals::os::restrict_umask();
    // Crash tests only: inert unless TRYSWAP_FAILPOINTS is set (docs/recovery.md).
    if let Err(e) = tryswap::internals::arm_failpoints_from_env() {
        eprintln!("tryswap: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    // The daemon serves many callers at once on two workers. A one-shot command does one
    // thing: one thread runs it (its blocking calls run inline, `blocking::off_worker`),
    // without starting, waking and joining workers it would not use.
    let runtime = if matches!(cli.command, Command::Serve { .. }) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tryswap: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let json = cli.json;
    let result = runtime.block_on(run(cli));
    // Tasks still writing (progress lines) end with the runtime, before the exit code.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is_pipe_closed() => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let body = serde_json::json!({
                    "schema": render::SCHEMA, "error": e.message, "exit_code": e.code
                });
                let _ = render::out(&format!("{body}\n"));
            }
            eprintln!("tryswap: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
