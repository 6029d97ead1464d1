//! Section 5: many slots reloaded at once vs one reload, and the memory it takes.

use std::time::{Duration, Instant};

use tryswap::report::Outcome;
use tryswap::Supervisor;
use tryswap_fsm::SlotName;
use tryswap_tests::TempState;

use crate::contract_floor::{CommitLog, ContractFloor};
use crate::floor::{self, Bare, Launch};
use crate::report::{count, ms, ratio, verdict, Samples, Table};
use crate::setup::{self, Bins};

/// Reloads every slot at once; returns the wall time and how many did not end active.
async fn reload_all(
    sup: &Supervisor,
    slots: &[SlotName],
    bins: &Bins,
    dir: &std::path::Path,
    round: usize,
) -> (Duration, usize, Option<String>) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for slot in slots {
        let sup = sup.clone();
        let slot = slot.clone();
        let candidate = setup::candidate(bins, dir, &format!("{slot}-r{round}"));
        tasks.spawn(async move { sup.activate(&slot, candidate).await });
    }
    let mut failed = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let error = match joined {
            Ok(Ok(report)) if report.outcome == Outcome::Active => continue,
            Ok(Ok(report)) => format!("rolled back: {:?}", report.error),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        failed += 1;
        first_error.get_or_insert(error);
    }
    (started.elapsed(), failed, first_error)
}

const FLOOR_TIMEOUT: Duration = Duration::from_secs(30);

fn floor_launch(bins: &Bins, dir: &std::path::Path, slot: &str, tag: &str) -> Launch {
    Launch::for_slot(
        bins.fixture.clone(),
        &setup::slot_config(slot),
        &setup::fixture_config(dir, &format!("{slot}-{tag}")),
    )
}

/// The floor for the same load: every slot's bare plugin replaced at once.
async fn floor_all(
    bins: &Bins,
    dir: &std::path::Path,
    olds: Vec<(String, Option<Bare>)>,
    round: usize,
) -> Result<(Duration, Vec<(String, Option<Bare>)>), String> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, old) in olds {
        let how = floor_launch(bins, dir, &slot, &format!("floor{round}"));
        tasks.spawn(async move {
            let result = floor::reload(&how, old, FLOOR_TIMEOUT).await;
            (slot, result.map(|(new, _)| new))
        });
    }
    let mut news = Vec::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((slot, Ok(new))) => news.push((slot, Some(new))),
            Ok((slot, Err(e))) => {
                news.push((slot, None));
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let took = started.elapsed();
    match first_error {
        Some(e) => Err(format!("floor round {round}: {e}")),
        None => Ok((took, news)),
    }
}

/// The contract floor of every slot, by slot name.
type ContractFloors = Vec<(String, ContractFloor)>;

/// The contract floor for the same load: every slot's contract-floor reload at once (one
/// store, one log with group commits).
async fn contract_all(
    bins: &Bins,
    dir: &std::path::Path,
    floors: ContractFloors,
    round: usize,
) -> Result<(Duration, ContractFloors), String> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, mut floor) in floors {
        let config = setup::fixture_config(dir, &format!("{slot}-contract{round}"));
        let (program, slot_cfg) = (bins.fixture.clone(), setup::slot_config(&slot));
        tasks.spawn(async move {
            let result = floor
                .reload(&program, &slot_cfg, &config, None, FLOOR_TIMEOUT)
                .await;
            (slot, floor, result)
        });
    }
    let mut floors = Vec::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((slot, floor, result)) => {
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
                floors.push((slot, floor));
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let took = started.elapsed();
    match first_error {
        Some(e) => Err(format!("contract floor round {round}: {e}")),
        None => Ok((took, floors)),
    }
}

/// Stops every contract floor's plugin.
async fn contract_stop(floors: ContractFloors) {
    for (_, mut floor) in floors {
        let _ = floor.stop_current(FLOOR_TIMEOUT).await;
    }
}

/// Bare plugins of the floor, by slot.
type FloorPlugins = Vec<(String, Option<Bare>)>;

/// The floor of section 5: `slot_count` bare plugins started, then one bare reload among
/// them (5 times). Returns the single reloads in milliseconds and the running plugins.
async fn floor_start(
    bins: &Bins,
    dir: &std::path::Path,
    slot_count: usize,
) -> Result<(Samples, FloorPlugins), String> {
    let olds = (0..slot_count)
        .map(|i| (format!("s{i:03}"), None))
        .collect();
    let (_, mut plugins) = floor_all(bins, dir, olds, 0).await?;
    let mut one = Samples::new();
    for n in 1..=5 {
        let i = n % plugins.len();
        let how = floor_launch(bins, dir, &plugins[i].0, &format!("one{n}"));
        let t = Instant::now();
        let (new, _) = floor::reload(&how, plugins[i].1.take(), FLOOR_TIMEOUT).await?;
        one.push(t.elapsed());
        plugins[i].1 = Some(new);
    }
    Ok((one, plugins))
}

/// Stops every bare plugin of the floor.
async fn floor_stop(plugins: FloorPlugins) {
    for (_, bare) in plugins {
        if let Some(bare) = bare {
            let _ = floor::stop(bare, FLOOR_TIMEOUT).await;
        }
    }
}

fn kib(value: u64) -> String {
    format!("{:.1} MiB", value as f64 / 1024.0)
}

/// Runs section 5 with `slots` slots and `rounds` concurrent rounds.
pub async fn run(bins: &Bins, slot_count: usize, rounds: usize) -> Result<Vec<Table>, String> {
    let temp = TempState::new().map_err(|e| format!("temp dir: {e}"))?;
    let dir = temp.join("many");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let reset = setup::reset_peak_memory();
    let (_, rss_before) = setup::memory_of("self");
    let floor_dir = temp.join("floor");
    std::fs::create_dir_all(&floor_dir).map_err(|e| e.to_string())?;
    let (floor_one, mut floor_plugins) = floor_start(bins, &floor_dir, slot_count).await?;
    let contract_dir = temp.join("contract-floor");
    let commit_log = CommitLog::open(&contract_dir)?;
    let mut contract_floors = Vec::new();
    for i in 0..slot_count {
        let floor = ContractFloor::sharing(&contract_dir, std::sync::Arc::clone(&commit_log))?;
        contract_floors.push((format!("s{i:03}"), floor));
    }
    // Every contract floor's first plugin (concurrently; not measured).
    let (_, mut contract_floors) = contract_all(bins, &contract_dir, contract_floors, 0).await?;
    let sup = Supervisor::open(dir.join("state")).map_err(|e| e.to_string())?;
    let slots: Vec<SlotName> = (0..slot_count)
        .map(|i| SlotName::new(format!("s{i:03}")).expect("valid slot name"))
        .collect();
    for slot in &slots {
        sup.add_process_slot(setup::slot_config(slot.as_str()));
    }
    // Every slot gets its first generation (concurrently; not measured).
    let (_, failed, err) = reload_all(&sup, &slots, bins, &dir, 0).await;
    if failed > 0 {
        sup.shutdown().await;
        return Err(format!("{failed} first activations failed: {err:?}"));
    }

    // One reload at a time, with every other slot's plugin running.
    let mut one = Samples::new();
    let mut one_stages: std::collections::BTreeMap<String, Samples> = Default::default();
    for n in 1..=5 {
        let slot = &slots[n % slots.len()];
        let candidate = setup::candidate(bins, &dir, &format!("{slot}-one{n}"));
        let t = Instant::now();
        let report = sup
            .activate(slot, candidate)
            .await
            .map_err(|e| e.to_string())?;
        let wall = t.elapsed();
        one.push(wall);
        if report.outcome != Outcome::Active {
            return Err(format!("single reload rolled back: {:?}", report.error));
        }
        let mut covered = 0.0;
        for stage in &report.stages {
            one_stages
                .entry(stage.state.clone())
                .or_default()
                .push_ms(stage.elapsed_ms);
            covered += stage.elapsed_ms;
        }
        one_stages
            .entry("after active".to_owned())
            .or_default()
            .push_ms(wall.as_secs_f64() * 1000.0 - covered);
    }

    // 100 at once, the floor's rounds and tryswap's interleaved: other load on the
    // machine hits both alike.
    let mut all = Samples::new();
    let mut floor_all_at_once = Samples::new();
    let mut contract_all_at_once = Samples::new();
    let mut failures = 0;
    let mut first_error = None;
    for round in 1..=rounds {
        match floor_all(bins, &floor_dir, floor_plugins, round).await {
            Ok((took, news)) => {
                floor_all_at_once.push(took);
                floor_plugins = news;
            }
            Err(e) => {
                sup.shutdown().await;
                return Err(e);
            }
        }
        match contract_all(bins, &contract_dir, contract_floors, round).await {
            Ok((took, floors)) => {
                contract_all_at_once.push(took);
                contract_floors = floors;
            }
            Err(e) => {
                sup.shutdown().await;
                return Err(e);
            }
        }
        let (took, failed, err) = reload_all(&sup, &slots, bins, &dir, round).await;
        all.push(took);
        failures += failed;
        if first_error.is_none() {
            first_error = err;
        }
    }
    floor_stop(floor_plugins).await;
    contract_stop(contract_floors).await;

    // Memory while every plugin runs.
    let status = sup.status(None).map_err(|e| e.to_string())?;
    let pids: Vec<u32> = status
        .slots
        .iter()
        .filter_map(|s| s.active.as_ref().and_then(|a| a.pid))
        .collect();
    let rss: Vec<u64> = pids
        .iter()
        .filter_map(|pid| setup::memory_of(&pid.to_string()).1)
        .collect();
    let plugins_rss: u64 = rss.iter().sum();
    let (hwm, rss_now) = setup::memory_of("self");
    let records = sup.journal().last_seq();
    sup.shutdown().await;
    drop(temp);

    // Issue 15: 100 reloads at once ≤ 1.5× the floor's own 100 at once, same run.
    let vs_floor = all.p50() / floor_all_at_once.p50();
    let mut t = Table::new(
        format!("5. {slot_count} slots reloaded at once vs the floor doing the same"),
        &[
            "what",
            "wall time",
            "ratio to one reload",
            "ratio to the floor's",
            "goal",
            "failed reloads",
        ],
    );
    t.row([
        format!(
            "one reload (median of {}; the other {} plugins running)",
            one.len(),
            slot_count - 1
        ),
        ms(one.p50()),
        ratio(1.0),
        ratio(one.p50() / floor_one.p50()),
        String::new(),
        "0".into(),
    ]);
    t.row([
        format!("{slot_count} reloads at once (median of {rounds} rounds)"),
        ms(all.p50()),
        ratio(all.p50() / one.p50()),
        ratio(vs_floor),
        format!("≤ 1.5× the floor's: {}", verdict(vs_floor <= 1.5)),
        failures.to_string(),
    ]);
    t.row([
        format!("bare floor: one reload (median of {})", floor_one.len()),
        ms(floor_one.p50()),
        ratio(1.0),
        ratio(1.0),
        String::new(),
        "0".into(),
    ]);
    t.row([
        format!("bare floor: {slot_count} at once (median of {rounds} rounds, interleaved with tryswap's)"),
        ms(floor_all_at_once.p50()),
        ratio(floor_all_at_once.p50() / floor_one.p50()),
        ratio(1.0),
        String::new(),
        "0".into(),
    ]);
    t.row([
        format!("contract floor: {slot_count} at once (median of {rounds} rounds, interleaved)"),
        ms(contract_all_at_once.p50()),
        ratio(contract_all_at_once.p50() / floor_one.p50()),
        ratio(contract_all_at_once.p50() / floor_all_at_once.p50()),
        String::new(),
        "0".into(),
    ]);
    t.note(format!(
        "The contract floor (section 1a, `bench/src/contract_floor.rs`) does what the bare floor does plus only what the safe-reload contract asks (each config staged into one content-addressed store, its fsync beside the start; a durable commit to one log and witness shared by all, concurrent commits sharing one flush; go-plugin's graceful stop), with none of tryswap's reload machinery on the path. It takes {} the bare floor's time for the same {slot_count} at once; the goal, 1.5× the bare floor's ({}), leaves {} beyond it for everything else. tryswap's {slot_count} at once is {} the contract floor's.",
        ratio(contract_all_at_once.p50() / floor_all_at_once.p50()),
        ms(1.5 * floor_all_at_once.p50()),
        ms(1.5 * floor_all_at_once.p50() - contract_all_at_once.p50()),
        ratio(all.p50() / contract_all_at_once.p50()),
    ));
    t.note(format!(
        "The floor's {slot_count} at once: every slot's bare plugin replaced concurrently (spawn, handshake from a pipe, one health check, SIGTERM the old one and wait), one task per slot; tryswap's: `Supervisor::activate` of every slot concurrently. Rounds alternate between the two."
    ));
    if let Some(e) = first_error {
        t.note(format!("first failed reload: {e}"));
    }
    let order = [
        "staged",
        "launched",
        "validated",
        "probed",
        "active",
        "after active",
    ];
    t.note(format!(
        "One reload among {slot_count} running plugins, median per stage: {}.",
        order
            .iter()
            .filter_map(|name| one_stages
                .get(*name)
                .map(|s| format!("{name} {}", ms(s.p50()))))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    t.note(format!(
        "Per reload at once: {} of wall time each ({} slots / {} cores).",
        ms(all.p50() / slot_count as f64),
        slot_count,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));

    let mut m = Table::new(
        format!("5b. Memory with {slot_count} slots"),
        &["what", "value"],
    );
    m.row([
        "bench process peak RSS (VmHWM) during section 5".to_owned(),
        match hwm {
            Some(v) if reset => kib(v),
            Some(v) => format!("{} (peak since start: clear_refs unavailable)", kib(v)),
            None => "–".into(),
        },
    ]);
    m.row([
        "bench process RSS before / after".to_owned(),
        format!(
            "{} / {}",
            rss_before.map_or("–".into(), kib),
            rss_now.map_or("–".into(), kib)
        ),
    ]);
    m.row([
        format!("sum of the {} plugins' RSS", rss.len()),
        kib(plugins_rss),
    ]);
    m.row([
        "one plugin's RSS (mean)".to_owned(),
        kib(plugins_rss / (rss.len().max(1) as u64)),
    ]);
    m.row([
        "journal records written in section 5".to_owned(),
        count(records as f64),
    ]);
    Ok(vec![t, m])
}
