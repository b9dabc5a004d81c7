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
    let mut line = OpLine {
        request_id: request.request_id.clone(),
        ..OpLine::new(request.operation)
    };
    if request.operation == Operation::Transfer {
        line.from_account_id = Some(request.account.to_owned());
        line.to_account_id = request.to.map(str::to_owned);
    } else {
        line.account_id = Some(request.account.to_owned());
        line.joint_account_id = request.joint.map(str::to_owned);
    }
    if request.operation.is_mutation() {
        line.amount_cents = Some(request.amount_cents);
    }
    let deadline = request.deadline;
    let outcome = match tokio::time::timeout(wait_max, dispatch(ledger, request, &mut line)).await {
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
    };
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

async fn dispatch(ledger: &Channel, request: Request<'_>, line: &mut OpLine) -> Result<(), Status> {
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
        Operation::Deposit | Operation::Withdraw => {
            let reply: pb::MutationReply = if operation == Operation::Deposit {
                let message = pb::DepositRequest {
                    account_id,
                    amount_cents,
                    request_id,
                };
                ledger
                    .unary(ledger_paths::DEPOSIT, &message, deadline)
                    .await
            } else {
                let message = pb::WithdrawRequest {
                    joint_account_id: joint.unwrap_or_default().to_owned(),
                    account_id,
                    amount_cents,
                    request_id,
                };
                ledger
                    .unary(ledger_paths::WITHDRAW, &message, deadline)
                    .await
            }?;
            line.balance_cents = Some(reply.balance_cents);
            line.version = Some(reply.version);
            line.replayed = reply.replayed;
            if operation == Operation::Withdraw {
                line.fee_cents = Some(reply.fee_cents);
            }
        }
        Operation::Transfer => {
            let message = pb::TransferRequest {
                from_account_id: account_id,
                to_account_id: to.unwrap_or_default().to_owned(),
                amount_cents,
                request_id,
            };
            let reply: pb::TransferReply = ledger
                .unary(ledger_paths::TRANSFER, &message, deadline)
                .await?;
            let from = reply.from.unwrap_or_default();
            let to = reply.to.unwrap_or_default();
            line.balance_cents = Some(from.balance_cents);
            line.version = Some(from.version);
            line.to_balance_cents = Some(to.balance_cents);
            line.to_version = Some(to.version);
            line.fee_cents = Some(reply.fee_cents);
            line.replayed = reply.replayed;
        }
        Operation::Balance => {
            let message = pb::GetBalanceRequest { account_id };
            let reply: pb::AccountState = ledger
                .unary(ledger_paths::GET_BALANCE, &message, deadline)
                .await?;
            line.balance_cents = Some(reply.balance_cents);
            line.version = Some(reply.version);
        }
    }
    Ok(())
}
