//! The household rule, across two accounts: a joint withdrawal may take its
//! own account below the floor as long as it and its joint account
//! together stay at or above it. No one account's chain can judge that.
//!
//! The two accounts' trunks are each in a fixed (version) order, so an order
//! of the household is an interleaving of the two: a path through the grid
//! of (mutations of the first applied, mutations of the second applied),
//! where the household's money at a cell is the sum of the two balances
//! there. A step appends the next mutation of one account when real time
//! allows it (no mutation still to come on the other account completed
//! before it began) and, for a joint withdrawal of this household, when
//! the money after it stays at or above the floor. If no path reaches the
//! far corner, no order of the household kept the rule: an overdraft, by the
//! joint withdrawal that blocked the furthest path. Two write-skewed
//! withdrawals, each legal alone, cannot both be.

use std::collections::BTreeSet;

use crate::{
    check::{
        account::Chain,
        finding::{AnomalyKind, Finding, Role},
    },
    format::Policy,
    read::Run,
};

/// Most grid cells searched for one household: beyond, its verdict is
/// unknown (a load of joint withdrawals on two hot accounts).
const CELLS_MAX: usize = 4_000_000;

/// Checks every household a joint withdrawal on a trunk names. Findings go
/// to `findings`; households too large to search to `undecided`.
pub(crate) fn check(
    run: &Run,
    chains: &[(u32, &Chain)],
    policy: &Policy,
    findings: &mut Vec<Finding>,
    undecided: &mut Vec<String>,
) {
    let mut households = BTreeSet::new();
    for (account, chain) in chains {
        for &op in &chain.ops {
            if let Some(joint) = run.ops[op as usize].joint_account() {
                households.insert((*account.min(&joint), *account.max(&joint)));
            }
        }
    }
    let chain_of = |account: u32| chains.iter().find(|(a, _)| *a == account).map(|(_, c)| *c);
    for (first, second) in households {
        let (Some(a), Some(b)) = (chain_of(first), chain_of(second)) else {
            continue;
        };
        // A chain without balances (an account judged by the search alone)
        // cannot be summed.
        if a.balances_cents.len() != a.ops.len() + 1 || b.balances_cents.len() != b.ops.len() + 1 {
            continue;
        }
        let cells = (a.ops.len() + 1).saturating_mul(b.ops.len() + 1);
        if cells > CELLS_MAX {
            undecided.push(format!(
                "the household {} + {}: {} x {} mutations, more orders than the checker searches",
                run.account_name(first),
                run.account_name(second),
                a.ops.len(),
                b.ops.len()
            ));
            continue;
        }
        let household = Household {
            run,
            accounts: [first, second],
            chains: [a, b],
            floor: i128::from(policy.floor_cents()),
        };
        if let Some(finding) = household.search() {
            findings.push(finding);
        }
    }
}

struct Household<'a> {
    run: &'a Run,
    accounts: [u32; 2],
    chains: [&'a Chain; 2],
    floor: i128,
}

/// A step the household rule refused: the joint withdrawal and the money
/// it would have left.
struct Blocked {
    op: u32,
    money: i128,
}

impl Household<'_> {
    /// None when some order keeps the rule; else the finding.
    fn search(&self) -> Option<Finding> {
        let [a, b] = self.chains;
        let (rows, columns) = (a.ops.len() + 1, b.ops.len() + 1);
        // When each mutation may have taken effect, its interval; an
        // inferred one may have applied any time after it was sent.
        let earliest_end = |chain: &Chain| -> Vec<u64> {
            // Suffix minimum of completions: the earliest a mutation still
            // to come on this chain completed.
            let mut suffix = vec![u64::MAX; chain.ops.len() + 1];
            for k in (0..chain.ops.len()).rev() {
                let complete = if chain.inferred[k] {
                    u64::MAX
                } else {
                    self.run.ops[chain.ops[k] as usize].complete_ns
                };
                suffix[k] = suffix[k + 1].min(complete);
            }
            suffix
        };
        let ends = [earliest_end(a), earliest_end(b)];
        let mut reached = vec![false; rows * columns];
        reached[0] = true;
        // The furthest blocked step, by cells applied before it.
        let mut furthest: Option<(usize, Blocked)> = None;
        for i in 0..rows {
            for j in 0..columns {
                if !reached[i * columns + j] {
                    continue;
                }
                for (side, (next, cell)) in [
                    (0, (i, i * columns + j + columns)),
                    (1, (j, i * columns + j + 1)),
                ] {
                    let chain = self.chains[side];
                    if next >= chain.ops.len() {
                        continue;
                    }
                    let other_at = if side == 0 { j } else { i };
                    match self.step(side, next, other_at, &ends[1 - side]) {
                        Ok(()) => reached[cell] = true,
                        Err(Some(blocked)) => {
                            if furthest.as_ref().is_none_or(|(depth, _)| i + j > *depth) {
                                furthest = Some((i + j, blocked));
                            }
                        }
                        Err(None) => {}
                    }
                }
            }
        }
        if reached[rows * columns - 1] {
            return None;
        }
        let (_, blocked) = furthest?;
        Some(self.finding(&blocked))
    }

    /// Whether mutation `next` of chain `side` may come when `other_at`
    /// mutations of the other chain have: Err(None) when real time forbids
    /// it, Err(Some) when the household rule does.
    fn step(
        &self,
        side: usize,
        next: usize,
        other_at: usize,
        other_ends: &[u64],
    ) -> Result<(), Option<Blocked>> {
        let chain = self.chains[side];
        let other = self.chains[1 - side];
        let op_index = chain.ops[next];
        let op = &self.run.ops[op_index as usize];
        // An inferred mutation may have applied any time after it was sent,
        // but not before.
        if other_ends[other_at] < op.invoke_ns {
            return Err(None);
        }
        if op.joint_account() != Some(self.accounts[1 - side]) {
            return Ok(());
        }
        let money =
            i128::from(chain.balances_cents[next + 1]) + i128::from(other.balances_cents[other_at]);
        if money < self.floor {
            return Err(Some(Blocked {
                op: op_index,
                money,
            }));
        }
        Ok(())
    }

    fn finding(&self, blocked: &Blocked) -> Finding {
        let run = self.run;
        let depth = i64::try_from(blocked.money - self.floor).unwrap_or(i64::MIN);
        let mut finding = Finding::new(AnomalyKind::Overdraft, depth);
        finding.accounts.extend(self.accounts);
        finding.add(blocked.op, Role::Overdrew);
        let culprit = &run.ops[blocked.op as usize];
        // The other joint withdrawals of the household that ran alongside:
        // each checked a household the other was about to spend from.
        for (side, chain) in self.chains.iter().enumerate() {
            for &op in &chain.ops {
                let other = &run.ops[op as usize];
                if op != blocked.op
                    && other.joint_account() == Some(self.accounts[1 - side])
                    && other.invoke_ns < culprit.complete_ns
                    && culprit.invoke_ns < other.complete_ns
                {
                    finding.add(op, Role::Racer);
                }
            }
        }
        let [first, second] = self.accounts.map(|a| run.account_name(a));
        finding.detail = format!(
            "the household {first} + {second} went to {} cents (floor {}) in every order the \
             history allows: {} withdrew from {} under the household rule, and {} other joint \
             withdrawal(s) ran alongside it, each checking the household before the others \
             spent from it: write skew",
            blocked.money,
            self.floor,
            run.label(culprit),
            run.account_name(culprit.account),
            finding.operations.len() - 1,
        );
        finding
    }
}
