//! `ledger`: the overdraft ledger service. Parses the command line, binds,
//! and serves until SIGINT or SIGTERM.

use clap::Parser;
use overdraft_server::{Config, serve, telemetry};

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
