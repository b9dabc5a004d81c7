//! The live page: one self-contained document (no CDN, no fonts, works
//! offline) whose figures arrive as server-sent events from `/events`. The
//! shell is a maud template; the script only fills it in, through
//! `textContent` and SVG elements, so no name from a history is ever
//! parsed as markup.

use maud::{DOCTYPE, Markup, PreEscaped, html};

const STYLE: &str = r#"
:root { color-scheme: dark; --bg:#11151c; --panel:#1a202b; --ink:#e8edf4; --dim:#8a96a8;
  --dep:#4fb3ff; --wd:#ffb547; --tr:#b58cff; --bal:#6fd39b; --bad:#ff5a5f; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; gap:1.2em; align-items:baseline; padding:.8em 1.2em; background:var(--panel); }
header h1 { margin:0; font-size:1.4em; letter-spacing:.04em; }
.mode { font-weight:700; padding:.1em .6em; border-radius:.4em; background:#2b3442; }
.mode.unsafe { background:var(--bad); color:#fff; }
.dim { color:var(--dim); }
main { display:grid; grid-template-columns: 1fr 1fr 1fr; gap:1em; padding:1em 1.2em; }
section { background:var(--panel); border-radius:.6em; padding:.8em 1em; min-width:0; }
section h2 { margin:0 0 .5em; font-size:.95em; text-transform:uppercase; letter-spacing:.08em; color:var(--dim); }
#lanes { grid-column: 1 / 4; }
#anomalies { grid-column: 2 / 4; }
#anomaly-list { max-height: 24em; overflow-y: auto; }
.tiles { display:flex; flex-wrap:wrap; gap:.8em; }
.tile { min-width:6.5em; }
.tile .num { display:block; font-size:1.9em; font-weight:700; font-variant-numeric: tabular-nums; }
.tile label { color:var(--dim); font-size:.85em; }
table { width:100%; border-collapse:collapse; font-variant-numeric: tabular-nums; }
td, th { padding:.15em .4em; text-align:right; }
td:first-child, th:first-child { text-align:left; }
th { color:var(--dim); font-weight:400; }
ul, ol { margin:0; padding-left:1.2em; }
.none { color:var(--dim); list-style:none; margin-left:-1.2em; }
#anomaly-list li { margin-bottom:.4em; }
.kind { font-weight:700; color:var(--bad); }
.ids { color:var(--dim); font-size:.85em; word-break:break-all; }
.clean { color:var(--bal); font-weight:700; }
.broken { color:var(--bad); font-weight:700; }
svg text { fill:var(--dim); font-size:11px; }
.op-deposit { fill:var(--dep); } .op-withdraw { fill:var(--wd); }
.op-transfer { fill:var(--tr); } .op-balance { fill:var(--bal); }
.out-fail { opacity:.45; } .out-unknown { fill:#777; }
.culprit { stroke:var(--bad); stroke-width:2.5; }
footer { padding:0 1.2em 1em; color:var(--dim); font-size:.85em; }
#error { color:var(--bad); }
"#;

const SCRIPT: &str = r#"
const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
const money = (c) => (c < 0 ? '-' : '') + '$' + (Math.abs(c) / 100).toFixed(2);
const num = (n) => Math.round(n).toLocaleString('en-US');
function put(id, text) { $(id).textContent = text; }
function list(id, items, make, empty) {
  const el = $(id); el.replaceChildren();
  if (items.length === 0) {
    const li = document.createElement('li'); li.className = 'none'; li.textContent = empty; el.append(li);
  }
  for (const item of items) el.append(make(item));
}
function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) { const td = document.createElement('td'); td.textContent = c; tr.append(td); }
  return tr;
}
function render(s) {
  put('mode', s.mode); $('mode').className = 'mode ' + s.mode;
  put('total', num(s.operations_total));
  for (const m of ['all', 'deposit', 'withdraw', 'transfer', 'balance']) {
    const v = s.ops_per_sec[m]; put('rate-' + m, v === undefined ? '–' : num(v));
  }
  const body = $('balances'); body.replaceChildren();
  for (const a of s.accounts) body.append(row([a.account_id, money(a.balance_cents), 'v' + a.version, a.recent_ops]));
  list('fault-list', s.faults, (f) => {
    const li = document.createElement('li');
    li.textContent = f.kind + (f.phase ? ' (' + f.phase + ')' : '') + ' for ' + f.for_secs.toFixed(1) + ' s';
    return li;
  }, 'none');
  const a = s.audit;
  if (a.at_unix_ms === 0) put('audit-summary', 'no audit yet');
  else {
    $('audit-summary').className = a.clean ? 'clean' : 'broken';
    put('audit-summary', a.clean ? 'clean: every operation accounted for'
      : a.findings_total + ' findings: ' + a.lost_updates + ' lost updates, ' + a.overdrafts
        + ' overdrafts, money ' + (a.money_delta_cents >= 0 ? '+' : '') + money(a.money_delta_cents));
  }
  list('anomaly-list', a.findings, (f) => {
    const li = document.createElement('li'); li.className = 'anomaly';
    const k = document.createElement('span'); k.className = 'kind'; k.textContent = f.kind.replaceAll('_', ' ');
    const d = document.createElement('div');
    d.textContent = (f.account_id || 'the whole ledger') + ', ' + money(f.cents) + ': ' + f.detail;
    const ids = document.createElement('div'); ids.className = 'ids'; ids.textContent = f.request_ids.join('  ');
    li.append(k, d, ids); return li;
  }, 'none found');
  lanes(s);
  put('error', s.error || '');
}
function lanes(s) {
  const svg = $('swimlane'); svg.replaceChildren();
  const culprits = new Set(s.audit.findings.flatMap((f) => f.request_ids));
  const width = svg.clientWidth || 1100, label = 130, h = 16, gap = 4;
  svg.setAttribute('height', Math.max(1, s.lanes.length) * (h + gap) + 18);
  const x = (ago) => label + (width - label) * (1 - ago / s.window_ms);
  s.lanes.forEach((lane, i) => {
    const y = i * (h + gap);
    const t = document.createElementNS(SVG, 'text');
    t.setAttribute('x', 0); t.setAttribute('y', y + 12); t.textContent = lane.atm; svg.append(t);
    for (const op of lane.ops) {
      const r = document.createElementNS(SVG, 'rect');
      const x0 = Math.max(label, x(op.from_ms_ago)), x1 = Math.max(x0 + 2, x(op.to_ms_ago));
      r.setAttribute('x', x0); r.setAttribute('y', y); r.setAttribute('width', x1 - x0); r.setAttribute('height', h);
      r.setAttribute('class', 'op-' + op.op + ' out-' + op.outcome + (culprits.has(op.request_id) ? ' culprit' : ''));
      const tip = document.createElementNS(SVG, 'title');
      tip.textContent = op.op + ' ' + op.accounts + ' ' + money(op.amount_cents) + ': ' + op.outcome
        + (op.code ? ' (' + op.code + ')' : '') + ' ' + op.request_id;
      r.append(tip); svg.append(r);
    }
  });
  const axis = document.createElementNS(SVG, 'text');
  axis.setAttribute('x', label); axis.setAttribute('y', s.lanes.length * (h + gap) + 14);
  axis.textContent = (s.window_ms / 1000) + ' s ago';
  const now = document.createElementNS(SVG, 'text');
  now.setAttribute('x', width - 30); now.setAttribute('y', s.lanes.length * (h + gap) + 14); now.textContent = 'now';
  svg.append(axis, now);
}
let updates = 0;
// ?updates=N: stop listening after N updates (a still picture: screenshots, tests).
const stopAfter = Number(new URLSearchParams(location.search).get('updates') || 0);
const events = new EventSource('events');
events.onmessage = (e) => {
  render(JSON.parse(e.data));
  updates += 1; put('updates', updates); $('updates').dataset.updates = updates;
  put('status', 'live');
  if (stopAfter > 0 && updates >= stopAfter) { events.close(); put('status', 'stopped after ' + updates + ' updates'); }
};
events.onerror = () => put('status', 'reconnecting…');
"#;

/// The page, before any event has filled it in.
pub(super) fn page(target: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "overdraft live: " (target) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "overdraft" }
                    span #mode .mode { "–" }
                    span .dim { "ledger " (target) }
                    span .dim { "operations " span #total { "–" } }
                }
                main {
                    section #rates {
                        h2 { "Operations per second" }
                        div .tiles {
                            @for (id, label) in [("all", "all"), ("deposit", "deposits"), ("withdraw", "withdrawals"), ("transfer", "transfers"), ("balance", "reads")] {
                                div .tile { span .num id={ "rate-" (id) } { "–" } label { (label) } }
                            }
                        }
                    }
                    section #accounts {
                        h2 { "Busiest accounts" }
                        table {
                            thead { tr { th { "account" } th { "balance" } th { "version" } th { "ops (10 s)" } } }
                            tbody #balances {}
                        }
                    }
                    section #faults {
                        h2 { "Faults active" }
                        ul #fault-list { li .none { "none" } }
                    }
                    section #lanes {
                        h2 { "Recent operations per ATM (red outline: behind an anomaly)" }
                        svg #swimlane width="100%" height="20" {}
                    }
                    section #audit {
                        h2 { "The ledger's audit" }
                        p #audit-summary { "no audit yet" }
                    }
                    section #anomalies {
                        h2 { "Anomalies, with the operations behind them" }
                        ol #anomaly-list { li .none { "none found" } }
                    }
                }
                footer {
                    "updates " span #updates data-updates="0" { "0" }
                    " · " span #status { "connecting…" }
                    " · " span #error {}
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}
