//! The bank's rules, with no I/O: validated identifiers and amounts, the
//! operations, and the pure function that says what an operation does to the
//! balances it read. Every mode calls [`apply`]; only how they read and write
//! around it differs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::OverdraftPolicy;

/// Longest account id in bytes. Ids are keys in sled and appear in every
/// journal entry, so a small bound keeps both compact.
pub const ACCOUNT_ID_BYTES_MAX: usize = 64;

/// Longest request id in bytes: room for a UUID with a client prefix.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// Largest amount of one operation: $1,000,000,000. Far beyond any ATM, yet
/// small enough that no sum of a few amounts and a balance can overflow i64.
pub const AMOUNT_CENTS_MAX: i64 = 100_000_000_000;

/// Largest balance an account may hold: $10,000,000,000,000. A deposit or
/// credit past it is refused, which keeps every sum of balances in i64.
pub const BALANCE_CENTS_MAX: i64 = 1_000_000_000_000_000;

/// A validated account id: 1 to [`ACCOUNT_ID_BYTES_MAX`] bytes of ASCII
/// letters, digits, `-`, `_`, `.` or `:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    /// Validates `raw`, naming `field` in the error.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidArgument> {
        validate_token(field, raw, ACCOUNT_ID_BYTES_MAX, false)?;
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated idempotency key: 1 to [`REQUEST_ID_BYTES_MAX`] bytes of
/// printable ASCII without spaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    /// Validates `raw`; an empty string means the request carries no key.
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, InvalidArgument> {
        if raw.is_empty() {
            return Ok(None);
        }
        validate_token("request_id", raw, REQUEST_ID_BYTES_MAX, true)?;
        Ok(Some(Self(raw.to_owned())))
    }

    /// A key the server makes itself, e.g. for the legs of a transfer.
    pub fn internal(text: String) -> Self {
        Self(text)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_token(
    field: &'static str,
    raw: &str,
    bytes_max: usize,
    any_printable: bool,
) -> Result<(), InvalidArgument> {
    if raw.is_empty() {
        return Err(InvalidArgument::new(field, "must not be empty"));
    }
    if raw.len() > bytes_max {
        return Err(InvalidArgument::new(
            field,
            format!("must be at most {bytes_max} bytes (got {})", raw.len()),
        ));
    }
    let allowed = |c: char| {
        if any_printable {
            c.is_ascii_graphic()
        } else {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
        }
    };
    if !raw.chars().all(allowed) {
        let rule = if any_printable {
            "must be printable ASCII without spaces"
        } else {
            "may hold only ASCII letters, digits, '-', '_', '.' and ':'"
        };
        return Err(InvalidArgument::new(field, rule));
    }
    Ok(())
}

/// Validates an operation amount: positive and at most [`AMOUNT_CENTS_MAX`].
pub fn parse_amount(field: &'static str, amount_cents: i64) -> Result<i64, InvalidArgument> {
    if amount_cents <= 0 {
        return Err(InvalidArgument::new(
            field,
            format!("must be positive (got {amount_cents})"),
        ));
    }
    if amount_cents > AMOUNT_CENTS_MAX {
        return Err(InvalidArgument::new(
            field,
            format!("must be at most {AMOUNT_CENTS_MAX} cents (got {amount_cents})"),
        ));
    }
    Ok(amount_cents)
}

/// Validates an opening balance: zero to [`BALANCE_CENTS_MAX`].
pub fn parse_opening_balance(
    field: &'static str,
    balance_cents: i64,
) -> Result<i64, InvalidArgument> {
    if !(0..=BALANCE_CENTS_MAX).contains(&balance_cents) {
        return Err(InvalidArgument::new(
            field,
            format!("must be between 0 and {BALANCE_CENTS_MAX} cents (got {balance_cents})"),
        ));
    }
    Ok(balance_cents)
}

/// A request field broke a rule; the gRPC layer turns this into INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidArgument {
    /// The request field, as named in the proto.
    pub field: &'static str,
    /// The rule it broke, as a sentence fragment.
    pub rule: String,
}

impl InvalidArgument {
    /// A broken rule on `field`.
    pub fn new(field: &'static str, rule: impl Into<String>) -> Self {
        Self {
            field,
            rule: rule.into(),
        }
    }
}

/// An account as stored: its balance and how many mutations it has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Balance in cents; negative only under an overdraft-fee policy.
    pub balance_cents: i64,
    /// Mutations applied so far; opening an account leaves it at 0.
    pub version: u64,
}

/// A mutation an ATM asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operation {
    /// Add money.
    Deposit {
        /// Account credited.
        account: AccountId,
        /// Positive amount.
        amount_cents: i64,
    },
    /// Take money out, subject to the overdraft policy.
    Withdraw {
        /// Account debited.
        account: AccountId,
        /// Positive amount.
        amount_cents: i64,
    },
    /// Move money between two distinct accounts.
    Transfer {
        /// Account debited.
        from: AccountId,
        /// Account credited.
        to: AccountId,
        /// Positive amount.
        amount_cents: i64,
    },
    /// Take money out under the household rule: `account` may go below the
    /// overdraft floor as long as it and `joint` together stay at or above
    /// it. `joint` is read, never written: two such withdrawals from a
    /// couple's two accounts, each checking the other's untouched balance,
    /// are write skew.
    JointWithdraw {
        /// Account debited.
        account: AccountId,
        /// The household's other account, read for the rule.
        joint: AccountId,
        /// Positive amount.
        amount_cents: i64,
    },
}

impl Operation {
    /// The accounts the operation touches, in request order.
    pub fn accounts(&self) -> Vec<&AccountId> {
        match self {
            Self::Deposit { account, .. } | Self::Withdraw { account, .. } => vec![account],
            Self::Transfer { from, to, .. } => vec![from, to],
            Self::JointWithdraw { account, joint, .. } => vec![account, joint],
        }
    }

    /// The account a joint withdrawal reads but does not write.
    pub fn joint(&self) -> Option<&AccountId> {
        match self {
            Self::JointWithdraw { joint, .. } => Some(joint),
            _ => None,
        }
    }

    /// The operation's amount.
    pub fn amount_cents(&self) -> i64 {
        match self {
            Self::Deposit { amount_cents, .. }
            | Self::Withdraw { amount_cents, .. }
            | Self::Transfer { amount_cents, .. }
            | Self::JointWithdraw { amount_cents, .. } => *amount_cents,
        }
    }

    /// The journal kind of the operation.
    pub fn kind(&self) -> EntryKind {
        match self {
            Self::Deposit { .. } => EntryKind::Deposit,
            Self::Withdraw { .. } | Self::JointWithdraw { .. } => EntryKind::Withdraw,
            Self::Transfer { .. } => EntryKind::Transfer,
        }
    }

    /// A stable text of the operation's arguments, used to refuse a request_id
    /// reused for a different operation.
    pub fn fingerprint(&self) -> String {
        match self {
            Self::Deposit {
                account,
                amount_cents,
            } => format!("deposit:{account}:{amount_cents}"),
            Self::Withdraw {
                account,
                amount_cents,
            } => format!("withdraw:{account}:{amount_cents}"),
            Self::Transfer {
                from,
                to,
                amount_cents,
            } => format!("transfer:{from}:{to}:{amount_cents}"),
            Self::JointWithdraw {
                account,
                joint,
                amount_cents,
            } => format!("withdraw:{account}:{amount_cents}:joint:{joint}"),
        }
    }
}

/// What a journal entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An account opened with its opening balance.
    Open,
    /// A deposit.
    Deposit,
    /// A withdrawal (with its fee, if any).
    Withdraw,
    /// A transfer applied to both accounts at once.
    Transfer,
    /// The first leg of a transfer written as two commits (actor owners
    /// apart, or the unsafe mode): money leaves `from`.
    TransferDebit,
    /// The second leg: money reaches `to`.
    TransferCredit,
}

/// What one operation did to one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    /// The account.
    pub account: AccountId,
    /// What the operation read.
    pub read: Account,
    /// What it wrote.
    pub written: Account,
    /// The change the operation meant to make (what the money says, whatever was written).
    pub delta_cents: i64,
}

/// The outcome [`apply`] computes: the legs to write and any fee charged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// One leg per touched account, in request order.
    pub legs: Vec<Leg>,
    /// Overdraft fee charged, zero when none.
    pub fee_cents: i64,
}

/// An operation the bank's rules turn down; nothing is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A debit beyond the balance under the `reject` policy.
    #[error(
        "insufficient funds: account {account} holds {balance_cents} cents, {amount_cents} requested"
    )]
    InsufficientFunds {
        /// The account debited.
        account: AccountId,
        /// Its balance as read.
        balance_cents: i64,
        /// The amount asked for.
        amount_cents: i64,
    },
    /// A debit that would go past the overdraft limit under the `fee` policy.
    #[error(
        "overdraft limit: account {account} would reach {balance_after_cents} cents, below the limit of -{limit_cents}"
    )]
    OverdraftLimit {
        /// The account debited.
        account: AccountId,
        /// The balance the debit and its fee would leave.
        balance_after_cents: i64,
        /// How far below zero the policy allows.
        limit_cents: i64,
    },
    /// A joint withdrawal that would take the household below the floor.
    #[error(
        "insufficient household funds: {account} and {joint} hold {household_cents} cents together, {amount_cents} requested (floor {floor_cents})"
    )]
    HouseholdFunds {
        /// The account debited.
        account: AccountId,
        /// The household's other account.
        joint: AccountId,
        /// The two balances together, as read.
        household_cents: i64,
        /// The amount asked for.
        amount_cents: i64,
        /// The floor the household may not go below.
        floor_cents: i64,
    },
    /// A credit that would push a balance past [`BALANCE_CENTS_MAX`].
    #[error("balance limit: account {account} would exceed {BALANCE_CENTS_MAX} cents")]
    BalanceLimit {
        /// The account credited.
        account: AccountId,
    },
}

/// Computes what `op` does to the accounts as `reads` found them (in the
/// order of [`Operation::accounts`]). Pure: the same reads give the same effect.
pub fn apply(
    op: &Operation,
    reads: &[Account],
    policy: &OverdraftPolicy,
) -> Result<Effect, Refusal> {
    match (op, reads) {
        (
            Operation::Deposit {
                account,
                amount_cents,
            },
            [read],
        ) => {
            let leg = credit(account, *read, *amount_cents)?;
            Ok(Effect {
                legs: vec![leg],
                fee_cents: 0,
            })
        }
        (
            Operation::Withdraw {
                account,
                amount_cents,
            },
            [read],
        ) => {
            let (leg, fee_cents) = debit(account, *read, *amount_cents, policy)?;
            Ok(Effect {
                legs: vec![leg],
                fee_cents,
            })
        }
        (
            Operation::Transfer {
                from,
                to,
                amount_cents,
            },
            [from_read, to_read],
        ) => {
            let (debit_leg, fee_cents) = debit(from, *from_read, *amount_cents, policy)?;
            let credit_leg = credit(to, *to_read, *amount_cents)?;
            Ok(Effect {
                legs: vec![debit_leg, credit_leg],
                fee_cents,
            })
        }
        (
            Operation::JointWithdraw {
                account,
                joint,
                amount_cents,
            },
            [read, joint_read],
        ) => {
            let refused = || Refusal::HouseholdFunds {
                account: account.clone(),
                joint: joint.clone(),
                household_cents: read.balance_cents.saturating_add(joint_read.balance_cents),
                amount_cents: *amount_cents,
                floor_cents: policy.floor_cents(),
            };
            let after = read
                .balance_cents
                .checked_sub(*amount_cents)
                .ok_or_else(refused)?;
            let household = after
                .checked_add(joint_read.balance_cents)
                .ok_or_else(refused)?;
            if household < policy.floor_cents() {
                return Err(refused());
            }
            let leg = Leg {
                account: account.clone(),
                read: *read,
                written: Account {
                    balance_cents: after,
                    version: read.version + 1,
                },
                delta_cents: -amount_cents,
            };
            Ok(Effect {
                legs: vec![leg],
                fee_cents: 0,
            })
        }
        // The modes read exactly the accounts `op.accounts()` names, so the
        // arity always matches; an empty effect would be caught by the caller.
        _ => Ok(Effect {
            legs: Vec::new(),
            fee_cents: 0,
        }),
    }
}

/// One credit of `amount_cents` to an account as read.
pub fn credit(account: &AccountId, read: Account, amount_cents: i64) -> Result<Leg, Refusal> {
    let balance_cents = read
        .balance_cents
        .checked_add(amount_cents)
        .filter(|balance| *balance <= BALANCE_CENTS_MAX)
        .ok_or_else(|| Refusal::BalanceLimit {
            account: account.clone(),
        })?;
    Ok(Leg {
        account: account.clone(),
        read,
        written: Account {
            balance_cents,
            version: read.version + 1,
        },
        delta_cents: amount_cents,
    })
}

/// One debit of `amount_cents` from an account as read, under `policy`.
/// Returns the leg and the fee charged.
pub fn debit(
    account: &AccountId,
    read: Account,
    amount_cents: i64,
    policy: &OverdraftPolicy,
) -> Result<(Leg, i64), Refusal> {
    // Amounts and balances are bounded far below i64::MAX / 4, so these
    // subtractions cannot overflow; checked arithmetic says so anyway.
    let overflow = || Refusal::BalanceLimit {
        account: account.clone(),
    };
    let after = read
        .balance_cents
        .checked_sub(amount_cents)
        .ok_or_else(overflow)?;
    let fee_cents = match policy {
        OverdraftPolicy::Reject if after < 0 => {
            return Err(Refusal::InsufficientFunds {
                account: account.clone(),
                balance_cents: read.balance_cents,
                amount_cents,
            });
        }
        OverdraftPolicy::Reject => 0,
        OverdraftPolicy::Fee { fee_cents, .. } if after < 0 => *fee_cents,
        OverdraftPolicy::Fee { .. } => 0,
    };
    let balance_cents = after.checked_sub(fee_cents).ok_or_else(overflow)?;
    if balance_cents < policy.floor_cents() {
        return Err(Refusal::OverdraftLimit {
            account: account.clone(),
            balance_after_cents: balance_cents,
            limit_cents: -policy.floor_cents(),
        });
    }
    let delta_cents = -(amount_cents + fee_cents);
    Ok((
        Leg {
            account: account.clone(),
            read,
            written: Account {
                balance_cents,
                version: read.version + 1,
            },
            delta_cents,
        },
        fee_cents,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AccountId {
        AccountId::parse("account_id", s).unwrap()
    }

    /// The spouse-ATM story: both orders are legal and give $800 or $790.
    #[test]
    fn spouse_atm_orders_give_800_or_790() {
        let policy = OverdraftPolicy::Fee {
            fee_cents: 1_000,
            limit_cents: 50_000,
        };
        let joint = id("joint");
        let start = Account {
            balance_cents: 100_000,
            version: 0,
        };
        let deposit_first = credit(&joint, start, 100_000).unwrap().written;
        let (leg, _) = debit(&joint, deposit_first, 120_000, &policy).unwrap();
        assert_eq!(leg.written.balance_cents, 80_000);

        let (leg, fee) = debit(&joint, start, 120_000, &policy).unwrap();
        assert_eq!(fee, 1_000);
        let leg = credit(&joint, leg.written, 100_000).unwrap();
        assert_eq!(leg.written.balance_cents, 79_000);
    }

    /// Under `reject`, a debit past the balance is refused and names the account.
    #[test]
    fn reject_policy_refuses_overdraft() {
        let start = Account {
            balance_cents: 100,
            version: 3,
        };
        let err = debit(&id("a"), start, 101, &OverdraftPolicy::Reject).unwrap_err();
        assert!(matches!(err, Refusal::InsufficientFunds { .. }), "{err}");
    }

    /// Credits past the balance bound are refused rather than overflowing.
    #[test]
    fn credit_past_balance_max_is_refused() {
        let start = Account {
            balance_cents: BALANCE_CENTS_MAX,
            version: 0,
        };
        assert!(credit(&id("a"), start, 1).is_err());
    }

    /// Ids and amounts are validated with the field named.
    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            AccountId::parse("to_account_id", "").unwrap_err().field,
            "to_account_id"
        );
        assert!(AccountId::parse("account_id", "a b").is_err());
        assert!(AccountId::parse("account_id", &"x".repeat(65)).is_err());
        assert!(parse_amount("amount_cents", 0).is_err());
        assert!(parse_amount("amount_cents", AMOUNT_CENTS_MAX + 1).is_err());
        assert_eq!(RequestId::parse_optional("").unwrap(), None);
    }
}
