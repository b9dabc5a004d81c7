//! The ledger's expected failures as values. `service.rs` is the one place
//! they become a gRPC `Status`.

use crate::{
    bank::{AccountId, InvalidArgument, Refusal},
    store::StoreError,
};

/// Why an operation did not apply.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A request field broke a rule. INVALID_ARGUMENT.
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// No such account. NOT_FOUND.
    #[error("account {0} does not exist; open it with OpenAccount first")]
    NotFound(AccountId),
    /// OpenAccount on an id that exists. ALREADY_EXISTS.
    #[error("account {0} already exists")]
    AlreadyExists(AccountId),
    /// The bank's rules refused it. FAILED_PRECONDITION.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// This ledger cannot do it as configured (the message says why and
    /// what to do). FAILED_PRECONDITION.
    #[error("{0}")]
    Unsupported(String),
    /// A request_id reused for different arguments. INVALID_ARGUMENT.
    #[error("request_id was already used for {original}; use a new request_id")]
    RequestIdReused {
        /// What it was first used for.
        original: String,
    },
    /// The request_id's first try failed after part of it applied; replayed as is. FAILED_PRECONDITION.
    #[error("{0}")]
    Replayed(String),
    /// Mutex mode waited past the bound for a lock. ABORTED.
    #[error(
        "deadlock detected: waited {waited_ms} ms for account {waiting_for} while holding {holding}; retry"
    )]
    Deadlock {
        /// The account held.
        holding: AccountId,
        /// The account waited for.
        waiting_for: AccountId,
        /// How long it waited.
        waited_ms: u64,
    },
    /// A lock wait past the bound with nothing held: contention, not a cycle. ABORTED.
    #[error("lock wait on account {account} exceeded {waited_ms} ms; retry")]
    LockTimeout {
        /// The account waited for.
        account: AccountId,
        /// How long it waited.
        waited_ms: u64,
    },
    /// CAS retries exhausted. ABORTED.
    #[error("compare-and-swap on account {account} lost {attempts} times in a row; retry later")]
    Contention {
        /// The contended account.
        account: AccountId,
        /// Attempts made.
        attempts: u32,
    },
    /// An unsafe-mode transfer with this request_id was cut between its two
    /// commits when the ledger last stopped: its debit stands and nothing will
    /// credit it. DATA_LOSS.
    #[error(
        "transfer {request_id} ({fingerprint}) is half-applied: the ledger stopped between its debit \
         and its credit in unsafe mode; the debit stands and nothing will credit it \
         (Admin/Audit lists it as a half-applied transfer)"
    )]
    HalfApplied {
        /// The transfer's request_id.
        request_id: String,
        /// Its arguments.
        fingerprint: String,
    },
    /// An actor transfer with this request_id is between its debit and credit. UNAVAILABLE.
    #[error("transfer {0} is in flight; retry shortly")]
    InFlight(String),
    /// An actor mailbox stayed full past the bound. UNAVAILABLE.
    #[error("account owner is overloaded (mailbox full for {waited_ms} ms); retry with backoff")]
    Overloaded {
        /// How long it waited for room.
        waited_ms: u64,
    },
    /// The operation applied, but chaos dropped its acknowledgement.
    /// UNAVAILABLE or DEADLINE_EXCEEDED, as armed.
    #[error("chaos: the acknowledgement was dropped after the operation applied")]
    LostAck(crate::chaos::LostAckCode),
    /// The server is stopping. UNAVAILABLE.
    #[error("the ledger is shutting down")]
    ShuttingDown,
    /// Actor mode across replicas: another replica owns the account, and
    /// this call was forwarded once already. UNAVAILABLE.
    #[error(
        "account {account} is owned by replica {holder}, and this call was forwarded once already; retry"
    )]
    NotOwner {
        /// The account.
        account: AccountId,
        /// The replica that holds its lease.
        holder: String,
    },
    /// Actor mode across replicas: the store refused this owner's write,
    /// because another replica took the account's lease since (the owner
    /// was paused past it). ABORTED.
    #[error(
        "the lease on account {account} passed to another replica while this one held it; its write under fencing token {token} was refused; retry"
    )]
    LeaseLost {
        /// The account.
        account: AccountId,
        /// The stale owner's token.
        token: u64,
    },
    /// Actor mode across replicas: the replica that owns the account
    /// answered this (forwarded) call; its status passes through.
    #[error("{}", .0.message())]
    Peer(tonic::Status),
    /// Storage failed. INTERNAL.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A guarantee the code relies on did not hold: a bug. INTERNAL.
    #[error("invariant violated: {0}")]
    Invariant(String),
}

impl LedgerError {
    /// The gRPC code each variant names: the one mapping, which
    /// `service::status` and the metrics both read.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            LedgerError::Invalid(_) | LedgerError::RequestIdReused { .. } => Code::InvalidArgument,
            LedgerError::NotFound(_) => Code::NotFound,
            LedgerError::AlreadyExists(_) => Code::AlreadyExists,
            LedgerError::Refused(_) | LedgerError::Replayed(_) | LedgerError::Unsupported(_) => {
                Code::FailedPrecondition
            }
            LedgerError::Deadlock { .. }
            | LedgerError::LockTimeout { .. }
            | LedgerError::Contention { .. }
            | LedgerError::LeaseLost { .. } => Code::Aborted,
            LedgerError::NotOwner { .. } => Code::Unavailable,
            LedgerError::Peer(status) => status.code(),
            LedgerError::InFlight(_)
            | LedgerError::Overloaded { .. }
            | LedgerError::ShuttingDown => Code::Unavailable,
            LedgerError::LostAck(crate::chaos::LostAckCode::Unavailable) => Code::Unavailable,
            LedgerError::LostAck(crate::chaos::LostAckCode::DeadlineExceeded) => {
                Code::DeadlineExceeded
            }
            LedgerError::HalfApplied { .. } => Code::DataLoss,
            LedgerError::Store(crate::store::StoreError::Unavailable(_)) => Code::Unavailable,
            // Aborted by the database past the step's retries: the client may try again.
            LedgerError::Store(crate::store::StoreError::Serialization(_)) => Code::Aborted,
            LedgerError::Store(_) | LedgerError::Invariant(_) => Code::Internal,
        }
    }
}
