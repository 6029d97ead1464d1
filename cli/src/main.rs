//! `tryswap`: safe plugin reloads from the shell.
//!
//! Exit codes (a contract, see DESIGN.md): 0 done, 1 error, 2 candidate rejected (rolled
//! back) or dry run failed, 3 conflict (a reload in progress, or the state directory is held
//! by another tryswap process), 4 journal corrupt (`journal verify`).

mod args;
mod client;
mod daemon;
mod journal_cmd;
mod render;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tryswap::config::{Config, ConfigError};
use tryswap::report::{Outcome, ReloadReport};
use tryswap::supervisor::bake::BakeEnd;
use tryswap::supervisor::{CandidateSpec, Supervisor, SupervisorError};
use tryswap_fsm::{Generation, Mode, Reason, SlotName};
use tryswap_journal::JournalError;

use crate::args::{Cli, Command};

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
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::new(EXIT_ERROR, e.to_string())
    }
}

impl From<SupervisorError> for CliError {
    fn from(e: SupervisorError) -> Self {
        let code = match &e {
            SupervisorError::Conflict { .. } => EXIT_CONFLICT,
            SupervisorError::Journal(JournalError::Locked { .. }) => EXIT_CONFLICT,
            SupervisorError::Journal(e) if e.is_corrupt() => EXIT_CORRUPT,
            _ => EXIT_ERROR,
        };
        // Advice that names commands belongs to the CLI, not to the library's messages.
        let hint = match &e {
            SupervisorError::UnknownGeneration { slot, .. } => {
                format!("; `tryswap history {slot}` lists the generations that can be brought back")
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
        })
    }

    /// Opens the state directory with every configured slot registered, reattaches live
    /// active generations and finishes what a crashed run left behind.
    pub async fn supervisor(&self) -> Result<Supervisor, CliError> {
        let supervisor = Supervisor::open(&self.state_dir)?;
        for slot in &self.config.slots {
            supervisor.add_process_slot(slot.clone());
        }
        supervisor.recover().await?;
        Ok(supervisor)
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
    let progress = (!ctx.json).then(|| render::progress(supervisor.subscribe()));
    let reload = async {
        match what {
            ReloadKind::Activate(spec, bake) => {
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
                    render::reload_summary(&report, &supervisor);
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
        render::reload_summary(&report, &supervisor);
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
    Activate(CandidateSpec, Option<std::time::Duration>),
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
    let ctx = Context::load(&cli)?;
    // A daemon serving the state dir runs the command (same output); else do it here.
    if !matches!(cli.command, Command::Serve { .. }) {
        let socket = daemon::server::socket_path(&ctx.state_dir, &ctx.config.admin);
        if let Some(client) = client::Client::detect(&socket).await {
            return client::run(&client, &ctx, &cli.command).await;
        }
    }
    match &cli.command {
        Command::Activate {
            slot,
            artifact,
            config_file,
            bake,
        } => {
            let spec = candidate(artifact, config_file.as_deref());
            reload_command(&ctx, slot, ReloadKind::Activate(spec, *bake)).await
        }
        Command::Try {
            slot,
            artifact,
            config_file,
        } => {
            let spec = candidate(artifact, config_file.as_deref());
            reload_command(&ctx, slot, ReloadKind::Try(spec)).await
        }
        Command::Rollback { slot, to, bake } => {
            reload_command(&ctx, slot, ReloadKind::Rollback(to.map(Generation), *bake)).await
        }
        Command::Status { slot } => {
            let supervisor = ctx.supervisor().await?;
            let report = supervisor.status(slot.as_ref())?;
            if ctx.json {
                render::json(&report)?;
            } else {
                render::status(&report);
            }
            Ok(EXIT_OK)
        }
        Command::History { slot } => {
            let supervisor = ctx.supervisor().await?;
            let report = supervisor.history(slot)?;
            if ctx.json {
                render::json(&report)?;
            } else {
                render::history(&report);
            }
            Ok(EXIT_OK)
        }
        Command::Start { slot } => {
            ctx.slot(slot)?;
            let supervisor = ctx.supervisor().await?;
            let generation = supervisor.start(slot).await?;
            let status = supervisor.status(Some(slot))?;
            if ctx.json {
                render::json(&status)?;
            } else {
                print!("{}", render::started_text(slot.as_str(), generation.0));
            }
            Ok(EXIT_OK)
        }
        Command::Stop { slot } => {
            ctx.slot(slot)?;
            let supervisor = ctx.supervisor().await?;
            let stopped = supervisor.stop(slot).await?.map(|g| g.0);
            if ctx.json {
                render::json(&render::stopped_json(slot.as_str(), stopped))?;
            } else {
                print!("{}", render::stopped_text(slot.as_str(), stopped));
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
                render::reload_summary(&report, &supervisor);
            }
            Ok(match report.outcome {
                Outcome::Reverted => EXIT_REJECTED,
                _ => EXIT_OK,
            })
        }
        Command::Recover => {
            let supervisor = Supervisor::open(&ctx.state_dir)?;
            for slot in &ctx.config.slots {
                supervisor.add_process_slot(slot.clone());
            }
            let report = supervisor.recover().await?;
            if ctx.json {
                render::json(&report)?;
            } else {
                render::recovery(&report);
            }
            Ok(EXIT_OK)
        }
        Command::Journal { command } => journal_cmd::run(&ctx, command).await,
        Command::Serve { keep_plugins } => daemon::serve(&ctx, *keep_plugins).await,
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
        Command::Events { from, follow } => client::events_direct(&ctx, *from, *follow),
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // Results are reported on stdout; logs are for debugging (TRYSWAP_LOG=info,tryswap=debug).
    let filter = EnvFilter::try_from_env("TRYSWAP_LOG").unwrap_or_else(|_| EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // Crash tests only: inert unless TRYSWAP_FAILPOINTS is set (docs/recovery.md).
    if let Err(e) = tryswap::supervisor::recovery::arm_failpoints_from_env() {
        eprintln!("tryswap: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tryswap: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if json {
                let body = serde_json::json!({"error": e.message, "exit_code": e.code});
                println!("{body}");
            }
            eprintln!("tryswap: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
