//! `ledger`: the overdraft ledger service. Parses the command line, binds,
//! and serves until SIGINT or SIGTERM.

use clap::Parser;
use overdraft_server::{Config, run, telemetry};
use tokio::net::TcpListener;

/// mimalloc: sled allocates on every write, and glibc's malloc showed up at
/// the top of the profile under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
    match serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledger: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e}; pick another --listen",
            config.listen
        )
    })?;
    // Scripts and tests read the bound address (useful with port 0) from this line.
    println!("listening on {}", listener.local_addr()?);
    run(listener, config, shutdown_signal()).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (docker stop).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received; draining");
}
