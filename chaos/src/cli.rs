//! The `chaos` command line: `proxy`, `fault`, `ledger`, `run`, `kinds`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::{
    control::ControlClient,
    fault::{self, Fault, FaultKind},
    ledger::{ADMIN_TOKEN_ENV, LedgerFaults},
    log::{Event, FaultLog},
    proxy::Proxy,
    registry::Registry,
    schedule::{self, Targets},
};

/// The default control API address.
const CONTROL_DEFAULT: &str = "http://127.0.0.1:7101";

/// Faults for the overdraft ledger: on the wire (a proxy), on single calls,
/// and inside the ledger; one at a time or on a seeded schedule.
#[derive(Debug, Parser)]
#[command(name = "chaos", version, about, after_help = KINDS_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the fault proxy between ATMs and a ledger.
    Proxy(ProxyArgs),
    /// Add, list, remove or reset the proxy's faults.
    Fault {
        #[command(subcommand)]
        action: FaultAction,
    },
    /// Arm, reset or show faults inside a ledger (its Chaos service).
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// Carry out a schedule of fault phases, writing the fault log.
    Run(RunArgs),
    /// Pause a ledger process (a replica) for a while, then let it go on:
    /// `chaos pause --pid 4242 --for 5s`, or `--container overdraft_ledger_2`.
    Pause(PauseArgs),
    /// List every fault kind with its parameters.
    Kinds,
}

#[derive(Debug, Args)]
struct ProxyArgs {
    /// Where ATMs connect.
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// The ledger, as http://HOST:PORT, or its replicas as URL1,URL2,...
    /// (each client connection keeps to one, in turn).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    upstream: String,
    /// Where the control API listens.
    #[arg(long, default_value = "127.0.0.1:7101")]
    control: SocketAddr,
    /// Seeds every draw of faults that carry no seed of their own.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Append a JSON line per fault added or removed to this file (- for stdout).
    #[arg(long)]
    fault_log: Option<PathBuf>,
    /// The token the control API requires when --control is beyond loopback.
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Debug, Args)]
struct ControlArg {
    /// The proxy's control API.
    #[arg(long, env = "CHAOS_CONTROL", default_value = CONTROL_DEFAULT)]
    control: String,
    /// The admin token (needed when the control API listens beyond loopback).
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    admin_token: Option<String>,
}

impl ControlArg {
    fn client(&self) -> anyhow::Result<ControlClient> {
        Ok(ControlClient::new(&self.control)?.with_token(self.admin_token.clone()))
    }
}

#[derive(Debug, Subcommand)]
enum FaultAction {
    /// Add a fault: `chaos fault add latency latency_ms=100 direction=upstream`.
    Add {
        /// The kind (see `chaos kinds`).
        kind: String,
        /// Parameters as key=value.
        params: Vec<String>,
        #[command(flatten)]
        control: ControlArg,
    },
    /// List the live faults (JSON).
    List {
        #[command(flatten)]
        control: ControlArg,
    },
    /// Remove the fault with this id.
    Remove {
        /// Its id.
        id: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Remove every fault.
    Reset {
        #[command(flatten)]
        control: ControlArg,
    },
}

#[derive(Debug, Args)]
struct LedgerArgs {
    /// The ledger, as http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// The ledger's admin token (needed when it listens beyond loopback).
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum LedgerAction {
    /// Arm a fault: `chaos ledger arm barrier parties=2`.
    Arm {
        /// The kind: race_window, barrier, lost_acks, slow_owner or crash.
        kind: String,
        /// Parameters as key=value.
        params: Vec<String>,
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Disarm every ledger fault but the race window.
    Reset {
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Show what is armed and what has fired.
    State {
        #[command(flatten)]
        ledger: LedgerArgs,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The schedule (TOML).
    schedule: PathBuf,
    /// The ledger, for ledger faults.
    #[arg(long)]
    target: Option<String>,
    /// The proxy's control API, for toxics and call faults.
    #[arg(long)]
    proxy: Option<String>,
    /// Seeds every draw: phase jitter and each fault's own seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the plan and stop; touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the fault log here (- for stdout).
    #[arg(long, default_value = "chaos-faults.jsonl")]
    fault_log: PathBuf,
    /// The admin token, for the ledger and the proxy's control API.
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    admin_token: Option<String>,
}

/// Longest `chaos pause --for`: a stall of ten minutes already outlives
/// every lease and deadline in overdraft.
const PAUSE_FOR_MAX: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
struct PauseArgs {
    /// A local process: SIGSTOP, then SIGCONT.
    #[arg(
        long,
        required_unless_present = "container",
        conflicts_with = "container"
    )]
    pid: Option<u32>,
    /// A Docker container: `docker pause`, then `docker unpause`.
    #[arg(long)]
    container: Option<String>,
    /// How long the process stays stopped (e.g. 5s, 1500ms; at most 10m).
    /// Ctrl-C lets it go on at once.
    #[arg(long = "for", value_parser = parse_pause)]
    duration: Duration,
    /// Append the pause and the resume to this fault log (- for stdout).
    #[arg(long)]
    fault_log: Option<PathBuf>,
}

fn parse_pause(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 5s, 1500ms)"))?;
    if duration.is_zero() || duration > PAUSE_FOR_MAX {
        return Err(format!(
            "must be above 0 and at most {}",
            humantime::format_duration(PAUSE_FOR_MAX)
        ));
    }
    Ok(duration)
}

const KINDS_HELP: &str = "\
Fault kinds (parameters; all durations in ms unless named _us):
  toxics (proxy, per connection; direction=upstream|downstream, probability=0..1):
    latency        latency_ms, jitter_ms
    bandwidth      rate_kib_per_s
    slow_close     delay_ms
    timeout        timeout_ms (0: silent until removed)
    reset_peer     timeout_ms
    slicer         average_size_bytes, size_variation_bytes, delay_us
    limit_data     bytes
  calls (proxy, per gRPC call; method=Withdraw, probability=0..1, count=N):
    call_delay     delay_ms
    drop_request
    drop_response
    duplicate_request  copies
    return_status  code (e.g. unavailable), message
  ledger (its Chaos service):
    race_window    distribution=fixed|uniform|normal|pareto, fixed_ms, min_ms, max_ms,
                   mean_ms, stddev_ms, scale_ms, shape, method, account_id, mode, probability
    barrier        parties, wait_ms
    lost_acks      count, code=unavailable|deadline_exceeded
    slow_owner     delay_ms
    crash          point=journal-before-balances|between-transfer-legs|before-ack, skip
  process (carried out by chaos itself, in schedules or `chaos pause`):
    pause          pid (a local process) or container (a Docker container)";

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one command; the exit code says whether everything it did worked.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Proxy(args) => proxy(args).await,
        Command::Fault { action } => fault_action(action).await,
        Command::Ledger { action } => ledger_action(action).await,
        Command::Run(args) => run_schedule(args).await,
        Command::Pause(args) => pause(args).await,
        Command::Kinds => {
            println!("{KINDS_HELP}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn proxy(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let log = match &args.fault_log {
        Some(path) => FaultLog::to_path(path)?,
        None => FaultLog::disabled(),
    };
    let registry = Arc::new(Registry::new(args.seed, log));
    let proxy = Proxy::new(&args.upstream, registry)?.with_admin_token(args.admin_token);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --listen {}: {e}", args.listen))?;
    let control = tokio::net::TcpListener::bind(args.control)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --control {}: {e}", args.control))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        control = %control.local_addr()?,
        upstream = %args.upstream,
        seed = args.seed,
        "chaos proxy serving"
    );
    proxy
        .run(listener, control, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

async fn fault_action(action: FaultAction) -> anyhow::Result<ExitCode> {
    let value = match action {
        FaultAction::Add {
            kind,
            params,
            control,
        } => {
            let fault = fault::from_words(&kind, &params)?;
            control.client()?.add(&fault).await?
        }
        FaultAction::List { control } => control.client()?.list().await?,
        FaultAction::Remove { id, control } => control.client()?.remove(&id).await?,
        FaultAction::Reset { control } => control.client()?.reset().await?,
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

async fn ledger_action(action: LedgerAction) -> anyhow::Result<ExitCode> {
    let state = match action {
        LedgerAction::Arm {
            kind,
            params,
            ledger,
        } => {
            let fault = fault::from_words(&kind, &params)?;
            let mut faults = LedgerFaults::connect(&ledger.target, ledger.admin_token).await?;
            faults.apply(&fault).await?
        }
        LedgerAction::Reset { ledger } => {
            LedgerFaults::connect(&ledger.target, ledger.admin_token)
                .await?
                .reset()
                .await?
        }
        LedgerAction::State { ledger } => {
            LedgerFaults::connect(&ledger.target, ledger.admin_token)
                .await?
                .state()
                .await?
        }
    };
    println!("{state:#?}");
    Ok(ExitCode::SUCCESS)
}

async fn pause(args: PauseArgs) -> anyhow::Result<ExitCode> {
    let mut fault = Fault::new(FaultKind::Pause {
        pid: args.pid,
        container: args.container,
    });
    fault.id = "pause-1".into();
    fault.validate()?;
    let log = match &args.fault_log {
        Some(path) => FaultLog::to_path(path)?,
        None => FaultLog::disabled(),
    };
    // Nothing between the pause and the resume may return early.
    let what = serde_json::to_string(&fault.kind)?;
    crate::process::pause(&fault).await?;
    log.write(&Event::applied(&fault, Some(0)));
    let started = std::time::Instant::now();
    eprintln!(
        "paused {what}; resuming in {}",
        humantime::format_duration(args.duration)
    );
    // Whatever ends the wait, the process is let go on: the timer, Ctrl-C
    // or SIGTERM (a supervisor stopping this command).
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("cannot watch for SIGTERM: {e}"));
    tokio::select! {
        () = tokio::time::sleep(args.duration) => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted: resuming now"),
        Some(()) = async {
            match terminate.as_mut() {
                Ok(signal) => signal.recv().await,
                Err(_) => std::future::pending().await,
            }
        } => eprintln!("terminated: resuming now"),
    }
    let resumed = crate::process::resume(&fault).await;
    let at_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    log.write(&Event::removed(&fault, Some(at_ms)));
    resumed?;
    eprintln!("resumed after {at_ms} ms");
    Ok(ExitCode::SUCCESS)
}

async fn run_schedule(args: RunArgs) -> anyhow::Result<ExitCode> {
    let schedule = schedule::load(&args.schedule)?;
    let plan = schedule::plan(&schedule, args.seed);
    println!(
        "schedule {:?} ({}): seed {}, {} phase(s), {} event(s)",
        schedule.name,
        args.schedule.display(),
        args.seed,
        schedule.phases.len(),
        plan.len()
    );
    for phase in &schedule.phases {
        println!(
            "  phase {:?}: start {} ms, {} ms long, {} time(s){}{}, faults: {}",
            phase.name,
            phase.start_ms,
            phase.duration_ms,
            phase.repeat,
            phase
                .every_ms
                .map_or_else(String::new, |every| format!(" every {every} ms")),
            if phase.start_jitter_ms > 0 {
                format!(", start jitter up to {} ms", phase.start_jitter_ms)
            } else {
                String::new()
            },
            phase
                .faults
                .iter()
                .map(|fault| fault.kind.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.dry_run {
        for event in &plan {
            println!(
                "  {:>8} ms  {:<6} {:<28} {}",
                event.at_ms,
                format!("{:?}", event.action).to_lowercase(),
                event.fault.id,
                serde_json::to_string(&event.fault)?
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    schedule::check_targets(&plan, args.target.is_some(), args.proxy.is_some())?;
    let ledger = match &args.target {
        Some(target) => Some(LedgerFaults::connect(target, args.admin_token.clone()).await?),
        None => None,
    };
    let proxy = match &args.proxy {
        Some(proxy) => Some(ControlClient::new(proxy)?.with_token(args.admin_token.clone())),
        None => None,
    };
    let log = FaultLog::to_path(&args.fault_log)?;
    let mut targets = Targets { ledger, proxy };
    let report = schedule::run(&plan, &mut targets, &log, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    println!(
        "done: {} event(s), {} failed; fault log: {}",
        report.events,
        report.failures,
        args.fault_log.display()
    );
    Ok(if report.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
