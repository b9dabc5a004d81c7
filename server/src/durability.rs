//! Group commit for `--durability sync`: an operation is acknowledged only
//! after a flush that began after its commit. Operations that commit while a
//! flush runs wait for the next one together, so one fsync covers many.

use std::{sync::Arc, time::Instant};

use tokio::sync::{mpsc, oneshot};

use crate::{context::Core, error::LedgerError};

/// Waiters queued for the next flush. Past this, new operations wait for room,
/// which slows callers down rather than growing memory.
const FLUSH_WAITERS_MAX: usize = 4_096;

type Waiter = oneshot::Sender<Result<(), String>>;

/// The handle operations wait on.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    waiters: mpsc::Sender<Waiter>,
}

impl GroupCommit {
    /// Spawns the flusher task.
    pub(crate) fn start(core: Arc<Core>) -> Self {
        let (waiters, receiver) = mpsc::channel(FLUSH_WAITERS_MAX);
        tokio::spawn(flusher(core, receiver));
        Self { waiters }
    }

    /// Returns once everything this caller committed is on disk.
    pub(crate) async fn wait(&self) -> Result<(), LedgerError> {
        let (waiter, done) = oneshot::channel();
        self.waiters
            .send(waiter)
            .await
            .map_err(|_| LedgerError::ShuttingDown)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(LedgerError::Invariant(format!("flush failed: {message}"))),
            Err(_) => Err(LedgerError::ShuttingDown),
        }
    }
}

/// Rounds of yielding to the scheduler while gathering a batch.
const GATHER_YIELDS_MAX: usize = 4;

/// Takes every waiter queued, then yields to the scheduler and takes again
/// while more arrive: operations already running (between their commit
/// and their wait) get to join this flush instead of waiting a whole one
/// for the next. A yield costs no timer (tokio's resolution is 1 ms, far
/// longer than a flush); the rounds stop as soon as one brings nobody.
async fn gather(receiver: &mut mpsc::Receiver<Waiter>, batch: &mut Vec<Waiter>) {
    for _ in 0..GATHER_YIELDS_MAX {
        let before = batch.len();
        while batch.len() < FLUSH_WAITERS_MAX {
            match receiver.try_recv() {
                Ok(waiter) => batch.push(waiter),
                Err(_) => break,
            }
        }
        if batch.len() == before || batch.len() >= FLUSH_WAITERS_MAX {
            return;
        }
        tokio::task::yield_now().await;
    }
}

async fn flusher(core: Arc<Core>, mut receiver: mpsc::Receiver<Waiter>) {
    let mut batch = Vec::with_capacity(FLUSH_WAITERS_MAX);
    // Every waiter in a batch was queued after its commit returned, and the
    // flush starts after the batch is taken, so the flush covers them all.
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        gather(&mut receiver, &mut batch).await;
        let store = Arc::clone(&core.store);
        let started = Instant::now();
        let flushed = match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(join_error) => Err(join_error.to_string()),
        };
        core.stats.record_flush(batch.len(), started.elapsed());
        if let Err(message) = &flushed {
            tracing::error!(%message, "durable flush failed");
        }
        for waiter in batch.drain(..) {
            // A waiter whose caller has gone needs no answer.
            let _ = waiter.send(flushed.clone());
        }
    }
}
