//! Section 1: one safe reload (library, CLI, daemon) against the bare floor, interleaved in
//! one run; and the journal flushes each kind of reload costs (section 3).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tryswap::report::{Outcome, ReloadReport};
use tryswap::Supervisor;
use tryswap_fsm::SlotName;
use tryswap_tests::{FixtureConfig, TempState};

use crate::contract_floor::{self, ContractFloor};
use crate::daemon::Daemon;
use crate::floor::{self, Bare, Launch, Steps};
use crate::report::{count, ms, ratio, verdict, Samples, Table};
use crate::setup::{self, Bins};

const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Plain and baked reloads each in section 3c.
const BAKE_ROUNDS: usize = 10;
const STAGES: [&str; 5] = ["staged", "launched", "validated", "probed", "active"];

/// Per-stage milliseconds of many reloads, plus what came after the last stage.
#[derive(Default)]
struct Breakdown {
    stages: BTreeMap<&'static str, Samples>,
    /// Wall time not covered by the stages (retiring the old generation; for the CLI also
    /// process start, journal open and recovery).
    rest: Samples,
}

impl Breakdown {
    fn add(&mut self, stages: &[(String, f64)], wall: Duration) {
        let mut covered = 0.0;
        for (state, elapsed) in stages {
            if let Some(name) = STAGES.iter().find(|s| *s == state) {
                self.stages.entry(name).or_default().push_ms(*elapsed);
            }
            covered += elapsed;
        }
        self.rest
            .push_ms((wall.as_secs_f64() * 1000.0 - covered).max(0.0));
    }

    fn p50(&self, stage: &str) -> f64 {
        self.stages.get(stage).map_or(f64::NAN, Samples::p50)
    }
}

fn stages_of_report(report: &ReloadReport) -> Vec<(String, f64)> {
    report
        .stages
        .iter()
        .map(|s| (s.state.clone(), s.elapsed_ms))
        .collect()
}

fn stages_of_json(json: &Value) -> Vec<(String, f64)> {
    json["stages"]
        .as_array()
        .map(|stages| {
            stages
                .iter()
                .filter_map(|s| Some((s["state"].as_str()?.to_owned(), s["elapsed_ms"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn wall_row(t: &mut Table, name: &str, col: &Column, floor_p50: f64, goal: &str) {
    t.row([
        name.to_owned(),
        ms(col.wall.p50()),
        ms(col.wall.p99()),
        ms(col.wall.max()),
        if col.wall.is_empty() {
            "–".into()
        } else {
            ratio(col.wall.p50() / floor_p50)
        },
        goal.to_owned(),
        col.failures.len().to_string(),
    ]);
}

/// One way of reloading, measured.
#[derive(Default)]
struct Column {
    wall: Samples,
    breakdown: Breakdown,
    failures: Vec<String>,
}

/// What section 1 found.
pub struct Outcomes {
    /// The tables.
    pub tables: Vec<Table>,
}

/// The library path: a Supervisor in this process.
struct Library {
    sup: Supervisor,
    slot: SlotName,
    dir: PathBuf,
}

impl Library {
    async fn reload(&self, bins: &Bins, n: usize) -> Result<(Duration, ReloadReport), String> {
        let candidate = setup::candidate(bins, &self.dir, &format!("lib{n}"));
        let t = Instant::now();
        let report = self
            .sup
            .activate(&self.slot, candidate)
            .await
            .map_err(|e| e.to_string())?;
        let wall = t.elapsed();
        if report.outcome != Outcome::Active {
            return Err(format!("library reload rolled back: {:?}", report.error));
        }
        Ok((wall, report))
    }
}

/// The CLI path: one `tryswap activate` process per reload.
struct Cli {
    bin: PathBuf,
    config: PathBuf,
    dir: PathBuf,
}

impl Cli {
    async fn run(&self, args: &[&str]) -> Result<(Duration, std::process::Output), String> {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("TRYSWAP_STATE_DIR")
            .env_remove("TRYSWAP_LOG");
        timed_output(command).await
    }

    async fn reload(&self, bins: &Bins, n: usize) -> Result<(Duration, Value), String> {
        let config = setup::fixture_config(&self.dir, &format!("cli{n}"));
        let fixture = bins.fixture.to_string_lossy().into_owned();
        let config = config.to_string_lossy().into_owned();
        let (wall, output) = self
            .run(&[
                "--json",
                "activate",
                "bench",
                &fixture,
                "--config-file",
                &config,
            ])
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
            format!(
                "tryswap activate printed no JSON ({e}); exit {:?}; stderr: {}",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        if json["outcome"] != "active" {
            return Err(format!("tryswap activate: {json}"));
        }
        Ok((wall, json))
    }
}

/// Runs `command` (stdin closed, stdout and stderr captured) to its end, at most 60 s;
/// returns how long it took from spawn to exit, and what it printed.
async fn timed_output(
    mut command: tokio::process::Command,
) -> Result<(Duration, std::process::Output), String> {
    let program = command.as_std().get_program().to_owned();
    let t = Instant::now();
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", program.to_string_lossy()))?;
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| format!("{} did not finish within 60 s", program.to_string_lossy()))?
        .map_err(|e| format!("waiting for {}: {e}", program.to_string_lossy()))?;
    Ok((t.elapsed(), output))
}

/// The one-shot floor: one `tryswap-oneshot-floor` process per reload (spawn, handshake,
/// one probe, stop the old plugin, exit), the floor of a one-shot `tryswap activate`.
struct OneShotFloor {
    bin: PathBuf,
    pidfile: PathBuf,
    dir: PathBuf,
}

impl OneShotFloor {
    async fn reload(&self, bins: &Bins, n: usize) -> Result<Duration, String> {
        let launch = Launch::for_slot(
            bins.fixture.clone(),
            &setup::slot_config("bench"),
            &setup::fixture_config(&self.dir, &format!("oneshot{n}")),
        );
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .arg("bench")
            .arg(&self.pidfile)
            .arg(&launch.program)
            .args(&launch.args);
        let (wall, output) = timed_output(command).await?;
        if !output.status.success() {
            return Err(format!(
                "tryswap-oneshot-floor: {}; {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(wall)
    }

    /// Stops the plugin the last reload left running.
    fn stop(&self) {
        let pid = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Runs section 1 (and the flush counts of section 3) for `iterations` reloads per column,
/// the columns interleaved so that noise from other load hits all of them alike, in an
/// order that rotates by one path each iteration.
///
/// With `startup_delay_ms > 0` every fixture (the floor's too) initialises that long before
/// its handshake, and only the wall-time table is returned, as section 1c.
pub async fn run(
    bins: &Bins,
    iterations: usize,
    budget: Duration,
    startup_delay_ms: u64,
) -> Result<Outcomes, String> {
    setup::set_startup_delay_ms(startup_delay_ms);
    let outcome = run_columns(bins, iterations, budget, startup_delay_ms).await;
    setup::set_startup_delay_ms(0);
    outcome
}

async fn run_columns(
    bins: &Bins,
    iterations: usize,
    budget: Duration,
    startup_delay_ms: u64,
) -> Result<Outcomes, String> {
    let temp = TempState::new().map_err(|e| format!("temp dir: {e}"))?;
    let deadline = Instant::now() + budget;

    // Floor.
    let floor_dir = temp.join("floor");
    std::fs::create_dir_all(&floor_dir).map_err(|e| e.to_string())?;
    let slot_cfg = setup::slot_config("bench");
    let floor_launch = |n: usize| {
        Launch::for_slot(
            bins.fixture.clone(),
            &slot_cfg,
            &setup::fixture_config(&floor_dir, &format!("floor{n}")),
        )
    };
    let mut floor_col = Column::default();
    let mut floor_steps: Vec<Steps> = Vec::new();
    let (first, _) = floor::reload(&floor_launch(0), None, STEP_TIMEOUT).await?;
    let mut floor_current: Option<Bare> = Some(first);

    // The contract's floor.
    let contract_dir = temp.join("contract-floor");
    let mut contract = ContractFloor::new(&contract_dir)?;
    contract_reload(&mut contract, bins, &contract_dir, &slot_cfg, 0, None).await?;
    let mut contract_col = Column::default();
    let mut contract_steps: Vec<contract_floor::Steps> = Vec::new();

    // One-shot floor.
    let oneshot = match &bins.oneshot_floor {
        Some(bin) => {
            let dir = temp.join("oneshot");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let oneshot = OneShotFloor {
                bin: bin.clone(),
                pidfile: dir.join("plugin.pid"),
                dir,
            };
            let slot = SlotName::new("bench").map_err(|e| e.to_string())?;
            if slot_cfg.handshake != tryswap::config::HandshakeConfig::for_slot(&slot) {
                return Err("the one-shot floor assumes the default handshake".to_owned());
            }
            oneshot.reload(bins, 0).await?;
            Some(oneshot)
        }
        None => None,
    };
    let mut oneshot_col = Column::default();

    // Library.
    let lib_dir = temp.join("lib");
    std::fs::create_dir_all(&lib_dir).map_err(|e| e.to_string())?;
    let sup = Supervisor::open(lib_dir.join("state")).map_err(|e| e.to_string())?;
    sup.add_process_slot(setup::slot_config("bench"));
    let library = Library {
        sup,
        slot: SlotName::new("bench").map_err(|e| e.to_string())?,
        dir: lib_dir,
    };
    library.reload(bins, 0).await?;
    let mut lib_col = Column::default();
    let flushes_before = library.sup.journal().flush_count();

    // CLI.
    let cli = match &bins.tryswap {
        Some(bin) => {
            let dir = temp.join("cli");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let config = dir.join("tryswap.toml");
            std::fs::write(
                &config,
                setup::config_toml(&dir.join("state"), &["bench".to_owned()]),
            )
            .map_err(|e| e.to_string())?;
            let cli = Cli {
                bin: bin.clone(),
                config,
                dir,
            };
            match cli.reload(bins, 0).await {
                Ok(_) => Some(cli),
                Err(e) => {
                    eprintln!("bench: the CLI column is skipped: {e}");
                    None
                }
            }
        }
        None => None,
    };
    let mut cli_col = Column::default();

    // Daemon.
    let mut daemon = if bins.daemon {
        match Daemon::start(bins, &temp.join("daemon"), &["bench".to_owned()]).await {
            Ok(d) => match d.reload(bins, "bench", 0).await {
                Ok(_) => Some(d),
                Err(e) => {
                    eprintln!("bench: the daemon column is skipped: {e}");
                    d.stop().await;
                    None
                }
            },
            Err(e) => {
                eprintln!("bench: the daemon column is skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    let mut daemon_col = Column::default();

    let mut done = 0;
    for n in 1..=iterations {
        if Instant::now() >= deadline {
            break;
        }
        // Each path runs in every position equally often: the work a reload leaves behind
        // (the journal's indexer, sled's flusher, an exiting CLI or plugin) lands on the
        // next path in line, whichever it is.
        for path in ReloadPath::ALL
            .iter()
            .cycle()
            .skip(n % ReloadPath::ALL.len())
            .take(ReloadPath::ALL.len())
        {
            match path {
                ReloadPath::Floor => {
                    let t = Instant::now();
                    match floor::reload(&floor_launch(n), floor_current.take(), STEP_TIMEOUT).await
                    {
                        Ok((new, steps)) => {
                            floor_col.wall.push(t.elapsed());
                            floor_steps.push(steps);
                            floor_current = Some(new);
                        }
                        Err(e) => {
                            floor_col.failures.push(e);
                            let (new, _) =
                                floor::reload(&floor_launch(n), None, STEP_TIMEOUT).await?;
                            floor_current = Some(new);
                        }
                    }
                }
                ReloadPath::ContractFloor => {
                    let admin = daemon.as_ref().map(|d| d.socket());
                    let t = Instant::now();
                    match contract_reload(&mut contract, bins, &contract_dir, &slot_cfg, n, admin)
                        .await
                    {
                        Ok(steps) => {
                            contract_col.wall.push(t.elapsed());
                            contract_steps.push(steps);
                        }
                        Err(e) => contract_col.failures.push(e),
                    }
                }
                ReloadPath::OneShot => {
                    if let Some(oneshot) = &oneshot {
                        match oneshot.reload(bins, n).await {
                            Ok(wall) => oneshot_col.wall.push(wall),
                            Err(e) => oneshot_col.failures.push(e),
                        }
                    }
                }
                ReloadPath::Library => match library.reload(bins, n).await {
                    Ok((wall, report)) => {
                        lib_col.wall.push(wall);
                        lib_col.breakdown.add(&stages_of_report(&report), wall);
                    }
                    Err(e) => lib_col.failures.push(e),
                },
                ReloadPath::Cli => {
                    if let Some(cli) = &cli {
                        match cli.reload(bins, n).await {
                            Ok((wall, json)) => {
                                cli_col.wall.push(wall);
                                cli_col.breakdown.add(&stages_of_json(&json), wall);
                            }
                            Err(e) => cli_col.failures.push(e),
                        }
                    }
                }
                ReloadPath::Daemon => {
                    if let Some(d) = &daemon {
                        match d.reload(bins, "bench", n).await {
                            Ok((wall, json)) => {
                                daemon_col.wall.push(wall);
                                daemon_col.breakdown.add(&stages_of_json(&json), wall);
                            }
                            Err(e) => daemon_col.failures.push(e),
                        }
                    }
                }
            }
        }
        done = n;
    }
    let lib_flushes = library.sup.journal().flush_count() - flushes_before;

    // Flushes of a dry run and of a rejected candidate (section 3).
    let before = library.sup.journal().flush_count();
    let dry = library
        .sup
        .try_activate(
            &library.slot,
            setup::candidate(bins, &library.dir, "dry-run"),
        )
        .await
        .map_err(|e| e.to_string())?;
    let dry_flushes = library.sup.journal().flush_count() - before;
    let bad_config = FixtureConfig {
        exit_before_handshake: Some(3),
        ..FixtureConfig::default()
    }
    .write(&library.dir.join("bad.toml"))
    .map_err(|e| e.to_string())?;
    let before = library.sup.journal().flush_count();
    let bad = library
        .sup
        .activate(
            &library.slot,
            tryswap::CandidateSpec::executable(&bins.fixture).with_config(bad_config),
        )
        .await
        .map_err(|e| e.to_string())?;
    let bad_flushes = library.sup.journal().flush_count() - before;

    // The cost of a bake next to a plain reload (section 3c).
    let bake_cost = match startup_delay_ms {
        0 => Some(
            crate::bake::cost(
                &library.sup,
                &library.slot,
                &library.dir,
                bins,
                BAKE_ROUNDS,
                setup::slot_config("bench").probe.period,
            )
            .await?,
        ),
        _ => None,
    };

    // Tear down.
    if let Some(old) = floor_current.take() {
        let _ = floor::stop(old, STEP_TIMEOUT).await;
    }
    let _ = contract.stop_current(STEP_TIMEOUT).await;
    if let Some(oneshot) = &oneshot {
        oneshot.stop();
    }
    library.sup.shutdown().await;
    if let Some(cli) = &cli {
        let _ = cli.run(&["stop", "bench"]).await;
    }
    if let Some(d) = daemon.take() {
        d.stop().await;
    }
    drop(temp);

    let mut tables = Vec::new();
    let floor_p50 = floor_col.wall.p50();
    let title = if startup_delay_ms > 0 {
        format!("1c. The same with a plugin that initialises for {startup_delay_ms} ms before its handshake ({done} reloads each, interleaved)")
    } else {
        format!("1. One reload of the fixture plugin vs the bare floor ({done} reloads each, interleaved)")
    };
    let mut t = Table::new(
        title,
        &[
            "path",
            "p50",
            "p99",
            "max",
            "ratio of medians to the floor",
            "goal",
            "failed",
        ],
    );
    wall_row(&mut t, "bare floor (by hand)", &floor_col, floor_p50, "");
    wall_row(
        &mut t,
        "contract floor (by hand: the floor + the request, staged config, durable commit, go-plugin's graceful stop)",
        &contract_col,
        floor_p50,
        "",
    );
    wall_row(
        &mut t,
        "safe reload, library (Supervisor::activate)",
        &lib_col,
        floor_p50,
        "",
    );
    let oneshot_p50 = oneshot_col.wall.p50();
    if oneshot.is_some() {
        wall_row(
            &mut t,
            "one-shot floor (`tryswap-oneshot-floor`, one process each)",
            &oneshot_col,
            floor_p50,
            "",
        );
    }
    let cli_goal = if oneshot_col.wall.is_empty() || cli_col.wall.is_empty() {
        "≤ 3× the one-shot floor".to_owned()
    } else {
        let r = cli_col.wall.p50() / oneshot_p50;
        format!(
            "≤ 3× the one-shot floor: {}, {}",
            ratio(r),
            verdict(r <= 3.0)
        )
    };
    match &cli {
        Some(_) => wall_row(
            &mut t,
            "safe reload, CLI (`tryswap activate`, one process each)",
            &cli_col,
            floor_p50,
            &cli_goal,
        ),
        None => t.row([
            "safe reload, CLI".to_owned(),
            "not built".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]),
    }
    // Issue 15: the fixture ≤ 1.5× the floor; a plugin that starts in 100 ms ≤ 1.05×.
    let daemon_limit = if startup_delay_ms > 0 { 1.05 } else { 1.5 };
    let daemon_goal = |col: &Column| {
        if col.wall.is_empty() {
            format!("≤ {daemon_limit}×")
        } else {
            format!(
                "≤ {daemon_limit}×: {}",
                verdict(col.wall.p50() / floor_p50 <= daemon_limit)
            )
        }
    };
    if bins.daemon && !daemon_col.wall.is_empty() {
        let goal = daemon_goal(&daemon_col);
        wall_row(
            &mut t,
            "safe reload, daemon (`POST /v1/slots/bench/reloads`)",
            &daemon_col,
            floor_p50,
            &goal,
        );
    } else {
        t.row([
            "safe reload, daemon".to_owned(),
            "pending (daemon)".into(),
            String::new(),
            String::new(),
            String::new(),
            format!("≤ {daemon_limit}×"),
            String::new(),
        ]);
    }
    for (name, col) in [
        ("floor", &floor_col),
        ("contract floor", &contract_col),
        ("one-shot floor", &oneshot_col),
        ("library", &lib_col),
        ("CLI", &cli_col),
        ("daemon", &daemon_col),
    ] {
        if let Some(first) = col.failures.first() {
            t.note(format!(
                "{name}: {} failed reloads, first: {first}",
                col.failures.len()
            ));
        }
    }
    if startup_delay_ms > 0 {
        t.note(format!("Every plugin, the floor's included, sleeps {startup_delay_ms} ms before it listens and prints its handshake: the fixed costs of the safe path (store, journal, identity, group checks) are the same as in section 1, the plugin's own start dominates as it does for real plugins."));
        tables.push(t);
        return Ok(Outcomes { tables });
    }
    t.note("Each iteration runs every path once, in an order that rotates by one path per iteration: each path follows each other path equally often, so what a reload leaves running behind it (the journal's indexer 50 ms later, sled's flusher, an exiting process) slows every column alike. Floor: spawn with go-plugin's environment, read the handshake line from a stdout pipe, one gRPC health check, SIGTERM the old plugin and wait for its exit. The one-shot floor does the same as one process per reload (`bench/src/bin/tryswap-oneshot-floor.rs`: the old plugin's pid in a file, its exit awaited on a pidfd), the least a one-shot command must do; the CLI's goal is a ratio to it. Safe reload adds: staging the executable and config into the content-addressed store (copy, SHA-256; their fsync runs beside the candidate's start and the commit waits for it), the generation's TMPDIR, log files and cgroup (made beside the staging), the journal (6 records, 1 durable flush at the commit: log and witness fdatasync; the `Staged` record is written to the log before the spawn and rides on it), handshake via the log file, process identity checks, the gRPC controller shutdown and process-group checks when retiring the old generation.");
    tables.push(t);
    tables.push(contract_table(
        &floor_steps,
        &contract_steps,
        floor_p50,
        &contract_col,
        &daemon_col,
    ));

    let mut b = Table::new(
        "1b. Where the time goes (medians per stage)",
        &["stage", "library", "CLI", "daemon", "floor equivalent"],
    );
    let floor_step = |f: fn(&Steps) -> Duration| median_of(&floor_steps, f);
    let equivalents: [(&str, f64); 5] = [
        ("staged", 0.0),
        ("launched", floor_step(|s| s.spawn)),
        ("validated", floor_step(|s| s.handshake)),
        ("probed", floor_step(|s| s.probe)),
        ("active", 0.0),
    ];
    for (stage, floor_ms) in equivalents {
        b.row([
            stage.to_owned(),
            ms(lib_col.breakdown.p50(stage)),
            ms(cli_col.breakdown.p50(stage)),
            ms(daemon_col.breakdown.p50(stage)),
            if floor_ms == 0.0 {
                "(none)".to_owned()
            } else {
                ms(floor_ms)
            },
        ]);
    }
    b.row([
        "after active (commit flush, retire the old; CLI: also process start, journal open, recovery; daemon: also the request and its already-active check)".to_owned(),
        ms(lib_col.breakdown.rest.p50()),
        ms(cli_col.breakdown.rest.p50()),
        ms(daemon_col.breakdown.rest.p50()),
        ms(floor_step(|s| s.stop_old)),
    ]);
    b.note("Stage times are `ReloadReport.stages[].elapsed_ms`: the time between two records' timestamps, each taken before its record is written, so a record's write (and its flush) counts in the stage after it. `staged` = store (copy, hash; the fsync of new files runs later, beside the candidate's start), beside it on another thread the generation's TMPDIR, log files and cgroup; `launched` = Staged record (written, not synced) + spawn; `validated` = Launched record + handshake line + listener owner check; `probed` = Validated record + health probe; `active` = Probed record; after active = the wait for the store's fsync (done by then) + commit record and its durable flush + retiring the old generation + the report. The daemon's and the CLI's already-active check before the reload finds an unchanged executable by its stamp and only hashes the config (in the last row); the reload stages the config (in `staged`).");
    tables.push(b);

    let per = |flushes: u64, reloads: usize| flushes as f64 / reloads.max(1) as f64;
    let mut f = Table::new(
        "3a. Journal flushes (fsync points) per reload",
        &["reload", "flushes", "goal"],
    );
    let activate_per = per(lib_flushes, lib_col.wall.len());
    f.row([
        format!("activate (mean of {})", lib_col.wall.len()),
        format!("{activate_per:.2}"),
        format!("≤ 2: {}", verdict(activate_per <= 2.0)),
    ]);
    f.row([
        format!("dry run (outcome {:?})", dry.outcome),
        dry_flushes.to_string(),
        format!("≤ 2: {}", verdict(dry_flushes <= 2)),
    ]);
    f.row([
        format!(
            "rejected candidate (failed at {})",
            bad.failed_stage.unwrap_or("?")
        ),
        bad_flushes.to_string(),
        format!("≤ 2: {}", verdict(bad_flushes <= 2)),
    ]);
    f.note(format!(
        "Counted with `Journal::flush_count` around {} library reloads. The commit \
         (`Activated`) is a reload's one write-ahead point; `Staged` is written to the log \
         before the spawn and rides on it, as a dry run's and a rejected candidate's records \
         ride on the next durable flush (docs/journal.md, \"Write-ahead rules and flush \
         points\").",
        count(lib_col.wall.len() as f64)
    ));
    tables.push(f);
    tables.extend(bake_cost);

    Ok(Outcomes { tables })
}

/// One contract-floor reload to a new fixture config in `dir`.
async fn contract_reload(
    contract: &mut ContractFloor,
    bins: &Bins,
    dir: &std::path::Path,
    slot: &tryswap::config::SlotConfig,
    n: usize,
    admin: Option<&std::path::Path>,
) -> Result<contract_floor::Steps, String> {
    let config = setup::fixture_config(dir, &format!("contract{n}"));
    contract
        .reload(&bins.fixture, slot, &config, admin, STEP_TIMEOUT)
        .await
}

/// The median, in milliseconds, of one step's duration over many reloads.
fn median_of<T>(steps: &[T], step: fn(&T) -> Duration) -> f64 {
    steps.iter().map(step).collect::<Samples>().p50()
}

/// Section 1a: the steps of the bare floor and of the contract floor side by side, and how
/// the daemon's goal compares with what the contract alone costs.
fn contract_table(
    floor_steps: &[Steps],
    contract_steps: &[contract_floor::Steps],
    floor_p50: f64,
    contract_col: &Column,
    daemon_col: &Column,
) -> Table {
    let bare = |f: fn(&Steps) -> Duration| median_of(floor_steps, f);
    let contract = |f: fn(&contract_floor::Steps) -> Duration| median_of(contract_steps, f);
    let mut t = Table::new(
        "1a. What the contract itself costs (medians of the two floors' steps)",
        &[
            "step",
            "bare floor",
            "contract floor",
            "what the contract asks",
        ],
    );
    let none = || "(none)".to_owned();
    t.row([
        "the request".to_owned(),
        none(),
        ms(contract(|s| s.request)),
        "one HTTP/1.1 round trip on the daemon's admin socket (`GET /healthz`)".to_owned(),
    ]);
    t.row([
        "staging".to_owned(),
        none(),
        ms(contract(|s| s.stage)),
        "the config copied into a content-addressed store: read, SHA-256, a new file (its fsync runs beside the start)".to_owned(),
    ]);
    t.row([
        "spawn".to_owned(),
        ms(bare(|s| s.spawn)),
        ms(contract(|s| s.spawn)),
        "the same spawn".to_owned(),
    ]);
    t.row([
        "handshake".to_owned(),
        ms(bare(|s| s.handshake)),
        ms(contract(|s| s.handshake)),
        "the same pipe".to_owned(),
    ]);
    t.row([
        "probe".to_owned(),
        ms(bare(|s| s.probe)),
        ms(contract(|s| s.probe)),
        "one health check; the contract floor keeps the connection for the controller".to_owned(),
    ]);
    t.row([
        "commit".to_owned(),
        none(),
        ms(contract(|s| s.commit)),
        "the staged file durable, then a log record and its witness, each fdatasynced, in that order".to_owned(),
    ]);
    t.row([
        "stop the old plugin".to_owned(),
        ms(bare(|s| s.stop_old)),
        ms(contract(|s| s.stop_old)),
        "the floor: SIGTERM and the exit; the contract floor: go-plugin's `Client.Kill` (`GRPCController/Shutdown`, then the exit)".to_owned(),
    ]);
    let contract_p50 = contract_col.wall.p50();
    t.row([
        "whole reload (wall)".to_owned(),
        ms(floor_p50),
        ms(contract_p50),
        format!(
            "the contract floor is {} the bare floor",
            ratio(contract_p50 / floor_p50)
        ),
    ]);
    if !daemon_col.wall.is_empty() && !contract_col.wall.is_empty() {
        let daemon = daemon_col.wall.p50();
        let allowed = 1.5 * floor_p50;
        t.note(format!(
            "The daemon's goal, 1.5× the bare floor, is {} here. The contract floor alone takes {}: that leaves {} for everything an implementation does beyond the least the contract asks (journal records, identity and owner checks, process groups and cgroups, drain checks, log files, reports). The daemon reload ({}) is {} the contract floor.",
            ms(allowed),
            ms(contract_p50),
            ms(allowed - contract_p50),
            ms(daemon),
            ratio(daemon / contract_p50),
        ));
    }
    t.note("The contract floor (`bench/src/contract_floor.rs`) is the bare floor plus only what the safe-reload contract asks of any implementation, with none of tryswap's reload machinery on the path (like the bare floor, it borrows only the handshake parser and the gRPC health and controller calls): the staged copy that a relaunch after a crash runs from, the commit that survives a power loss, the graceful stop go-plugin's own host does (a Go plugin dies at SIGTERM without running its deferred calls). The bare floor's and the contract floor's rows are measured in the same iterations as the others.");
    t
}

/// The paths section 1 measures, in the order of the first iteration.
#[derive(Clone, Copy)]
enum ReloadPath {
    Floor,
    ContractFloor,
    OneShot,
    Library,
    Cli,
    Daemon,
}

impl ReloadPath {
    const ALL: [ReloadPath; 6] = [
        ReloadPath::Floor,
        ReloadPath::ContractFloor,
        ReloadPath::OneShot,
        ReloadPath::Library,
        ReloadPath::Cli,
        ReloadPath::Daemon,
    ];
}
