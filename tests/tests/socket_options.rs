//! The sockets the ledger accepts carry TCP_NODELAY: a gRPC reply is one
//! small write, and with Nagle's algorithm on it can wait for the peer's
//! delayed ACK (up to 40 ms on Linux), which is what p99.9 showed before.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

/// Goal: every connection the ledger's listener yields has TCP_NODELAY set.
/// Method: drive the same `incoming` the ledger serves through
/// (`overdraft_server::run` hands it to tonic), connect three clients
/// (whose own sockets have Nagle on, as a fresh socket does), and read the
/// option on each accepted socket. Negative control: a socket accepted by
/// a bare listener reads false, so the check can fail.
#[tokio::test]
async fn accepted_sockets_have_tcp_nodelay() {
    let bare = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(bare.local_addr().unwrap())
        .await
        .unwrap();
    let (plain, _) = bare.accept().await.unwrap();
    assert!(!plain.nodelay().unwrap(), "a fresh socket has Nagle on");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = overdraft_server::incoming(listener);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(TcpStream::connect(addr).await.unwrap());
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("the connection is accepted")
            .expect("the listener is open")
            .expect("accept succeeds");
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY on the accepted socket"
        );
    }
}
