//! One account's history, guided by the versions the ledger returned.
//!
//! Every applied mutation is an edge from the state it read to the state it
//! wrote: (version - 1, balance - change) to (version, balance). The states
//! form a tree rooted at the opening. In a correct ledger the tree is one
//! path. Where it forks, two mutations read the same state and only one
//! line of writes survived: the ledger's *trunk*, traced back from the final
//! read (last writer wins where the history cannot tell). Every applied
//! mutation off the trunk is a lost update, reported once per branch with
//! the trunk mutation that wrote over it; the rest of the account is judged
//! from the trunk, the state the ledger actually reached.
//!
//! A state some mutation read that no recorded operation wrote is a gap:
//! operations with unknown outcomes may fill it (searched, within the time
//! budget); if none can, the ledger reached a state the history does not
//! explain.

use std::collections::HashMap;

use crate::{
    check::finding::{AnomalyKind, Budget, Finding, Role},
    format::Policy,
    read::{Op, Run},
};

/// Most mutations with unknown outcomes chained to explain one gap: each
/// more multiplies the search.
const GAP_OPERATIONS_MAX: usize = 8;

/// Most operations named in one lost-update finding; the money stays exact.
const BRANCH_OPERATIONS_LISTED_MAX: usize = 32;

/// No leg.
const NONE: u32 = u32::MAX;

/// A mutation known to have applied, with the state it wrote.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AppliedLeg {
    /// The operation (index into [`Run::ops`]).
    pub(crate) op: u32,
    /// The change it made to this account.
    pub(crate) delta_cents: i64,
    /// The balance it wrote.
    pub(crate) balance_cents: i64,
    /// The version it wrote.
    pub(crate) version: u64,
    /// Its outcome was unknown; the checker inferred it applied.
    pub(crate) inferred: bool,
}

/// A mutation whose outcome is unknown: it may have applied.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub(crate) op: u32,
    /// Money in (positive) or a debit (negative), before any fee: the fee
    /// depends on the balance it met, so the search applies the policy.
    pub(crate) amount_cents: i64,
}

impl Candidate {
    /// The balance it leaves from `balance`, or None if the policy refuses it.
    fn apply(&self, balance: i64, policy: &Policy) -> Option<i64> {
        if self.amount_cents >= 0 {
            balance.checked_add(self.amount_cents)
        } else {
            policy
                .debit(balance, self.amount_cents.saturating_neg())
                .map(|(after, _)| after)
        }
    }
}

/// What the checker gathered for one account.
#[derive(Debug, Default)]
pub(crate) struct AccountInput {
    pub(crate) applied: Vec<AppliedLeg>,
    pub(crate) candidates: Vec<Candidate>,
    /// Balance reads that returned a state (final reads included).
    pub(crate) reads: Vec<u32>,
    /// Refused debits (withdrawals, transfers from this account).
    pub(crate) refusals: Vec<u32>,
    /// The read taken after the run, if any.
    pub(crate) final_read: Option<u32>,
}

/// The account as the ledger left it: the trunk in version order.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    /// The trunk's mutations in version order (index into [`Run::ops`]).
    pub(crate) ops: Vec<u32>,
    /// Whether each was inferred from an unknown outcome.
    pub(crate) inferred: Vec<bool>,
    /// The balance at each slot: `[0]` the opening, `[k]` after `ops[k-1]`.
    pub(crate) balances_cents: Vec<i64>,
    /// Reads with the slot whose state they returned.
    pub(crate) reads: Vec<(u32, usize)>,
    /// Refused debits, placed by the schedule.
    pub(crate) refusals: Vec<u32>,
}

/// What one account's check found.
#[derive(Debug, Default)]
pub(crate) struct AccountVerdict {
    pub(crate) chain: Chain,
    pub(crate) findings: Vec<Finding>,
    /// Opening balance (given, or inferred from the first read state).
    pub(crate) opening_cents: Option<i64>,
    /// The final read's balance, when the run has one.
    pub(crate) final_cents: Option<i64>,
    /// Sum of the changes of every mutation that applied (lost or not).
    pub(crate) applied_delta_cents: i128,
    /// The same changes by kind: deposits, withdrawals, fees, transfers in, transfers out.
    pub(crate) flows_cents: Flows,
    /// Unknown outcomes the check found applied.
    pub(crate) inferred_applied: Vec<u32>,
    /// The search ran out of time: the account's verdict is unknown.
    pub(crate) undecided: Option<String>,
}

/// Money that moved through one account, by kind.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flows {
    pub(crate) deposits: i128,
    pub(crate) withdrawals: i128,
    pub(crate) fees: i128,
    pub(crate) transfers_in: i128,
    pub(crate) transfers_out: i128,
}

fn flows(run: &Run, account: u32, legs: &[AppliedLeg]) -> Flows {
    let mut flows = Flows::default();
    for leg in legs {
        let op = &run.ops[leg.op as usize];
        let amount = i128::from(op.amount_cents);
        // A debit's fee is what its change took beyond the amount.
        let fee = -i128::from(leg.delta_cents) - amount;
        match op.operation {
            crate::format::Operation::Deposit => flows.deposits += amount,
            crate::format::Operation::Withdraw => {
                flows.withdrawals += amount;
                flows.fees += fee;
            }
            crate::format::Operation::Transfer if op.account == account => {
                flows.transfers_out += amount;
                flows.fees += fee;
            }
            crate::format::Operation::Transfer => flows.transfers_in += amount,
            crate::format::Operation::Balance => {}
        }
    }
    flows
}

/// The state a mutation or a read saw: (version, balance).
type State = (u64, i64);

enum Parent {
    Root,
    Leg(u32),
    Missing,
}

/// Checks one account. `opening` is the open line's balance, if any.
pub(crate) fn check(
    run: &Run,
    account: u32,
    mut input: AccountInput,
    opening: Option<i64>,
    policy: &Policy,
    budget: &Budget,
) -> AccountVerdict {
    let mut verdict = AccountVerdict::default();
    let op = |index: u32| &run.ops[index as usize];
    sort_legs(run, &mut input.applied);
    let opening = opening.or_else(|| infer_opening(run, &input.applied));
    verdict.opening_cents = opening;
    let root = opening.map(|balance| (0u64, balance));

    // Fill gaps: states read or returned that no applied leg wrote.
    let required = required_states(run, account, &input, root);
    let mut used = vec![false; input.candidates.len()];
    // States filled so far, kept apart and sorted: re-sorting every leg
    // after each gap would cost a sort per unknown outcome.
    let mut filled: Vec<AppliedLeg> = Vec::new();
    for (state, consumer) in required {
        if Some(state) == root
            || find(&input.applied, state).is_some()
            || find(&filled, state).is_some()
        {
            continue;
        }
        let known = Known {
            legs: &input.applied,
            filled: &filled,
            root,
        };
        match explain(
            run,
            &input,
            &known,
            state,
            op(consumer),
            &mut used,
            policy,
            budget,
        ) {
            Explained::Chain(legs) => {
                // Lower versions are explained first, so a later gap may
                // start from a state this one filled.
                verdict
                    .inferred_applied
                    .extend(legs.iter().map(|leg| leg.op));
                filled.extend(legs);
                sort_legs(run, &mut filled);
            }
            Explained::No => {}
            Explained::OutOfTime => {
                verdict.undecided = Some(format!(
                    "{}: the search for operations that explain version {} ran out of time",
                    run.account_name(account),
                    state.0
                ));
            }
            Explained::TooDeep => {
                verdict.undecided = Some(format!(
                    "{}: version {} is more than {GAP_OPERATIONS_MAX} versions past any state \
                     the history holds; the unknown outcomes between are not searched",
                    run.account_name(account),
                    state.0
                ));
            }
        }
    }
    if !filled.is_empty() {
        input.applied.extend(filled);
        sort_legs(run, &mut input.applied);
    }

    let legs = &input.applied;
    let parents: Vec<Parent> = legs.iter().map(|leg| parent_of(legs, leg, root)).collect();
    for (index, leg) in legs.iter().enumerate() {
        if matches!(parents[index], Parent::Missing) {
            verdict
                .findings
                .push(unexplained_read(run, account, leg, legs, root));
        }
    }

    wrong_fees(run, account, legs, &parents, policy, &mut verdict.findings);
    let tip = tip_of(run, account, &input, legs, root);
    let on_trunk = trace_trunk(run, legs, &parents, tip);
    lost_updates(run, account, legs, &parents, &on_trunk, &mut verdict);
    overdrafts(run, account, legs, &parents, opening, policy, &mut verdict);
    verdict.applied_delta_cents = legs.iter().map(|leg| i128::from(leg.delta_cents)).sum();
    verdict.flows_cents = flows(run, account, legs);
    verdict.final_cents = input
        .final_read
        .and_then(|index| run.returned(op(index), account))
        .map(|(balance, _)| balance);
    verdict.chain = build_chain(run, account, &input, &on_trunk, root, &mut verdict.findings);
    if verdict.undecided.is_some() {
        // A gap the search could not settle leaves the trunk in doubt: no
        // finding, no chain for the schedule, no conservation. Unknown,
        // never a false anomaly and never valid.
        verdict.findings.clear();
        verdict.chain = Chain::default();
        verdict.opening_cents = None;
        verdict.final_cents = None;
    }
    verdict
}

/// A debit whose reply disagrees with the policy about the fee, given the
/// balance it read: the customer was charged wrongly.
fn wrong_fees(
    run: &Run,
    account: u32,
    legs: &[AppliedLeg],
    parents: &[Parent],
    policy: &Policy,
    findings: &mut Vec<Finding>,
) {
    for (leg, parent) in legs.iter().zip(parents) {
        let op = &run.ops[leg.op as usize];
        let debit = leg.delta_cents < 0 && op.account == account;
        if leg.inferred || !debit || matches!(parent, Parent::Missing) {
            continue;
        }
        let read = leg.balance_cents.saturating_sub(leg.delta_cents);
        let Some((after, fee)) = policy.debit(read, op.amount_cents) else {
            // Refused by the policy yet applied: the money view reports the
            // overdraft this leaves.
            continue;
        };
        if fee != op.fee_cents() || after != leg.balance_cents {
            let mut finding = Finding::new(AnomalyKind::BalanceMismatch, fee - op.fee_cents());
            finding.accounts.push(account);
            finding.add(leg.op, Role::Observer);
            finding.detail = format!(
                "{} debited {} cents from {read} cents on {} and charged a fee of {} cents; the policy charges {fee} cents there",
                run.label(op),
                op.amount_cents,
                run.account_name(account),
                op.fee_cents(),
            );
            findings.push(finding);
        }
    }
}

/// Sorts by (version, balance, completion): equal states sit together, the
/// first of them stands for the state.
fn sort_legs(run: &Run, legs: &mut [AppliedLeg]) {
    legs.sort_unstable_by_key(|leg| {
        (
            leg.version,
            leg.balance_cents,
            run.ops[leg.op as usize].complete_ns,
            leg.op,
        )
    });
}

/// Format 1 histories carry no opening: the first mutation's read stands for it.
fn infer_opening(run: &Run, legs: &[AppliedLeg]) -> Option<i64> {
    legs.iter()
        .filter(|leg| leg.version == 1)
        .min_by_key(|leg| run.ops[leg.op as usize].complete_ns)
        .map(|leg| leg.balance_cents.saturating_sub(leg.delta_cents))
}

/// The first leg that wrote `state`, by binary search.
fn find(legs: &[AppliedLeg], state: State) -> Option<u32> {
    let position = legs.partition_point(|leg| (leg.version, leg.balance_cents) < state);
    legs.get(position)
        .filter(|leg| (leg.version, leg.balance_cents) == state)
        .and_then(|_| u32::try_from(position).ok())
}

fn read_state(leg: &AppliedLeg) -> Option<State> {
    leg.version
        .checked_sub(1)
        .map(|version| (version, leg.balance_cents.saturating_sub(leg.delta_cents)))
}

fn parent_of(legs: &[AppliedLeg], leg: &AppliedLeg, root: Option<State>) -> Parent {
    let Some(state) = read_state(leg) else {
        return Parent::Missing;
    };
    if Some(state) == root {
        return Parent::Root;
    }
    match find(legs, state) {
        Some(index) => Parent::Leg(index),
        None => Parent::Missing,
    }
}

/// Every state that must have existed, with the operation that saw it.
fn required_states(
    run: &Run,
    account: u32,
    input: &AccountInput,
    root: Option<State>,
) -> Vec<(State, u32)> {
    let mut required: Vec<(State, u32)> = input
        .applied
        .iter()
        .filter_map(|leg| read_state(leg).map(|state| (state, leg.op)))
        .filter(|(state, _)| state.0 > 0 || root.is_some())
        .collect();
    for &read in &input.reads {
        if let Some((balance, Some(version))) = run.returned(&run.ops[read as usize], account) {
            required.push(((version, balance), read));
        }
    }
    required.sort_unstable();
    required.dedup_by_key(|(state, _)| *state);
    required
}

enum Explained {
    Chain(Vec<AppliedLeg>),
    No,
    OutOfTime,
    /// The gap is longer than the search goes: neither explained nor not.
    TooDeep,
}

/// Searches for unknown-outcome mutations that lead from a state the
/// history has to `target`: k of them, in some order, from a state k
/// versions below.
#[allow(clippy::too_many_arguments)]
fn explain(
    run: &Run,
    input: &AccountInput,
    known: &Known<'_>,
    target: State,
    consumer: &Op,
    used: &mut [bool],
    policy: &Policy,
    budget: &Budget,
) -> Explained {
    let usable: Vec<usize> = (0..input.candidates.len())
        .filter(|&c| {
            !used[c] && run.ops[input.candidates[c].op as usize].invoke_ns <= consumer.complete_ns
        })
        .collect();
    if usable.is_empty() {
        return Explained::No;
    }
    let depth_max = GAP_OPERATIONS_MAX.min(usable.len());
    let mut anchored = false;
    for depth in 1..=depth_max {
        let Some(anchor_version) = target.0.checked_sub(depth as u64) else {
            break;
        };
        let anchors = known.states_at(anchor_version);
        anchored |= !anchors.is_empty();
        for anchor in anchors {
            let mut search = Sequence {
                input,
                policy,
                budget,
                target: target.1,
                taken: vec![false; usable.len()],
                picked: Vec::new(),
            };
            match search.extend(&usable, anchor, depth) {
                Search::Found => {
                    let mut legs = Vec::new();
                    let mut balance = anchor;
                    for (step, (candidate, after)) in search.picked.into_iter().enumerate() {
                        used[candidate] = true;
                        legs.push(AppliedLeg {
                            op: input.candidates[candidate].op,
                            delta_cents: after.saturating_sub(balance),
                            balance_cents: after,
                            version: anchor_version + step as u64 + 1,
                            inferred: true,
                        });
                        balance = after;
                    }
                    return Explained::Chain(legs);
                }
                Search::OutOfTime => return Explained::OutOfTime,
                Search::None => {}
            }
        }
    }
    if !anchored && usable.len() > GAP_OPERATIONS_MAX {
        return Explained::TooDeep;
    }
    Explained::No
}

fn states_at(legs: &[AppliedLeg], root: Option<State>, version: u64) -> Vec<i64> {
    let mut balances: Vec<i64> = legs
        .iter()
        .skip(legs.partition_point(|leg| leg.version < version))
        .take_while(|leg| leg.version == version)
        .map(|leg| leg.balance_cents)
        .collect();
    if let Some((root_version, balance)) = root
        && root_version == version
    {
        balances.push(balance);
    }
    balances.dedup();
    balances
}

/// The states known while gaps are filled: the legs, the legs filled so
/// far, and the opening.
struct Known<'a> {
    legs: &'a [AppliedLeg],
    filled: &'a [AppliedLeg],
    root: Option<State>,
}

impl Known<'_> {
    fn states_at(&self, version: u64) -> Vec<i64> {
        let mut balances = states_at(self.legs, self.root, version);
        balances.extend(states_at(self.filled, None, version));
        balances.sort_unstable();
        balances.dedup();
        balances
    }
}

enum Search {
    Found,
    None,
    OutOfTime,
}

/// A depth-first search for an order of candidates that takes a balance
/// to the target in a given number of steps, the policy deciding each fee.
struct Sequence<'a> {
    input: &'a AccountInput,
    policy: &'a Policy,
    budget: &'a Budget,
    target: i64,
    taken: Vec<bool>,
    /// (candidate, balance after it).
    picked: Vec<(usize, i64)>,
}

impl Sequence<'_> {
    fn extend(&mut self, usable: &[usize], balance: i64, steps: usize) -> Search {
        if steps == 0 {
            return if balance == self.target {
                Search::Found
            } else {
                Search::None
            };
        }
        if self.budget.exhausted() {
            return Search::OutOfTime;
        }
        for (position, &candidate) in usable.iter().enumerate() {
            if self.taken[position] {
                continue;
            }
            let Some(after) = self.input.candidates[candidate].apply(balance, self.policy) else {
                continue;
            };
            self.taken[position] = true;
            self.picked.push((candidate, after));
            match self.extend(usable, after, steps - 1) {
                Search::None => {
                    self.picked.pop();
                    self.taken[position] = false;
                }
                other => return other,
            }
        }
        Search::None
    }
}

/// The state the trunk ends in: the final read's, or the highest version
/// written (its last writer).
fn tip_of(
    run: &Run,
    account: u32,
    input: &AccountInput,
    legs: &[AppliedLeg],
    root: Option<State>,
) -> Option<u32> {
    if let Some(final_read) = input.final_read
        && let Some((balance, Some(version))) = run.returned(&run.ops[final_read as usize], account)
    {
        if Some((version, balance)) == root {
            return None;
        }
        if let Some(index) = find(legs, (version, balance)) {
            return Some(index);
        }
        // The final read's state was checked with the other reads.
    }
    let last_version = legs.last()?.version;
    let first = legs.partition_point(|leg| leg.version < last_version);
    (first..legs.len())
        .max_by_key(|&index| run.ops[legs[index].op as usize].complete_ns)
        .and_then(|index| u32::try_from(index).ok())
        .and_then(|index| find(legs, state_of(&legs[index as usize])))
}

fn state_of(leg: &AppliedLeg) -> State {
    (leg.version, leg.balance_cents)
}

/// Marks the trunk: from the tip back to the opening, at each state the
/// writer that completed last. Where a read state is missing, the trunk
/// continues from the latest state below it.
fn trace_trunk(run: &Run, legs: &[AppliedLeg], parents: &[Parent], tip: Option<u32>) -> Vec<bool> {
    let mut on_trunk = vec![false; legs.len()];
    let mut node = tip;
    while let Some(canonical) = node {
        let state = state_of(&legs[canonical as usize]);
        let producers =
            (canonical as usize..legs.len()).take_while(|&i| state_of(&legs[i]) == state);
        let Some(writer) = producers.max_by_key(|&i| run.ops[legs[i].op as usize].complete_ns)
        else {
            break;
        };
        on_trunk[writer] = true;
        node = match parents[writer] {
            Parent::Root => None,
            Parent::Leg(parent) => Some(parent),
            Parent::Missing => {
                let below = legs.partition_point(|leg| leg.version < state.0);
                below
                    .checked_sub(1)
                    .and_then(|last| find(legs, state_of(&legs[last])))
            }
        };
    }
    on_trunk
}

/// One finding per branch off the trunk: the mutations whose effect was
/// erased, and the trunk mutation that wrote over them.
fn lost_updates(
    run: &Run,
    account: u32,
    legs: &[AppliedLeg],
    parents: &[Parent],
    on_trunk: &[bool],
    verdict: &mut AccountVerdict,
) {
    if on_trunk.iter().all(|&t| t) {
        return;
    }
    // The trunk mutation that read each trunk state (NONE past the tip):
    // the overwriter of any branch leaving that state.
    let mut next_on_trunk = vec![NONE; legs.len()];
    let mut first_on_trunk = NONE;
    let mut trunk_state = vec![false; legs.len()];
    for (index, parent) in parents.iter().enumerate() {
        if !on_trunk[index] {
            continue;
        }
        if let Some(canonical) = find(legs, state_of(&legs[index])) {
            trunk_state[canonical as usize] = true;
        }
        let leg = u32::try_from(index).unwrap_or(NONE);
        match parent {
            Parent::Root => first_on_trunk = leg,
            Parent::Leg(p) => next_on_trunk[*p as usize] = leg,
            Parent::Missing => {}
        }
    }
    // Each off-trunk leg belongs to the branch that left the trunk where its
    // ancestors did; legs come in version order, so a parent's branch is known.
    let mut branch_of = vec![NONE; legs.len()];
    let mut branches: HashMap<u32, Vec<u32>> = HashMap::new();
    for (index, parent) in parents.iter().enumerate() {
        if on_trunk[index] {
            continue;
        }
        let leg = u32::try_from(index).unwrap_or(NONE);
        let root = match parent {
            Parent::Leg(p) if !trunk_state[*p as usize] && branch_of[*p as usize] != NONE => {
                branch_of[*p as usize]
            }
            _ => leg,
        };
        branch_of[index] = root;
        branches.entry(root).or_default().push(leg);
    }
    let mut roots: Vec<u32> = branches.keys().copied().collect();
    roots.sort_unstable();
    for root in roots {
        let members = &branches[&root];
        let overwriter = match parents[root as usize] {
            Parent::Root => first_on_trunk,
            Parent::Leg(p) => next_on_trunk[p as usize],
            Parent::Missing => NONE,
        };
        verdict
            .findings
            .push(lost_update(run, account, legs, root, members, overwriter));
    }
}

fn lost_update(
    run: &Run,
    account: u32,
    legs: &[AppliedLeg],
    root: u32,
    members: &[u32],
    overwriter: u32,
) -> Finding {
    let erased: i128 = members
        .iter()
        .map(|&m| i128::from(legs[m as usize].delta_cents))
        .sum();
    let cents = i64::try_from(-erased).unwrap_or(i64::MAX);
    let first = &legs[root as usize];
    let (read_version, read_balance) = read_state(first).unwrap_or((0, 0));
    let mut finding = Finding::new(AnomalyKind::LostUpdate, cents);
    finding.accounts.push(account);
    for &member in members.iter().take(BRANCH_OPERATIONS_LISTED_MAX) {
        finding.add(legs[member as usize].op, Role::Erased);
    }
    finding.operations_unlisted = members.len().saturating_sub(BRANCH_OPERATIONS_LISTED_MAX);
    let name = run.account_name(account);
    let lost = run.label(&run.ops[first.op as usize]);
    let change = |d: i128| {
        if d >= 0 {
            format!("+{d}")
        } else {
            d.to_string()
        }
    };
    finding.detail = if overwriter == NONE {
        format!(
            "{lost} wrote {name} version {} and its {} cents were erased: no later state of the \
             account includes them",
            first.version,
            change(erased)
        )
    } else {
        let over = &legs[overwriter as usize];
        finding.add(over.op, Role::Overwriter);
        let over_label = run.label(&run.ops[over.op as usize]);
        let whose = if members.len() == 1 {
            format!("{lost}'s change")
        } else {
            format!(
                "the changes of {lost} and {} operation(s) after it",
                members.len() - 1
            )
        };
        format!(
            "{over_label} and {lost} both read {name} at version {read_version} ({read_balance} \
             cents); {over_label} wrote version {} last, erasing {whose} ({} cents): {} cents {}",
            over.version,
            change(erased),
            cents.unsigned_abs(),
            if cents >= 0 { "created" } else { "destroyed" },
        )
    };
    finding
}

/// The money view: the opening plus every applied change, in version then
/// completion order (what the customers were told). It going below the
/// policy's floor is an overdraft, even where lost updates kept the stored
/// balance above it; but not by a joint withdrawal, which may, as long as
/// its household does not (judged across the two accounts).
fn overdrafts(
    run: &Run,
    account: u32,
    legs: &[AppliedLeg],
    parents: &[Parent],
    opening: Option<i64>,
    policy: &Policy,
    verdict: &mut AccountVerdict,
) {
    let Some(opening) = opening else {
        return;
    };
    let floor = i128::from(policy.floor_cents());
    let mut order: Vec<usize> = (0..legs.len()).collect();
    order.sort_unstable_by_key(|&i| (legs[i].version, run.ops[legs[i].op as usize].complete_ns));
    let mut money = i128::from(opening);
    // Below the floor by joint withdrawals alone, which answer to the
    // household rule (household.rs): any other debit from there overdraws.
    let mut excused = false;
    for index in order {
        let before = money;
        let delta = legs[index].delta_cents;
        money += i128::from(delta);
        let joint = run.ops[legs[index].op as usize].joint_account().is_some();
        let fresh = before >= floor || excused;
        excused = if money >= floor {
            false
        } else if joint {
            fresh
        } else {
            // A deposit keeps the excuse; a debit is judged below.
            excused && delta >= 0
        };
        if money < floor && fresh && !joint && delta < 0 {
            let depth = i64::try_from(money - floor).unwrap_or(i64::MIN);
            let mut finding = Finding::new(AnomalyKind::Overdraft, depth);
            finding.accounts.push(account);
            let leg = &legs[index];
            finding.add(leg.op, Role::Overdrew);
            for racer in racers(legs, parents, index) {
                finding.add(legs[racer].op, Role::Racer);
            }
            let (read_version, read_balance) = read_state(leg).unwrap_or((0, 0));
            finding.detail = format!(
                "{} took {} below its floor of {floor} cents: the money says {money} cents. It \
                 checked {read_balance} cents at version {read_version}, which {} other \
                 operation(s) had read and spent too",
                run.label(&run.ops[leg.op as usize]),
                run.account_name(account),
                finding.operations.len() - 1,
            );
            verdict.findings.push(finding);
        }
    }
}

/// Other legs that read the same state as `legs[index]`.
fn racers(legs: &[AppliedLeg], parents: &[Parent], index: usize) -> Vec<usize> {
    let version = legs[index].version;
    let same_parent = |i: usize| match (&parents[i], &parents[index]) {
        (Parent::Root, Parent::Root) => true,
        (Parent::Leg(a), Parent::Leg(b)) => a == b,
        _ => false,
    };
    let start = legs.partition_point(|leg| leg.version < version);
    (start..legs.len())
        .take_while(|&i| legs[i].version == version)
        .filter(|&i| i != index && same_parent(i))
        .take(BRANCH_OPERATIONS_LISTED_MAX)
        .collect()
}

fn unexplained_read(
    run: &Run,
    account: u32,
    leg: &AppliedLeg,
    legs: &[AppliedLeg],
    root: Option<State>,
) -> Finding {
    let (version, balance) = read_state(leg).unwrap_or((0, leg.balance_cents));
    let mut finding = Finding::new(AnomalyKind::BalanceMismatch, 0);
    finding.accounts.push(account);
    finding.add(leg.op, Role::Observer);
    let known = states_at(legs, root, version);
    if let Some(&nearest) = known.first() {
        finding.cents = balance.saturating_sub(nearest);
    }
    finding.detail = format!(
        "{} returned {} cents at version {} on {}, so it read {balance} cents at version \
         {version}; no operation in the history wrote that state{}",
        run.label(&run.ops[leg.op as usize]),
        leg.balance_cents,
        leg.version,
        run.account_name(account),
        match known.first() {
            Some(b) => format!(" (version {version} held {b} cents)"),
            None => String::new(),
        }
    );
    finding
}

/// The trunk as a chain of slots, and the reads placed on it.
fn build_chain(
    run: &Run,
    account: u32,
    input: &AccountInput,
    on_trunk: &[bool],
    root: Option<State>,
    findings: &mut Vec<Finding>,
) -> Chain {
    let legs = &input.applied;
    let mut chain = Chain {
        balances_cents: vec![root.map_or(0, |(_, b)| b)],
        refusals: input.refusals.clone(),
        ..Chain::default()
    };
    let mut slot_of_state: HashMap<State, usize> = HashMap::new();
    if let Some(state) = root {
        slot_of_state.insert(state, 0);
    }
    for (index, leg) in legs.iter().enumerate() {
        if !on_trunk[index] {
            continue;
        }
        if chain.ops.is_empty()
            && root.is_none()
            && let Some(state) = read_state(leg)
        {
            // Without an opening, slot 0 is what the first trunk mutation read.
            chain.balances_cents[0] = state.1;
            slot_of_state.insert(state, 0);
        }
        chain.ops.push(leg.op);
        chain.inferred.push(leg.inferred);
        chain.balances_cents.push(leg.balance_cents);
        slot_of_state.insert(state_of(leg), chain.ops.len());
    }
    for &read in &input.reads {
        let Some((balance, Some(version))) = run.returned(&run.ops[read as usize], account) else {
            continue;
        };
        if let Some(&slot) = slot_of_state.get(&(version, balance)) {
            chain.reads.push((read, slot));
        } else if find(legs, (version, balance)).is_none() {
            findings.push(unexplained_balance(
                run, account, read, version, balance, legs, root,
            ));
        }
        // A read of a state off the trunk saw a write that was later
        // erased: its lost update is the finding.
    }
    chain
}

fn unexplained_balance(
    run: &Run,
    account: u32,
    read: u32,
    version: u64,
    balance: i64,
    legs: &[AppliedLeg],
    root: Option<State>,
) -> Finding {
    let mut finding = Finding::new(AnomalyKind::BalanceMismatch, 0);
    finding.accounts.push(account);
    finding.add(read, Role::Observer);
    let known = states_at(legs, root, version);
    if let Some(&held) = known.first() {
        finding.cents = balance.saturating_sub(held);
    }
    let op = &run.ops[read as usize];
    finding.detail = format!(
        "{} read {} at version {version} as {balance} cents, a state no operation in the history \
         wrote{}",
        if op.final_read {
            "the final read".to_owned()
        } else {
            run.label(op)
        },
        run.account_name(account),
        match known.first() {
            Some(held) => format!(" (version {version} held {held} cents)"),
            None => String::new(),
        }
    );
    finding
}
