//! `overdraft.v1.Ledger`: parse and validate each request, run it on the engine, answer.

use overdraft_proto::v1::{self as pb, ledger_server::Ledger};
use tonic::{Request, Response, Status};

use super::convert::*;
use crate::{
    bank::{self, AccountId, InvalidArgument, Operation, RequestId},
    error::LedgerError,
    modes::{self, Applied},
    peers,
    service::{LedgerService, invalid, status},
};

#[tonic::async_trait]
impl Ledger for LedgerService {
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountReply>, Status> {
        let request = request.into_inner();
        let account = AccountId::parse("account_id", &request.account_id).map_err(invalid)?;
        let initial =
            bank::parse_opening_balance("initial_balance_cents", request.initial_balance_cents)
                .map_err(invalid)?;
        let opened = self
            .engine
            .open_account(account.clone(), initial)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::OpenAccountReply {
            account: Some(state(&account, opened)),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id, request_id = %request.get_ref().request_id))]
    async fn deposit(
        &self,
        request: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::MutationReply>, Status> {
        let forwarded = peers::forwarded(request.metadata());
        let request = request.into_inner();
        let op = Operation::Deposit {
            account: AccountId::parse("account_id", &request.account_id).map_err(invalid)?,
            amount_cents: bank::parse_amount("amount_cents", request.amount_cents)
                .map_err(invalid)?,
        };
        let applied = self.run(op, &request.request_id, forwarded).await?;
        Ok(Response::new(mutation_reply(applied)?))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id, request_id = %request.get_ref().request_id))]
    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::MutationReply>, Status> {
        let forwarded = peers::forwarded(request.metadata());
        let request = request.into_inner();
        let account = AccountId::parse("account_id", &request.account_id).map_err(invalid)?;
        let amount_cents =
            bank::parse_amount("amount_cents", request.amount_cents).map_err(invalid)?;
        let op = if request.joint_account_id.is_empty() {
            Operation::Withdraw {
                account,
                amount_cents,
            }
        } else {
            let joint =
                AccountId::parse("joint_account_id", &request.joint_account_id).map_err(invalid)?;
            if joint == account {
                return Err(invalid(InvalidArgument::new(
                    "joint_account_id",
                    "must differ from account_id",
                )));
            }
            Operation::JointWithdraw {
                account,
                joint,
                amount_cents,
            }
        };
        let applied = self.run(op, &request.request_id, forwarded).await?;
        Ok(Response::new(mutation_reply(applied)?))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(from = %request.get_ref().from_account_id, to = %request.get_ref().to_account_id, request_id = %request.get_ref().request_id))]
    async fn transfer(
        &self,
        request: Request<pb::TransferRequest>,
    ) -> Result<Response<pb::TransferReply>, Status> {
        let forwarded = peers::forwarded(request.metadata());
        let request = request.into_inner();
        let from =
            AccountId::parse("from_account_id", &request.from_account_id).map_err(invalid)?;
        let to = AccountId::parse("to_account_id", &request.to_account_id).map_err(invalid)?;
        if from == to {
            return Err(invalid(InvalidArgument::new(
                "to_account_id",
                "must differ from from_account_id",
            )));
        }
        let amount_cents =
            bank::parse_amount("amount_cents", request.amount_cents).map_err(invalid)?;
        let op = Operation::Transfer {
            from,
            to,
            amount_cents,
        };
        let applied = self.run(op, &request.request_id, forwarded).await?;
        let [(from_id, from_state), (to_id, to_state)] = applied.accounts.as_slice() else {
            return Err(status(LedgerError::Invariant(
                "a transfer returned other than two accounts".into(),
            )));
        };
        Ok(Response::new(pb::TransferReply {
            from: Some(state(from_id, *from_state)),
            to: Some(state(to_id, *to_state)),
            replayed: applied.replayed,
            fee_cents: applied.fee_cents,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::AccountState>, Status> {
        let account =
            AccountId::parse("account_id", &request.get_ref().account_id).map_err(invalid)?;
        let found = self.engine.balance(&account).await.map_err(status)?;
        Ok(Response::new(state(&account, found)))
    }
}

impl LedgerService {
    /// Runs `op` on the engine. `forwarded`: another replica sent it here
    /// as the account's owner (actor mode across replicas).
    async fn run(
        &self,
        op: Operation,
        request_id: &str,
        forwarded: bool,
    ) -> Result<Applied, Status> {
        let request_id = RequestId::parse_optional(request_id).map_err(invalid)?;
        let request = modes::Request { op, request_id };
        let applied = if forwarded {
            self.engine.execute_forwarded(request).await
        } else {
            self.engine.execute(request).await
        };
        applied.map_err(status)
    }
}
