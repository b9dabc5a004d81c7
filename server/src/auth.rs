//! The admin token: Admin and Chaos change or reveal the whole ledger, so
//! when the ledger listens beyond loopback they require
//! `authorization: Bearer <token>` (`--admin-token` or OVERDRAFT_ADMIN_TOKEN).
//! On loopback they stay open, as for a laptop demo. Refusals are made here,
//! before any service code runs, so a refused call changes nothing.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

/// The interceptor in front of Admin and Chaos.
#[derive(Clone, Debug)]
pub struct AdminGuard {
    /// False on loopback: every call passes.
    required: bool,
    token: Option<Arc<str>>,
}

impl AdminGuard {
    /// A guard for a ledger listening on `addr` with `token`.
    pub fn new(addr: std::net::SocketAddr, token: Option<&str>) -> Self {
        Self {
            required: !addr.ip().is_loopback(),
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
        }
    }

    /// Whether calls need the token.
    pub fn required(&self) -> bool {
        self.required
    }
}

impl Interceptor for AdminGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.required {
            return Ok(request);
        }
        let Some(token) = &self.token else {
            return Err(Status::unauthenticated(
                "this ledger listens beyond loopback without --admin-token, so Admin and Chaos are closed; restart it with --admin-token (or OVERDRAFT_ADMIN_TOKEN)",
            ));
        };
        match overdraft_proto::admin_token::presented(request.metadata()) {
            Some(presented) if overdraft_proto::admin_token::matches(presented, token) => {
                Ok(request)
            }
            _ => Err(Status::unauthenticated(
                "Admin and Chaos need `authorization: Bearer <admin token>` when the ledger listens beyond loopback (the atm reads it from OVERDRAFT_ADMIN_TOKEN)",
            )),
        }
    }
}
