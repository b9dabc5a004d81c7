//! The admin token: Admin and Chaos change or reveal the whole ledger, so
//! when the ledger listens beyond loopback they require
//! `authorization: Bearer <token>` (`--admin-token` or OVERDRAFT_ADMIN_TOKEN).
//! On loopback they stay open, as for a laptop demo. Refusals are made here,
//! before any service code runs, so a refused call changes nothing.

use overdraft_proto::admin_token::{Gate, Refusal, presented};
use tonic::{Request, Status, service::Interceptor};

/// The interceptor in front of Admin and Chaos.
#[derive(Clone, Debug)]
pub struct AdminGuard {
    gate: Gate,
}

impl AdminGuard {
    /// A guard for a ledger listening on `addr` with `token`.
    pub fn new(addr: std::net::SocketAddr, token: Option<&str>) -> Self {
        Self {
            gate: Gate::new(addr, token),
        }
    }

    /// Whether calls need the token.
    pub fn required(&self) -> bool {
        self.gate.required()
    }
}

impl Interceptor for AdminGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.gate.admit(presented(request.metadata())) {
            Ok(()) => Ok(request),
            Err(Refusal::NoTokenConfigured) => Err(Status::unauthenticated(
                "this ledger listens beyond loopback without --admin-token, so Admin and Chaos are closed; restart it with --admin-token (or OVERDRAFT_ADMIN_TOKEN)",
            )),
            Err(Refusal::WrongOrMissing) => Err(Status::unauthenticated(
                "Admin and Chaos need `authorization: Bearer <admin token>` when the ledger listens beyond loopback (the atm reads it from OVERDRAFT_ADMIN_TOKEN)",
            )),
        }
    }
}
