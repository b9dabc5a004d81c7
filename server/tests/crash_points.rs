//! Crash points: the real `ledger` binary, armed through the Chaos service to
//! abort at a named point inside an operation, then restarted on the same
//! data directory; the audit (and the balances) tell what the crash did.
//! Real processes and real tokio: not built under the `shuttle` feature.
#![cfg(not(feature = "shuttle"))]

use std::{os::unix::process::ExitStatusExt, path::Path, time::Duration};

use overdraft_proto::v1::{
    self as pb, AuditReply, AuditRequest, admin_client::AdminClient, chaos_client::ChaosClient,
    ledger_client::LedgerClient,
};
use overdraft_server::{bank::AccountId, modes::actor::owner_of};
use tokio::process::Child;
use tonic::transport::Channel;

mod common;
use common::{connect, start_ledger};

const MODES: [&str; 4] = ["unsafe", "mutex", "cas", "actor"];
const OPENING_CENTS: i64 = 100_000;
const AMOUNT_CENTS: i64 = 30_000;

/// Two account ids whose actor owners differ, so an actor transfer between
/// them runs as two legs (the case with a point between the legs).
fn accounts_with_different_owners() -> (String, String) {
    let id = |n: usize| format!("acct{n}");
    let owner = |n: usize| owner_of(&AccountId::parse("account_id", &id(n)).unwrap());
    let other = (1..100).find(|n| owner(*n) != owner(0)).unwrap();
    (id(0), id(other))
}

struct Ledger {
    child: Child,
    channel: Channel,
}

impl Ledger {
    async fn start(dir: &Path, mode: &str) -> Self {
        let (child, url) = start_ledger(dir, mode, "sync").await;
        let channel = connect(&url).await;
        Self { child, channel }
    }

    fn ledger(&self) -> LedgerClient<Channel> {
        LedgerClient::new(self.channel.clone())
    }

    async fn open(&self, accounts: &[(&str, i64)]) {
        for (account, cents) in accounts {
            self.ledger()
                .open_account(pb::OpenAccountRequest {
                    account_id: (*account).into(),
                    initial_balance_cents: *cents,
                })
                .await
                .unwrap();
        }
    }

    async fn arm(&self, point: pb::CrashPoint) {
        ChaosClient::new(self.channel.clone())
            .arm_crash(pb::ArmCrashRequest {
                point: point.into(),
                skip: 0,
            })
            .await
            .unwrap();
    }

    /// Waits for the process to die and checks it died of SIGABRT.
    async fn expect_abort(mut self, what: &str) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what}: the ledger did not crash"))
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{what}: {status:?}");
    }

    async fn balance(&self, account: &str) -> i64 {
        self.ledger()
            .get_balance(pb::GetBalanceRequest {
                account_id: account.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .balance_cents
    }

    async fn audit(&self) -> AuditReply {
        AdminClient::new(self.channel.clone())
            .audit(AuditRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

/// The transfer the tests crash and retry, under request_id `rent`.
fn rent(from: &str, to: &str) -> pb::TransferRequest {
    pb::TransferRequest {
        from_account_id: from.to_owned(),
        to_account_id: to.to_owned(),
        amount_cents: AMOUNT_CENTS,
        request_id: "rent".into(),
    }
}

/// The deposit the tests crash and retry, under request_id `salary`.
fn salary() -> pb::DepositRequest {
    pb::DepositRequest {
        account_id: "payroll".into(),
        amount_cents: AMOUNT_CENTS,
        request_id: "salary".into(),
    }
}

/// Goal: a crash between a transfer's debit and credit shows as a
/// half-applied transfer in unsafe mode (the audit names it and the money it
/// destroyed), and the safe modes' transfers are all or nothing after
/// restart. Method: per mode, arm the point, transfer between accounts of
/// different actor owners, check the process died of SIGABRT, restart on
/// the same directory, audit and read both balances; then retry the
/// transfer with its request_id: unsafe answers DATA_LOSS naming the
/// half-applied transfer and debits nothing more, the safe modes end with
/// the transfer applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_transfer_legs_half_applies_only_in_unsafe_mode() {
    let (from, to) = accounts_with_different_owners();
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::start(dir.path(), mode).await;
        ledger.open(&[(&from, OPENING_CENTS), (&to, 0)]).await;
        ledger.arm(pb::CrashPoint::BetweenTransferLegs).await;
        let outcome = ledger.ledger().transfer(rent(&from, &to)).await;
        assert!(outcome.is_err(), "{mode}: the transfer was acknowledged");
        ledger.expect_abort(mode).await;

        let ledger = Ledger::start(dir.path(), mode).await;
        let audit = ledger.audit().await;
        let balances = (ledger.balance(&from).await, ledger.balance(&to).await);
        if mode == "unsafe" {
            assert_eq!(balances, (OPENING_CENTS - AMOUNT_CENTS, 0), "{mode}");
            assert_eq!(audit.half_applied_transfers, 1, "{mode}: {audit:?}");
            let finding = audit
                .findings
                .iter()
                .find(|f| f.kind() == pb::finding::Kind::HalfAppliedTransfer)
                .expect("a half-applied-transfer finding");
            assert_eq!(finding.request_ids, vec!["rent".to_owned()]);
            assert_eq!(finding.cents, -AMOUNT_CENTS);
            assert!(!audit.clean);
        } else {
            assert!(audit.clean, "{mode}: {:?}", audit.findings);
            assert!(
                balances == (OPENING_CENTS, 0)
                    || balances == (OPENING_CENTS - AMOUNT_CENTS, AMOUNT_CENTS),
                "{mode}: not all or nothing: {balances:?}"
            );
        }
        if mode == "actor" {
            // The debit was durable; recovery finished the credit.
            assert_eq!(balances, (OPENING_CENTS - AMOUNT_CENTS, AMOUNT_CENTS));
            assert_eq!(audit.recovery.unwrap().transfers_finished, 1);
        }

        let retry = ledger.ledger().transfer(rent(&from, &to)).await;
        let after = (ledger.balance(&from).await, ledger.balance(&to).await);
        if mode == "unsafe" {
            let status = retry.expect_err("a half-applied transfer cannot be retried");
            assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
            assert!(
                status.message().contains("half-applied") && status.message().contains("rent"),
                "{status:?}"
            );
            assert_eq!(after, balances, "unsafe: the retry moved money");
        } else {
            retry.unwrap_or_else(|status| panic!("{mode}: keyed retry failed: {status:?}"));
            assert_eq!(
                after,
                (OPENING_CENTS - AMOUNT_CENTS, AMOUNT_CENTS),
                "{mode}: the transfer applied other than once"
            );
        }
    }
}

/// Goal: a crash after the journal reached disk and before the balances did
/// is repaired at restart, and the audit reports the roll-forward. Method:
/// per mode, arm the point in the sled writer, deposit, check SIGABRT,
/// restart, and find the deposit applied, the audit clean, and
/// `rolled_forward_commits` at least 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_journal_and_balances_is_rolled_forward() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::start(dir.path(), mode).await;
        ledger.open(&[("payroll", OPENING_CENTS)]).await;
        ledger.arm(pb::CrashPoint::JournalBeforeBalances).await;
        let outcome = ledger.ledger().deposit(salary()).await;
        assert!(outcome.is_err(), "{mode}: the deposit was acknowledged");
        ledger.expect_abort(mode).await;

        let ledger = Ledger::start(dir.path(), mode).await;
        let audit = ledger.audit().await;
        assert!(audit.clean, "{mode}: {:?}", audit.findings);
        assert!(
            audit.recovery.unwrap().rolled_forward_commits >= 1,
            "{mode}: {audit:?}"
        );
        assert_eq!(
            ledger.balance("payroll").await,
            OPENING_CENTS + AMOUNT_CENTS,
            "{mode}: the journaled deposit was not rolled forward"
        );
    }
}

/// Goal: a crash after the write is durable and before the reply leaves the
/// server loses only the acknowledgement: after restart the operation is
/// there, and a retry with its request_id is answered from the idempotency
/// table instead of applying again. Method: per mode, arm, deposit (error),
/// SIGABRT, restart, retry with the same request_id, read the balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_the_ack_keeps_the_operation_and_a_keyed_retry_replays() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::start(dir.path(), mode).await;
        ledger.open(&[("payroll", OPENING_CENTS)]).await;
        ledger.arm(pb::CrashPoint::BeforeAck).await;
        let outcome = ledger.ledger().deposit(salary()).await;
        assert!(outcome.is_err(), "{mode}: the deposit was acknowledged");
        ledger.expect_abort(mode).await;

        let ledger = Ledger::start(dir.path(), mode).await;
        let retry = ledger
            .ledger()
            .deposit(salary())
            .await
            .unwrap()
            .into_inner();
        assert!(retry.replayed, "{mode}: the retry applied again");
        assert_eq!(
            ledger.balance("payroll").await,
            OPENING_CENTS + AMOUNT_CENTS
        );
        let audit = ledger.audit().await;
        assert!(audit.clean, "{mode}: {:?}", audit.findings);
    }
}
