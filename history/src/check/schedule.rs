//! Real time across the whole run: can every operation take effect at one
//! instant inside its own interval, in the order the versions give?
//!
//! Each account's trunk is a chain of mutations, with its reads between the
//! mutation whose state they returned and the next one. A transfer is one
//! event on two chains where the ledger applies it at once, and two events
//! in actor mode, where its legs commit apart. The chains make a graph; an
//! order of instants exists exactly when, giving each event the earliest
//! instant its predecessors allow (never before its invocation), none lands
//! after its completion. The event whose invocation set a late instant is
//! the witness: it began after the other completed, yet comes first.
//!
//! A refusal may have seen any state inside its interval whose balance
//! could not cover it: it is placed in the earliest such slot that the
//! earliest and latest instants of its neighbours leave open.

use std::collections::{HashMap, VecDeque};

use crate::{
    check::{
        account::Chain,
        finding::{AnomalyKind, Finding, Role},
    },
    format::Policy,
    read::Run,
};

/// Most operations named in a finding about an order that cannot exist.
const CYCLE_OPERATIONS_LISTED_MAX: usize = 8;

/// Most chain states named in a wrong-refusal finding.
const REFUSAL_STATES_LISTED_MAX: usize = 4;

/// Rounds of refusal placement across chains coupled by transfers: a
/// conflict needs one round per chain it crosses, and rarely crosses more.
const PLACEMENT_ROUNDS_MAX: usize = 4;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    Mutation,
    Read,
    Refusal,
}

/// 12 bytes: the interval is read from the operation, so that ten million
/// events stay small.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: u32,
    account: u32,
    kind: EventKind,
    /// A mutation whose reply never came, found applied: it may have taken
    /// effect any time after it was sent.
    open_ended: bool,
}

impl Event {
    fn invoke_ns(&self, run: &Run) -> u64 {
        run.ops[self.op as usize].invoke_ns
    }

    fn complete_ns(&self, run: &Run) -> u64 {
        if self.open_ended {
            u64::MAX
        } else {
            run.ops[self.op as usize].complete_ns
        }
    }
}

struct Graph<'a> {
    events: Vec<Event>,
    edges: Vec<(u32, u32)>,
    /// Replayed replies standing for an attempt whose reply was lost: the
    /// operation may have taken effect from that first attempt's invocation.
    first_attempts: &'a HashMap<u32, u64>,
}

impl Graph<'_> {
    fn invoke_ns(&self, run: &Run, event: &Event) -> u64 {
        let own = event.invoke_ns(run);
        self.first_attempts
            .get(&event.op)
            .map_or(own, |&first| first.min(own))
    }

    fn add(&mut self, event: Event) -> u32 {
        self.events.push(event);
        u32::try_from(self.events.len() - 1).unwrap_or(NONE)
    }
}

/// The mutation events of one chain, slot by slot (`[0]`: the opening, NONE).
struct ChainEvents {
    mutations: Vec<u32>,
}

/// Checks real time over every chain; refusals are placed on the way.
pub(crate) fn check(
    run: &Run,
    chains: &[(u32, &Chain)],
    atomic_transfers: bool,
    first_attempts: &HashMap<u32, u64>,
    policy: &Policy,
    findings: &mut Vec<Finding>,
) {
    // Each chain's refusals are placed alone; a transfer couples two chains,
    // so a placement on one can push the other's. Each round places again
    // from the instants the last round's placements implied, until no
    // refusal is in conflict; the round with fewest findings stands.
    //
    // Memory: the edge list is dropped once compiled into rows, and rebuilt
    // (cheaply, in the same order) when the graph changes shape, so that
    // edges, rows and instants are never all held at once.
    let mut pushed: Option<Vec<u64>> = None;
    let mut best: Option<Vec<Finding>> = None;
    for _ in 0..PLACEMENT_ROUNDS_MAX {
        let mut attempt = Vec::new();
        let mut graph = Graph {
            events: Vec::new(),
            edges: Vec::new(),
            first_attempts,
        };
        let chain_events = add_chains(run, chains, atomic_transfers, &mut graph);
        let events_alone = graph.events.len();
        {
            let compiled = Compiled::new(run, &graph);
            graph.edges = Vec::new();
            let mut earliest = propagate(run, &graph, &compiled, None);
            if let Some(pushed) = &pushed {
                earliest
                    .iter_mut()
                    .zip(pushed)
                    .for_each(|(bound, p)| *bound = (*bound).max(*p));
            }
            let latest = latest(run, &graph, &compiled);
            drop(compiled);
            // The same chains again, for their edges; then the refusals.
            graph.events.clear();
            add_chains(run, chains, atomic_transfers, &mut graph);
            let placing = Placing {
                run,
                earliest: &earliest,
                latest: &latest,
                policy,
            };
            for ((account, chain), events) in chains.iter().zip(&chain_events) {
                placing.place(*account, chain, events, &mut graph, &mut attempt);
            }
        }
        drop(chain_events);
        let compiled = Compiled::new(run, &graph);
        graph.edges = Vec::new();
        let instants = propagate(run, &graph, &compiled, Some(&mut attempt));
        let conflicted = attempt.iter().any(|f| f.kind == AnomalyKind::WrongRefusal);
        if best.as_ref().is_none_or(|b| attempt.len() < b.len()) {
            best = Some(attempt);
        }
        if !conflicted {
            break;
        }
        pushed = Some(instants.into_iter().take(events_alone).collect());
    }
    findings.extend(best.unwrap_or_default());
}

/// What placing one chain's refusals needs from the graph without them.
struct Placing<'a> {
    run: &'a Run,
    earliest: &'a [u64],
    latest: &'a [u64],
    policy: &'a Policy,
}

fn add_chains(
    run: &Run,
    chains: &[(u32, &Chain)],
    atomic_transfers: bool,
    graph: &mut Graph<'_>,
) -> Vec<ChainEvents> {
    // One event per transfer where both legs take effect at once.
    let mut shared = vec![NONE; if atomic_transfers { run.ops.len() } else { 0 }];
    let mut all = Vec::with_capacity(chains.len());
    for (account, chain) in chains {
        let mut mutations = vec![NONE];
        for (position, &op_index) in chain.ops.iter().enumerate() {
            let op = &run.ops[op_index as usize];
            let event = Event {
                op: op_index,
                account: *account,
                kind: EventKind::Mutation,
                open_ended: chain.inferred[position],
            };
            let id = if atomic_transfers && op.to_account().is_some() {
                let slot = &mut shared[op_index as usize];
                if *slot == NONE {
                    *slot = graph.add(event);
                }
                *slot
            } else {
                graph.add(event)
            };
            if let Some(&previous) = mutations.last()
                && previous != NONE
            {
                graph.edges.push((previous, id));
            }
            mutations.push(id);
        }
        for &(read, slot) in &chain.reads {
            let id = graph.add(Event {
                op: read,
                account: *account,
                kind: EventKind::Read,
                open_ended: false,
            });
            link_between(graph, &mutations, slot, id);
        }
        all.push(ChainEvents { mutations });
    }
    all
}

/// Edges putting `id` after the mutation of `slot` and before the next.
fn link_between(graph: &mut Graph<'_>, mutations: &[u32], slot: usize, id: u32) {
    if let Some(&before) = mutations.get(slot)
        && before != NONE
    {
        graph.edges.push((before, id));
    }
    if let Some(&after) = mutations.get(slot + 1) {
        graph.edges.push((id, after));
    }
}

/// The graph in compressed rows, with a topological order: built once
/// per shape of the graph and shared by every pass over it. Indices are
/// u32 because ten million operations must be checked in under 2 GB.
struct Compiled {
    starts: Vec<u32>,
    targets: Vec<u32>,
    /// Every event, predecessors first; events on a cycle last.
    sorted: Vec<u32>,
    /// The events on a cycle, in invocation order.
    stuck: Vec<u32>,
}

impl Compiled {
    fn new(run: &Run, graph: &Graph<'_>) -> Self {
        let count = graph.events.len();
        let mut starts = vec![0u32; count + 1];
        for &(from, _) in &graph.edges {
            starts[from as usize + 1] += 1;
        }
        for i in 0..count {
            starts[i + 1] += starts[i];
        }
        // Fill each row from its end, counting its start down to where it
        // was: no second array of cursors.
        let mut targets = vec![0u32; graph.edges.len()];
        for &(from, to) in graph.edges.iter().rev() {
            let row = &mut starts[from as usize + 1];
            *row -= 1;
            targets[*row as usize] = to;
        }
        // Each row's start now sits one place up: move it to its row.
        for i in 0..count {
            starts[i] = starts[i + 1];
        }
        starts[count] = u32::try_from(targets.len()).unwrap_or(u32::MAX);
        let mut compiled = Self {
            starts,
            targets,
            sorted: Vec::new(),
            stuck: Vec::new(),
        };
        compiled.order(run, graph);
        compiled
    }

    fn next(&self, event: usize) -> &[u32] {
        &self.targets[self.starts[event] as usize..self.starts[event + 1] as usize]
    }

    /// Kahn's algorithm.
    fn order(&mut self, run: &Run, graph: &Graph<'_>) {
        let count = graph.events.len();
        let mut indegree = vec![0u32; count];
        for &to in &self.targets {
            indegree[to as usize] += 1;
        }
        let mut queue: VecDeque<u32> = (0..count)
            .filter(|&e| indegree[e] == 0)
            .filter_map(|e| u32::try_from(e).ok())
            .collect();
        let mut sorted = Vec::with_capacity(count);
        while let Some(event) = queue.pop_front() {
            sorted.push(event);
            for &next in self.next(event as usize) {
                indegree[next as usize] -= 1;
                if indegree[next as usize] == 0 {
                    queue.push_back(next);
                }
            }
        }
        let mut stuck: Vec<u32> = (0..count)
            .filter(|&e| indegree[e] > 0)
            .filter_map(|e| u32::try_from(e).ok())
            .collect();
        stuck.sort_unstable_by_key(|&e| graph.invoke_ns(run, &graph.events[e as usize]));
        sorted.extend(&stuck);
        self.sorted = sorted;
        self.stuck = stuck;
    }
}

/// The earliest instant of every event. With `report`, an event pushed
/// past its completion is a finding naming the event whose invocation set
/// the instant; the event is then held at its completion so that later
/// events are judged alone.
fn propagate(
    run: &Run,
    graph: &Graph<'_>,
    compiled: &Compiled,
    mut report: Option<&mut Vec<Finding>>,
) -> Vec<u64> {
    if let Some(findings) = report.as_mut()
        && !compiled.stuck.is_empty()
    {
        findings.push(cycle(run, graph, &compiled.stuck));
    }
    let count = graph.events.len();
    let mut earliest: Vec<u64> = graph
        .events
        .iter()
        .map(|e| graph.invoke_ns(run, e))
        .collect();
    let mut source: Vec<u32> = match report {
        Some(_) => (0..count)
            .map(|e| u32::try_from(e).unwrap_or(NONE))
            .collect(),
        None => Vec::new(),
    };
    for &event in &compiled.sorted {
        let e = event as usize;
        let complete = graph.events[e].complete_ns(run);
        if earliest[e] > complete {
            if let Some(findings) = report.as_mut() {
                findings.push(violation(run, graph, e, source[e] as usize, earliest[e]));
                source[e] = event;
            }
            earliest[e] = complete;
        }
        for &next in compiled.next(e) {
            let n = next as usize;
            if earliest[e] > earliest[n] {
                earliest[n] = earliest[e];
                if !source.is_empty() {
                    source[n] = source[e];
                }
            }
        }
    }
    earliest
}

/// The latest instant of every event: its completion, or earlier if a
/// successor must complete before.
fn latest(run: &Run, graph: &Graph<'_>, compiled: &Compiled) -> Vec<u64> {
    let mut latest: Vec<u64> = graph.events.iter().map(|e| e.complete_ns(run)).collect();
    for &event in compiled.sorted.iter().rev() {
        let e = event as usize;
        for &next in compiled.next(e) {
            latest[e] = latest[e].min(latest[next as usize]);
        }
    }
    latest
}

impl Placing<'_> {
    /// Places a chain's refusals by one sweep over its mutations, choosing
    /// each mutation's instant as early as its bounds allow, and later only
    /// for a refusal that has no later slot left: one that must see the
    /// state before this mutation holds it back. Keeping every instant as
    /// early as possible leaves the most room to every later refusal, so
    /// the sweep finds a placement whenever the chain has one.
    fn place(
        &self,
        account: u32,
        chain: &Chain,
        events: &ChainEvents,
        graph: &mut Graph<'_>,
        findings: &mut Vec<Finding>,
    ) {
        if chain.refusals.is_empty() {
            return;
        }
        let run = self.run;
        let slots = chain.balances_cents.len();
        // The earliest instant each slot can begin (its mutation's; 0 for
        // the opening), and the latest its end can come (MAX past the last).
        let begins: Vec<u64> = (0..slots)
            .map(|s| match events.mutations[s] {
                NONE => 0,
                e => self.earliest[e as usize],
            })
            .collect();
        let ends: Vec<u64> = (0..slots)
            .map(|s| {
                events
                    .mutations
                    .get(s + 1)
                    .map_or(u64::MAX, |&e| self.latest[e as usize])
            })
            .collect();
        let minimum = MinTree::new(&chain.balances_cents);
        let threshold = |r: usize| {
            let op = &run.ops[chain.refusals[r] as usize];
            self.policy.refusal_threshold_cents(op.amount_cents)
        };
        // Each refusal waits at the next slot it could have seen.
        let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); slots];
        for (r, &refusal) in chain.refusals.iter().enumerate() {
            let op = &run.ops[refusal as usize];
            let low = ends.partition_point(|&e| e < op.invoke_ns);
            let high = begins.partition_point(|&b| b <= op.complete_ns);
            match minimum.first_below(low, threshold(r)).filter(|&s| s < high) {
                Some(slot) => waiting[slot].push(r),
                None => findings.push(wrong_refusal(run, account, chain, refusal, low, high)),
            }
        }
        let mut begin = 0u64;
        for slot in 0..slots {
            let here = std::mem::take(&mut waiting[slot]);
            if here.is_empty() {
                begin = begins.get(slot + 1).map_or(begin, |&b| b.max(begin));
                continue;
            }
            let next_earliest = begins.get(slot + 1).map(|&b| b.max(begin));
            let mut end = next_earliest.unwrap_or(u64::MAX);
            let mut later = Vec::with_capacity(here.len());
            for &r in &here {
                let op = &run.ops[chain.refusals[r] as usize];
                if begin > op.complete_ns {
                    // Every slot from here on begins after it completed.
                    findings.push(wrong_refusal(
                        run,
                        account,
                        chain,
                        chain.refusals[r],
                        slot,
                        slot,
                    ));
                    continue;
                }
                let next = minimum
                    .first_below(slot + 1, threshold(r))
                    .filter(|&s| begins[s].max(next_earliest.unwrap_or(0)) <= op.complete_ns);
                if next.is_none() && next_earliest.is_some() {
                    // Its last chance: the next mutation waits until it began.
                    end = end.max(op.invoke_ns);
                }
                later.push((r, next));
            }
            for (r, next) in later {
                let op = &run.ops[chain.refusals[r] as usize];
                if end >= op.invoke_ns {
                    let id = graph.add(Event {
                        op: chain.refusals[r],
                        account,
                        kind: EventKind::Refusal,
                        open_ended: false,
                    });
                    link_between(graph, &events.mutations, slot, id);
                } else if let Some(next) = next {
                    waiting[next].push(r);
                }
            }
            if next_earliest.is_some() {
                begin = end;
            }
        }
    }
}

fn wrong_refusal(
    run: &Run,
    account: u32,
    chain: &Chain,
    refusal: u32,
    low: usize,
    high: usize,
) -> Finding {
    let op = &run.ops[refusal as usize];
    let mut finding = Finding::new(AnomalyKind::WrongRefusal, 0);
    finding.accounts.push(account);
    finding.add(refusal, Role::Refused);
    let window = low..high.max(low);
    for slot in window.clone().take(REFUSAL_STATES_LISTED_MAX) {
        if slot > 0 {
            finding.add(chain.ops[slot - 1], Role::Covered);
        }
    }
    let balances: Vec<String> = window
        .clone()
        .take(REFUSAL_STATES_LISTED_MAX)
        .map(|s| {
            format!(
                "{} at version {}",
                chain.balances_cents[s],
                slot_version(run, account, chain, s)
            )
        })
        .collect();
    finding.detail = if window.is_empty() {
        format!(
            "{} was refused {} cents on {}, but no state of the account existed during its \
             interval",
            run.label(op),
            op.amount_cents,
            run.account_name(account)
        )
    } else {
        format!(
            "{} was refused {} cents on {}, yet every state it could have seen covered it ({})",
            run.label(op),
            op.amount_cents,
            run.account_name(account),
            balances.join(", ")
        )
    };
    finding
}

/// The version of a chain slot, as its mutation's reply gave it.
fn slot_version(run: &Run, account: u32, chain: &Chain, slot: usize) -> String {
    if slot == 0 {
        return "0".to_owned();
    }
    chain
        .ops
        .get(slot - 1)
        .and_then(|&op| run.returned(&run.ops[op as usize], account))
        .and_then(|(_, version)| version)
        .map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn violation(run: &Run, graph: &Graph<'_>, late: usize, early: usize, at_ns: u64) -> Finding {
    let pushed = graph.events[late];
    let setter = graph.events[early];
    let kind = match (setter.kind, pushed.kind) {
        (EventKind::Refusal, _) | (_, EventKind::Refusal) => AnomalyKind::WrongRefusal,
        (EventKind::Read, _) => AnomalyKind::StaleRead,
        _ => AnomalyKind::RealTimeViolation,
    };
    let mut finding = Finding::new(kind, 0);
    finding.accounts.push(pushed.account);
    if setter.account != pushed.account {
        finding.accounts.push(setter.account);
    }
    finding.add(pushed.op, Role::CompletedFirst);
    finding.add(setter.op, Role::OrderedFirst);
    let name = |e: &Event| run.label(&run.ops[e.op as usize]);
    finding.detail = match kind {
        AnomalyKind::StaleRead => format!(
            "{} read {} at a state older than one {} had already seen or written: {} completed \
             at {} ns, before the read began at {at_ns} ns",
            name(&setter),
            run.account_name(setter.account),
            name(&pushed),
            name(&pushed),
            pushed.complete_ns(run),
        ),
        _ => format!(
            "{} completed at {} ns, before {} began at {at_ns} ns, yet the versions on {} put {} \
             first",
            name(&pushed),
            pushed.complete_ns(run),
            name(&setter),
            run.account_name(pushed.account),
            name(&setter),
        ),
    };
    finding
}

fn cycle(run: &Run, graph: &Graph<'_>, stuck: &[u32]) -> Finding {
    let mut finding = Finding::new(AnomalyKind::RealTimeViolation, 0);
    for &event in stuck.iter().take(CYCLE_OPERATIONS_LISTED_MAX) {
        let e = graph.events[event as usize];
        finding.add(e.op, Role::OrderedFirst);
        if !finding.accounts.contains(&e.account) {
            finding.accounts.push(e.account);
        }
    }
    finding.detail = format!(
        "{} operation(s) are ordered one way by the versions of one account and the other way by \
         another's: no single order of the transfers exists (first: {})",
        stuck.len(),
        stuck.first().map_or_else(String::new, |&e| run
            .label(&run.ops[graph.events[e as usize].op as usize]))
    );
    finding
}

/// Range minimum over a chain's balances: the first slot at or after
/// `from` whose balance is below a threshold, in O(log n).
struct MinTree {
    size: usize,
    tree: Vec<i64>,
}

impl MinTree {
    fn new(values: &[i64]) -> Self {
        let size = values.len().next_power_of_two().max(1);
        let mut tree = vec![i64::MAX; 2 * size];
        tree[size..size + values.len()].copy_from_slice(values);
        for node in (1..size).rev() {
            tree[node] = tree[2 * node].min(tree[2 * node + 1]);
        }
        Self { size, tree }
    }

    fn first_below(&self, from: usize, threshold: i64) -> Option<usize> {
        self.descend(1, 0, self.size, from, threshold)
    }

    fn descend(
        &self,
        node: usize,
        low: usize,
        high: usize,
        from: usize,
        threshold: i64,
    ) -> Option<usize> {
        if high <= from || self.tree[node] >= threshold {
            return None;
        }
        if high - low == 1 {
            return Some(low);
        }
        let middle = (low + high) / 2;
        self.descend(2 * node, low, middle, from, threshold)
            .or_else(|| self.descend(2 * node + 1, middle, high, from, threshold))
    }
}
