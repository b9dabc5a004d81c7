//! Seeded histories of a correct ledger, and ways to corrupt them.
//!
//! A simulated bank serves concurrent ATMs: each operation gets an interval
//! and one instant inside it where it takes effect, the instants are
//! applied in order to the sequential model, and each ATM records what it
//! would have seen. Some replies are lost (unknown outcomes, applied or
//! not). The result is linearizable by construction, which makes it the
//! "must accept" half of the property tests and the input of the checker's
//! benchmark; the corruptions make the "must reject" half.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io::{self, Write},
};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::format::{Header, OpLine, OpenLine, Operation, Outcome, Policy};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Config {
    /// Every random choice follows from it.
    pub seed: u64,
    /// Accounts, named `acct-0`...
    pub accounts: u32,
    /// Concurrent ATMs.
    pub atms: u32,
    /// Operations in all, final reads apart.
    pub operations: u64,
    /// The overdraft policy.
    pub policy: Policy,
    /// Every account's opening balance.
    pub opening_cents: i64,
    /// Largest amount drawn (amounts are 1..=this).
    pub amount_cents_max: i64,
    /// Weights of deposit, withdraw, transfer, balance.
    pub mix: [u32; 4],
    /// Probability that a mutation's reply is lost (its outcome unknown).
    pub unknown_probability: f64,
    /// Longest interval of one operation, ns.
    pub latency_ns_max: u64,
    /// Longest pause between one ATM's operations, ns.
    pub think_ns_max: u64,
    /// The mode written in the header.
    pub mode: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 1,
            accounts: 1_000,
            atms: 64,
            operations: 100_000,
            policy: Policy::Reject,
            opening_cents: 100_000,
            amount_cents_max: 10_000,
            mix: [40, 40, 15, 5],
            unknown_probability: 0.0,
            latency_ns_max: 2_000_000,
            think_ns_max: 100_000,
            mode: "mutex".to_owned(),
        }
    }
}

/// One ATM's operation in flight.
struct Pending {
    line: OpLine,
    operation: Operation,
    first: usize,
    second: usize,
    lost_reply: bool,
    applies_if_lost: bool,
}

/// Writes a format-2 history of `config` to `out`; returns the lines written.
pub fn write(config: &Config, out: &mut impl Write) -> io::Result<u64> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut header = Header::new(
        &config.mode,
        config.seed,
        config.policy,
        1_700_000_000_000_000_000,
    );
    header.source = Some("overdraft_history::generate".to_owned());
    header.atms = Some(config.atms);
    let mut lines = 0u64;
    let mut emit = |out: &mut dyn Write, value: &dyn erased::Line| -> io::Result<()> {
        value.write_to(out)?;
        out.write_all(b"\n")?;
        lines += 1;
        Ok(())
    };
    emit(out, &header)?;
    let accounts = usize::try_from(config.accounts.max(1)).unwrap_or(1);
    let names: Vec<String> = (0..accounts).map(|a| format!("acct-{a}")).collect();
    for name in &names {
        emit(out, &OpenLine::new(name, config.opening_cents, 0))?;
    }
    let mut bank: Vec<(i64, u64)> = vec![(config.opening_cents, 0); accounts];
    let mut touched = vec![false; accounts];
    // ATMs by the instant their current operation takes effect.
    let mut heap: BinaryHeap<Reverse<(u64, u32, u64)>> = BinaryHeap::new();
    let mut pending: Vec<Option<Pending>> = Vec::new();
    let mut issued = 0u64;
    for atm in 0..config.atms.max(1) {
        if issued < config.operations {
            let start = rng.random_range(0..=config.think_ns_max);
            let (p, instant) = draw(config, &mut rng, &names, atm, issued, start);
            heap.push(Reverse((instant, atm, issued)));
            pending.push(Some(p));
            issued += 1;
        } else {
            pending.push(None);
        }
    }
    let mut end_ns = 0u64;
    while let Some(Reverse((_, atm, _))) = heap.pop() {
        let slot = &mut pending[atm as usize];
        let Some(mut p) = slot.take() else { continue };
        serve(config, &mut bank, &mut touched, &mut p);
        end_ns = end_ns.max(p.line.complete_ns);
        let next_start = p.line.complete_ns + rng.random_range(0..=config.think_ns_max);
        emit(out, &p.line)?;
        if issued < config.operations {
            let (next, instant) = draw(config, &mut rng, &names, atm, issued, next_start);
            *slot = Some(next);
            heap.push(Reverse((instant, atm, issued)));
            issued += 1;
        }
    }
    for (index, name) in names.iter().enumerate() {
        if touched[index] {
            let (balance, version) = bank[index];
            emit(out, &OpLine::final_read(name, end_ns + 1, balance, version))?;
        }
    }
    Ok(lines)
}

/// The history as lines in memory (for small property-test histories).
pub fn lines(config: &Config) -> Vec<String> {
    let mut buffer = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = write(config, &mut buffer);
    String::from_utf8_lossy(&buffer)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn draw(
    config: &Config,
    rng: &mut StdRng,
    names: &[String],
    atm: u32,
    k: u64,
    invoke_ns: u64,
) -> (Pending, u64) {
    let total: u32 = config.mix.iter().sum::<u32>().max(1);
    let mut pick = rng.random_range(0..total);
    let mut operation = Operation::Balance;
    for (weight, op) in config.mix.iter().zip(Operation::ALL) {
        if pick < *weight {
            operation = op;
            break;
        }
        pick -= weight;
    }
    let first = rng.random_range(0..names.len());
    let mut second = rng.random_range(0..names.len());
    if operation == Operation::Transfer && names.len() < 2 {
        operation = Operation::Deposit;
    }
    while operation == Operation::Transfer && second == first {
        second = rng.random_range(0..names.len());
    }
    let duration = rng.random_range(1..=config.latency_ns_max.max(1));
    let complete_ns = invoke_ns + duration;
    let instant = rng.random_range(invoke_ns..=complete_ns);
    let mut line = OpLine::new(operation);
    line.atm = Some(atm);
    line.invoke_ns = invoke_ns;
    line.complete_ns = complete_ns;
    if operation == Operation::Transfer {
        line.from_account_id = Some(names[first].clone());
        line.to_account_id = Some(names[second].clone());
    } else {
        line.account_id = Some(names[first].clone());
    }
    if operation.is_mutation() {
        line.amount_cents = Some(rng.random_range(1..=config.amount_cents_max.max(1)));
        line.request_id = format!("g{}-{atm}-{k}", config.seed);
    }
    let lost_reply =
        operation.is_mutation() && rng.random_bool(config.unknown_probability.clamp(0.0, 1.0));
    let applies_if_lost = rng.random_bool(0.5);
    (
        Pending {
            line,
            operation,
            first,
            second,
            lost_reply,
            applies_if_lost,
        },
        instant,
    )
}

/// Applies one operation at its instant and fills in what its ATM saw.
fn serve(config: &Config, bank: &mut [(i64, u64)], touched: &mut [bool], p: &mut Pending) {
    let amount = p.line.amount_cents.unwrap_or(0);
    let line = &mut p.line;
    touched[p.first] = true;
    if p.operation == Operation::Transfer {
        touched[p.second] = true;
    }
    if p.lost_reply && !p.applies_if_lost {
        line.outcome = Some(Outcome::Unknown);
        line.code = Some("Unavailable".to_owned());
        return;
    }
    let applied = match p.operation {
        Operation::Balance => {
            let (balance, version) = bank[p.first];
            line.outcome = Some(Outcome::Ok);
            line.balance_cents = Some(balance);
            line.version = Some(version);
            return;
        }
        Operation::Deposit => {
            let (balance, version) = bank[p.first];
            bank[p.first] = (balance.saturating_add(amount), version + 1);
            line.balance_cents = Some(bank[p.first].0);
            line.version = Some(bank[p.first].1);
            true
        }
        Operation::Withdraw | Operation::Transfer => {
            let (balance, version) = bank[p.first];
            match config.policy.debit(balance, amount) {
                None => false,
                Some((after, fee)) => {
                    bank[p.first] = (after, version + 1);
                    line.balance_cents = Some(after);
                    line.version = Some(version + 1);
                    line.fee_cents = Some(fee);
                    if p.operation == Operation::Transfer {
                        let (to_balance, to_version) = bank[p.second];
                        bank[p.second] = (to_balance.saturating_add(amount), to_version + 1);
                        line.to_balance_cents = Some(bank[p.second].0);
                        line.to_version = Some(bank[p.second].1);
                    }
                    true
                }
            }
        }
    };
    if p.lost_reply {
        line.outcome = Some(Outcome::Unknown);
        line.code = Some("Unavailable".to_owned());
        line.balance_cents = None;
        line.version = None;
        line.to_balance_cents = None;
        line.to_version = None;
        line.fee_cents = None;
    } else if applied {
        line.outcome = Some(Outcome::Ok);
    } else {
        line.outcome = Some(Outcome::Fail);
        line.code = Some("FailedPrecondition".to_owned());
    }
}

/// Serializing the three line types through one function.
mod erased {
    use std::io::{self, Write};

    pub(super) trait Line {
        fn write_to(&self, out: &mut dyn Write) -> io::Result<()>;
    }

    impl<T: serde::Serialize> Line for T {
        fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
            serde_json::to_writer(out, self).map_err(io::Error::other)
        }
    }
}

/// Ways to break a correct history, each one thing a buggy ledger or a
/// race would do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// An acknowledged balance off by some cents.
    Balance,
    /// Two mutations of one account swap their versions and balances.
    SwapVersions,
    /// A mutation read a state another had already replaced (a race):
    /// it returns the version and balance it would have written then.
    LoseUpdate,
    /// A refusal turned into an acknowledgement with the state unchanged.
    Refusal,
    /// An acknowledged debit reported as refused.
    WrongRefusal,
    /// An operation's interval moved to end before an earlier-versioned one began.
    Time,
    /// A read returns an older state.
    StaleRead,
}

impl Corruption {
    /// Every corruption.
    pub const ALL: [Corruption; 7] = [
        Corruption::Balance,
        Corruption::SwapVersions,
        Corruption::LoseUpdate,
        Corruption::Refusal,
        Corruption::WrongRefusal,
        Corruption::Time,
        Corruption::StaleRead,
    ];
}

/// Applies `corruption` to the history in `lines` (JSON lines); false when
/// the history offers no place for it.
pub fn corrupt(lines: &mut [String], corruption: Corruption, rng: &mut impl Rng) -> bool {
    let mut ops: Vec<(usize, OpLine)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| serde_json::from_str::<OpLine>(l).ok().map(|op| (i, op)))
        .filter(|(_, op)| op.op != "open" && !op.final_read)
        .collect();
    let ok_mutations: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].1.outcome == Some(Outcome::Ok) && ops[i].1.op != "balance")
        .collect();
    let changed = match corruption {
        Corruption::Balance => pick(&ok_mutations, rng).is_some_and(|i| {
            let line = &mut ops[i].1;
            line.balance_cents = line.balance_cents.map(|b| b + rng.random_range(1..=50));
            true
        }),
        Corruption::SwapVersions => swap_versions(&mut ops, &ok_mutations, rng),
        Corruption::LoseUpdate => lose_update(&mut ops, &ok_mutations, rng),
        Corruption::Refusal => {
            let refused: Vec<usize> = (0..ops.len())
                .filter(|&i| ops[i].1.outcome == Some(Outcome::Fail))
                .collect();
            pick(&refused, rng).is_some_and(|i| {
                let line = &mut ops[i].1;
                line.outcome = Some(Outcome::Ok);
                line.code = None;
                line.balance_cents = Some(0);
                line.version = Some(1);
                true
            })
        }
        Corruption::WrongRefusal => {
            let debits: Vec<usize> = ok_mutations
                .iter()
                .copied()
                .filter(|&i| ops[i].1.op == "withdraw")
                .collect();
            pick(&debits, rng).is_some_and(|i| {
                let line = &mut ops[i].1;
                line.outcome = Some(Outcome::Fail);
                line.code = Some("FailedPrecondition".to_owned());
                line.balance_cents = None;
                line.version = None;
                line.fee_cents = None;
                true
            })
        }
        Corruption::Time => {
            let all: Vec<usize> = (0..ops.len()).collect();
            match (pick(&all, rng), pick(&all, rng)) {
                (Some(a), Some(b)) if a != b && ops[b].1.invoke_ns > 2 => {
                    let end = ops[b].1.invoke_ns - 1;
                    let line = &mut ops[a].1;
                    let length = line.complete_ns - line.invoke_ns;
                    line.complete_ns = end;
                    line.invoke_ns = end.saturating_sub(length);
                    true
                }
                _ => false,
            }
        }
        Corruption::StaleRead => {
            let reads: Vec<usize> = (0..ops.len())
                .filter(|&i| ops[i].1.op == "balance" && ops[i].1.version.is_some_and(|v| v > 0))
                .collect();
            pick(&reads, rng).is_some_and(|i| {
                let line = &mut ops[i].1;
                line.version = line.version.map(|v| v - 1);
                true
            })
        }
    };
    if changed {
        for (index, op) in ops {
            if let Ok(text) = serde_json::to_string(&op) {
                lines[index] = text;
            }
        }
    }
    changed
}

fn pick(indices: &[usize], rng: &mut impl Rng) -> Option<usize> {
    (!indices.is_empty()).then(|| indices[rng.random_range(0..indices.len())])
}

fn account_of(op: &OpLine) -> Option<&str> {
    op.account_id.as_deref().or(op.from_account_id.as_deref())
}

fn swap_versions(ops: &mut [(usize, OpLine)], ok: &[usize], rng: &mut impl Rng) -> bool {
    let Some(a) = pick(ok, rng) else { return false };
    let account = account_of(&ops[a].1).map(str::to_owned);
    let same: Vec<usize> = ok
        .iter()
        .copied()
        .filter(|&i| i != a && account_of(&ops[i].1).map(str::to_owned) == account)
        .collect();
    let Some(b) = pick(&same, rng) else {
        return false;
    };
    let (va, ba) = (ops[a].1.version, ops[a].1.balance_cents);
    let (vb, bb) = (ops[b].1.version, ops[b].1.balance_cents);
    ops[a].1.version = vb;
    ops[a].1.balance_cents = bb;
    ops[b].1.version = va;
    ops[b].1.balance_cents = ba;
    true
}

/// The mutation at version v (v > 1) on its `from` account claims it read
/// version v - 2 instead: it returns version v - 1 and the balance that
/// state plus its change gives.
fn lose_update(ops: &mut [(usize, OpLine)], ok: &[usize], rng: &mut impl Rng) -> bool {
    let late: Vec<usize> = ok
        .iter()
        .copied()
        .filter(|&i| ops[i].1.version.is_some_and(|v| v > 2) && ops[i].1.op != "transfer")
        .collect();
    let Some(target) = pick(&late, rng) else {
        return false;
    };
    let account = account_of(&ops[target].1).map(str::to_owned);
    let version = ops[target].1.version.unwrap_or(0);
    // The state at version - 2 is what the mutation at version - 2 wrote.
    let written_then = ok.iter().copied().find(|&i| {
        account_of(&ops[i].1).map(str::to_owned) == account && ops[i].1.version == Some(version - 2)
    });
    let Some(base) = written_then.and_then(|i| ops[i].1.balance_cents) else {
        return false;
    };
    let line = &mut ops[target].1;
    let amount = line.amount_cents.unwrap_or(0);
    let change = if line.op == "deposit" {
        amount
    } else {
        -(amount + line.fee_cents.unwrap_or(0))
    };
    line.version = Some(version - 1);
    line.balance_cents = Some(base + change);
    true
}
