//! A ledger in a child process, for scenarios that crash it: a crash point
//! aborts the whole process, so it cannot be the ATM's own. The child is this
//! same `atm` binary running its hidden `serve-ledger` command (or the
//! program `OVERDRAFT_ATM_BIN` names), over a temporary data directory that
//! outlives the crash, so the restart finds what reached the disk.

use std::{path::PathBuf, process::Stdio, time::Duration};

use overdraft_server::config::Mode;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::connect::ClientError;

/// Names the program to run as the child ledger (default: this executable).
pub const ATM_BIN_ENV: &str = "OVERDRAFT_ATM_BIN";

/// How long a child may take to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for an armed crash point to end the child.
const CRASH_TIMEOUT: Duration = Duration::from_secs(30);

/// A ledger child process and its data directory.
#[derive(Debug)]
pub struct ChildLedger {
    program: PathBuf,
    dir: tempfile::TempDir,
    mode: Mode,
    seed: u64,
    child: Child,
    /// `http://ADDR` of the running child.
    pub url: String,
}

impl ChildLedger {
    /// Starts a child ledger in `mode` with `--durability sync`, running
    /// `program` (default: `OVERDRAFT_ATM_BIN`, else this executable).
    pub async fn start(
        program: Option<PathBuf>,
        mode: Mode,
        seed: u64,
    ) -> Result<Self, ClientError> {
        let program = match (program, std::env::var_os(ATM_BIN_ENV)) {
            (Some(program), _) => program,
            (None, Some(program)) => PathBuf::from(program),
            (None, None) => std::env::current_exe().map_err(internal)?,
        };
        let dir = tempfile::tempdir().map_err(internal)?;
        let (child, url) = spawn(&program, &dir, mode, seed).await?;
        Ok(Self {
            program,
            dir,
            mode,
            seed,
            child,
            url,
        })
    }

    /// Waits for the armed crash to end the child, then starts it again on
    /// the same data. Returns how the child ended.
    pub async fn crashed_then_restarted(&mut self) -> Result<String, ClientError> {
        let status = tokio::time::timeout(CRASH_TIMEOUT, self.child.wait())
            .await
            .map_err(|_| {
                ClientError::Internal(format!(
                    "the ledger did not crash within {} s: no operation reached the crash point",
                    CRASH_TIMEOUT.as_secs()
                ))
            })?
            .map_err(internal)?;
        let (child, url) = spawn(&self.program, &self.dir, self.mode, self.seed).await?;
        self.child = child;
        self.url = url;
        Ok(status.to_string())
    }

    /// Stops the child.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn internal(error: impl std::fmt::Display) -> ClientError {
    ClientError::Internal(format!("child ledger: {error}"))
}

async fn spawn(
    program: &PathBuf,
    dir: &tempfile::TempDir,
    mode: Mode,
    seed: u64,
) -> Result<(Child, String), ClientError> {
    let mut child = Command::new(program)
        .args([
            "serve-ledger",
            "--listen",
            "127.0.0.1:0",
            "--durability",
            "sync",
        ])
        .args(["--mode", mode.as_str(), "--seed", &seed.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| internal(format!("cannot run {}: {e}", program.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| internal("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| internal("no address announced within 30 s"))?
        .map_err(internal)?
        .ok_or_else(|| internal(format!("{} exited before serving", program.display())))?;
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| internal(format!("unexpected first line {line:?}")))?;
    Ok((child, format!("http://{addr}")))
}
