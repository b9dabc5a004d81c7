//! One ATM: the loop that draws an operation, sends it, times it from its
//! intended send time, and folds the outcome into the ATM's results (its
//! status counts, its model of each balance, and its history lines).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use overdraft_history::format::Operation;
use overdraft_proto::transport::Channel;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{plan::AtmPlan, progress::Progress, workload::account_id_into};
use crate::{
    history::{HistorySink, OpLine, Outcome},
    latency::Latency,
};

/// Longest one operation may take before its outcome counts as unknown.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than its gRPC deadline an attempt may wait for the
/// transport to give up (a paused ledger holds the connection open).
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// The backoff before the first resend: long enough that a ledger that
/// dropped a connection has accepted the next; it doubles per attempt,
/// with jitter so that a crowd does not resend in step.
const RESEND_BACKOFF_FIRST: Duration = Duration::from_millis(50);

/// The longest backoff between two attempts: about a restart of the
/// ledger on a small data directory.
const RESEND_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Mixed into an ATM's seed for its resend jitter ("jitter" in ASCII).
const JITTER_STREAM: u64 = 0x6a69_7474_6572;

/// One ATM's share of the results.
#[derive(Debug, Default)]
pub(super) struct AtmResult {
    pub(super) latency: BTreeMap<Operation, Latency>,
    pub(super) statuses: BTreeMap<String, u64>,
    pub(super) deltas: HashMap<u32, i64>,
    pub(super) unknown: u64,
}

pub(super) fn merge(total: &mut AtmResult, part: AtmResult) {
    for (method, latency) in part.latency {
        total.latency.entry(method).or_default().merge(&latency);
    }
    for (code, count) in part.statuses {
        *total.statuses.entry(code).or_default() += count;
    }
    for (account, delta) in part.deltas {
        *total.deltas.entry(account).or_default() += delta;
    }
    total.unknown += part.unknown;
}

/// One operation, drawn.
#[derive(Debug)]
struct Drawn {
    method: Operation,
    first: u32,
    second: u32,
    amount_cents: i64,
}

pub(super) async fn run_atm(
    channel: Channel,
    plan: AtmPlan,
    sink: Option<HistorySink>,
    progress: Arc<Progress>,
) -> AtmResult {
    let mut rng = StdRng::seed_from_u64(plan.stream());
    // The resends' jitter draws from a generator of its own, so that the
    // operations a seed sends do not depend on which replies were lost.
    let mut jitter = StdRng::seed_from_u64(plan.stream() ^ JITTER_STREAM);
    let mut result = AtmResult::default();
    // The accounts' ids are written into these two each call, not allocated.
    let (mut from_id, mut to_id) = (String::new(), String::new());
    let mut k = 0u64;
    while plan.more(k, Instant::now()) {
        let intended = plan.intended(k);
        // Only the open model waits: a timer, even one already due, costs a
        // trip through tokio's millisecond wheel.
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let mut method = plan.mix.pick(&mut rng);
        let first = plan.picker.pick(&mut rng);
        let second = plan.picker.pick_other(&mut rng, first);
        if method == Operation::Transfer && second == first {
            method = Operation::Deposit;
        }
        let drawn = Drawn {
            method,
            first,
            second,
            amount_cents: plan.amounts.pick(&mut rng),
        };
        let request_id = plan.request_id(k);
        account_id_into(&mut from_id, drawn.first);
        let to = (drawn.method == Operation::Transfer).then(|| {
            account_id_into(&mut to_id, drawn.second);
            to_id.as_str()
        });
        let request = crate::call::Request {
            operation: drawn.method,
            account: &from_id,
            to,
            joint: None,
            amount_cents: drawn.amount_cents,
            request_id,
            deadline: plan.deadline_per_attempt,
        };
        let record = send_attempts(&channel, &plan, request, intended, &mut jitter, &sink).await;
        let complete = Instant::now();
        result
            .latency
            .entry(method)
            .or_default()
            .record(complete.saturating_duration_since(intended));
        account_outcome(&mut result, &drawn, &record);
        progress.operations.fetch_add(1, Ordering::Relaxed);
        if record.outcome != Some(Outcome::Ok) {
            progress.errors.fetch_add(1, Ordering::Relaxed);
        }
        k += 1;
    }
    result
}

/// Sends `request` until an attempt answers or `plan.attempts` have gone
/// unanswered, each after a backoff, all with the same request_id (the
/// ledger applies it at most once); records every attempt in the history
/// and returns the last.
async fn send_attempts(
    ledger: &Channel,
    plan: &AtmPlan,
    request: crate::call::Request<'_>,
    intended: Instant,
    rng: &mut StdRng,
    sink: &Option<HistorySink>,
) -> OpLine {
    let wait_max = plan
        .deadline_per_attempt
        .map_or(OPERATION_TIMEOUT, |deadline| deadline + DEADLINE_GRACE);
    let mut attempt = 1;
    let mut invoked = intended;
    loop {
        let (mut record, _) = crate::call::send(ledger, request.clone(), wait_max).await;
        let complete = Instant::now();
        let again = record.outcome == Some(Outcome::Unknown) && attempt < plan.attempts;
        if let Some(sink) = sink {
            let mut line = record.clone();
            line.atm = Some(plan.atm);
            line.atm_name = plan.atm_name();
            if plan.attempts > 1 {
                line.intent = Some(request.request_id.clone());
            }
            line.invoke_ns = plan.clock.since(invoked);
            line.complete_ns = plan.clock.since(complete);
            sink.record(line).await;
        }
        if !again {
            record.atm = Some(plan.atm);
            return record;
        }
        let ceiling = RESEND_BACKOFF_FIRST
            .saturating_mul(1 << (attempt - 1).min(8))
            .min(RESEND_BACKOFF_MAX);
        let backoff = ceiling.mul_f64(rng.random_range(0.5..=1.0));
        tokio::time::sleep(backoff).await;
        attempt += 1;
        invoked = Instant::now();
    }
}

/// Folds one operation's outcome into the ATM's status counts and model.
fn account_outcome(result: &mut AtmResult, drawn: &Drawn, record: &OpLine) {
    let code = record.code.as_deref().unwrap_or("Ok");
    match result.statuses.get_mut(code) {
        Some(count) => *count += 1,
        None => {
            result.statuses.insert(code.to_owned(), 1);
        }
    }
    match record.outcome {
        Some(Outcome::Ok) => {
            let amount = drawn.amount_cents;
            match drawn.method {
                Operation::Deposit => *result.deltas.entry(drawn.first).or_default() += amount,
                Operation::Withdraw => {
                    let fee = record.fee_cents.unwrap_or_default();
                    *result.deltas.entry(drawn.first).or_default() -= amount + fee;
                }
                Operation::Transfer => {
                    *result.deltas.entry(drawn.first).or_default() -= amount;
                    *result.deltas.entry(drawn.second).or_default() += amount;
                }
                Operation::Balance => {}
            }
        }
        Some(Outcome::Unknown) => result.unknown += 1,
        _ => {}
    }
}
