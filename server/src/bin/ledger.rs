//! `ledger`: the overdraft ledger service. Parses the command line, binds,
//! and serves until SIGINT or SIGTERM.

use clap::Parser;
use overdraft_server::{Config, serve, telemetry};

/// mimalloc: sled allocates on every write, and glibc's malloc showed up at
/// the top of the profile under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
    let runtime = match overdraft_server::runtime::build(config.threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ledger: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledger: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
