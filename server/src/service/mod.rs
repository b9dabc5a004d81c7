//! The gRPC services, `overdraft.v1.Ledger`, `Admin`, `Chaos` and `Replica`: turn
//! requests into validated domain values, call the engine, turn its answers
//! into replies. This is the one place a [`LedgerError`] becomes a `Status`.
//!
//! - [`ledger`](self::ledger): the account operations.
//! - [`admin`](self::admin): mode, reset, audit, journal export, stats, settings.
//! - [`chaos`](self::chaos): faults armed inside the ledger, validated here.
//! - [`convert`](self::convert): domain values to proto replies.
//! - [`replica`](self::replica): transfer legs handed over by other replicas.

mod admin;
mod chaos;
mod convert;
mod ledger;
mod replica;

use std::sync::Arc;

use tonic::{Code, Status};

use crate::{bank::InvalidArgument, config::Mode, engine::Engine, error::LedgerError};

/// Most arrivals a crash point may let pass first: enough to crash deep into
/// a load run, small enough that a typo does not arm a crash for next week.
pub const CRASH_SKIP_MAX: u32 = 1_000_000;

/// Most accounts one Reset may open: keeps a Reset request under the message size bound.
pub const RESET_ACCOUNTS_MAX: usize = 10_000;

/// Both services, sharing one engine.
#[derive(Clone, Debug)]
pub struct LedgerService {
    engine: Arc<Engine>,
}

impl LedgerService {
    /// Services over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

/// The one mapping from ledger errors to gRPC statuses.
pub fn status(error: LedgerError) -> Status {
    let code = error.code();
    if code == Code::Internal {
        // The detail (a database's error text, an invariant) stays in the
        // log; the client gets a number to find it by.
        let incident: u32 = rand::random();
        tracing::error!(incident = format_args!("{incident:08x}"), %error, "internal error");
        return Status::internal(format!(
            "internal error {incident:08x}: the ledger's log has the detail"
        ));
    }
    use overdraft_proto::error_reason as reason;
    let reason = match &error {
        // The owning replica's answer, details and all.
        LedgerError::Peer(status) => return status.clone(),
        LedgerError::NotOwner { .. } => Some(reason::NOT_OWNER),
        LedgerError::LeaseLost { .. } => Some(reason::LEASE_LOST),
        LedgerError::Deadlock { .. } => Some(reason::DEADLOCK),
        LedgerError::LockTimeout { .. } => Some(reason::LOCK_TIMEOUT),
        LedgerError::Contention { .. } => Some(reason::CAS_CONTENTION),
        LedgerError::Refused(_) => Some(reason::REFUSED),
        _ => None,
    };
    match reason {
        Some(reason) => reason::status(code, error.to_string(), reason),
        None => Status::new(code, error.to_string()),
    }
}

pub(crate) fn invalid(error: InvalidArgument) -> Status {
    status(LedgerError::Invalid(error))
}

pub(crate) fn mode_from_proto(raw: i32) -> Result<Mode, Status> {
    Mode::from_proto(raw).ok_or_else(|| {
        invalid(InvalidArgument::new(
            "mode",
            format!("must be MODE_UNSAFE, MODE_MUTEX, MODE_CAS or MODE_ACTOR (got {raw})"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An internal error's detail stays in the log: the client gets the
    /// code and a number to find it by, never a database's error text.
    #[test]
    fn internal_errors_keep_their_detail_in_the_log() {
        let error = LedgerError::Store(crate::store::StoreError::Postgres(
            "relation \"accounts\" does not exist".into(),
        ));
        let internal = status(error);
        assert_eq!(internal.code(), Code::Internal);
        assert!(
            internal.message().starts_with("internal error ")
                && !internal.message().contains("accounts"),
            "{internal:?}"
        );
        // Any other error says what went wrong, in its own words.
        let shutting = status(LedgerError::ShuttingDown);
        assert_eq!(shutting.message(), LedgerError::ShuttingDown.to_string());
    }
}
