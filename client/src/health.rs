//! `atm health`: the standard gRPC health check (`grpc.health.v1.Health`),
//! for container health checks and scripts: no grpc_health_probe image can
//! be pulled here, and the atm is in every image already.
//!
//! Exit 0 when the target answers SERVING, 1 when it answers anything else
//! (NOT_SERVING, an unknown service), 2 when nothing answers in time.

use std::time::Duration;

use clap::Args;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::connect::{self, ClientError};

/// Longest `--timeout` accepted: a health check that takes longer is a
/// failed one, whatever it would have said.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// `atm health` arguments.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The ledger (e.g. http://127.0.0.1:50051).
    #[arg(long)]
    pub target: String,
    /// The service to ask about (e.g. overdraft.v1.Ledger); empty: the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long to wait for the answer, connecting included (at most 60s).
    #[arg(long, default_value = "2s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text)
        .map_err(|e| format!("expected a duration like 2s or 500ms, got `{text}`: {e}"))?;
    if timeout.is_zero() || timeout > TIMEOUT_MAX {
        return Err(format!("must be above zero and at most 60s, got `{text}`"));
    }
    Ok(timeout)
}

/// Asks `target` for its health; prints the status. True when SERVING.
pub async fn check(args: &HealthArgs) -> Result<bool, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        target: args.target.clone(),
        reason,
    };
    let asked = async {
        let mut health = HealthClient::new(connect::channel(&args.target).await?);
        let request = HealthCheckRequest {
            service: args.service.clone(),
        };
        Ok::<_, ClientError>(health.check(request).await)
    };
    let answered = tokio::time::timeout(args.timeout, asked)
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", args.timeout)))??;
    let status = match answered {
        Ok(reply) => reply.into_inner().status(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            println!("UNKNOWN_SERVICE {:?}", args.service);
            return Ok(false);
        }
        Err(status) => return Err(unreachable(status.to_string())),
    };
    println!("{}", status.as_str_name());
    Ok(status == ServingStatus::Serving)
}
