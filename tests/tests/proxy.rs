//! Faults on the wire and on single calls, through the chaos proxy: a real
//! ledger and a real proxy on loopback ports, real gRPC through both.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use overdraft_chaos::{
    control::ControlClient,
    fault::{Fault, FaultKind, StatusCode},
    log::FaultLog,
    proxy::Proxy,
    registry::Registry,
    schedule::{self, Schedule, Targets},
};
use overdraft_server::config::Mode;
use overdraft_tests::{TestLedger, pb};
use pb::{admin_client::AdminClient, ledger_client::LedgerClient};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Code, transport::Channel};

/// A proxy in front of a ledger, with its control API.
struct ChaosProxy {
    url: String,
    control: ControlClient,
    _stop: oneshot::Sender<()>,
}

impl ChaosProxy {
    async fn start(upstream: &str, seed: u64, log: FaultLog) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let control_url = format!("http://{}", control.local_addr().unwrap());
        let proxy = Proxy::new(upstream, Arc::new(Registry::new(seed, log))).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(proxy.run(listener, control, async {
            let _ = stopped.await;
        }));
        Self {
            url,
            control: ControlClient::new(&control_url).unwrap(),
            _stop: stop,
        }
    }

    /// A Ledger client through the proxy, on a connection of its own, with
    /// `timeout` as its deadline for every call.
    async fn client(&self, timeout: Duration) -> LedgerClient<Channel> {
        let channel = Channel::from_shared(self.url.clone())
            .unwrap()
            .timeout(timeout)
            .connect_lazy();
        LedgerClient::new(channel)
    }

    async fn add(&self, kind: FaultKind, configure: impl FnOnce(&mut Fault)) {
        let mut fault = Fault::new(kind);
        configure(&mut fault);
        self.control.add(&fault).await.unwrap();
    }
}

async fn balance(client: &mut LedgerClient<Channel>) -> Result<i64, tonic::Status> {
    client
        .get_balance(pb::GetBalanceRequest {
            account_id: "alice".into(),
        })
        .await
        .map(|reply| reply.into_inner().balance_cents)
}

async fn deposit(
    client: &mut LedgerClient<Channel>,
    request_id: &str,
) -> Result<pb::MutationReply, tonic::Status> {
    client
        .deposit(pb::DepositRequest {
            account_id: "alice".into(),
            amount_cents: 100,
            request_id: request_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Whether `status` is tonic's report of a connection reset under a call:
/// a transport error (UNKNOWN or UNAVAILABLE) caused by ECONNRESET, or
/// EPIPE when the reset arrived while the client was still writing.
fn connection_broke(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        {
            return matches!(status.code(), Code::Unknown | Code::Unavailable);
        }
        // The reset reached the client before its request left: hyper
        // cancels the queued request because the connection closed (not a
        // deadline: that is tonic's own TimeoutExpired, never hyper's).
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return status.code() == Code::Cancelled;
        }
        source = error.source();
    }
    false
}

/// The median of `calls` sequential GetBalance calls, ms.
async fn median_ms(client: &mut LedgerClient<Channel>, calls: usize) -> f64 {
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        balance(client).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[calls / 2]
}

/// Goal: the latency toxic adds at least its configured latency to a call,
/// measured against a direct call in the same run. Method: the median of 15
/// calls direct, through the proxy with no toxic, and with 40 ms downstream
/// latency; the toxic's median must exceed the direct one by 40 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_toxic_adds_at_least_its_latency_to_every_call() {
    let mut ledger = TestLedger::start(|_| {}).await;
    ledger.reset(&[("alice", 10_000)]).await;
    let proxy = ChaosProxy::start(&ledger.running.url(), 1, FaultLog::disabled()).await;
    let timeout = Duration::from_secs(10);
    let mut direct = ledger.new_ledger_client().await;
    let direct_ms = median_ms(&mut direct, 15).await;
    let mut through = proxy.client(timeout).await;
    let clean_ms = median_ms(&mut through, 15).await;
    proxy
        .add(
            FaultKind::Latency {
                latency_ms: 40,
                jitter_ms: 0,
            },
            |_| {},
        )
        .await;
    let slow_ms = median_ms(&mut through, 15).await;
    eprintln!("median ms: direct {direct_ms:.2}, proxy {clean_ms:.2}, proxy+40ms {slow_ms:.2}");
    assert!(
        slow_ms >= direct_ms + 40.0,
        "latency toxic added {:.2} ms, configured 40",
        slow_ms - direct_ms
    );
    assert!(slow_ms / direct_ms > 1.0);
}

/// The total time of `calls` sequential GetBalance calls, ms.
async fn total_ms(client: &mut LedgerClient<Channel>, calls: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..calls {
        assert_eq!(
            balance(client).await.unwrap(),
            10_000,
            "intact through the toxic"
        );
    }
    started.elapsed().as_secs_f64() * 1e3
}

/// Every GetBalance answer is at least this many bytes on the wire: HTTP/2
/// HEADERS, DATA (with gRPC's 5-byte prefix) and trailers, 9-byte frame
/// headers each, before any payload.
const ANSWER_BYTES_MIN: f64 = 40.0;

/// Goal: bandwidth, slicer and call_delay slow calls by at least what they
/// configure, the data arriving intact, and call_delay only on its method.
/// Method: 10 sequential GetBalance calls direct and under each fault (one
/// at a time, on fresh connections). Bandwidth 1 KiB/s pauses each answer
/// by its size over the rate: 9 of the 10 pauses fall before the last
/// answer, at least 9 x 40 B / 1 KiB/s = 351 ms. The slicer sends 1-byte
/// slices 2 ms apart: at least 39 pauses per answer, 78 ms a call. A 60 ms
/// call_delay on GetBalance holds each of those calls, and no deposit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_slicer_and_call_delay_slow_calls_by_what_they_configure() {
    let mut ledger = TestLedger::start(|_| {}).await;
    ledger.reset(&[("alice", 10_000)]).await;
    let proxy = ChaosProxy::start(&ledger.running.url(), 1, FaultLog::disabled()).await;
    let timeout = Duration::from_secs(20);
    let mut direct = ledger.new_ledger_client().await;
    let direct_ms = total_ms(&mut direct, 10).await;

    proxy
        .add(FaultKind::Bandwidth { rate_kib_per_s: 1 }, |f| {
            f.id = "bandwidth".into();
        })
        .await;
    let bandwidth_ms = total_ms(&mut proxy.client(timeout).await, 10).await;
    proxy.control.remove("bandwidth").await.unwrap();

    proxy
        .add(
            FaultKind::Slicer {
                average_size_bytes: 1,
                size_variation_bytes: 0,
                delay_us: 2_000,
            },
            |f| f.id = "slicer".into(),
        )
        .await;
    let slicer_ms = total_ms(&mut proxy.client(timeout).await, 10).await / 10.0;
    proxy.control.remove("slicer").await.unwrap();

    proxy
        .add(FaultKind::CallDelay { delay_ms: 60 }, |f| {
            f.method = Some("GetBalance".into());
        })
        .await;
    let mut client = proxy.client(timeout).await;
    let delayed_ms = total_ms(&mut client, 10).await / 10.0;
    let started = Instant::now();
    for n in 0..10 {
        deposit(&mut client, &format!("undelayed-{n}"))
            .await
            .unwrap();
    }
    let deposit_ms = started.elapsed().as_secs_f64() * 1e3 / 10.0;

    let direct_call_ms = direct_ms / 10.0;
    eprintln!(
        "ms: direct 10 calls {direct_ms:.1}, bandwidth 10 calls {bandwidth_ms:.1}; per call: \
         slicer {slicer_ms:.1}, call_delay {delayed_ms:.1}, deposits under it {deposit_ms:.1}"
    );
    // The pauses alone bound each figure from below; direct calls take ~1 ms.
    assert!(
        bandwidth_ms >= 9.0 * ANSWER_BYTES_MIN / 1024.0 * 1e3,
        "10 calls at 1 KiB/s took {bandwidth_ms:.1} ms (direct {direct_ms:.1})"
    );
    assert!(
        slicer_ms >= (ANSWER_BYTES_MIN - 1.0) * 2.0,
        "a call in 1-byte slices 2 ms apart took {slicer_ms:.1} ms (direct {direct_call_ms:.1})"
    );
    assert!(
        delayed_ms >= 60.0,
        "a call under a 60 ms call_delay took {delayed_ms:.1} ms (direct {direct_call_ms:.1})"
    );
    assert!(
        deposit_ms < 45.0,
        "a deposit waited {deposit_ms:.1} ms: call_delay is for GetBalance only"
    );
}

/// Goal: limit_data closes a connection once its budget has passed (calls
/// on it fail as a broken connection, the ledger keeps serving), and
/// slow_close holds the close of a connection for its delay. Method: calls
/// under a 2,000-byte downstream budget until one fails, then a direct call;
/// then a raw TCP connection that closes its sending side at once, timed to
/// the end of its stream with and without a 300 ms slow_close upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_cuts_the_connection_and_slow_close_holds_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut ledger = TestLedger::start(|_| {}).await;
    ledger.reset(&[("alice", 10_000)]).await;
    let proxy = ChaosProxy::start(&ledger.running.url(), 1, FaultLog::disabled()).await;
    proxy
        .add(FaultKind::LimitData { bytes: 2_000 }, |f| {
            f.id = "limit".into();
        })
        .await;
    let mut client = proxy.client(Duration::from_secs(5)).await;
    let mut answered = 0u32;
    let mut failed = None;
    for _ in 0..200 {
        match balance(&mut client).await {
            Ok(cents) => {
                assert_eq!(cents, 10_000);
                answered += 1;
            }
            Err(error) => {
                failed = Some(error);
                break;
            }
        }
    }
    let error = failed.expect("200 calls and limit_data never cut the connection");
    assert!(
        f64::from(answered) <= 2_000.0 / ANSWER_BYTES_MIN,
        "2,000 bytes carried {answered} answers"
    );
    eprintln!("limit_data: {answered} answers, then {error:?}");
    assert!(
        answered >= 1,
        "the budget carries the handshake and an answer"
    );
    assert!(
        matches!(
            error.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "expected a broken connection: {error:?}"
    );
    assert_eq!(ledger.balance("alice").await.balance_cents, 10_000);
    proxy.control.remove("limit").await.unwrap();

    let address = proxy.url.trim_start_matches("http://").to_owned();
    let close_ms = |address: String| async move {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let started = Instant::now();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        started.elapsed().as_secs_f64() * 1e3
    };
    let quick_ms = close_ms(address.clone()).await;
    proxy
        .add(FaultKind::SlowClose { delay_ms: 300 }, |f| {
            f.direction = Some(overdraft_chaos::fault::Direction::Upstream);
        })
        .await;
    let slow_ms = close_ms(address).await;
    eprintln!("close to end of stream: {quick_ms:.1} ms, with slow_close 300 ms: {slow_ms:.1} ms");
    assert!(
        slow_ms >= 300.0,
        "slow_close held the close {slow_ms:.1} ms"
    );
    assert!(
        quick_ms < 300.0,
        "without it the close took {quick_ms:.1} ms"
    );
}

/// Goal: reset_peer surfaces as UNAVAILABLE (the connection was reset), or
/// as CANCELLED with hyper's "connection closed" when the reset beats the
/// request onto the wire (the client's preface already draws it; seen once
/// in a CI run), and a silent timeout toxic as the client's deadline
/// expiring (tonic's TimeoutExpired, never hyper's cancel); nothing is
/// applied in either case. Method: one call under each toxic, then the
/// balance read directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_timeout_toxics_surface_as_the_expected_client_errors() {
    let mut ledger = TestLedger::start(|_| {}).await;
    ledger.reset(&[("alice", 10_000)]).await;
    let proxy = ChaosProxy::start(&ledger.running.url(), 1, FaultLog::disabled()).await;

    proxy
        .add(FaultKind::ResetPeer { timeout_ms: 0 }, |f| {
            f.direction = Some(overdraft_chaos::fault::Direction::Upstream);
            f.id = "reset".into();
        })
        .await;
    let mut client = proxy.client(Duration::from_secs(5)).await;
    let error = deposit(&mut client, "").await.unwrap_err();
    assert!(
        connection_broke(&error),
        "expected a reset or broken pipe: {error:?}"
    );
    proxy.control.remove("reset").await.unwrap();

    proxy
        .add(FaultKind::Timeout { timeout_ms: 0 }, |f| {
            f.direction = Some(overdraft_chaos::fault::Direction::Upstream);
        })
        .await;
    let mut client = proxy.client(Duration::from_millis(300)).await;
    let started = Instant::now();
    let error = deposit(&mut client, "").await.unwrap_err();
    // tonic reports its own client-side timeout as CANCELLED "Timeout expired".
    assert_eq!(error.code(), Code::Cancelled, "{error:?}");
    assert!(error.message().contains("Timeout expired"), "{error:?}");
    assert!(
        !connection_broke(&error),
        "a deadline is no broken connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    proxy
        .add(FaultKind::Timeout { timeout_ms: 100 }, |f| {
            f.direction = Some(overdraft_chaos::fault::Direction::Downstream);
        })
        .await;
    let mut client = proxy.client(Duration::from_secs(5)).await;
    let error = deposit(&mut client, "").await.unwrap_err();
    assert!(
        matches!(error.code(), Code::Unavailable | Code::Unknown)
            && error.message().contains("transport error")
            || error.code() == Code::Unavailable,
        "expected the closed connection to surface: {error:?}"
    );

    assert_eq!(ledger.balance("alice").await.balance_cents, 10_000);
}

/// Goal: a duplicated request (the retry storm) double-applies with
/// idempotency off and applies exactly once with it on, in every mode.
/// Method: per mode and setting, one deposit with a request_id through a
/// duplicate_request fault; the balance tells how often it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_requests_double_apply_only_without_idempotency_in_every_mode() {
    for mode in Mode::ALL {
        for idempotency in [false, true] {
            let mut ledger = TestLedger::start(|c| c.mode = mode).await;
            ledger.reset(&[("alice", 10_000)]).await;
            AdminClient::new(overdraft_tests::connect(&ledger.running.url()).await)
                .configure(pb::ConfigureRequest {
                    idempotency: Some(idempotency),
                    ..Default::default()
                })
                .await
                .unwrap();
            let proxy = ChaosProxy::start(&ledger.running.url(), 1, FaultLog::disabled()).await;
            proxy
                .add(FaultKind::DuplicateRequest { copies: 1 }, |f| {
                    f.method = Some("Deposit".into());
                })
                .await;
            let mut client = proxy.client(Duration::from_secs(10)).await;
            deposit(&mut client, "pay-1").await.unwrap();
            // The journal counts applications; in unsafe mode the two
            // copies race, so the balance may show only one (a lost update).
            let applied_cents = if idempotency { 100 } else { 200 };
            let audit = ledger.audit().await;
            assert_eq!(
                audit.deposits_cents, applied_cents,
                "{mode}, idempotency {idempotency}"
            );
            if mode != Mode::Unsafe {
                assert_eq!(
                    ledger.balance("alice").await.balance_cents,
                    10_000 + applied_cents,
                    "{mode}, idempotency {idempotency}"
                );
                assert!(audit.clean, "{mode}: {:?}", audit.findings);
            }
        }
    }
}

/// Goal: a response dropped after the ledger answered leaves the operation
/// applied while the client sees only its deadline; a blind retry then
/// charges twice, a keyed retry once. Method: drop_response with count 1,
/// a deposit that times out, the balance, then the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_responses_apply_silently_and_only_keyed_retries_are_safe() {
    for (request_id, expected) in [("", 10_200), ("pay-1", 10_100)] {
        let mut ledger = TestLedger::start(|c| c.mode = Mode::Mutex).await;
        ledger.reset(&[("alice", 10_000)]).await;
        let proxy = ChaosProxy::start(&ledger.running.url(), 1, FaultLog::disabled()).await;
        proxy
            .add(FaultKind::DropResponse, |f| {
                f.method = Some("Deposit".into());
                f.count = Some(1);
            })
            .await;
        let mut client = proxy.client(Duration::from_millis(500)).await;
        let error = deposit(&mut client, request_id).await.unwrap_err();
        assert_eq!(error.code(), Code::Cancelled, "{error:?}");
        assert_eq!(ledger.balance("alice").await.balance_cents, 10_100);
        let retry = deposit(&mut client, request_id).await.unwrap();
        assert_eq!(retry.replayed, !request_id.is_empty());
        assert_eq!(
            ledger.balance("alice").await.balance_cents,
            expected,
            "request_id {request_id:?}"
        );
    }
}

/// Goal: return_status answers with the chosen status and the ledger never
/// sees the call; drop_request holds it until the deadline. Method: a
/// withdrawal under each, then the balance; then the control API's list and
/// its refusal of a bad fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_faults_answer_for_the_ledger_and_the_control_api_names_bad_fields() {
    let mut ledger = TestLedger::start(|_| {}).await;
    ledger.reset(&[("alice", 10_000)]).await;
    let proxy = ChaosProxy::start(&ledger.running.url(), 1, FaultLog::disabled()).await;
    proxy
        .add(
            FaultKind::ReturnStatus {
                code: StatusCode::ResourceExhausted,
                message: "teller closed".into(),
            },
            |f| f.id = "closed".into(),
        )
        .await;
    let mut client = proxy.client(Duration::from_secs(5)).await;
    let error = deposit(&mut client, "").await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert_eq!(error.message(), "teller closed");
    let listed = proxy.control.list().await.unwrap();
    assert_eq!(listed[0]["id"], "closed");
    assert_eq!(listed[0]["fired"], 1);
    proxy.control.remove("closed").await.unwrap();

    proxy.add(FaultKind::DropRequest, |_| {}).await;
    let mut client = proxy.client(Duration::from_millis(300)).await;
    assert_eq!(
        deposit(&mut client, "").await.unwrap_err().code(),
        Code::Cancelled
    );
    assert_eq!(ledger.balance("alice").await.balance_cents, 10_000);

    let error = proxy
        .control
        .add(&Fault::new(FaultKind::Latency {
            latency_ms: 10_000_000,
            jitter_ms: 0,
        }))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("latency_ms: must be at most 60000"),
        "{error}"
    );
    let error = proxy.control.remove("nope").await.unwrap_err().to_string();
    assert!(error.contains("no fault has id \"nope\""), "{error}");
}

const SCHEDULE: &str = r#"
name = "storm"
[[phase]]
name = "slow"
duration_ms = 60
repeat = 3
every_ms = 120
start_jitter_ms = 40
[[phase.fault]]
kind = "latency"
latency_ms = 5
jitter_ms = 2
probability = 0.5
[[phase]]
name = "race"
start_ms = 30
duration_ms = 100
[[phase.fault]]
kind = "race_window"
distribution = "uniform"
min_ms = 1
max_ms = 5
method = "Withdraw"
"#;

/// Runs the schedule against a fresh ledger and proxy; returns the fault
/// log with the wall-clock field removed.
async fn run_schedule(seed: u64) -> Vec<serde_json::Value> {
    let ledger = TestLedger::start(|_| {}).await;
    let proxy = ChaosProxy::start(&ledger.running.url(), 0, FaultLog::disabled()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.jsonl");
    let schedule: Schedule = toml::from_str(SCHEDULE).unwrap();
    schedule::check(&schedule).unwrap();
    let plan = schedule::plan(&schedule, seed);
    let mut targets = Targets {
        ledger: Some(
            overdraft_chaos::ledger::LedgerFaults::connect(&ledger.running.url(), None)
                .await
                .unwrap(),
        ),
        proxy: Some(proxy.control.clone()),
    };
    let log = FaultLog::to_path(&path).unwrap();
    let report = schedule::run(&plan, &mut targets, &log, std::future::pending()).await;
    assert_eq!(report.failures, 0);
    let left = proxy.control.list().await.unwrap();
    assert_eq!(left.as_array().unwrap().len(), 0, "{left:#}");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(value["wall_unix_ms"].as_u64().unwrap() > 0);
            value.as_object_mut().unwrap().remove("wall_unix_ms");
            value
        })
        .collect()
}

/// Goal: the same seed gives the same fault log, and another seed another.
/// Method: run one schedule (proxy and ledger faults, jittered repeats)
/// against real servers twice with seed 7 and once with seed 8; compare
/// the logs without their wall-clock field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_the_same_fault_log() {
    let first = run_schedule(7).await;
    assert_eq!(first.len(), 8, "{first:#?}");
    assert_eq!(first, run_schedule(7).await);
    assert_ne!(first, run_schedule(8).await);
}
