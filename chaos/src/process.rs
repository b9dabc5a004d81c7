//! Faults on a ledger process from outside it: a replica paused (SIGSTOP to
//! a local process, `docker pause` of a container) and resumed. A paused
//! replica is the stalled owner of distributed-locking stories: its sockets
//! stay open, its leases run out, and when it resumes it carries on with
//! what it read before the pause.

use std::time::Duration;

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::fault::{Fault, FaultKind};

/// Longest a `docker pause` or `unpause` may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Stops the process `fault` names.
pub async fn pause(fault: &Fault) -> anyhow::Result<()> {
    act(fault, Signal::SIGSTOP, "pause").await
}

/// Lets the process `fault` names go on.
pub async fn resume(fault: &Fault) -> anyhow::Result<()> {
    act(fault, Signal::SIGCONT, "unpause").await
}

async fn act(fault: &Fault, signal: Signal, docker_verb: &str) -> anyhow::Result<()> {
    let FaultKind::Pause { pid, container } = &fault.kind else {
        anyhow::bail!("{} is not a process fault", fault.kind.name());
    };
    match (pid, container) {
        (Some(pid), None) => {
            let raw =
                i32::try_from(*pid).map_err(|_| anyhow::anyhow!("pid {pid} is out of range"))?;
            kill(Pid::from_raw(raw), signal).map_err(|errno| {
                anyhow::anyhow!(
                    "cannot send {signal} to pid {pid}: {errno} (is it running, and ours?)"
                )
            })
        }
        (None, Some(name)) => {
            let run = tokio::process::Command::new("docker")
                .args([docker_verb, name])
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(DOCKER_TIMEOUT, run)
                .await
                .map_err(|_| {
                    anyhow::anyhow!("docker {docker_verb} {name} took over {DOCKER_TIMEOUT:?}")
                })?
                .map_err(|e| anyhow::anyhow!("cannot run docker: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                anyhow::bail!(
                    "docker {docker_verb} {name} failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            }
        }
        _ => anyhow::bail!("a pause names exactly one of pid and container"),
    }
}
