//! Human-readable output: the scenario x mode table, verdicts with the
//! operations behind each anomaly, and a few number formats.

use std::fmt::Write as _;

use comfy_table::{CellAlignment, Table, presets::NOTHING};

use crate::scenario::run::ModeOutcome;

/// `+60000` / `-4300` / `0`.
pub fn signed(cents: i64) -> String {
    if cents > 0 {
        format!("+{cents}")
    } else {
        cents.to_string()
    }
}

/// Microseconds as milliseconds with one decimal.
pub fn ms(micros: u64) -> String {
    format!("{:.1}", micros as f64 / 1_000.0)
}

/// A borderless table with a header; columns from `left` on are numbers,
/// right-aligned.
pub fn grid<const N: usize>(header: [&str; N], left: usize) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header);
    for column in left..N {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// The scenario x mode table.
pub fn table(rows: &[ModeOutcome]) -> String {
    let mut table = grid(
        [
            "scenario",
            "mode",
            "verdict",
            "overdrafts",
            "lost updates",
            "money cents",
            "refusals",
            "ops/s",
            "p99 ms",
        ],
        3,
    );
    for row in rows {
        let verdict = if row.passed {
            "as expected"
        } else {
            "UNEXPECTED"
        };
        table.add_row([
            row.scenario.clone(),
            row.mode.as_str().to_owned(),
            verdict.to_owned(),
            row.overdrafts.to_string(),
            row.lost_updates.to_string(),
            signed(row.money_delta_cents),
            (row.refused + row.aborted).to_string(),
            format!("{:.0}", row.ops_per_sec),
            ms(row.latency_p99_us),
        ]);
    }
    format!("{table}\n")
}

/// One mode's verdict with every anomaly and the operations behind it.
pub fn verdict(row: &ModeOutcome) -> String {
    let mut out = String::new();
    let word = if row.passed { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "{word} {} in {}: {} ops ({} ok, {} refused, {} aborted, {} errors, {} resent, {} unknown), {} overdrafts, {} lost updates, money {} cents, p99 {} ms, {} CAS retries",
        row.scenario,
        row.run,
        row.operations,
        row.succeeded,
        row.refused,
        row.aborted,
        row.errors,
        row.resends,
        row.unknown_outcomes,
        row.overdrafts,
        row.lost_updates,
        signed(row.money_delta_cents),
        ms(row.latency_p99_us),
        row.retries,
    );
    for failure in &row.failures {
        let _ = writeln!(out, "  expectation broken: {failure}");
    }
    for finding in &row.findings {
        let _ = writeln!(
            out,
            "  {} ({} cents): {}",
            finding.kind,
            signed(finding.cents),
            finding.detail
        );
        if !finding.request_ids.is_empty() {
            let _ = writeln!(out, "    operations: {}", finding.request_ids.join(", "));
        }
    }
    let balances: Vec<String> = row
        .balances
        .iter()
        .map(|(a, c)| format!("{a}={c}"))
        .collect();
    let _ = writeln!(out, "  final balances (cents): {}", balances.join(" "));
    out
}

/// Pretty JSON of a report. Reports hold strings, numbers and maps with
/// string keys, which always serialize; the fallback names the error.
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
