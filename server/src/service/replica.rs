//! `overdraft.v1.Replica`: a transfer's credit leg handed over by the
//! replica that debited, applied here if this replica owns the account.

use overdraft_proto::v1::{self as pb, replica_server::Replica};
use tonic::{Request, Response, Status};

use crate::{
    modes::legs::{LegWork, applied_to_wire},
    service::{LedgerService, invalid, status},
};

#[tonic::async_trait]
impl Replica for LedgerService {
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id, transfer_id = %request.get_ref().transfer_id))]
    async fn apply_leg(
        &self,
        request: Request<pb::ApplyLegRequest>,
    ) -> Result<Response<pb::ApplyLegReply>, Status> {
        let leg = LegWork::from_wire(request.into_inner()).map_err(invalid)?;
        let applied = self.engine.receive_leg(leg).await.map_err(status)?;
        Ok(Response::new(applied_to_wire(&applied)))
    }
}
