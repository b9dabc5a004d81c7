//! The one way the ATM sends an operation: a request, an optional gRPC
//! deadline, a bound on the wait, and what came back as a history line
//! (`OpLine`) beside the status. `atm load` and the scenario runner both
//! send through here, so their histories have the same shape.

use std::time::Duration;

use overdraft_proto::{ledger_paths, transport::Channel, v1 as pb};
use tonic::{Code, Status};

use crate::history::{self, OpLine, Operation, Outcome};

/// One operation to send.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// What to do.
    pub operation: Operation,
    /// The account (a transfer's `from`).
    pub account: &'a str,
    /// A transfer's `to`.
    pub to: Option<&'a str>,
    /// A withdrawal's joint account (the household rule), if any.
    pub joint: Option<&'a str>,
    /// The amount (ignored by balance reads).
    pub amount_cents: i64,
    /// The idempotency key; empty for none.
    pub request_id: String,
    /// The gRPC deadline sent with the call (grpc-timeout), if any.
    pub deadline: Option<Duration>,
}

/// Sends `request`, waiting at most `wait_max`; returns the history line
/// (times unset: the caller's clock fills them) and the status. A wait past
/// `wait_max`, or the ledger's enforcement of grpc-timeout (tonic's server
/// answers CANCELLED when it expires first), comes back as DEADLINE_EXCEEDED:
/// to the ATM the deadline passed without a reply.
pub async fn send(
    ledger: &Channel,
    request: Request<'_>,
    wait_max: Duration,
) -> (OpLine, Result<(), Status>) {
    let mut line = OpLine::new(request.operation);
    if request.operation.is_mutation() {
        line.amount_cents = Some(request.amount_cents);
    }
    let outcome = dispatch(ledger, request, wait_max, &mut line).await;
    match &outcome {
        Ok(()) => line.outcome = Some(Outcome::Ok),
        Err(status) => {
            line.outcome = Some(history::outcome_of(status.code()));
            line.code = Some(format!("{:?}", status.code()));
            line.balance_cents = None;
            line.version = None;
            line.to_balance_cents = None;
            line.to_version = None;
            line.fee_cents = None;
        }
    }
    (line, outcome)
}

/// One call, bounded by `wait_max`, with the ATM's view of a deadline.
async fn call<Q, R>(
    ledger: &Channel,
    path: &'static str,
    message: &Q,
    deadline: Option<Duration>,
    wait_max: Duration,
) -> Result<R, Status>
where
    Q: prost::Message,
    R: prost::Message + Default,
{
    match tokio::time::timeout(wait_max, ledger.unary(path, message, deadline)).await {
        Ok(Err(status)) if status.code() == Code::Cancelled && deadline.is_some() => {
            Err(Status::deadline_exceeded(format!(
                "no reply within {} ms",
                deadline.map_or(0, |d| d.as_millis())
            )))
        }
        Ok(outcome) => outcome,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no reply within {} s",
            wait_max.as_secs()
        ))),
    }
}

/// Sends the request's message and fills `line` from it and its reply:
/// the message's strings move into the line once the call is over, so
/// that each is allocated once.
async fn dispatch(
    ledger: &Channel,
    request: Request<'_>,
    wait_max: Duration,
    line: &mut OpLine,
) -> Result<(), Status> {
    let Request {
        operation,
        account,
        to,
        joint,
        amount_cents,
        request_id,
        deadline,
    } = request;
    let account_id = account.to_owned();
    match operation {
        Operation::Deposit => {
            let message = pb::DepositRequest {
                account_id,
                amount_cents,
                request_id,
            };
            let reply = call(ledger, ledger_paths::DEPOSIT, &message, deadline, wait_max).await;
            line.account_id = Some(message.account_id);
            line.request_id = message.request_id;
            mutated(line, operation, reply?);
        }
        Operation::Withdraw => {
            let message = pb::WithdrawRequest {
                joint_account_id: joint.unwrap_or_default().to_owned(),
                account_id,
                amount_cents,
                request_id,
            };
            let reply = call(ledger, ledger_paths::WITHDRAW, &message, deadline, wait_max).await;
            line.account_id = Some(message.account_id);
            line.joint_account_id = joint.map(|_| message.joint_account_id);
            line.request_id = message.request_id;
            mutated(line, operation, reply?);
        }
        Operation::Transfer => {
            let message = pb::TransferRequest {
                from_account_id: account_id,
                to_account_id: to.unwrap_or_default().to_owned(),
                amount_cents,
                request_id,
            };
            let reply = call(ledger, ledger_paths::TRANSFER, &message, deadline, wait_max).await;
            line.from_account_id = Some(message.from_account_id);
            line.to_account_id = to.map(|_| message.to_account_id);
            line.request_id = message.request_id;
            transferred(line, reply?);
        }
        Operation::Balance => {
            let message = pb::GetBalanceRequest { account_id };
            let reply = call(
                ledger,
                ledger_paths::GET_BALANCE,
                &message,
                deadline,
                wait_max,
            )
            .await;
            line.account_id = Some(message.account_id);
            line.request_id = request_id;
            let reply: pb::AccountState = reply?;
            (line.balance_cents, line.version) = (Some(reply.balance_cents), Some(reply.version));
        }
    }
    Ok(())
}

/// A deposit's or withdrawal's reply, into its line (a fee only on a
/// withdrawal's).
fn mutated(line: &mut OpLine, operation: Operation, reply: pb::MutationReply) {
    line.balance_cents = Some(reply.balance_cents);
    line.version = Some(reply.version);
    line.replayed = reply.replayed;
    if operation == Operation::Withdraw {
        line.fee_cents = Some(reply.fee_cents);
    }
}

/// A transfer's reply, into its line.
fn transferred(line: &mut OpLine, reply: pb::TransferReply) {
    let from = reply.from.unwrap_or_default();
    let to = reply.to.unwrap_or_default();
    line.balance_cents = Some(from.balance_cents);
    line.version = Some(from.version);
    line.to_balance_cents = Some(to.balance_cents);
    line.to_version = Some(to.version);
    line.fee_cents = Some(reply.fee_cents);
    line.replayed = reply.replayed;
}
