//! Calls to the other replicas of one ledger, for actor mode over a shared
//! store: an operation forwarded to the replica that owns its account, and
//! a transfer's credit leg handed to the owner of the credited account.
//!
//! One HTTP/2 connection per peer, made on first use and kept. Peers learn
//! each other's addresses from the lease table, so a bounded map holds them.
//! A forwarded call is marked ([`FORWARDED_HEADER`]) and never forwarded
//! again: a replica that no longer owns the account answers NOT_OWNER and
//! the forwarding replica asks the lease table anew.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use overdraft_proto::transport::Channel;
use overdraft_proto::v1::{self as pb, ledger_client::LedgerClient, replica_client::ReplicaClient};

use crate::error::LedgerError;

/// The metadata key a forwarded call carries, naming the replica that forwarded it.
pub const FORWARDED_HEADER: &str = "overdraft-forwarded-by";

/// Most peers whose connections are kept: far more replicas than one
/// database serves well; past it the map starts again.
const PEERS_MAX: usize = 64;

/// Longest a forwarded call or leg may take. Longer than the lock waits and
/// race windows a demo sets, short enough that a vanished peer frees the
/// caller well before the client's own deadline.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait to connect to a peer.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An operation as its owner receives it.
#[derive(Clone, Debug)]
pub(crate) enum Forward {
    Deposit(pb::DepositRequest),
    Withdraw(pb::WithdrawRequest),
    Transfer(pb::TransferRequest),
}

/// What the owner answered.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Mutation(pb::MutationReply),
    Transfer(pb::TransferReply),
}

/// The other replicas, as this one calls them.
#[derive(Debug)]
pub(crate) struct Peers {
    /// This replica's name, sent with every forwarded call.
    me: String,
    /// The admin token, which a leg needs beyond loopback (it moves money).
    admin_token: Option<String>,
    // A std mutex: held to look up or insert a channel, never across an await.
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    pub(crate) fn new(me: String, admin_token: Option<String>) -> Self {
        Self {
            me,
            admin_token,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `operation` to the replica at `address`, marked as forwarded.
    pub(crate) async fn forward(
        &self,
        address: &str,
        operation: Forward,
    ) -> Result<Answer, LedgerError> {
        let mut client = LedgerClient::new(self.channel(address)?);
        let answer = match operation {
            Forward::Deposit(request) => client
                .deposit(self.request(request, false))
                .await
                .map(|reply| Answer::Mutation(reply.into_inner())),
            Forward::Withdraw(request) => client
                .withdraw(self.request(request, false))
                .await
                .map(|reply| Answer::Mutation(reply.into_inner())),
            Forward::Transfer(request) => client
                .transfer(self.request(request, false))
                .await
                .map(|reply| Answer::Transfer(reply.into_inner())),
        };
        answer.map_err(LedgerError::Peer)
    }

    /// Hands a transfer's leg to the replica at `address`, which owns its account.
    pub(crate) async fn apply_leg(
        &self,
        address: &str,
        leg: pb::ApplyLegRequest,
    ) -> Result<pb::ApplyLegReply, LedgerError> {
        ReplicaClient::new(self.channel(address)?)
            .apply_leg(self.request(leg, true))
            .await
            .map(tonic::Response::into_inner)
            .map_err(LedgerError::Peer)
    }

    fn request<T>(&self, message: T, admin: bool) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(PEER_CALL_TIMEOUT);
        if let Ok(me) = self.me.parse() {
            request.metadata_mut().insert(FORWARDED_HEADER, me);
        }
        if let (true, Some(token)) = (admin, &self.admin_token) {
            overdraft_proto::admin_token::attach(&mut request, token);
        }
        request
    }

    /// The kept connection to `address`, made lazily on first use.
    fn channel(&self, address: &str) -> Result<Channel, LedgerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Channel::lazy(address, PEER_CONNECT_TIMEOUT).map_err(|e| {
            LedgerError::Invariant(format!(
                "a peer advertised an unusable address {address:?}: {e}"
            ))
        })?;
        if channels.len() >= PEERS_MAX {
            channels.clear();
        }
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Whether `metadata` marks a call forwarded by another replica.
pub fn forwarded(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata.contains_key(FORWARDED_HEADER)
}
