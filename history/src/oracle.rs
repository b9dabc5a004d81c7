//! A brute-force checker: tries every order of the operations that real
//! time allows, and both fates of every unknown outcome, against the
//! sequential bank model. Exponential, and meant to be: it is the reference
//! the fast checker is tested against on small histories, written to be
//! obviously right rather than quick.
//!
//! The model: an account starts at its opening balance at version 0; a
//! mutation that applies adds one to each version it touches and returns
//! the states it left; a request_id (or intent) applies at most once, and a
//! repeat returns the first reply; a debit the policy refuses changes
//! nothing; a read returns the state. Transfers apply at one instant.

use std::collections::HashMap;

use crate::{
    format::{Operation, Outcome},
    read::{Op, Run},
};

/// Largest history the oracle accepts: 12 operations, final reads among them, are already slow.
pub const OPERATIONS_MAX: usize = 12;

/// The oracle's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Some order and some fates of the unknown outcomes fit the model.
    Valid,
    /// None does.
    Invalid,
    /// The history is beyond the oracle (too long, or an account has no opening).
    TooLarge,
}

#[derive(Clone, Default)]
struct State {
    accounts: Vec<(i64, u64)>,
    /// request_id or intent -> the states its first application left.
    applied: HashMap<String, Vec<(i64, u64)>>,
}

/// Judges `run` by exhaustive search.
pub fn judge(run: &Run) -> Answer {
    if run.ops.len() > OPERATIONS_MAX {
        return Answer::TooLarge;
    }
    let Some(accounts) = run
        .openings
        .iter()
        .map(|o| o.map(|balance| (balance, 0)))
        .collect::<Option<Vec<_>>>()
    else {
        return Answer::TooLarge;
    };
    let state = State {
        accounts,
        applied: HashMap::new(),
    };
    let remaining: Vec<usize> = (0..run.ops.len()).collect();
    if search(run, &state, &remaining) {
        Answer::Valid
    } else {
        Answer::Invalid
    }
}

fn search(run: &Run, state: &State, remaining: &[usize]) -> bool {
    if remaining.is_empty() {
        return true;
    }
    for (position, &index) in remaining.iter().enumerate() {
        let op = &run.ops[index];
        // It may go next only if no other remaining operation completed
        // before it was invoked. An unknown outcome has no completion.
        let blocked = remaining.iter().any(|&other| {
            let other = &run.ops[other];
            other.outcome != Outcome::Unknown && other.complete_ns < op.invoke_ns
        });
        if blocked {
            continue;
        }
        let mut rest = remaining.to_vec();
        rest.remove(position);
        if op.outcome == Outcome::Unknown && search(run, state, &rest) {
            return true;
        }
        if let Some(next) = step(run, state, op)
            && search(run, &next, &rest)
        {
            return true;
        }
    }
    false
}

/// Applies `op` to `state`: the next state, or None when the model cannot
/// produce what the ATM saw.
fn step(run: &Run, state: &State, op: &Op) -> Option<State> {
    let at = |account: u32| state.accounts[account as usize];
    match (op.operation, op.outcome) {
        (Operation::Balance, Outcome::Ok) => {
            let (balance, version) = at(op.account);
            (op.balance_cents() == Some(balance) && op.version().is_none_or(|v| v == version))
                .then(|| state.clone())
        }
        (Operation::Balance, _) => Some(state.clone()),
        (_, Outcome::Fail) => {
            let refused = is_refusal(run, op);
            if !refused {
                return Some(state.clone());
            }
            let (balance, _) = at(op.account);
            run.policy
                .debit(balance, op.amount_cents)
                .is_none()
                .then(|| state.clone())
        }
        (_, outcome) => apply(run, state, op, outcome == Outcome::Ok),
    }
}

fn is_refusal(run: &Run, op: &Op) -> bool {
    matches!(op.operation, Operation::Withdraw | Operation::Transfer)
        && run.code(op) == Some("FailedPrecondition")
}

fn keys(run: &Run, op: &Op) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(id) = op.request_id() {
        keys.push(format!("r:{}", run.strings.get(id)));
    }
    if let Some(intent) = op.intent() {
        keys.push(format!("i:{}", run.strings.get(intent)));
    }
    keys
}

fn apply(run: &Run, state: &State, op: &Op, acknowledged: bool) -> Option<State> {
    let keys = keys(run, op);
    if let Some(first) = keys.iter().find_map(|k| state.applied.get(k)) {
        // A repeat: the first reply comes back and nothing changes. Only a
        // request_id replays; an intent seen again with a new key would apply
        // twice, which the model forbids.
        let replays = op.request_id().is_some()
            && state
                .applied
                .contains_key(&format!("r:{}", run.strings.get(op.request_id()?)));
        if !replays {
            return None;
        }
        if acknowledged && !matches_reply(run, op, first) {
            return None;
        }
        return Some(state.clone());
    }
    let mut next = state.clone();
    let mut written = Vec::new();
    let mut fee = 0;
    match op.operation {
        Operation::Deposit => {
            let (balance, version) = next.accounts[op.account as usize];
            let after = (balance.checked_add(op.amount_cents)?, version + 1);
            next.accounts[op.account as usize] = after;
            written.push(after);
        }
        Operation::Withdraw | Operation::Transfer => {
            let (balance, version) = next.accounts[op.account as usize];
            let Some((after, charged)) = run.policy.debit(balance, op.amount_cents) else {
                // Refused: an acknowledged reply cannot be explained; an
                // unknown one simply did not apply.
                return (!acknowledged).then(|| state.clone());
            };
            fee = charged;
            next.accounts[op.account as usize] = (after, version + 1);
            written.push((after, version + 1));
            if let Some(to) = op.to_account() {
                let (balance, version) = next.accounts[to as usize];
                let after = (balance.checked_add(op.amount_cents)?, version + 1);
                next.accounts[to as usize] = after;
                written.push(after);
            }
        }
        Operation::Balance => return Some(next),
    }
    if acknowledged {
        if !matches_reply(run, op, &written) {
            return None;
        }
        if op.fee_cents() != fee {
            return None;
        }
    }
    for key in keys {
        next.applied.insert(key, written.clone());
    }
    Some(next)
}

fn matches_reply(run: &Run, op: &Op, written: &[(i64, u64)]) -> bool {
    let first = written.first().copied();
    let second = written.get(1).copied();
    let fits = |balance: Option<i64>, version: Option<u64>, state: Option<(i64, u64)>| match (
        balance, state,
    ) {
        (None, _) => true,
        (Some(b), Some((sb, sv))) => b == sb && version.is_none_or(|v| v == sv),
        (Some(_), None) => false,
    };
    fits(op.balance_cents(), op.version(), first)
        && fits(run.to_balance_cents(op), run.to_version(op), second)
}
