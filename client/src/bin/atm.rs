//! `atm`: the overdraft ATM. Parses the command line and hands over to
//! [`overdraft_client::cli::run`]; exit 0 when expectations hold, 1 when
//! they do not, 2 on usage or connection errors, 3 when a check could not
//! decide.

use clap::Parser;
use overdraft_client::cli::{Cli, run};

/// mimalloc: sled allocates on every write, and glibc's malloc showed up at
/// the top of the profile under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    overdraft_server::telemetry::init_with_default(
        overdraft_server::config::LogFormat::Text,
        "warn",
    );
    let runtime = match overdraft_server::runtime::build(cli.runtime_threads()) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("atm: cannot start the async runtime: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => std::process::ExitCode::from(exit.code()),
        Err(error) => {
            eprintln!("atm: {error}");
            std::process::ExitCode::from(2)
        }
    }
}
