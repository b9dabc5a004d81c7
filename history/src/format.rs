//! The lines of a history file, as `atm` writes them (format 2, documented
//! in docs/HISTORY.md): a header, one `open` line per account the run starts
//! from, one line per operation, and a final `balance` read of every account
//! the run touched. Format 1 files (operation lines only) are read too.

use serde::{Deserialize, Serialize};

/// The schema number written in the header.
pub const SCHEMA: u32 = 2;

/// The header's `kind`, so a stray JSON file is not mistaken for a history.
pub const KIND: &str = "overdraft-history";

/// What the ledger does with a debit beyond the balance, as the header states it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Policy {
    /// Refuse it (FAILED_PRECONDITION): no balance below zero.
    #[default]
    Reject,
    /// Allow it down to `floor_cents`, charging `fee_cents` once per debit that goes negative.
    Fee {
        /// Fee per overdrawing debit.
        fee_cents: i64,
        /// Lowest balance allowed, fee included (zero or negative).
        floor_cents: i64,
    },
}

impl Policy {
    /// The lowest balance the policy allows.
    pub fn floor_cents(&self) -> i64 {
        match self {
            Policy::Reject => 0,
            Policy::Fee { floor_cents, .. } => *floor_cents,
        }
    }

    /// A debit of `amount_cents` from `balance_cents`: the balance it leaves
    /// and the fee charged, or None when the policy refuses it. Mirrors the
    /// ledger's `bank::debit`; saturating, because a history is untrusted.
    pub fn debit(&self, balance_cents: i64, amount_cents: i64) -> Option<(i64, i64)> {
        let after = balance_cents.saturating_sub(amount_cents);
        let fee_cents = match self {
            Policy::Reject if after < 0 => return None,
            Policy::Reject => 0,
            Policy::Fee { fee_cents, .. } if after < 0 => *fee_cents,
            Policy::Fee { .. } => 0,
        };
        let balance = after.saturating_sub(fee_cents);
        (balance >= self.floor_cents()).then_some((balance, fee_cents))
    }

    /// The debit is refused exactly when the balance is below this. The
    /// refusal is monotone in the balance, which lets the checker search the
    /// states a refusal may have seen with one range-minimum query.
    pub fn refusal_threshold_cents(&self, amount_cents: i64) -> i64 {
        match self {
            Policy::Reject => amount_cents,
            // Refused when b - a < 0 and b - a - fee < floor, i.e. b < a and
            // b < a + fee + floor.
            Policy::Fee {
                fee_cents,
                floor_cents,
            } => amount_cents.min(
                amount_cents
                    .saturating_add(*fee_cents)
                    .saturating_add(*floor_cents),
            ),
        }
    }
}

/// The four things an ATM asks of the ledger: the one operation type of the
/// client, the history and the checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Add money to an account.
    Deposit,
    /// Take money out, subject to the overdraft policy.
    Withdraw,
    /// Move money from one account to another.
    Transfer,
    /// Read an account's balance and version.
    Balance,
}

impl Operation {
    /// Every operation, in the order reports list them.
    pub const ALL: [Operation; 4] = [
        Operation::Deposit,
        Operation::Withdraw,
        Operation::Transfer,
        Operation::Balance,
    ];

    /// The name used on the command line and in histories.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Deposit => "deposit",
            Operation::Withdraw => "withdraw",
            Operation::Transfer => "transfer",
            Operation::Balance => "balance",
        }
    }

    /// Parses a name written by [`Operation::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// Whether it changes money.
    pub fn is_mutation(self) -> bool {
        self != Operation::Balance
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an ATM knows of an operation's fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: the reply carries the state it left.
    Ok,
    /// The ledger decided and applied nothing (refused, aborted, invalid).
    Fail,
    /// No reply, or an error after which it may have applied.
    Unknown,
}

impl Outcome {
    /// The name written in histories.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        }
    }
}

/// The first line of a format-2 history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`SCHEMA`].
    pub schema: u32,
    /// [`KIND`].
    pub kind: String,
    /// The mode the ledger ran in (`unsafe`, `mutex`, `cas`, `actor`), or `unknown`.
    pub mode: String,
    /// The run's seed.
    pub seed: u64,
    /// The overdraft policy in force.
    pub overdraft: Policy,
    /// Wall clock at the history's time zero, ns since the Unix epoch: lines
    /// up `invoke_ns` with the journal, the fault log and other ATMs' files.
    pub wall_unix_ns_at_zero: u64,
    /// What wrote it (`atm load`, `atm scenario`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The ledger it ran against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The scenario, for a scenario run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// How many ATMs wrote into this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atms: Option<u32>,
    /// Whether the ledger applied a request_id at most once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<bool>,
    /// The command that replays the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
}

impl Header {
    /// A header with the required fields; the rest unset.
    pub fn new(mode: &str, seed: u64, overdraft: Policy, wall_unix_ns_at_zero: u64) -> Self {
        Self {
            schema: SCHEMA,
            kind: KIND.to_owned(),
            mode: mode.to_owned(),
            seed,
            overdraft,
            wall_unix_ns_at_zero,
            source: None,
            target: None,
            scenario: None,
            atms: None,
            idempotency: None,
            replay: None,
        }
    }
}

/// An account the run starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenLine {
    /// Always `open`.
    pub op: String,
    /// The account.
    pub account_id: String,
    /// Its balance when the run started.
    pub balance_cents: i64,
    /// Its version then (0 for a freshly opened account).
    pub version: u64,
}

impl OpenLine {
    /// The line for an account opened with `balance_cents`.
    pub fn new(account_id: &str, balance_cents: i64, version: u64) -> Self {
        Self {
            op: "open".to_owned(),
            account_id: account_id.to_owned(),
            balance_cents,
            version,
        }
    }
}

/// One operation as an ATM saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpLine {
    /// The ATM, 0-based; absent on the final reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atm: Option<u32>,
    /// The ATM's name, when it has one (scenarios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atm_name: Option<String>,
    /// `deposit`, `withdraw`, `transfer` or `balance`.
    pub op: String,
    /// The account (all but transfers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// A transfer's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_account_id: Option<String>,
    /// A transfer's destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_account_id: Option<String>,
    /// A withdrawal's joint account (the household rule: the two together
    /// stay at or above the floor), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joint_account_id: Option<String>,
    /// The amount (all but balance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    /// The idempotency key sent; empty for none.
    #[serde(default)]
    pub request_id: String,
    /// The customer's intent, the same on every attempt of one operation:
    /// lets the checker see a retry without a key applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// When the call started (or was meant to, open model), ns since time zero.
    pub invoke_ns: u64,
    /// When its reply arrived, same clock.
    pub complete_ns: u64,
    /// `ok`, `fail` or `unknown`.
    pub outcome: Option<Outcome>,
    /// The gRPC code name when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The balance returned (a transfer's `from` account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_cents: Option<i64>,
    /// The version returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// A transfer's `to` balance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_balance_cents: Option<i64>,
    /// A transfer's `to` version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<u64>,
    /// A withdrawal's overdraft fee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee_cents: Option<i64>,
    /// The ledger replayed the reply of an earlier application of the request_id.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
    /// A read taken after every ATM stopped: the state the run left.
    #[serde(default, rename = "final", skip_serializing_if = "is_false")]
    pub final_read: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl OpLine {
    /// A line for `operation`, its other fields unset.
    pub fn new(operation: Operation) -> Self {
        Self {
            op: operation.as_str().to_owned(),
            ..Self::default()
        }
    }

    /// The final read of an account.
    pub fn final_read(account_id: &str, at_ns: u64, balance_cents: i64, version: u64) -> Self {
        Self {
            account_id: Some(account_id.to_owned()),
            invoke_ns: at_ns,
            complete_ns: at_ns,
            outcome: Some(Outcome::Ok),
            balance_cents: Some(balance_cents),
            version: Some(version),
            final_read: true,
            ..Self::new(Operation::Balance)
        }
    }
}

/// One journal entry as `atm journal` writes it: what an applied operation
/// read and wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalLine {
    /// Commit order.
    pub seq: u64,
    /// `open`, `deposit`, `withdraw`, `transfer`, `transfer_debit`, `transfer_credit`.
    pub kind: String,
    /// The request_id, when the request carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Shared by the two commits of a transfer written apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// The mode it ran in.
    pub mode: String,
    /// The operation's amount (the opening balance for `open`).
    pub amount_cents: i64,
    /// The overdraft fee charged.
    #[serde(default)]
    pub fee_cents: i64,
    /// One leg per account touched.
    pub legs: Vec<JournalLeg>,
    /// Wall clock of the commit, ns since the Unix epoch.
    pub time_unix_ns: u64,
    /// The replica that wrote it, where replicas share the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// What one journaled operation did to one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalLeg {
    /// The account.
    pub account_id: String,
    /// The balance it read.
    pub read_balance_cents: i64,
    /// The version it read.
    pub read_version: u64,
    /// The balance it wrote.
    pub written_balance_cents: i64,
    /// The version it wrote.
    pub written_version: u64,
    /// The change it meant to make.
    pub delta_cents: i64,
}
