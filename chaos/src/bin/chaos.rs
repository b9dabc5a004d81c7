//! `chaos`: the fault proxy, the fault controls and seeded schedules.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = overdraft_chaos::cli::Cli::parse();
    overdraft_chaos::cli::init_tracing();
    match overdraft_chaos::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chaos: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
