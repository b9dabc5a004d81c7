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

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    bank::{Account, AccountId, EntryKind},
    config::OverdraftPolicy,
    journal::{JournalEntry, OpenTransfers},
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

impl FindingKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [FindingKind; 5] = [
        FindingKind::Overdraft,
        FindingKind::LostUpdate,
        FindingKind::Conservation,
        FindingKind::JournalMismatch,
        FindingKind::HalfAppliedTransfer,
    ];

    /// The JSON and metrics name.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Overdraft => "overdraft",
            FindingKind::LostUpdate => "lost_update",
            FindingKind::Conservation => "conservation",
            FindingKind::JournalMismatch => "journal_mismatch",
            FindingKind::HalfAppliedTransfer => "half_applied_transfer",
        }
    }
}

impl AuditReport {
    /// Findings of `kind`: exact for overdrafts, lost updates and half-applied
    /// transfers, which are counted beyond the listed findings' bound; the
    /// listed ones otherwise (at most one conservation finding, and journal
    /// mismatches, which a healthy store never has).
    pub fn count_of(&self, kind: FindingKind) -> u64 {
        match kind {
            FindingKind::Overdraft => self.overdrafts,
            FindingKind::LostUpdate => self.lost_updates,
            FindingKind::HalfAppliedTransfer => self.half_applied_transfers,
            _ => {
                let listed = self.findings.iter().filter(|f| f.kind == kind).count();
                u64::try_from(listed).unwrap_or(u64::MAX)
            }
        }
    }
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

/// Most recent legs remembered per account, to name the commits a lost
/// update wrote over: as many as a finding lists.
const RECENT_LEGS_MAX: usize = REQUEST_IDS_PER_FINDING_MAX;

/// The audit as a fold over the journal in commit order: it keeps state
/// per account (and per transfer still in flight), never the journal, so
/// its memory does not grow with the journal's length.
#[derive(Debug)]
pub struct Auditor {
    policy: OverdraftPolicy,
    accounts: BTreeMap<AccountId, AccountAudit>,
    /// Two-commit transfers whose debit has no credit yet.
    open_transfers: OpenTransfers,
    totals: Totals,
    findings: Vec<Finding>,
    lost_ids: Vec<String>,
    report: AuditReport,
}

/// Sums kept in i128 so that no sum of bounded i64 values can overflow
/// before it is reported.
#[derive(Debug, Default)]
struct Totals {
    opening: i128,
    deposits: i128,
    withdrawals: i128,
    fees: i128,
}

/// One account's replay state: what the journal says was stored, what the
/// money says, the recent legs, and an overdraft still gathering racers.
#[derive(Debug, Default)]
struct AccountAudit {
    last_written: Option<Account>,
    money: i128,
    recent: std::collections::VecDeque<RecentLeg>,
    /// The latest overdraft finding (index into findings) and the state its
    /// culprit read: later legs that read the same state are its racers.
    overdraft: Option<(usize, Account)>,
}

/// A leg remembered to name it in later findings.
#[derive(Debug)]
struct RecentLeg {
    label: String,
    read: Account,
    written: Account,
    opening: bool,
}

impl Auditor {
    /// An auditor for a journal written under `policy`.
    pub fn new(policy: OverdraftPolicy) -> Self {
        Self {
            policy,
            accounts: BTreeMap::new(),
            open_transfers: OpenTransfers::default(),
            totals: Totals::default(),
            findings: Vec::new(),
            lost_ids: Vec::new(),
            report: AuditReport::default(),
        }
    }

    /// Folds in the next entry (entries come in commit order).
    pub fn push(&mut self, entry: &JournalEntry) {
        self.report.journal_entries += 1;
        self.add_totals(entry);
        let label = entry.label();
        // A joint withdrawal answers to the household rule: the account and
        // its joint one together, the joint one as the journal has it now
        // (in commit order, which is what the check should have seen).
        let household = match (entry.kind, &entry.counterparty) {
            (EntryKind::Withdraw, Some(joint)) => Some((
                joint,
                self.accounts.get(joint).map_or(0, |state| state.money),
            )),
            _ => None,
        };
        for leg in &entry.legs {
            self.replay_leg(&label, leg, entry.kind == EntryKind::Open, household);
        }
    }

    fn add_totals(&mut self, entry: &JournalEntry) {
        let amount = i128::from(entry.amount_cents);
        self.totals.fees += i128::from(entry.fee_cents);
        match entry.kind {
            EntryKind::Open => self.totals.opening += amount,
            EntryKind::Deposit => self.totals.deposits += amount,
            EntryKind::Withdraw => self.totals.withdrawals += amount,
            EntryKind::Transfer => {}
            EntryKind::TransferDebit | EntryKind::TransferCredit => self.open_transfers.push(entry),
        }
    }

    fn replay_leg(
        &mut self,
        label: &str,
        leg: &crate::bank::Leg,
        opening: bool,
        household: Option<(&AccountId, i128)>,
    ) {
        let floor = i128::from(self.policy.floor_cents());
        // Look up before inserting: cloning the id for every leg would
        // allocate once per journal entry.
        if !self.accounts.contains_key(&leg.account) {
            self.accounts
                .insert(leg.account.clone(), AccountAudit::default());
        }
        let Some(state) = self.accounts.get_mut(&leg.account) else {
            return;
        };
        let before = state.money;
        state.money += i128::from(leg.delta_cents);
        if let Some((index, read)) = state.overdraft
            && read == leg.read
            && !opening
        {
            // A later leg that checked the same state: a racer of the overdraft.
            let ids = &mut self.findings[index].request_ids;
            if ids.len() < REQUEST_IDS_PER_FINDING_MAX {
                ids.push(label.to_owned());
            }
        }
        if !opening && let Some(stored) = state.last_written.filter(|stored| *stored != leg.read) {
            self.report.lost_updates += 1;
            let finding = lost_update(&leg.account, label, leg, stored, &state.recent);
            self.lost_ids.extend(finding.request_ids.iter().cloned());
            self.lost_ids.sort();
            self.lost_ids.dedup();
            self.lost_ids.truncate(REQUEST_IDS_PER_FINDING_MAX);
            push_bounded(&mut self.findings, finding);
        }
        let partner = household.map_or(0, |(_, money)| money);
        if state.money + partner < floor && before + partner >= floor {
            self.report.overdrafts += 1;
            let joint = household.map(|(joint, _)| joint);
            let mut finding = overdraft(
                &leg.account,
                joint,
                label,
                leg,
                state.money + partner,
                floor,
            );
            // Racers that came before: recent legs that read the same state.
            finding.request_ids.extend(
                state
                    .recent
                    .iter()
                    .filter(|recent| {
                        !recent.opening && recent.read == leg.read && recent.label != label
                    })
                    .map(|recent| recent.label.clone()),
            );
            finding.request_ids.truncate(REQUEST_IDS_PER_FINDING_MAX);
            // Racers that come after are added as they are folded in.
            if self.findings.len() < FINDINGS_MAX {
                state.overdraft = Some((self.findings.len(), leg.read));
            }
            push_bounded(&mut self.findings, finding);
        }
        state.last_written = Some(leg.written);
        // A full ring recycles its oldest entry, and with it the label's buffer.
        let mut recent = if state.recent.len() >= RECENT_LEGS_MAX {
            state.recent.pop_front()
        } else {
            None
        }
        .unwrap_or(RecentLeg {
            label: String::new(),
            read: leg.read,
            written: leg.written,
            opening,
        });
        recent.label.clear();
        recent.label.push_str(label);
        recent.read = leg.read;
        recent.written = leg.written;
        recent.opening = opening;
        state.recent.push_back(recent);
    }

    /// The report, with the stored `accounts` held against the journal.
    pub fn finish(mut self, accounts: &[(AccountId, Account)]) -> AuditReport {
        let mut report = std::mem::take(&mut self.report);
        let in_flight = self.open_transfers.in_flight_cents();
        let balances: i128 = accounts
            .iter()
            .map(|(_, a)| i128::from(a.balance_cents))
            .sum();
        let t = &self.totals;
        let expected = t.opening + t.deposits - t.withdrawals - t.fees;
        report.opening_cents = clamp(t.opening);
        report.deposits_cents = clamp(t.deposits);
        report.withdrawals_cents = clamp(t.withdrawals);
        report.fees_cents = clamp(t.fees);
        report.balances_cents = clamp(balances);
        report.in_flight_cents = clamp(in_flight);
        report.money_delta_cents = clamp(balances + in_flight - expected);
        let mut findings = std::mem::take(&mut self.findings);
        if report.money_delta_cents != 0 {
            findings.push(conservation(&report, std::mem::take(&mut self.lost_ids)));
        }
        let half_applied = self.half_applied();
        report.half_applied_transfers = u64::try_from(half_applied.len()).unwrap_or(u64::MAX);
        findings.extend(half_applied);
        let last_written: BTreeMap<AccountId, Option<Account>> = self
            .accounts
            .iter()
            .map(|(id, state)| (id.clone(), state.last_written))
            .collect();
        findings.extend(mismatches(&last_written, accounts));
        report.clean = findings.is_empty();
        findings.truncate(FINDINGS_MAX);
        report.findings = findings;
        report
    }

    /// One finding per transfer whose debit has no credit.
    fn half_applied(&self) -> Vec<Finding> {
        self.open_transfers
            .debits()
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
}

/// Keeps at most [`FINDINGS_MAX`] findings; the counters stay exact.
fn push_bounded(findings: &mut Vec<Finding>, finding: Finding) {
    if findings.len() < FINDINGS_MAX {
        findings.push(finding);
    }
}

fn clamp(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

fn conservation(report: &AuditReport, lost_ids: Vec<String>) -> Finding {
    let verb = if report.money_delta_cents > 0 {
        "created"
    } else {
        "destroyed"
    };
    Finding {
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
    }
}

/// `leg` (of the entry `label`) read `leg.read` but the store held
/// `stored`: every commit since the read was erased. `recent` holds the
/// account's latest legs, to name them.
fn lost_update(
    account: &AccountId,
    label: &str,
    leg: &crate::bank::Leg,
    stored: Account,
    recent: &std::collections::VecDeque<RecentLeg>,
) -> Finding {
    let read_at = recent
        .iter()
        .rposition(|earlier| earlier.written == leg.read)
        .map_or(0, |position| position + 1);
    let mut ids = vec![label.to_owned()];
    ids.extend(
        recent
            .iter()
            .skip(read_at)
            .map(|erased| erased.label.clone()),
    );
    let erased = recent.len().saturating_sub(read_at);
    ids.truncate(REQUEST_IDS_PER_FINDING_MAX);
    let cents = leg.read.balance_cents.saturating_sub(stored.balance_cents);
    Finding {
        kind: FindingKind::LostUpdate,
        account: Some(account.clone()),
        detail: format!(
            "{label} read {account} at version {} ({} cents) and wrote version {} over {erased} \
             commit(s) made since (the store held version {}, {} cents); {} cents {}",
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

/// The money in `account` (with `joint`'s, for a joint withdrawal) went
/// below `floor` at `leg`; racers that read the same state are added as the
/// journal goes on.
fn overdraft(
    account: &AccountId,
    joint: Option<&AccountId>,
    label: &str,
    leg: &crate::bank::Leg,
    money: i128,
    floor: i128,
) -> Finding {
    let money = i64::try_from(money).unwrap_or(i64::MIN);
    let floor = i64::try_from(floor).unwrap_or(i64::MIN);
    let detail = match joint {
        None => format!(
            "{account} was overdrawn to {money} cents (floor {floor}) by {label}, which checked a \
             balance of {} cents at version {} that other operations had already spent",
            leg.read.balance_cents, leg.read.version,
        ),
        Some(joint) => format!(
            "the household {account} + {joint} was overdrawn to {money} cents (floor {floor}) by \
             {label}, a joint withdrawal from {account} (read at version {}) whose check saw \
             {joint} before another operation had spent from it: write skew",
            leg.read.version,
        ),
    };
    Finding {
        kind: FindingKind::Overdraft,
        account: Some(account.clone()),
        detail,
        request_ids: vec![label.to_owned()],
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
