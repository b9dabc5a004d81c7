//! Bad input: each gets a precise gRPC status whose message names the field
//! and the rule, none panics the server, and none changes any state.

use overdraft_server::bank::{
    ACCOUNT_ID_BYTES_MAX, AMOUNT_CENTS_MAX, BALANCE_CENTS_MAX, REQUEST_ID_BYTES_MAX,
};
use overdraft_tests::{TestLedger, pb};
use tonic::Code;

/// A case: its name, what the server answered, the code and the words expected.
type Case = (
    &'static str,
    Result<(), tonic::Status>,
    Code,
    &'static [&'static str],
);

fn deposit(account_id: &str, amount_cents: i64, request_id: &str) -> pb::DepositRequest {
    pb::DepositRequest {
        account_id: account_id.into(),
        amount_cents,
        request_id: request_id.into(),
    }
}

fn withdraw(account_id: &str, amount_cents: i64, joint: &str) -> pb::WithdrawRequest {
    pb::WithdrawRequest {
        account_id: account_id.into(),
        amount_cents,
        request_id: String::new(),
        joint_account_id: joint.into(),
    }
}

fn transfer(from: &str, to: &str, amount_cents: i64) -> pb::TransferRequest {
    pb::TransferRequest {
        from_account_id: from.into(),
        to_account_id: to.into(),
        amount_cents,
        request_id: String::new(),
    }
}

/// Goal: a table of bad requests, each with its status code and the words its
/// message must contain, leaves balances and the journal exactly as they were.
/// Method: snapshot the audit totals, send every case, compare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_precise_statuses_and_change_nothing() {
    let mut ledger = TestLedger::start(|_| {}).await;
    ledger
        .reset(&[("alice", 1_000), ("bob", 0), ("rich", BALANCE_CENTS_MAX)])
        .await;
    let before = ledger.audit().await;
    let long_id = "x".repeat(ACCOUNT_ID_BYTES_MAX + 1);
    let long_request = "r".repeat(REQUEST_ID_BYTES_MAX + 1);
    let huge = "y".repeat(2 * 1024 * 1024);

    let mut l = ledger.ledger.clone();
    let mut a = ledger.admin.clone();
    let cases: Vec<Case> = vec![
        (
            "empty account id",
            l.deposit(deposit("", 1, "")).await.map(drop),
            Code::InvalidArgument,
            &["account_id", "empty"],
        ),
        (
            "oversized account id",
            l.deposit(deposit(&long_id, 1, "")).await.map(drop),
            Code::InvalidArgument,
            &["account_id", "at most 64 bytes"],
        ),
        (
            "account id with a space",
            l.deposit(deposit("a b", 1, "")).await.map(drop),
            Code::InvalidArgument,
            &["account_id", "letters"],
        ),
        (
            "zero amount",
            l.deposit(deposit("alice", 0, "")).await.map(drop),
            Code::InvalidArgument,
            &["amount_cents", "positive"],
        ),
        (
            "negative amount",
            l.withdraw(withdraw("alice", -5, "")).await.map(drop),
            Code::InvalidArgument,
            &["amount_cents", "positive"],
        ),
        (
            "amount over the maximum",
            l.deposit(deposit("alice", AMOUNT_CENTS_MAX + 1, ""))
                .await
                .map(drop),
            Code::InvalidArgument,
            &["amount_cents", "at most"],
        ),
        (
            "oversized request id",
            l.deposit(deposit("alice", 1, &long_request))
                .await
                .map(drop),
            Code::InvalidArgument,
            &["request_id", "at most 128 bytes"],
        ),
        (
            "request id with a space",
            l.deposit(deposit("alice", 1, "a b")).await.map(drop),
            Code::InvalidArgument,
            &["request_id", "printable"],
        ),
        (
            "unknown account",
            l.deposit(deposit("nobody", 1, "")).await.map(drop),
            Code::NotFound,
            &["nobody", "OpenAccount"],
        ),
        (
            "joint account the same as the account",
            l.withdraw(withdraw("alice", 5, "alice")).await.map(drop),
            Code::InvalidArgument,
            &["joint_account_id", "must differ from account_id"],
        ),
        (
            "joint account id with a space",
            l.withdraw(withdraw("alice", 5, "a b")).await.map(drop),
            Code::InvalidArgument,
            &["joint_account_id"],
        ),
        (
            "unknown joint account",
            l.withdraw(withdraw("alice", 5, "nobody")).await.map(drop),
            Code::NotFound,
            &["nobody"],
        ),
        (
            "household below zero",
            l.withdraw(withdraw("alice", 1_001, "bob")).await.map(drop),
            Code::FailedPrecondition,
            &["household", "alice", "bob"],
        ),
        (
            "insufficient funds",
            l.withdraw(withdraw("alice", 1_001, "")).await.map(drop),
            Code::FailedPrecondition,
            &["insufficient funds", "alice"],
        ),
        (
            "balance overflow",
            l.deposit(deposit("rich", 1, "")).await.map(drop),
            Code::FailedPrecondition,
            &["balance limit", "rich"],
        ),
        (
            "transfer to the same account",
            l.transfer(transfer("alice", "alice", 1)).await.map(drop),
            Code::InvalidArgument,
            &["to_account_id", "differ"],
        ),
        (
            "transfer with empty destination",
            l.transfer(transfer("alice", "", 1)).await.map(drop),
            Code::InvalidArgument,
            &["to_account_id"],
        ),
        (
            "transfer to an unknown account",
            l.transfer(transfer("alice", "nobody", 1)).await.map(drop),
            Code::NotFound,
            &["nobody"],
        ),
        (
            "transfer beyond the balance",
            l.transfer(transfer("bob", "alice", 1)).await.map(drop),
            Code::FailedPrecondition,
            &["insufficient funds", "bob"],
        ),
        (
            "duplicate open",
            l.open_account(pb::OpenAccountRequest {
                account_id: "alice".into(),
                initial_balance_cents: 5,
            })
            .await
            .map(drop),
            Code::AlreadyExists,
            &["alice"],
        ),
        (
            "negative opening balance",
            l.open_account(pb::OpenAccountRequest {
                account_id: "carol".into(),
                initial_balance_cents: -1,
            })
            .await
            .map(drop),
            Code::InvalidArgument,
            &["initial_balance_cents"],
        ),
        (
            "balance of an unknown account",
            l.get_balance(pb::GetBalanceRequest {
                account_id: "nobody".into(),
            })
            .await
            .map(drop),
            Code::NotFound,
            &["nobody"],
        ),
        (
            "oversized message",
            l.deposit(deposit(&huge, 1, "")).await.map(drop),
            Code::OutOfRange,
            &["message length too large"],
        ),
        (
            "unspecified mode",
            a.set_mode(pb::SetModeRequest { mode: 0 }).await.map(drop),
            Code::InvalidArgument,
            &["mode", "MODE_UNSAFE"],
        ),
        (
            "unknown mode",
            a.set_mode(pb::SetModeRequest { mode: 99 }).await.map(drop),
            Code::InvalidArgument,
            &["mode", "99"],
        ),
        (
            "reset listing an account twice",
            a.reset(pb::ResetRequest {
                accounts: vec![
                    pb::OpenAccountRequest {
                        account_id: "d".into(),
                        initial_balance_cents: 0
                    };
                    2
                ],
            })
            .await
            .map(drop),
            Code::InvalidArgument,
            &["accounts.account_id", "twice"],
        ),
    ];
    for (name, outcome, code, words) in cases {
        let status = outcome.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        for word in words {
            assert!(
                status.message().contains(word),
                "{name}: {:?} lacks {word:?}",
                status.message()
            );
        }
    }
    let after = ledger.audit().await;
    assert_eq!(after, before, "bad input changed the ledger");
    let settings = a
        .configure(pb::ConfigureRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (settings.race_window_ms_min, settings.race_window_ms_max),
        (0, 0)
    );
    assert_eq!(settings.lock_order, i32::from(pb::LockOrder::Ordered));
    assert!(settings.idempotency && !settings.overdraft.unwrap_or_default().allow);
    assert_eq!(ledger.balance("alice").await.balance_cents, 1_000);
    let carol = ledger
        .ledger
        .get_balance(pb::GetBalanceRequest {
            account_id: "carol".into(),
        })
        .await;
    assert_eq!(
        carol.unwrap_err().code(),
        Code::NotFound,
        "a refused open creates nothing"
    );
}
