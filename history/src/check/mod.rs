//! The checker: holds a run against a sequential bank model that respects
//! real time, and names each anomaly with the operations behind it and the
//! money it cost.
//!
//! 1. Fates: every mutation is applied (acknowledged, or found in the
//!    journal), not applied (refused, or absent from the journal), or
//!    unknown. A reply replayed for a request_id is not an application.
//! 2. Per account ([`account`]): the versions returned make a tree of
//!    states; its trunk is what the ledger kept, every branch off it a lost
//!    update; gaps are filled by unknown outcomes where some fit; the money
//!    view finds overdrafts.
//! 3. Across accounts ([`schedule`]): every trunk, its reads and its
//!    refusals must fit one order of instants inside their intervals.
//! 4. Bank-wide: conservation against the final reads, and request_ids or
//!    intents applied more than once.
//!
//! An account whose replies carry no versions is searched instead
//! ([`search`]), within the time budget.
//!
//! Each step judges from the state the ledger actually reached, so one
//! anomaly is one finding and the operations after it are judged alone.

mod account;
mod finding;
mod household;
mod schedule;
mod search;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    evidence::{FaultLog, FaultSpan, Journal},
    format::{Operation, Outcome},
    read::{Op, Run},
};

use account::{AccountInput, AppliedLeg, Candidate};
use finding::Finding;
pub use finding::{AnomalyKind, Budget, Role};

/// The report's schema; bumped when a field changes meaning.
pub const REPORT_SCHEMA: u32 = 1;

/// Most anomalies listed in a report; the counts by kind stay exact.
pub const ANOMALIES_LISTED_MAX: usize = 10_000;

/// Most operations named in one bank-wide finding.
const BANK_OPERATIONS_LISTED_MAX: usize = 32;

/// What the checker may use besides the histories.
#[derive(Debug, Default)]
pub struct Evidence<'a> {
    /// The ledger's journal: resolves unknown outcomes.
    pub journal: Option<&'a Journal>,
    /// The fault log: which faults were active at each anomaly.
    pub faults: Option<&'a FaultLog>,
}

/// One operation named in an anomaly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Witness {
    /// Its request_id, or `FILE:LINE` without one.
    pub label: String,
    /// The request_id sent ("" for none).
    pub request_id: String,
    /// The ATM that sent it.
    pub atm: String,
    /// What it asked.
    pub op: Operation,
    /// Its accounts (from, to for a transfer).
    pub accounts: Vec<String>,
    /// Its amount.
    pub amount_cents: i64,
    /// Invocation, ns on the run's clock.
    pub invoke_ns: u64,
    /// Completion, same clock.
    pub complete_ns: u64,
    /// What the ATM knew.
    pub outcome: Outcome,
    /// The balance returned (a transfer's `from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_cents: Option<i64>,
    /// The version returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Its part in the anomaly.
    pub role: Role,
    /// Index of the operation in the merged run.
    pub index: u32,
}

/// One anomaly, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// What it is.
    pub kind: AnomalyKind,
    /// The accounts it concerns.
    pub accounts: Vec<String>,
    /// The smallest set of operations behind it.
    pub operations: Vec<Witness>,
    /// Operations behind it that a bound kept off the list (a long erased
    /// branch); its money counts them all.
    pub operations_unlisted: usize,
    /// Money created (positive) or destroyed (negative); for an overdraft,
    /// how far below the floor (negative).
    pub cents: i64,
    /// One sentence a trainee can read.
    pub detail: String,
    /// From the earliest invocation to the latest completion of its operations.
    pub from_ns: u64,
    /// See `from_ns`.
    pub until_ns: u64,
    /// Faults active during that span (from the fault log).
    pub faults: Vec<FaultSpan>,
}

/// The verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The run fits the model.
    Valid,
    /// At least one anomaly.
    Anomalies,
    /// The checker could not decide (a search ran out of time), and found no anomaly.
    Unknown,
}

impl Verdict {
    /// The exit code `atm check` uses: 0 valid, 1 anomalies, 3 unknown.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Anomalies => 1,
            Verdict::Unknown => 3,
        }
    }
}

/// Money, bank-wide.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Money {
    /// Opening balances of the accounts with both an opening and a final read.
    pub opening_cents: i128,
    /// Deposits applied to them.
    pub deposits_cents: i128,
    /// Withdrawals applied (fees apart).
    pub withdrawals_cents: i128,
    /// Overdraft fees charged.
    pub fees_cents: i128,
    /// Transfers in minus out: zero unless a transfer crossed to an
    /// account that cannot be judged.
    pub transfers_net_cents: i128,
    /// Their final reads.
    pub final_cents: i128,
    /// final - (opening + deposits - withdrawals - fees + transfers net).
    pub delta_cents: i128,
    /// Accounts whose conservation cannot be judged (no opening or no final read).
    pub accounts_unknown: u64,
}

/// Counts of what the run held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Operations read.
    pub operations: u64,
    /// Acknowledged.
    pub ok: u64,
    /// Decided and not applied.
    pub failed: u64,
    /// Unknown outcomes.
    pub unknown: u64,
    /// Unknown outcomes the journal resolved.
    pub unknown_resolved_by_journal: u64,
    /// Unknown outcomes the check found applied (they fill a gap).
    pub unknown_inferred_applied: u64,
    /// Replies replayed for a request_id applied before.
    pub replays: u64,
    /// Accounts.
    pub accounts: u64,
}

/// The checker's report (`atm check --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// The verdict.
    pub verdict: Verdict,
    /// The files checked.
    pub files: Vec<String>,
    /// The mode the run's headers state.
    pub mode: Option<String>,
    /// The seed the run's headers state.
    pub seed: Option<u64>,
    /// Anomalies by kind (exact).
    pub counts_by_kind: Vec<(AnomalyKind, u64)>,
    /// Money created (positive) or destroyed (negative) by lost updates, net.
    pub money: Money,
    /// What the run held.
    pub counts: Counts,
    /// The anomalies, at most [`ANOMALIES_LISTED_MAX`], in time order.
    pub anomalies: Vec<Anomaly>,
    /// Why the verdict is unknown, when it is (or why part of it is).
    pub undecided: Vec<String>,
    /// Doubts about the evidence that change no verdict (a journal that
    /// does not overlap the run, say).
    pub warnings: Vec<String>,
    /// Wall clock at the run's time zero, ns since the Unix epoch.
    pub wall_unix_ns_at_zero: Option<u64>,
    /// How long the check took.
    pub elapsed_ms: u64,
}

impl Report {
    /// How many anomalies of `kind`.
    pub fn count(&self, kind: AnomalyKind) -> u64 {
        self.counts_by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// The fate of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Applied,
    NotApplied,
    Maybe,
    Replay,
}

/// Checks `run`.
pub fn check(run: &Run, evidence: &Evidence<'_>, time_budget: Duration) -> Report {
    let started = Instant::now();
    let budget = Budget::new(time_budget);
    let mut counts = Counts {
        operations: run.ops.len() as u64,
        accounts: run.accounts.len() as u64,
        ..Counts::default()
    };
    let mut overrides: HashMap<u32, Vec<(u32, i64, u64, i64)>> = HashMap::new();
    let fates = fates(run, evidence.journal, &mut counts, &mut overrides);
    let mut inputs = gather(run, &fates, &overrides);
    let mut findings = Vec::new();
    let mut undecided = Vec::new();
    let mut verdicts = Vec::with_capacity(inputs.len());
    let versionless = versionless_accounts(run);
    for (account, input) in inputs.drain(..).enumerate() {
        let index = account;
        let account = u32::try_from(account).unwrap_or(u32::MAX);
        let opening = run.openings.get(account as usize).copied().flatten();
        if versionless[index] {
            match search::check(run, account, opening, &budget) {
                search::Searched::Valid => {}
                search::Searched::Invalid(finding) => findings.push(finding),
                search::Searched::Undecided(reason) => undecided.push(reason),
            }
            // Judged by the search alone: no chain, and no conservation
            // from legs the version tree never saw.
            verdicts.push(account::AccountVerdict::default());
            continue;
        }
        let mut verdict = account::check(run, account, input, opening, &run.policy, &budget);
        findings.append(&mut verdict.findings);
        undecided.extend(verdict.undecided.take());
        verdicts.push(verdict);
    }
    // Mutex and cas write a transfer's two legs in one commit; actor and
    // unsafe write them apart, and an unstated mode gets the weaker rule.
    let atomic_transfers = matches!(run.mode.as_deref(), Some("mutex" | "cas"));
    let chains: Vec<(u32, &account::Chain)> = verdicts
        .iter()
        .enumerate()
        .map(|(a, v)| (u32::try_from(a).unwrap_or(u32::MAX), &v.chain))
        .collect();
    let first_attempts = first_attempts(run, &fates);
    schedule::check(
        run,
        &chains,
        atomic_transfers,
        &first_attempts,
        &run.policy,
        &mut findings,
    );
    household::check(run, &chains, &run.policy, &mut findings, &mut undecided);
    let mut inferred = vec![false; run.ops.len()];
    for verdict in &verdicts {
        for &op in &verdict.inferred_applied {
            inferred[op as usize] = true;
        }
    }
    counts.unknown_inferred_applied = inferred.iter().filter(|&&i| i).count() as u64;
    double_applications(run, &fates, &inferred, &mut findings);
    let money = conservation(&verdicts);
    if let Some(finding) = money_finding(run, &money, &verdicts, &findings) {
        findings.push(finding);
    }
    report(run, evidence, findings, money, counts, undecided, started)
}

/// Applied replies flagged as replays: they stand for an attempt whose own
/// reply was lost, which may have taken effect from the first attempt's
/// invocation on. op -> that invocation.
fn first_attempts(run: &Run, fates: &[Fate]) -> HashMap<u32, u64> {
    let flagged: HashMap<&str, u32> = run
        .ops
        .iter()
        .enumerate()
        .filter(|(index, op)| op.replayed && fates[*index] == Fate::Applied)
        .filter_map(|(index, op)| {
            let id = run.strings.get(op.request_id()?);
            Some((id, u32::try_from(index).ok()?))
        })
        .collect();
    let mut first: HashMap<u32, u64> = HashMap::new();
    if flagged.is_empty() {
        return first;
    }
    for op in &run.ops {
        let Some(id) = op.request_id().map(|sym| run.strings.get(sym)) else {
            continue;
        };
        if let Some(&replay) = flagged.get(id) {
            let earliest = first.entry(replay).or_insert(u64::MAX);
            *earliest = (*earliest).min(op.invoke_ns);
        }
    }
    first
}

/// Accounts some acknowledged reply (a mutation's or a read's) left
/// without a version: the version tree cannot place it, so the account is
/// searched instead.
fn versionless_accounts(run: &Run) -> Vec<bool> {
    let mut versionless = vec![false; run.accounts.len()];
    for op in &run.ops {
        if op.outcome != Outcome::Ok {
            continue;
        }
        let accounts: Vec<u32> = if op.operation.is_mutation() {
            op.legs().map(|(account, _)| account).collect()
        } else {
            vec![op.account]
        };
        for account in accounts {
            if run
                .returned(op, account)
                .is_none_or(|(_, version)| version.is_none())
            {
                versionless[account as usize] = true;
            }
        }
    }
    versionless
}

/// Decides each operation's fate; unknown outcomes found in the journal
/// get the states it recorded (`overrides`: op -> (account, delta, version, balance)).
fn fates(
    run: &Run,
    journal: Option<&Journal>,
    counts: &mut Counts,
    overrides: &mut HashMap<u32, Vec<(u32, i64, u64, i64)>>,
) -> Vec<Fate> {
    let mut fates = Vec::with_capacity(run.ops.len());
    let replays = replays(run);
    let acknowledged = journal
        .map(|_| acknowledged_states(run))
        .unwrap_or_default();
    let account_index: HashMap<&str, u32> = run
        .accounts
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    for (index, op) in run.ops.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        match op.outcome {
            Outcome::Ok => counts.ok += 1,
            Outcome::Fail => counts.failed += 1,
            Outcome::Unknown => counts.unknown += 1,
        }
        let fate = match op.outcome {
            _ if !op.operation.is_mutation() => Fate::NotApplied,
            Outcome::Ok if replays[index as usize] => {
                counts.replays += 1;
                Fate::Replay
            }
            Outcome::Ok => Fate::Applied,
            Outcome::Fail => Fate::NotApplied,
            Outcome::Unknown => match (journal, op.request_id()) {
                (Some(journal), Some(sym)) => {
                    counts.unknown_resolved_by_journal += 1;
                    let id = run.strings.get(sym);
                    let seen = acknowledged.get(id).map_or(&[][..], Vec::as_slice);
                    match unclaimed(run, journal.applied(id).unwrap_or_default(), seen) {
                        Some(entries) => {
                            overrides.insert(index, journal_legs(&entries, &account_index));
                            Fate::Applied
                        }
                        None => Fate::NotApplied,
                    }
                }
                _ => Fate::Maybe,
            },
        };
        fates.push(fate);
    }
    fates
}

/// For each request_id that some unknown outcome carries, the states
/// (account, version) its acknowledged attempts reported: the journal
/// entries they stand for are not the unknown attempt's.
fn acknowledged_states(run: &Run) -> HashMap<&str, Vec<(u32, u64)>> {
    let unknown: std::collections::HashSet<&str> = run
        .ops
        .iter()
        .filter(|op| op.outcome == Outcome::Unknown)
        .filter_map(|op| op.request_id().map(|sym| run.strings.get(sym)))
        .collect();
    let mut states: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
    for op in &run.ops {
        let Some(id) = op.request_id().map(|sym| run.strings.get(sym)) else {
            continue;
        };
        if op.outcome != Outcome::Ok || !unknown.contains(id) {
            continue;
        }
        for (account, _) in op.legs() {
            if let Some((_, Some(version))) = run.returned(op, account) {
                states.entry(id).or_default().push((account, version));
            }
        }
    }
    states
}

/// The journal entries of a request_id that no acknowledged attempt
/// reported (a keyed retry's replay names the entry of the attempt whose
/// reply was lost): what an unknown attempt applied, if anything. The
/// legs of one transfer written as two commits stay together.
fn unclaimed(
    run: &Run,
    entries: &[crate::format::JournalLine],
    acknowledged: &[(u32, u64)],
) -> Option<Vec<crate::format::JournalLine>> {
    let claimed = |entry: &crate::format::JournalLine| {
        entry.legs.iter().any(|leg| {
            acknowledged.iter().any(|&(account, version)| {
                version == leg.written_version && run.account_name(account) == leg.account_id
            })
        })
    };
    let free: Vec<crate::format::JournalLine> =
        entries.iter().filter(|e| !claimed(e)).cloned().collect();
    (!free.is_empty()).then_some(free)
}

/// The states the journal says an operation wrote, per account.
fn journal_legs(
    entries: &[crate::format::JournalLine],
    account_index: &HashMap<&str, u32>,
) -> Vec<(u32, i64, u64, i64)> {
    entries
        .iter()
        .flat_map(|entry| entry.legs.iter())
        .filter_map(|leg| {
            account_index.get(leg.account_id.as_str()).map(|&account| {
                (
                    account,
                    leg.delta_cents,
                    leg.written_version,
                    leg.written_balance_cents,
                )
            })
        })
        .collect()
}

/// Which acknowledged mutations are replays: a reply that repeats the
/// reply of an earlier application of its request_id (the first to
/// complete stands for the application, even if flagged replayed: it then
/// reports what an attempt whose reply was lost wrote). Grouped by sorting
/// hashes, not by a map of strings, to stay lean on long runs.
fn replays(run: &Run) -> Vec<bool> {
    let mut replays = vec![false; run.ops.len()];
    let mut keyed: Vec<(u64, u64, u32)> = run
        .ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.operation.is_mutation() && op.outcome == Outcome::Ok)
        .filter_map(|(index, op)| {
            let sym = op.request_id()?;
            let hash = xxhash_rust::xxh3::xxh3_64(run.strings.get(sym).as_bytes());
            Some((hash, op.complete_ns, u32::try_from(index).ok()?))
        })
        .collect();
    keyed.sort_unstable();
    let same_reply = |a: &Op, b: &Op| {
        a.balance_cents() == b.balance_cents()
            && a.version() == b.version()
            && run.to_balance_cents(a) == run.to_balance_cents(b)
            && run.to_version(a) == run.to_version(b)
    };
    for group in keyed.chunk_by(|a, b| a.0 == b.0) {
        for (position, &(_, _, index)) in group.iter().enumerate().skip(1) {
            let op = &run.ops[index as usize];
            replays[index as usize] = group[..position].iter().any(|&(_, _, earlier)| {
                let earlier_op = &run.ops[earlier as usize];
                !replays[earlier as usize]
                    && run.request_id(earlier_op) == run.request_id(op)
                    && same_reply(earlier_op, op)
            });
        }
    }
    replays
}

/// Splits operations into per-account inputs.
fn gather(
    run: &Run,
    fates: &[Fate],
    overrides: &HashMap<u32, Vec<(u32, i64, u64, i64)>>,
) -> Vec<AccountInput> {
    let mut inputs: Vec<AccountInput> = (0..run.accounts.len())
        .map(|_| AccountInput::default())
        .collect();
    for (index, op) in run.ops.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let input_of = |account: u32| account as usize;
        match (op.operation, op.outcome, fates[index as usize]) {
            (Operation::Balance, Outcome::Ok, _) => {
                let input = &mut inputs[input_of(op.account)];
                input.reads.push(index);
                if op.final_read {
                    input.final_read = Some(index);
                }
            }
            // A joint withdrawal's refusal depends on the household, which
            // one account's states cannot judge: it is not placed.
            (Operation::Withdraw | Operation::Transfer, Outcome::Fail, _)
                if run.code(op) == Some("FailedPrecondition") && op.joint_account().is_none() =>
            {
                inputs[input_of(op.account)].refusals.push(index);
            }
            (_, _, Fate::Applied) => match overrides.get(&index) {
                Some(legs) => {
                    for &(account, delta, version, balance) in legs {
                        inputs[input_of(account)].applied.push(AppliedLeg {
                            op: index,
                            delta_cents: delta,
                            balance_cents: balance,
                            version,
                            inferred: true,
                        });
                    }
                }
                None => {
                    for (account, delta) in op.legs() {
                        if let Some((balance, Some(version))) = run.returned(op, account) {
                            inputs[input_of(account)].applied.push(AppliedLeg {
                                op: index,
                                delta_cents: delta,
                                balance_cents: balance,
                                version,
                                inferred: false,
                            });
                        }
                    }
                }
            },
            (_, _, Fate::Maybe) => {
                for (account, delta) in op.legs() {
                    let amount_cents = if delta < 0 {
                        op.amount_cents.saturating_neg()
                    } else {
                        op.amount_cents
                    };
                    inputs[input_of(account)].candidates.push(Candidate {
                        op: index,
                        amount_cents,
                    });
                }
            }
            _ => {}
        }
    }
    inputs
}

/// A request_id, or a customer's intent, applied more than once.
fn double_applications(run: &Run, fates: &[Fate], inferred: &[bool], findings: &mut Vec<Finding>) {
    let applied = |index: usize| fates[index] == Fate::Applied || inferred[index];
    let mut keys: Vec<(u64, bool, u32)> = Vec::new();
    for (index, op) in run.ops.iter().enumerate() {
        if !op.operation.is_mutation() || !applied(index) {
            continue;
        }
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if let Some(sym) = op.request_id() {
            keys.push((
                xxhash_rust::xxh3::xxh3_64(run.strings.get(sym).as_bytes()),
                false,
                index,
            ));
        }
        if let Some(sym) = op.intent() {
            keys.push((
                xxhash_rust::xxh3::xxh3_64(run.strings.get(sym).as_bytes()),
                true,
                index,
            ));
        }
    }
    // Request ids sort before intents: an intent group that names the same
    // operations as a request_id group is the same anomaly, reported once.
    keys.sort_unstable_by_key(|&(hash, by_intent, index)| (by_intent, hash, index));
    let mut reported: Vec<Vec<u32>> = Vec::new();
    let text = |by_intent: bool, index: u32| {
        let op = &run.ops[index as usize];
        let sym = if by_intent {
            op.intent()
        } else {
            op.request_id()
        };
        run.strings
            .get(sym.unwrap_or(crate::read::NO_SYM))
            .to_owned()
    };
    let mut start = 0;
    while start < keys.len() {
        let end =
            start + keys[start..].partition_point(|k| (k.0, k.1) == (keys[start].0, keys[start].1));
        let group = &keys[start..end];
        start = end;
        if group.len() < 2 {
            continue;
        }
        let (_, by_intent, first) = group[0];
        let name = text(by_intent, first);
        let same: Vec<u32> = group
            .iter()
            .map(|k| k.2)
            .filter(|&i| text(by_intent, i) == name)
            .collect();
        if same.len() < 2 || reported.contains(&same) {
            continue;
        }
        reported.push(same.clone());
        let op = &run.ops[first as usize];
        let extra = i64::try_from(same.len() - 1).unwrap_or(i64::MAX);
        let sign = if op.operation == Operation::Deposit {
            1
        } else {
            -1
        };
        let mut finding = Finding::new(
            AnomalyKind::DoubleApplication,
            sign * op.amount_cents.saturating_mul(extra),
        );
        finding.accounts.push(op.account);
        finding.accounts.extend(op.to_account());
        for &index in same.iter().take(BANK_OPERATIONS_LISTED_MAX) {
            finding.add(index, Role::Application);
        }
        finding.detail = format!(
            "{} {name} was applied {} times: a {} of {} cents on {} meant once",
            if by_intent { "intent" } else { "request_id" },
            same.len(),
            op.operation,
            op.amount_cents,
            run.account_name(op.account),
        );
        findings.push(finding);
    }
}

/// Conservation over the accounts with both an opening and a final read.
fn conservation(verdicts: &[account::AccountVerdict]) -> Money {
    let mut money = Money::default();
    for verdict in verdicts {
        let (Some(opening), Some(last)) = (verdict.opening_cents, verdict.final_cents) else {
            if verdict.applied_delta_cents != 0 || verdict.opening_cents.is_some() {
                money.accounts_unknown += 1;
            }
            continue;
        };
        let flows = verdict.flows_cents;
        money.opening_cents += i128::from(opening);
        money.final_cents += i128::from(last);
        money.deposits_cents += flows.deposits;
        money.withdrawals_cents += flows.withdrawals;
        money.fees_cents += flows.fees;
        money.transfers_net_cents += flows.transfers_in - flows.transfers_out;
    }
    money.delta_cents = money.final_cents
        - (money.opening_cents + money.deposits_cents - money.withdrawals_cents - money.fees_cents
            + money.transfers_net_cents);
    money
}

/// Money created or destroyed bank-wide, with the lost updates behind it.
fn money_finding(
    run: &Run,
    money: &Money,
    verdicts: &[account::AccountVerdict],
    findings: &[Finding],
) -> Option<Finding> {
    if money.delta_cents == 0 {
        return None;
    }
    let kind = if money.delta_cents > 0 {
        AnomalyKind::MoneyCreated
    } else {
        AnomalyKind::MoneyDestroyed
    };
    let cents = i64::try_from(money.delta_cents).unwrap_or(if money.delta_cents > 0 {
        i64::MAX
    } else {
        i64::MIN
    });
    let mut finding = Finding::new(kind, cents);
    for (account, verdict) in verdicts.iter().enumerate() {
        if let (Some(opening), Some(last)) = (verdict.opening_cents, verdict.final_cents)
            && i128::from(last) - i128::from(opening) != verdict.applied_delta_cents
        {
            finding
                .accounts
                .push(u32::try_from(account).unwrap_or(u32::MAX));
        }
    }
    for lost in findings
        .iter()
        .filter(|f| f.kind == AnomalyKind::LostUpdate)
    {
        for &(op, role) in &lost.operations {
            if finding.operations.len() >= BANK_OPERATIONS_LISTED_MAX {
                break;
            }
            finding.add(op, role);
        }
    }
    let verb = if cents > 0 { "created" } else { "destroyed" };
    finding.detail = format!(
        "{} cents were {verb}: the final reads hold {} cents, but the openings plus deposits \
         minus withdrawals and fees come to {} cents{}",
        cents.unsigned_abs(),
        money.final_cents,
        money.final_cents - money.delta_cents,
        if finding.operations.is_empty() {
            String::new()
        } else {
            format!(
                " (the lost updates on {} explain it)",
                finding
                    .accounts
                    .iter()
                    .map(|&a| run.account_name(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    Some(finding)
}

fn report(
    run: &Run,
    evidence: &Evidence<'_>,
    findings: Vec<Finding>,
    money: Money,
    counts: Counts,
    undecided: Vec<String>,
    started: Instant,
) -> Report {
    let mut by_kind: HashMap<AnomalyKind, u64> = HashMap::new();
    for finding in &findings {
        *by_kind.entry(finding.kind).or_default() += 1;
    }
    let mut anomalies: Vec<Anomaly> = findings
        .into_iter()
        .take(ANOMALIES_LISTED_MAX)
        .map(|f| anomaly(run, evidence, f))
        .collect();
    anomalies.sort_by_key(|a| (a.from_ns, a.kind));
    let verdict = if !anomalies.is_empty() {
        Verdict::Anomalies
    } else if undecided.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Unknown
    };
    Report {
        schema: REPORT_SCHEMA,
        verdict,
        files: run.files.clone(),
        mode: run.mode.clone(),
        seed: run.seed,
        counts_by_kind: AnomalyKind::ALL
            .into_iter()
            .map(|k| (k, by_kind.get(&k).copied().unwrap_or(0)))
            .collect(),
        money,
        counts,
        anomalies,
        undecided,
        warnings: evidence_warnings(run, evidence),
        wall_unix_ns_at_zero: run.wall_unix_ns_at_zero,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// A journal whose commits all fall outside the run's time is probably
/// another run's: every unknown outcome it does not hold counts as not
/// applied, so say so.
fn evidence_warnings(run: &Run, evidence: &Evidence<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    if let (Some(journal), Some(zero)) = (evidence.journal, run.wall_unix_ns_at_zero) {
        let until = zero.saturating_add(run.ops.iter().map(|o| o.complete_ns).max().unwrap_or(0));
        match journal.span_unix_ns {
            Some((from, to)) if to < zero || from > until => warnings.push(format!(
                "the journal's {} entries were committed outside the run's time (they span {} \
                 to {} ns since the epoch, the run {zero} to {until}): is it this run's journal?",
                journal.entries, from, to
            )),
            None => warnings.push("the journal is empty".to_owned()),
            _ => {}
        }
    }
    warnings
}

fn anomaly(run: &Run, evidence: &Evidence<'_>, finding: Finding) -> Anomaly {
    let operations: Vec<Witness> = finding
        .operations
        .iter()
        .map(|&(index, role)| witness(run, index, role))
        .collect();
    let from_ns = operations.iter().map(|w| w.invoke_ns).min().unwrap_or(0);
    let until_ns = operations.iter().map(|w| w.complete_ns).max().unwrap_or(0);
    let faults = match (evidence.faults, run.wall_unix_ns_at_zero) {
        (Some(log), Some(zero)) => {
            log.active(zero.saturating_add(from_ns), zero.saturating_add(until_ns))
        }
        _ => Vec::new(),
    };
    Anomaly {
        kind: finding.kind,
        accounts: finding
            .accounts
            .iter()
            .map(|&a| run.account_name(a).to_owned())
            .collect(),
        operations,
        operations_unlisted: finding.operations_unlisted,
        cents: finding.cents,
        detail: finding.detail,
        from_ns,
        until_ns,
        faults,
    }
}

fn witness(run: &Run, index: u32, role: Role) -> Witness {
    let op = &run.ops[index as usize];
    let mut accounts = vec![run.account_name(op.account).to_owned()];
    accounts.extend(op.to_account().map(|to| run.account_name(to).to_owned()));
    Witness {
        label: run.label(op),
        request_id: run.request_id(op).to_owned(),
        atm: run.atm_name(op).to_owned(),
        op: op.operation,
        accounts,
        amount_cents: op.amount_cents,
        invoke_ns: op.invoke_ns,
        complete_ns: op.complete_ns,
        outcome: op.outcome,
        balance_cents: op.balance_cents(),
        version: op.version(),
        role,
        index,
    }
}
