//! The postmortem as one self-contained page: the template's sections
//! (rendered from the same Markdown by pulldown-cmark) and a swimlane of
//! the operations around the leading anomaly, one lane per ATM, each
//! operation a bar over its interval, the anomaly's operations outlined and
//! linked from its list, faults shaded, and what each operation read and
//! wrote on hover. Markup through maud; no network, no script.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use overdraft_history::format::Outcome;

use super::{Incident, sections};

/// Width of the time axis, in SVG units.
const AXIS_WIDTH: f64 = 960.0;

/// Room for the lane labels.
const LABEL_WIDTH: f64 = 150.0;

/// Height of one lane.
const LANE_HEIGHT: f64 = 24.0;

/// Most lanes drawn: the anomaly's ATMs first.
const LANES_MAX: usize = 32;

/// The shortest window drawn around an anomaly: 1 ms, so that a race of
/// microseconds still shows its neighbours.
const WINDOW_NS_MIN: u64 = 1_000_000;

/// The window drawn for a run without anomalies: its first 5 ms.
const WINDOW_NS_CLEAN: u64 = 5_000_000;

/// Most operations drawn (the window around the anomaly).
const BARS_MAX: usize = 2_000;

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1180px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; font-size: 0.9em; }
.lane { fill: #f4f4f4; } .lane-label { font-size: 12px; }
.op { stroke: #555; stroke-width: 0.5; } .ok { fill: #7aa6d6; } .fail { fill: #d9b36c; } .unknown { fill: #aaaaaa; }
.witness { stroke: #c00; stroke-width: 2.5; } .op:target { stroke: #000; stroke-width: 4; }
.fault { fill: #f6c343; fill-opacity: 0.25; } .axis { font-size: 11px; fill: #555; }
.anomaly-span { fill: #c00; fill-opacity: 0.08; }
";

/// The page.
pub fn page(incident: &Incident<'_>) -> String {
    let markup: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Postmortem: " (incident.title()) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Postmortem: " (incident.title()) }
                p { "Date: " (incident.utc(0)) ". Status: draft for training. Mode: " (incident.mode()) "." }
                h2 { "Swimlanes" }
                (swimlanes(incident))
                @for section in sections(incident) {
                    h2 { (section.heading) }
                    (PreEscaped(markdown_html(&section.body)))
                }
            }
        }
    };
    markup.into_string()
}

/// The sections' Markdown as HTML. Names in it come from the history (an
/// untrusted file): raw HTML is rendered as text, so no name can inject
/// markup or script into the page.
fn markdown_html(text: &str) -> String {
    use pulldown_cmark::Event;
    let parser = pulldown_cmark::Parser::new_ext(text, pulldown_cmark::Options::ENABLE_TABLES).map(
        |event| match event {
            Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
            other => other,
        },
    );
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

/// The operations around the leading anomaly (or the first ones).
fn swimlanes(incident: &Incident<'_>) -> Markup {
    let run = incident.run;
    let lead = incident.lead();
    let (from, until) = match lead {
        Some(a) => {
            let span = a.until_ns.saturating_sub(a.from_ns).max(WINDOW_NS_MIN);
            (
                a.from_ns.saturating_sub(span / 2),
                a.until_ns.saturating_add(span / 2),
            )
        }
        None => {
            let first = run.ops.iter().map(|o| o.invoke_ns).min().unwrap_or(0);
            (first, first.saturating_add(WINDOW_NS_CLEAN))
        }
    };
    let witnesses: Vec<u32> = lead
        .map(|a| a.operations.iter().map(|w| w.index).collect())
        .unwrap_or_default();
    // Lanes: the anomaly's ATMs, then others with operations in the window.
    let mut lanes: Vec<u32> = Vec::new();
    for &index in &witnesses {
        if let Some(atm) = run.ops[index as usize].atm()
            && !lanes.contains(&atm)
        {
            lanes.push(atm);
        }
    }
    let in_window: Vec<usize> = (0..run.ops.len())
        .filter(|&i| {
            let op = &run.ops[i];
            op.atm().is_some() && op.complete_ns >= from && op.invoke_ns <= until
        })
        .take(BARS_MAX)
        .collect();
    for &i in &in_window {
        if lanes.len() >= LANES_MAX {
            break;
        }
        if let Some(atm) = run.ops[i].atm()
            && !lanes.contains(&atm)
        {
            lanes.push(atm);
        }
    }
    let span = (until - from).max(1) as f64;
    let x = |t: u64| LABEL_WIDTH + AXIS_WIDTH * (t.clamp(from, until) - from) as f64 / span;
    let height = LANE_HEIGHT * lanes.len() as f64 + 30.0;
    let lane_of = |atm: u32| lanes.iter().position(|&l| l == atm);
    let fault_spans: Vec<(f64, f64, String)> = match (incident.faults, run.wall_unix_ns_at_zero) {
        (Some(log), Some(zero)) => log
            .spans
            .iter()
            .filter_map(|s| {
                let start = s
                    .from_unix_ms
                    .saturating_mul(1_000_000)
                    .saturating_sub(zero);
                let end = s
                    .until_unix_ms
                    .map_or(until, |u| u.saturating_mul(1_000_000).saturating_sub(zero));
                (end >= from && start <= until).then(|| {
                    (
                        x(start),
                        x(end),
                        format!("fault {} ({})", s.fault_id, s.kind),
                    )
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    html! {
        p { "From " (format!("{:.3}", from as f64 / 1e6)) " ms to " (format!("{:.3}", until as f64 / 1e6))
            " ms of the run. Outlined in red: the operations behind the leading anomaly. Hover a bar for what it read and wrote." }
        svg id="swimlanes" xmlns="http://www.w3.org/2000/svg" width=(LABEL_WIDTH + AXIS_WIDTH + 10.0) height=(height) {
            @for (lane, atm) in lanes.iter().enumerate() {
                rect class="lane" x=(LABEL_WIDTH) y=(lane as f64 * LANE_HEIGHT) width=(AXIS_WIDTH) height=(LANE_HEIGHT - 2.0) {}
                text class="lane-label" x="4" y=(lane as f64 * LANE_HEIGHT + 15.0) { (run.atms.get(*atm as usize).map_or("?", String::as_str)) }
            }
            @if let Some(a) = lead {
                rect class="anomaly-span" x=(x(a.from_ns)) y="0" width=((x(a.until_ns) - x(a.from_ns)).max(1.0)) height=(height - 30.0) {
                    title { (a.kind.as_str()) ": " (a.detail) }
                }
            }
            @for (start, end, label) in &fault_spans {
                rect class="fault" x=(start) y="0" width=((end - start).max(1.0)) height=(height - 30.0) { title { (label) } }
            }
            @for &i in &in_window {
                @let op = &run.ops[i];
                @if let Some(lane) = op.atm().and_then(lane_of) {
                    @let outcome = match op.outcome { Outcome::Ok => "ok", Outcome::Fail => "fail", Outcome::Unknown => "unknown" };
                    @let index = u32::try_from(i).unwrap_or(u32::MAX);
                    @let witness = witnesses.contains(&index);
                    rect id=(format!("op-{i}")) class=(format!("op {outcome}{}", if witness { " witness" } else { "" }))
                        x=(x(op.invoke_ns)) y=(lane as f64 * LANE_HEIGHT + 3.0)
                        width=((x(op.complete_ns) - x(op.invoke_ns)).max(2.0)) height=(LANE_HEIGHT - 8.0) {
                        title { (bar_title(incident, i)) }
                    }
                }
            }
            @for tick in 0..=4u32 {
                @let t = from + (until - from) / 4 * u64::from(tick);
                text class="axis" x=(x(t)) y=(height - 10.0) text-anchor=(if tick == 4 { "end" } else { "start" }) { (format!("{:.2} ms", t as f64 / 1e6)) }
            }
        }
        @if let Some(a) = lead {
            p { "The operations behind the " (a.kind.as_str()) ": "
                @for w in &a.operations {
                    a href=(format!("#op-{}", w.index)) { (w.label) } " (" (w.atm) ", " (serde_json::to_string(&w.role).unwrap_or_default().trim_matches('"')) ") "
                }
            }
        }
    }
}

fn bar_title(incident: &Incident<'_>, index: usize) -> String {
    let run = incident.run;
    let op = &run.ops[index];
    let reply = match (op.balance_cents(), op.version()) {
        (Some(b), Some(v)) => {
            let change = op.legs().next().map_or(0, |(_, d)| d);
            if op.operation.is_mutation() {
                format!(
                    "read {} at v{}, wrote {} at v{v}",
                    super::dollars(i128::from(b) - i128::from(change)),
                    v.saturating_sub(1),
                    super::dollars(i128::from(b))
                )
            } else {
                format!("saw {} at v{v}", super::dollars(i128::from(b)))
            }
        }
        _ => op.outcome.as_str().to_owned(),
    };
    format!(
        "{} {} {} on {}: {reply}",
        run.label(op),
        op.operation,
        super::dollars(i128::from(op.amount_cents)),
        run.account_name(op.account)
    )
}
