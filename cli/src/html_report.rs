//! `tryswap report --html FILE [[HOST=]SOURCE…]`: one static, self-contained HTML page (no
//! server, no network) of one or more journals — state directories or `journal export` files,
//! so a fleet's journals can share a page: a fleet table (one row per host and slot), a
//! timeline per host and slot, the generation lineage with artifact and config digests, and a
//! table of failures with their reasons. A source is labelled `HOST` when given as
//! `HOST=PATH`, else by its path as given.
//!
//! The tables are rendered here; the timelines are drawn as SVG by an inline script from
//! the page's embedded JSON data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tryswap_fsm::{EventKind, Mode};
use tryswap_journal::Record;

use crate::{render, CliError, Context, EXIT_ERROR, EXIT_OK};

/// One reload as the page shows it.
#[derive(Clone, Debug, Serialize)]
struct ReloadRow {
    source: String,
    slot: String,
    reload_id: String,
    mode: &'static str,
    rollback_to: Option<u64>,
    generation: Option<u64>,
    previous: Option<u64>,
    sha256: Option<String>,
    config_sha256: Option<String>,
    outcome: &'static str,
    failed_stage: Option<&'static str>,
    reason: Option<String>,
    started: DateTime<Utc>,
    stages: Vec<(String, DateTime<Utc>)>,
}

/// A slot-level fact: a crash or stop, a restart, a retirement.
#[derive(Clone, Debug, Serialize)]
struct SlotMark {
    source: String,
    slot: String,
    at: DateTime<Utc>,
    kind: &'static str,
    text: String,
}

#[derive(Default)]
struct Fold {
    reloads: Vec<ReloadRow>,
    index: BTreeMap<(String, String), usize>,
    marks: Vec<SlotMark>,
}

impl Fold {
    fn add(&mut self, source: &str, record: &Record) {
        let slot = record.slot.to_string();
        let key = (source.to_owned(), record.reload.to_string());
        match &record.event {
            EventKind::Stopped { .. }
            | EventKind::Relaunched { .. }
            | EventKind::Retired { .. } => {
                self.marks.push(SlotMark {
                    source: source.to_owned(),
                    slot,
                    at: record.at,
                    kind: record.event.name(),
                    text: render::detail(&record.event),
                });
                return;
            }
            _ => {}
        }
        let at = record.at;
        let i = *self.index.entry(key).or_insert_with(|| {
            self.reloads.push(ReloadRow {
                source: source.to_owned(),
                slot,
                reload_id: record.reload.to_string(),
                mode: "activate",
                rollback_to: None,
                generation: None,
                previous: None,
                sha256: None,
                config_sha256: None,
                outcome: "in_progress",
                failed_stage: None,
                reason: None,
                started: at,
                stages: Vec::new(),
            });
            self.reloads.len() - 1
        });
        let row = &mut self.reloads[i];
        row.stages.push((record.event.name().to_owned(), at));
        let mode_of = |mode: &Mode| match mode {
            Mode::Rollback { to } => ("rollback", Some(to.0)),
            other => (other.name(), None),
        };
        match &record.event {
            EventKind::Staged {
                mode,
                generation,
                artifact,
                previous,
            } => {
                (row.mode, row.rollback_to) = mode_of(mode);
                row.generation = Some(generation.0);
                row.previous = previous.map(|g| g.0);
                row.sha256 = Some(artifact.sha256.to_string());
                row.config_sha256 = artifact.config_sha256.map(|d| d.to_string());
            }
            EventKind::StagingFailed { mode, reason } => {
                (row.mode, row.rollback_to) = mode_of(mode);
                row.outcome = "rolled_back";
                row.failed_stage = Some("staged");
                row.reason = Some(reason.message.clone());
            }
            EventKind::RolledBack { stage, reason } => {
                row.outcome = "rolled_back";
                row.failed_stage = Some(stage.name());
                row.reason = Some(reason.message.clone());
            }
            EventKind::Activated | EventKind::Confirmed => row.outcome = "active",
            EventKind::ActivatedBaking { .. } => row.outcome = "baking",
            EventKind::Reverted { reason } => {
                row.outcome = "reverted";
                row.failed_stage = Some("baking");
                row.reason = Some(reason.message.clone());
            }
            EventKind::DryRunPassed => row.outcome = "dry_run_passed",
            _ => {}
        }
    }
}

/// The records of one source: a `journal export` file, or a state directory (through
/// its daemon when one serves it).
async fn records_of(ctx: &Context, source: &Path) -> Result<Vec<Record>, CliError> {
    if source.is_file() {
        let text = std::fs::read_to_string(source)
            .map_err(|e| CliError::new(EXIT_ERROR, format!("reading {}: {e}", source.display())))?;
        return text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str::<Record>(line).map_err(|e| {
                    CliError::new(
                        EXIT_ERROR,
                        format!(
                            "{}:{}: not a `tryswap journal export` record: {e}",
                            source.display(),
                            n + 1
                        ),
                    )
                })
            })
            .collect();
    }
    let socket = crate::daemon::server::socket_path(source, &ctx.config.admin);
    if let Some(client) = crate::client::Client::detect(&socket).await {
        let mut stream = client.events("/v1/events?follow=false&from=1").await?;
        let mut records = Vec::new();
        while let Some(event) = stream.next().await? {
            if event.event == "record" {
                if let Ok(record) = serde_json::from_str::<Record>(&event.data) {
                    records.push(record);
                }
            }
        }
        return Ok(records);
    }
    let dir = source.join("journal");
    if !dir.exists() {
        return Err(CliError::new(
            EXIT_ERROR,
            format!(
                "{} is neither a `journal export` file nor a state directory with a journal",
                source.display()
            ),
        ));
    }
    let journal = ctx.open_journal(&dir, false).await?;
    Ok(crate::operator::records(&journal))
}

/// One source of the page: its label (the host) and where its records are.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Source {
    label: String,
    path: PathBuf,
}

impl Source {
    /// `HOST=PATH` (a label without `/` before the first `=`, when the whole argument is not
    /// itself an existing path), else `PATH` labelled by itself.
    fn parse(arg: &Path) -> Source {
        use std::os::unix::ffi::OsStrExt;
        let bytes = arg.as_os_str().as_bytes();
        let split = bytes.iter().position(|&b| b == b'=').and_then(|i| {
            let (host, rest) = (&bytes[..i], &bytes[i + 1..]);
            let host = std::str::from_utf8(host).ok()?;
            let plausible = !host.is_empty() && !host.contains('/') && !rest.is_empty();
            (plausible && !arg.exists()).then(|| {
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(rest));
                (host.to_owned(), path)
            })
        });
        match split {
            Some((label, path)) => Source { label, path },
            None => Source {
                label: arg.display().to_string(),
                path: arg.to_path_buf(),
            },
        }
    }
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn short(digest: Option<&String>) -> String {
    digest.map_or_else(|| "—".to_owned(), |d| d.get(..12).unwrap_or(d).to_owned())
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}h3{font-size:1em;color:#555}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:left;vertical-align:top}th{background:#f3f3f3}code{font-size:12px}\
.active{color:#1a7f37}.rolled_back,.reverted{color:#cf222e}.dry_run_passed{color:#6e7781}\
.timeline svg{border:1px solid #ddd;background:#fafafa}.legend span{margin-right:1em}\
pre{white-space:pre-wrap;word-break:break-all;max-width:70em;margin:0;font-size:12px}";

const SCRIPT: &str = r#"
(function () {
  var data = JSON.parse(document.getElementById('tryswap-data').textContent);
  var colours = {staged:'#8c959f', launched:'#54aeff', validated:'#2da44e', probed:'#bf8700',
                 active:'#1a7f37', rolled_back:'#cf222e', staging_failed:'#cf222e',
                 dry_run_passed:'#6e7781', baking:'#8250df', confirmed:'#1a7f37',
                 reverted:'#cf222e'};
  document.querySelectorAll('.timeline').forEach(function (div) {
    var rows = data.reloads.filter(function (r) {
      return r.source === div.dataset.source && r.slot === div.dataset.slot; });
    var marks = data.marks.filter(function (m) {
      return m.source === div.dataset.source && m.slot === div.dataset.slot; });
    // Reload bars share one axis: time since each reload began, up to the longest one.
    var span = 1;
    rows.forEach(function (r) {
      var t0 = Date.parse(r.stages[0][1]);
      var t1 = Date.parse(r.stages[r.stages.length - 1][1]);
      span = Math.max(span, t1 - t0);
    });
    var W = 760, L = 250, H = 22;
    var ns = 'http://www.w3.org/2000/svg';
    var svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('width', W + L + 120);
    svg.setAttribute('height', (rows.length + 3) * H + 10);
    function el(name, attrs, text) {
      var e = document.createElementNS(ns, name);
      for (var k in attrs) e.setAttribute(k, attrs[k]);
      if (text) e.textContent = text;
      svg.appendChild(e); return e;
    }
    function titled(e, text) {
      var title = document.createElementNS(ns, 'title');
      title.textContent = text;
      e.appendChild(title);
    }
    el('text', {x: L, y: 14, 'font-size': 11}, '0 ms');
    el('text', {x: L + W, y: 14, 'font-size': 11, 'text-anchor': 'end'}, span + ' ms');
    rows.forEach(function (r, i) {
      var y = 5 + (i + 1) * H;
      var start = Date.parse(r.stages[0][1]);
      function x(t) { return L + (t - start) / span * W; }
      el('text', {x: 4, y: y + 14, 'font-size': 12},
         r.started.replace('T', ' ').slice(0, 19) + '  ' + r.mode + ' gen ' +
         (r.generation === null ? '-' : r.generation));
      var prev = start;
      r.stages.forEach(function (s) {
        var t = Date.parse(s[1]);
        var rect = el('rect', {x: x(prev), y: y + 3, width: Math.max(x(t) - x(prev), 3),
                               height: H - 8, fill: colours[s[0]] || '#999',
                               'class': 'stage stage-' + s[0]});
        titled(rect, s[0] + ' at ' + s[1] + ' (+' + (t - prev) + ' ms)');
        prev = t;
      });
      el('text', {x: x(prev) + 6, y: y + 14, 'font-size': 12, 'class': 'outcome ' + r.outcome},
         (r.outcome === 'rolled_back' || r.outcome === 'reverted' ? '✘ ' + (r.failed_stage || '') :
          r.outcome === 'active' ? '✔' : r.outcome) + ' ' + (prev - start) + ' ms');
    });
    // Crashes, stops and restarts on the wall clock, from the first reload on.
    var m0 = rows.length ? Date.parse(rows[0].stages[0][1]) : 0, m1 = m0 + 1;
    marks.forEach(function (m) { m1 = Math.max(m1, Date.parse(m.at)); });
    var my = 5 + (rows.length + 1) * H;
    el('text', {x: 4, y: my + 14, 'font-size': 12}, 'crash / stop / restart');
    el('line', {x1: L, x2: L + W, y1: my + 10, y2: my + 10, stroke: '#ccc'});
    marks.forEach(function (m) {
      var glyph = m.kind === 'relaunched' ? '↻' : m.kind === 'stopped' ? '✝' : '•';
      var t = el('text', {x: L + (Date.parse(m.at) - m0) / (m1 - m0) * W, y: my + 15,
                          'font-size': 14, 'class': 'mark mark-' + m.kind}, glyph);
      titled(t, m.at + ': ' + m.text);
    });
    el('text', {x: L, y: my + H + 12, 'font-size': 11},
       new Date(m0).toISOString() + ' … ' + new Date(m1).toISOString());
    div.appendChild(svg);
    div.setAttribute('data-rendered', rows.length);
  });
})();
"#;

#[derive(Serialize)]
struct Data<'a> {
    schema: u32,
    reloads: &'a [ReloadRow],
    marks: &'a [SlotMark],
}

/// The page of `sources` (name, records).
fn page(sources: &[(String, Vec<Record>)]) -> Result<String, CliError> {
    let mut fold = Fold::default();
    for (name, records) in sources {
        for record in records {
            fold.add(name, record);
        }
    }
    let data = serde_json::to_string(&Data {
        schema: render::SCHEMA,
        reloads: &fold.reloads,
        marks: &fold.marks,
    })
    .map_err(|e| CliError::new(EXIT_ERROR, format!("encoding the report data: {e}")))?
    .replace("</", "<\\/");
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>tryswap report</title><style>{STYLE}</style></head><body>\n\
         <h1>tryswap report</h1><p>Generated {} from {} journal(s); {} reload(s).</p>\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        sources.len(),
        fold.reloads.len()
    );
    let mut slots: BTreeMap<(String, String), Vec<&ReloadRow>> = BTreeMap::new();
    for r in &fold.reloads {
        slots
            .entry((r.source.clone(), r.slot.clone()))
            .or_default()
            .push(r);
    }
    fleet_table(&mut html, sources, &slots);
    for ((source, slot), rows) in &slots {
        let _ = write!(
            html,
            "<section class=\"slot\" id=\"slot-{id}\" data-host=\"{source}\"><h2>{source} · slot {slot}</h2>\n\
             <div class=\"timeline\" data-source=\"{source}\" data-slot=\"{slot}\"></div>\n\
             <p class=\"legend\"><span>■ stages: staged, launched, validated, probed, active \
             (or baking, confirmed / reverted)</span>\
             <span>✔ active</span><span>✘ rolled back</span><span>✝ crash or stop</span>\
             <span>↻ restart</span></p>\n<h3>Generation lineage</h3>\n<table class=\"lineage\">\
             <tr><th>when (UTC)</th><th>generation</th><th>from</th><th>mode</th>\
             <th>artifact sha256</th><th>config sha256</th><th>outcome</th></tr>\n",
            id = esc(&format!("{source}-{slot}")),
            slot = esc(slot),
            source = esc(source),
        );
        for r in rows {
            let from = match (r.mode, r.rollback_to, r.previous) {
                ("rollback", Some(to), _) => format!("↺ rollback to {to}"),
                (_, _, Some(prev)) => format!("→ after {prev}"),
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code title=\"{}\">{}</code></td>\
                 <td><code title=\"{}\">{}</code></td><td class=\"{}\">{}</td></tr>",
                r.started.format("%Y-%m-%d %H:%M:%S"),
                r.generation.map_or_else(|| "—".to_owned(), |g| g.to_string()),
                esc(&from),
                r.mode,
                esc(r.sha256.as_deref().unwrap_or("")),
                esc(&short(r.sha256.as_ref())),
                esc(r.config_sha256.as_deref().unwrap_or("")),
                esc(&short(r.config_sha256.as_ref())),
                r.outcome,
                r.outcome
            );
        }
        html.push_str("</table>\n<h3>Failures</h3>\n");
        let failures: Vec<&&ReloadRow> = rows.iter().filter(|r| r.reason.is_some()).collect();
        if failures.is_empty() {
            html.push_str("<p class=\"no-failures\">none</p>\n");
        } else {
            html.push_str(
                "<table class=\"failures\"><tr><th>when (UTC)</th><th>reload</th>\
                 <th>generation</th><th>failed at</th><th>reason</th></tr>\n",
            );
            for r in failures {
                let _ = writeln!(
                    html,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
                    r.started.format("%Y-%m-%d %H:%M:%S"),
                    esc(&r.reload_id),
                    r.generation.map_or_else(|| "—".to_owned(), |g| g.to_string()),
                    r.failed_stage.unwrap_or("—"),
                    esc(r.reason.as_deref().unwrap_or(""))
                );
            }
            html.push_str("</table>\n");
        }
        html.push_str("</section>\n");
    }
    let _ = write!(
        html,
        "<script type=\"application/json\" id=\"tryswap-data\">{data}</script>\n\
         <script>{SCRIPT}</script>\n</body></html>\n"
    );
    Ok(html)
}

/// The fleet table: a row per host and slot (a host whose journal holds no reload still
/// gets one), with its reload count, the generation its last committed reload made active,
/// and the last reload's outcome.
fn fleet_table(
    html: &mut String,
    sources: &[(String, Vec<Record>)],
    slots: &BTreeMap<(String, String), Vec<&ReloadRow>>,
) {
    html.push_str(
        "<h2>Fleet</h2>\n<table class=\"fleet\"><tr><th>host</th><th>slot</th><th>reloads</th>\
         <th>active generation</th><th>artifact sha256</th><th>last reload</th>\
         <th>failures</th></tr>\n",
    );
    for (source, _) in sources {
        let mut rows = slots.range((source.clone(), String::new())..).peekable();
        if rows.peek().is_none_or(|((s, _), _)| s != source) {
            let _ = writeln!(
                html,
                "<tr class=\"host\" data-host=\"{host}\"><td>{host}</td><td>—</td><td>0</td>\
                 <td>—</td><td>—</td><td>—</td><td>0</td></tr>",
                host = esc(source)
            );
            continue;
        }
        for ((_, slot), reloads) in rows.take_while(|((s, _), _)| s == source) {
            let active = reloads.iter().rev().find(|r| r.outcome == "active");
            let last = reloads.last().map_or("—", |r| r.outcome);
            let failures = reloads.iter().filter(|r| r.reason.is_some()).count();
            let _ = writeln!(
                html,
                "<tr class=\"host\" data-host=\"{host}\"><td><a href=\"#slot-{id}\">{host}</a></td>\
                 <td>{slot}</td><td>{count}</td><td>{generation}</td>\
                 <td><code title=\"{sha}\">{short}</code></td><td class=\"{last}\">{last}</td>\
                 <td>{failures}</td></tr>",
                host = esc(source),
                id = esc(&format!("{source}-{slot}")),
                slot = esc(slot),
                count = reloads.len(),
                generation = active
                    .and_then(|r| r.generation)
                    .map_or_else(|| "—".to_owned(), |g| g.to_string()),
                sha = esc(active.and_then(|r| r.sha256.as_deref()).unwrap_or("")),
                short = esc(&short(active.and_then(|r| r.sha256.as_ref()))),
            );
        }
    }
    html.push_str("</table>\n");
}

/// `tryswap report --html FILE [[HOST=]SOURCE…]` (default source: the state directory).
pub async fn run(ctx: &Context, html: &Path, sources: &[PathBuf]) -> Result<u8, CliError> {
    let sources = if sources.is_empty() {
        vec![ctx.state_dir.clone()]
    } else {
        sources.to_vec()
    };
    let sources: Vec<Source> = sources.iter().map(|s| Source::parse(s)).collect();
    let mut loaded: Vec<(String, Vec<Record>)> = Vec::with_capacity(sources.len());
    for source in &sources {
        if loaded.iter().any(|(label, _)| *label == source.label) {
            return Err(CliError::new(
                EXIT_ERROR,
                format!(
                    "two sources are labelled {:?}: give each its own HOST=PATH",
                    source.label
                ),
            ));
        }
        let records = records_of(ctx, &source.path).await?;
        loaded.push((source.label.clone(), records));
    }
    let text = page(&loaded)?;
    let tmp = html.with_extension("html.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, html))
        .map_err(|e| CliError::new(EXIT_ERROR, format!("writing {}: {e}", html.display())))?;
    let reloads: usize = loaded.iter().map(|(_, r)| r.len()).sum();
    if ctx.json {
        let hosts: Vec<_> = sources
            .iter()
            .map(|s| serde_json::json!({"host": s.label, "path": s.path}))
            .collect();
        render::json(&serde_json::json!({
            "html": crate::absolute(html),
            "sources": hosts,
            "records": reloads,
        }))?;
    } else {
        render::out(&format!(
            "wrote {} ({} journal(s), {reloads} record(s))\n",
            html.display(),
            loaded.len()
        ))?;
    }
    Ok(EXIT_OK)
}
