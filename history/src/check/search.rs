//! Accounts whose replies carry no versions: nothing fixes their order, so
//! it is searched (after Wing and Gong, with Lowe's cache of visited
//! configurations): depth first over the operations real time allows next,
//! both fates of each unknown outcome, the bank model deciding each step.
//! A transfer is judged here by its leg on this account alone. The search
//! has the run's time budget: past it the account is undecided, never valid.

use std::collections::HashSet;

use crate::{
    check::finding::{AnomalyKind, Budget, Finding, Role},
    format::{Operation, Outcome, Policy},
    read::Run,
};

/// Most operations of one account searched: past this the bitsets and the
/// cache grow beyond what a budget of minutes can use.
pub(crate) const SEARCH_OPERATIONS_MAX: usize = 4_096;

/// Search nodes between two looks at the clock.
const NODES_PER_CLOCK_CHECK: u64 = 1_024;

#[derive(Clone, Copy, Debug)]
enum Effect {
    /// Money in; the balance it returned, if it did.
    Credit(i64, Option<i64>),
    /// A debit; the balance and fee it returned, if it did.
    Debit(i64, Option<(i64, i64)>),
    /// A read that returned this balance.
    Read(i64),
    /// A debit of this much that was refused.
    Refused(i64),
}

#[derive(Clone, Copy, Debug)]
struct Step {
    op: u32,
    invoke_ns: u64,
    /// MAX for an unknown outcome: it may have applied any time after.
    complete_ns: u64,
    effect: Effect,
    optional: bool,
}

/// What the search concluded.
pub(crate) enum Searched {
    Valid,
    Invalid(Finding),
    Undecided(String),
}

/// Searches one account's operations for an order that explains them.
pub(crate) fn check(run: &Run, account: u32, opening: Option<i64>, budget: &Budget) -> Searched {
    let name = run.account_name(account);
    let Some(opening) = opening else {
        return Searched::Undecided(format!(
            "{name}: no versions and no opening balance: the account is not judged"
        ));
    };
    let steps = steps(run, account);
    if steps.len() > SEARCH_OPERATIONS_MAX {
        return Searched::Undecided(format!(
            "{name}: {} operations without versions, more than the {SEARCH_OPERATIONS_MAX} a search takes",
            steps.len()
        ));
    }
    let mut search = Search {
        steps: &steps,
        policy: &run.policy,
        budget,
        seen: HashSet::new(),
        nodes: 0,
        deepest: 0,
        out_of_time: false,
    };
    let mut done = vec![0u64; steps.len().div_ceil(64)];
    if search.explore(&mut done, 0, opening) {
        return Searched::Valid;
    }
    if search.out_of_time {
        return Searched::Undecided(format!(
            "{name}: the search for an order of its {} operations without versions ran out of time",
            steps.len()
        ));
    }
    let mut finding = Finding::new(AnomalyKind::BalanceMismatch, 0);
    finding.accounts.push(account);
    // The operations the longest explained prefix could not get past.
    let mut stuck: Vec<&Step> = steps.iter().collect();
    stuck.sort_by_key(|s| s.invoke_ns);
    for step in stuck.iter().skip(search.deepest).take(4) {
        finding.add(step.op, Role::Observer);
    }
    finding.detail = format!(
        "no order of {name}'s {} operations (its replies carry no versions) explains what they \
         returned: the longest explained prefix holds {} of them",
        steps.len(),
        search.deepest
    );
    Searched::Invalid(finding)
}

fn steps(run: &Run, account: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    for (index, op) in run.ops.iter().enumerate() {
        let on_account = op.account == account || op.to_account() == Some(account);
        if !on_account {
            continue;
        }
        let Ok(index) = u32::try_from(index) else {
            break;
        };
        let returned = run.returned(op, account).map(|(b, _)| b);
        let refused = op.outcome == Outcome::Fail && run.code(op) == Some("FailedPrecondition");
        let debit = op.account == account
            && matches!(op.operation, Operation::Withdraw | Operation::Transfer);
        let effect = match (op.operation, op.outcome) {
            (Operation::Balance, Outcome::Ok) => match returned {
                Some(balance) => Effect::Read(balance),
                None => continue,
            },
            (Operation::Balance, _) => continue,
            (_, Outcome::Fail) if refused && debit => Effect::Refused(op.amount_cents),
            (_, Outcome::Fail) => continue,
            _ if debit => Effect::Debit(op.amount_cents, returned.map(|b| (b, op.fee_cents()))),
            _ => Effect::Credit(op.amount_cents, returned),
        };
        let optional = op.outcome == Outcome::Unknown;
        steps.push(Step {
            op: index,
            invoke_ns: op.invoke_ns,
            complete_ns: if optional { u64::MAX } else { op.complete_ns },
            effect,
            optional,
        });
    }
    steps
}

struct Search<'a> {
    steps: &'a [Step],
    policy: &'a Policy,
    budget: &'a Budget,
    seen: HashSet<(Vec<u64>, i64)>,
    nodes: u64,
    deepest: usize,
    out_of_time: bool,
}

impl Search<'_> {
    fn explore(&mut self, done: &mut [u64], count: usize, balance: i64) -> bool {
        if count == self.steps.len() {
            return true;
        }
        self.deepest = self.deepest.max(count);
        self.nodes += 1;
        if self.nodes.is_multiple_of(NODES_PER_CLOCK_CHECK) && self.budget.exhausted() {
            self.out_of_time = true;
        }
        if self.out_of_time || !self.seen.insert((done.to_vec(), balance)) {
            return false;
        }
        let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // Real time: only an operation invoked before every remaining one completed may go next.
        let horizon = (0..self.steps.len())
            .filter(|&i| !is_done(done, i))
            .map(|i| self.steps[i].complete_ns)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.steps.len() {
            if is_done(done, i) || self.steps[i].invoke_ns > horizon {
                continue;
            }
            let step = self.steps[i];
            done[i / 64] |= 1 << (i % 64);
            let mut found = false;
            if step.optional {
                found = self.explore(done, count + 1, balance);
            }
            if !found && let Some(after) = self.apply(step, balance) {
                found = self.explore(done, count + 1, after);
            }
            done[i / 64] &= !(1 << (i % 64));
            if found {
                return true;
            }
            if self.out_of_time {
                return false;
            }
        }
        false
    }

    /// The balance after `step`, or None when the model cannot produce
    /// what it returned.
    fn apply(&self, step: Step, balance: i64) -> Option<i64> {
        match step.effect {
            Effect::Credit(amount, returned) => {
                let after = balance.checked_add(amount)?;
                returned.is_none_or(|r| r == after).then_some(after)
            }
            Effect::Debit(amount, returned) => {
                let (after, fee) = self.policy.debit(balance, amount)?;
                returned
                    .is_none_or(|(r, reported_fee)| r == after && reported_fee == fee)
                    .then_some(after)
            }
            Effect::Read(seen) => (seen == balance).then_some(balance),
            Effect::Refused(amount) => self
                .policy
                .debit(balance, amount)
                .is_none()
                .then_some(balance),
        }
    }
}
