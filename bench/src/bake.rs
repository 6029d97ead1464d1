//! Section 3c: the cost of a bake window (DESIGN.md "Provisional activation") next to a
//! plain reload, on the same library supervisor: journal records and durable flushes per
//! reload, the probe checks the bake adds, and the wall time beyond the bake window itself.

use std::path::Path;
use std::time::{Duration, Instant};

use tryswap::report::Outcome;
use tryswap::{Mode, Supervisor};
use tryswap_fsm::SlotName;

use crate::report::{ms, Samples, Table};
use crate::setup::{self, Bins};

/// The bake window of the baked reloads.
const BAKE: Duration = Duration::from_millis(200);

/// What one kind of reload cost, per reload.
#[derive(Default)]
struct Cost {
    wall: Samples,
    records: Vec<u64>,
    flushes: Vec<u64>,
}

impl Cost {
    fn mean(values: &[u64]) -> String {
        let n = values.len().max(1) as f64;
        format!("{:.1}", values.iter().sum::<u64>() as f64 / n)
    }
}

/// Alternates `rounds` plain reloads and `rounds` reloads with a [`BAKE`] window of `slot`
/// (whose probe runs every `period`), and returns the table.
pub async fn cost(
    sup: &Supervisor,
    slot: &SlotName,
    dir: &Path,
    bins: &Bins,
    rounds: usize,
    period: Duration,
) -> Result<Table, String> {
    let mut plain = Cost::default();
    let mut baked = Cost::default();
    for n in 0..rounds {
        for (bake, cost) in [(Duration::ZERO, &mut plain), (BAKE, &mut baked)] {
            let name = format!("bake{n}-{}", bake.as_millis());
            let candidate = setup::candidate(bins, dir, &name);
            let seq = sup.journal().last_seq();
            let flushes = sup.journal().flush_count();
            let t = Instant::now();
            let report = sup
                .reload_with_bake(slot, Mode::Activate, Some(candidate), Some(bake))
                .await
                .map_err(|e| e.to_string())?;
            let wall = t.elapsed();
            if report.outcome != Outcome::Active {
                return Err(format!(
                    "a bake benchmark reload failed: {:?}",
                    report.error
                ));
            }
            cost.wall.push(wall);
            cost.records.push(sup.journal().last_seq() - seq);
            cost.flushes.push(sup.journal().flush_count() - flushes);
        }
    }
    let mut t = Table::new(
        format!(
            "3c. The cost of a bake ({} ms window) next to a plain reload ({rounds} each, alternated)",
            BAKE.as_millis()
        ),
        &[
            "reload",
            "journal records",
            "durable flushes",
            "probe checks after the probe stage",
            "wall p50",
            "wall p50 beyond the window",
        ],
    );
    let window = BAKE.as_secs_f64() * 1000.0;
    let checks = (BAKE.as_secs_f64() / period.as_secs_f64()).ceil() + 1.0;
    t.row([
        "plain (`activate`)".to_owned(),
        Cost::mean(&plain.records),
        Cost::mean(&plain.flushes),
        "0".to_owned(),
        ms(plain.wall.p50()),
        ms(plain.wall.p50()),
    ]);
    t.row([
        format!("with a bake (`activate --bake {}ms`)", BAKE.as_millis()),
        Cost::mean(&baked.records),
        Cost::mean(&baked.flushes),
        format!(
            "≈ {checks:.0} (one per `period`, {} ms)",
            period.as_millis()
        ),
        ms(baked.wall.p50()),
        ms(baked.wall.p50() - window),
    ]);
    t.note("A bake writes `ActivatedBaking` instead of `Activated` and one more record, `Confirmed` (flushed: a confirmed bake survives a crash), before the standby is retired as after a plain reload. During the window the candidate is checked once per probe `period` (alive, then one probe call): the checks column is the window divided by the period, plus the last check at the deadline. \"Beyond the window\" subtracts the window from the wall time: what the bake costs besides waiting.");
    Ok(t)
}
