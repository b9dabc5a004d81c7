//! The standard gRPC services that tools and container health checks rely on:
//! health and server reflection.

use overdraft_tests::TestLedger;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// Goal: the health service reports the whole server and the Ledger service
/// as SERVING. Method: grpc.health.v1.Health/Check over a real socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let ledger = TestLedger::start(|_| {}).await;
    let mut health = HealthClient::new(overdraft_tests::connect(&ledger.running.url()).await);
    for service in ["", "overdraft.v1.Ledger", "overdraft.v1.Admin"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("{service}: {s:?}"))
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service}");
    }
}

/// Goal: reflection lists the overdraft services, so grpcurl works without
/// the .proto files. Method: grpc.reflection.v1 ListServices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_overdraft_services() {
    let ledger = TestLedger::start(|_| {}).await;
    let mut reflection =
        ServerReflectionClient::new(overdraft_tests::connect(&ledger.running.url()).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "overdraft.v1.Ledger",
        "overdraft.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}
