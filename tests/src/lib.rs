//! Helpers shared by the integration tests: start a real ledger on
//! 127.0.0.1:0 with a tweaked configuration, connect typed clients, and keep
//! a sequential model of what acknowledged operations must have done.
//!
//! # Layout
//! - [`TestLedger`]: a running ledger and its clients.
//! - [`Model`]: per-account replay of acknowledged replies, in version order.
//! - [`random_atm`]: one ATM's seeded mix of deposits, withdrawals and transfers.
//! - [`postgres`]: a PostgreSQL cluster of the test binary's own.

pub mod postgres;

use std::collections::BTreeMap;

use overdraft_proto::v1::{
    AccountState, AuditReply, AuditRequest, OpenAccountRequest, ResetRequest, SetModeRequest,
    StatsReply, StatsRequest, admin_client::AdminClient, ledger_client::LedgerClient,
};
use overdraft_server::{Config, RunningLedger, config::Mode};
use tonic::transport::Channel;

pub use overdraft_proto::v1 as pb;

/// A ledger serving on a loopback port, with clients.
pub struct TestLedger {
    /// The server.
    pub running: RunningLedger,
    /// A Ledger client on one shared HTTP/2 connection.
    pub ledger: LedgerClient<Channel>,
    /// An Admin client.
    pub admin: AdminClient<Channel>,
}

impl TestLedger {
    /// Starts a ledger with the defaults, changed by `configure`.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::defaults();
        config.listen = "127.0.0.1:0".parse().expect("a literal address");
        config.data_dir = None;
        configure(&mut config);
        let running = overdraft_server::spawn(config)
            .await
            .expect("ledger starts");
        let channel = connect(&running.url()).await;
        Self {
            ledger: LedgerClient::new(channel.clone()),
            admin: AdminClient::new(channel),
            running,
        }
    }

    /// A client on a connection of its own, so concurrent calls really overlap on the wire.
    pub async fn new_ledger_client(&self) -> LedgerClient<Channel> {
        LedgerClient::new(connect(&self.running.url()).await)
    }

    /// Resets the ledger and opens `accounts`.
    pub async fn reset(&mut self, accounts: &[(&str, i64)]) {
        let accounts = accounts
            .iter()
            .map(|(id, cents)| OpenAccountRequest {
                account_id: (*id).to_owned(),
                initial_balance_cents: *cents,
            })
            .collect();
        self.admin
            .reset(ResetRequest { accounts })
            .await
            .expect("reset");
    }

    /// Switches mode.
    pub async fn set_mode(&mut self, mode: Mode) {
        self.admin
            .set_mode(SetModeRequest {
                mode: pb::Mode::from(mode).into(),
            })
            .await
            .expect("set mode");
    }

    /// The audit.
    pub async fn audit(&mut self) -> AuditReply {
        self.admin
            .audit(AuditRequest {})
            .await
            .expect("audit")
            .into_inner()
    }

    /// The counters.
    pub async fn stats(&mut self) -> StatsReply {
        self.admin
            .stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner()
    }

    /// One account's state.
    pub async fn balance(&mut self, account_id: &str) -> AccountState {
        self.ledger
            .get_balance(pb::GetBalanceRequest {
                account_id: account_id.to_owned(),
            })
            .await
            .expect("balance")
            .into_inner()
    }
}

/// A channel to `url`.
pub async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("a valid url")
        .connect()
        .await
        .expect("the ledger accepts connections")
}

/// What [`random_atm`] acknowledged: each account state a reply reported,
/// with the change the operation made to it.
pub type Acks = Vec<(AccountState, i64)>;

/// One ATM's seeded operations over `acct-0..acct-{accounts}`: 30%
/// deposits, 30% withdrawals, 40% transfers, amounts up to 30 dollars.
/// Refusals and bounded aborts apply nothing and are skipped; any other
/// error fails the run.
pub async fn random_atm(
    mut client: LedgerClient<Channel>,
    seed: u64,
    atm: u64,
    accounts: usize,
    ops: usize,
) -> Result<Acks, String> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed * 1_000 + atm);
    let mut acks = Vec::new();
    for op in 0..ops {
        let account = |rng: &mut StdRng| format!("acct-{}", rng.random_range(0..accounts));
        let amount_cents = rng.random_range(1..=3_000);
        let request_id = format!("s{seed}-a{atm}-{op}");
        let outcome = match rng.random_range(0..10) {
            0..=2 => client
                .deposit(pb::DepositRequest {
                    account_id: account(&mut rng),
                    amount_cents,
                    request_id,
                })
                .await
                .map(|r| acks.push((state(&r.into_inner()), amount_cents))),
            3..=5 => client
                .withdraw(pb::WithdrawRequest {
                    joint_account_id: String::new(),
                    account_id: account(&mut rng),
                    amount_cents,
                    request_id,
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    acks.push((state(&r), -(amount_cents + r.fee_cents)));
                }),
            _ => {
                let from = account(&mut rng);
                let mut to = account(&mut rng);
                while to == from {
                    to = account(&mut rng);
                }
                client
                    .transfer(pb::TransferRequest {
                        from_account_id: from,
                        to_account_id: to,
                        amount_cents,
                        request_id,
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        acks.push((r.from.unwrap_or_default(), -amount_cents));
                        acks.push((r.to.unwrap_or_default(), amount_cents));
                    })
            }
        };
        match outcome {
            Ok(()) => {}
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::Aborted
                ) => {}
            Err(status) => return Err(format!("unexpected status: {status:?}")),
        }
    }
    Ok(acks)
}

fn state(reply: &pb::MutationReply) -> AccountState {
    AccountState {
        account_id: reply.account_id.clone(),
        balance_cents: reply.balance_cents,
        version: reply.version,
    }
}

/// Two spouses withdraw $150 each at the same moment, each from their own
/// $100 account under the household rule (`joint_account_id`: the pair may
/// not go below zero): alice through `left`, bob through `right`. The two
/// outcomes, alice's first. Open `alice` and `bob` at 10,000 cents first.
pub async fn crossed_joint_withdrawals(
    left: &mut LedgerClient<Channel>,
    right: &mut LedgerClient<Channel>,
    trial: u32,
) -> [Result<tonic::Response<pb::MutationReply>, tonic::Status>; 2] {
    let withdraw = |account: &str, joint: &str| pb::WithdrawRequest {
        account_id: account.into(),
        amount_cents: 15_000,
        request_id: format!("{account}-{trial}"),
        joint_account_id: joint.into(),
    };
    let (alice, bob) = tokio::join!(
        left.withdraw(withdraw("alice", "bob")),
        right.withdraw(withdraw("bob", "alice"))
    );
    [alice, bob]
}

/// The mode's counters from a stats reply.
pub fn mode_stats(stats: &StatsReply, mode: Mode) -> pb::ModeStats {
    stats
        .modes
        .iter()
        .find(|m| m.mode == i32::from(pb::Mode::from(mode)))
        .cloned()
        .unwrap_or_default()
}

/// A sequential bank model built from acknowledged replies. Each reply says
/// which version of an account it produced and the balance after it; sorted
/// by version, each must equal the previous balance plus the operation's
/// change. Any lost update, double application or torn transfer breaks the chain.
#[derive(Debug, Default)]
pub struct Model {
    opening: BTreeMap<String, i64>,
    acknowledged: BTreeMap<String, Vec<(u64, i64, i64)>>,
}

impl Model {
    /// Records an account's opening balance.
    pub fn open(&mut self, account_id: &str, balance_cents: i64) {
        self.opening.insert(account_id.to_owned(), balance_cents);
    }

    /// Records an acknowledged change: `delta_cents` produced `after`.
    pub fn acknowledge(&mut self, after: &AccountState, delta_cents: i64) {
        self.acknowledged
            .entry(after.account_id.clone())
            .or_default()
            .push((after.version, delta_cents, after.balance_cents));
    }

    /// The balance each account must hold now.
    pub fn expected_balances(&self) -> BTreeMap<String, i64> {
        let mut balances = self.opening.clone();
        for (account, changes) in &self.acknowledged {
            let balance = balances.entry(account.clone()).or_default();
            *balance += changes.iter().map(|(_, delta, _)| delta).sum::<i64>();
        }
        balances
    }

    /// Checks every account's acknowledged versions form the chain 1..=n with
    /// each balance following from the last; returns the first break.
    pub fn check_chains(&self) -> Result<(), String> {
        for (account, changes) in &self.acknowledged {
            let mut changes = changes.clone();
            changes.sort_by_key(|(version, _, _)| *version);
            let mut balance = self.opening.get(account).copied().unwrap_or_default();
            for (index, (version, delta, after)) in changes.iter().enumerate() {
                let expected_version = u64::try_from(index).unwrap_or(u64::MAX) + 1;
                if *version != expected_version {
                    return Err(format!(
                        "{account}: acknowledged versions skip or repeat: expected {expected_version}, found {version}"
                    ));
                }
                balance += delta;
                if balance != *after {
                    return Err(format!(
                        "{account}: version {version} reported {after} cents, the model says {balance}"
                    ));
                }
            }
        }
        Ok(())
    }
}
