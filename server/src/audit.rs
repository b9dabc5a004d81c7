//! The audit: holds the journal against the balances and names what went
//! wrong, with the operations behind it and the money at stake.
//!
//! It replays each account's journal legs in commit order, keeping two
//! balances: the one the journal says was stored (each leg's written value)
//! and the one the money says (the running sum of each leg's intended change).
//! - A leg whose read is not the stored state at its commit wrote over the
//!   commits in between: a lost update, costing `read - stored` cents.
//! - The money balance going below the policy's floor is an overdraft, even
//!   when lost updates make the stored balance look fine.
//! - Opening balances plus deposits minus withdrawals and fees must equal the
//!   balances plus money in flight: conservation.
//! - A transfer written as two commits whose debit has no credit is
//!   half-applied. The audit runs with operations held back, so a transfer
//!   still open then will never finish: its money left one account and
//!   reached no other.
//! - The last written state must be what the store holds now.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{
    bank::{Account, AccountId, EntryKind},
    config::OverdraftPolicy,
    journal::JournalEntry,
};

/// Most request_ids named in one finding; the count stays exact.
const REQUEST_IDS_PER_FINDING_MAX: usize = 32;

/// Most findings listed in one report; the counters stay exact.
const FINDINGS_MAX: usize = 1_000;

/// What kind of anomaly a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Money went below the overdraft policy's floor.
    Overdraft,
    /// A write landed on a stale read, erasing the commits in between.
    LostUpdate,
    /// Money was created or destroyed.
    Conservation,
    /// The store disagrees with the journal.
    JournalMismatch,
    /// A transfer's debit was applied and its credit never was.
    HalfAppliedTransfer,
}

/// What the ledger repaired when it started on this data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Commits whose journal reached disk past the store's last checkpoint,
    /// replayed when it opened.
    pub rolled_forward_commits: u64,
    /// Actor transfers found debited but not credited, and credited.
    pub transfers_finished: u64,
}

/// One anomaly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What it is.
    pub kind: FindingKind,
    /// The account, when it concerns one.
    pub account: Option<AccountId>,
    /// The operations behind it (request_id, or `seq:N` without one).
    pub request_ids: Vec<String>,
    /// Money at stake: created (positive) or destroyed (negative); for an
    /// overdraft, how far below the floor (negative).
    pub cents: i64,
    /// One sentence a trainee can read.
    pub detail: String,
}

/// The audit's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// No findings.
    pub clean: bool,
    /// The findings, at most [`FINDINGS_MAX`].
    pub findings: Vec<Finding>,
    /// Sum of opening balances.
    pub opening_cents: i64,
    /// Sum of deposits.
    pub deposits_cents: i64,
    /// Sum of withdrawals.
    pub withdrawals_cents: i64,
    /// Sum of overdraft fees.
    pub fees_cents: i64,
    /// Sum of stored balances.
    pub balances_cents: i64,
    /// Money debited by a two-commit transfer and never credited: each such
    /// transfer is also a half-applied-transfer finding.
    pub in_flight_cents: i64,
    /// (balances + in flight) - (opening + deposits - withdrawals - fees).
    pub money_delta_cents: i64,
    /// Journal entries read.
    pub journal_entries: u64,
    /// Overdraft findings.
    pub overdrafts: u64,
    /// Lost-update findings.
    pub lost_updates: u64,
    /// Half-applied-transfer findings.
    pub half_applied_transfers: u64,
    /// What the ledger repaired at its last start (set by the engine).
    pub recovery: Recovery,
}

/// Audits `journal` (in commit order) against `accounts` under `policy`.
pub fn audit(
    journal: &[JournalEntry],
    accounts: &[(AccountId, Account)],
    policy: &OverdraftPolicy,
) -> AuditReport {
    let mut report = AuditReport {
        journal_entries: u64::try_from(journal.len()).unwrap_or(u64::MAX),
        ..AuditReport::default()
    };
    let mut findings = Vec::new();
    add_totals(&mut report, journal, accounts);
    let mut lost_ids = Vec::new();
    let mut last_written = BTreeMap::new();
    for (account, legs) in legs_by_account(journal) {
        let replay = replay_account(&account, &legs, policy);
        report.lost_updates += replay.lost_updates;
        report.overdrafts += replay.overdrafts;
        for finding in &replay.findings {
            if finding.kind == FindingKind::LostUpdate {
                lost_ids.extend(finding.request_ids.iter().cloned());
            }
        }
        findings.extend(replay.findings);
        last_written.insert(account, replay.last_written);
    }
    if report.money_delta_cents != 0 {
        lost_ids.sort();
        lost_ids.dedup();
        lost_ids.truncate(REQUEST_IDS_PER_FINDING_MAX);
        let verb = if report.money_delta_cents > 0 {
            "created"
        } else {
            "destroyed"
        };
        findings.push(Finding {
            kind: FindingKind::Conservation,
            account: None,
            request_ids: lost_ids,
            cents: report.money_delta_cents,
            detail: format!(
                "money {verb}: balances plus money in flight are {} cents, but opening plus \
                 deposits minus withdrawals and fees is {} cents",
                report.balances_cents.saturating_add(report.in_flight_cents),
                report
                    .balances_cents
                    .saturating_add(report.in_flight_cents)
                    .saturating_sub(report.money_delta_cents),
            ),
        });
    }
    let half_applied = half_applied(journal);
    report.half_applied_transfers = u64::try_from(half_applied.len()).unwrap_or(u64::MAX);
    findings.extend(half_applied);
    findings.extend(mismatches(&last_written, accounts));
    report.clean = findings.is_empty();
    findings.truncate(FINDINGS_MAX);
    report.findings = findings;
    report
}

fn add_totals(
    report: &mut AuditReport,
    journal: &[JournalEntry],
    accounts: &[(AccountId, Account)],
) {
    // i128 so that no sum of bounded i64 values can overflow before it is reported.
    let (mut opening, mut deposits, mut withdrawals, mut fees) = (0i128, 0i128, 0i128, 0i128);
    let mut in_flight: HashMap<&str, i128> = HashMap::new();
    for entry in journal {
        let amount = i128::from(entry.amount_cents);
        fees += i128::from(entry.fee_cents);
        match entry.kind {
            EntryKind::Open => opening += amount,
            EntryKind::Deposit => deposits += amount,
            EntryKind::Withdraw => withdrawals += amount,
            EntryKind::Transfer => {}
            EntryKind::TransferDebit => {
                *in_flight.entry(transfer_key(entry)).or_default() += amount;
            }
            EntryKind::TransferCredit => {
                *in_flight.entry(transfer_key(entry)).or_default() -= amount;
            }
        }
    }
    let in_flight: i128 = in_flight.values().sum();
    let balances: i128 = accounts
        .iter()
        .map(|(_, a)| i128::from(a.balance_cents))
        .sum();
    let expected = opening + deposits - withdrawals - fees;
    let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
    report.opening_cents = clamp(opening);
    report.deposits_cents = clamp(deposits);
    report.withdrawals_cents = clamp(withdrawals);
    report.fees_cents = clamp(fees);
    report.balances_cents = clamp(balances);
    report.in_flight_cents = clamp(in_flight);
    report.money_delta_cents = clamp(balances + in_flight - expected);
}

/// One finding per transfer whose debit has no credit.
fn half_applied(journal: &[JournalEntry]) -> Vec<Finding> {
    let mut open: BTreeMap<&str, &JournalEntry> = BTreeMap::new();
    for entry in journal {
        match entry.kind {
            EntryKind::TransferDebit => {
                open.insert(transfer_key(entry), entry);
            }
            EntryKind::TransferCredit => {
                open.remove(transfer_key(entry));
            }
            _ => {}
        }
    }
    open.into_iter()
        .map(|(transfer_id, debit)| {
            let from = debit.legs.first().map(|leg| leg.account.clone());
            let to = debit
                .counterparty
                .as_ref()
                .map_or_else(|| "?".to_owned(), ToString::to_string);
            Finding {
                kind: FindingKind::HalfAppliedTransfer,
                detail: format!(
                    "transfer {transfer_id} ({}, {} mode) debited {} by {} cents at seq {} and \
                     never credited {to}: the money left one account and reached none",
                    debit.label(),
                    debit.mode,
                    from.as_ref()
                        .map_or_else(|| "?".to_owned(), ToString::to_string),
                    debit.amount_cents,
                    debit.seq,
                ),
                account: from,
                request_ids: vec![debit.label()],
                cents: debit.amount_cents.saturating_neg(),
            }
        })
        .collect()
}

fn transfer_key(entry: &JournalEntry) -> &str {
    entry.transfer_id.as_deref().unwrap_or("")
}

/// One account's legs: (entry label, read, written, delta) in commit order.
struct AccountLeg {
    label: String,
    read: Account,
    written: Account,
    delta_cents: i64,
    opening: bool,
}

fn legs_by_account(journal: &[JournalEntry]) -> BTreeMap<AccountId, Vec<AccountLeg>> {
    let mut by_account: BTreeMap<AccountId, Vec<AccountLeg>> = BTreeMap::new();
    for entry in journal {
        for leg in &entry.legs {
            by_account
                .entry(leg.account.clone())
                .or_default()
                .push(AccountLeg {
                    label: entry.label(),
                    read: leg.read,
                    written: leg.written,
                    delta_cents: leg.delta_cents,
                    opening: entry.kind == EntryKind::Open,
                });
        }
    }
    by_account
}

struct AccountReplay {
    findings: Vec<Finding>,
    lost_updates: u64,
    overdrafts: u64,
    last_written: Option<Account>,
}

fn replay_account(
    account: &AccountId,
    legs: &[AccountLeg],
    policy: &OverdraftPolicy,
) -> AccountReplay {
    let floor = policy.floor_cents();
    let mut replay = AccountReplay {
        findings: Vec::new(),
        lost_updates: 0,
        overdrafts: 0,
        last_written: None,
    };
    let mut money: i128 = 0;
    for (index, leg) in legs.iter().enumerate() {
        let money_before = money;
        money += i128::from(leg.delta_cents);
        if !leg.opening
            && let Some(stored) = replay.last_written.filter(|stored| *stored != leg.read)
        {
            replay.lost_updates += 1;
            replay
                .findings
                .push(lost_update(account, legs, index, stored));
        }
        if money < i128::from(floor) && money_before >= i128::from(floor) {
            replay.overdrafts += 1;
            replay
                .findings
                .push(overdraft(account, legs, index, money, floor));
        }
        replay.last_written = Some(leg.written);
    }
    replay
}

/// The leg at `index` read `legs[index].read` but the store held `stored`:
/// every commit since the read was erased.
fn lost_update(account: &AccountId, legs: &[AccountLeg], index: usize, stored: Account) -> Finding {
    let leg = &legs[index];
    let read_at = legs[..index]
        .iter()
        .rposition(|earlier| earlier.written == leg.read)
        .map_or(0, |position| position + 1);
    let mut ids = vec![leg.label.clone()];
    ids.extend(
        legs[read_at..index]
            .iter()
            .map(|erased| erased.label.clone()),
    );
    let erased = index - read_at;
    ids.truncate(REQUEST_IDS_PER_FINDING_MAX);
    let cents = leg.read.balance_cents.saturating_sub(stored.balance_cents);
    Finding {
        kind: FindingKind::LostUpdate,
        account: Some(account.clone()),
        detail: format!(
            "{} read {account} at version {} ({} cents) and wrote version {} over {erased} \
             commit(s) made since (the store held version {}, {} cents); {} cents {}",
            leg.label,
            leg.read.version,
            leg.read.balance_cents,
            leg.written.version,
            stored.version,
            stored.balance_cents,
            cents.abs(),
            if cents >= 0 { "created" } else { "destroyed" },
        ),
        request_ids: ids,
        cents,
    }
}

/// The money in `account` went below `floor` at the leg at `index`; name it
/// with every operation that read the same version (the racers).
fn overdraft(
    account: &AccountId,
    legs: &[AccountLeg],
    index: usize,
    money: i128,
    floor: i64,
) -> Finding {
    let leg = &legs[index];
    let mut ids = vec![leg.label.clone()];
    ids.extend(
        legs.iter()
            .enumerate()
            .filter(|(other, racer)| *other != index && !racer.opening && racer.read == leg.read)
            .map(|(_, racer)| racer.label.clone()),
    );
    ids.truncate(REQUEST_IDS_PER_FINDING_MAX);
    let money = i64::try_from(money).unwrap_or(i64::MIN);
    Finding {
        kind: FindingKind::Overdraft,
        account: Some(account.clone()),
        detail: format!(
            "{account} was overdrawn to {money} cents (floor {floor}) by {}, which checked a \
             balance of {} cents at version {} that other operations had already spent",
            leg.label, leg.read.balance_cents, leg.read.version,
        ),
        request_ids: ids,
        cents: money.saturating_sub(floor),
    }
}

fn mismatches(
    last_written: &BTreeMap<AccountId, Option<Account>>,
    accounts: &[(AccountId, Account)],
) -> Vec<Finding> {
    let stored: BTreeMap<&AccountId, &Account> = accounts.iter().map(|(id, a)| (id, a)).collect();
    let mut findings = Vec::new();
    for (account, written) in last_written {
        let held = stored.get(account).copied().copied();
        if held != *written {
            findings.push(mismatch(account, *written, held));
        }
    }
    for (account, held) in accounts {
        if !last_written.contains_key(account) {
            findings.push(mismatch(account, None, Some(*held)));
        }
    }
    findings
}

fn mismatch(account: &AccountId, journal: Option<Account>, store: Option<Account>) -> Finding {
    let cents = store.map_or(0, |a| a.balance_cents) - journal.map_or(0, |a| a.balance_cents);
    Finding {
        kind: FindingKind::JournalMismatch,
        account: Some(account.clone()),
        request_ids: Vec::new(),
        cents,
        detail: format!(
            "{account}: the journal last wrote {journal:?} but the store holds {store:?}"
        ),
    }
}
