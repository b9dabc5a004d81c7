//! Durable acknowledgements for `--durability sync`: an operation is
//! acknowledged only after a sync that began after its commit.
//!
//! Group commit happens in two places. The store syncs once for every flush
//! request it finds together ([`crate::store::Store::flush_then`]: the sled
//! store queues it behind the commits on its writer thread). In front of it,
//! [`GroupCommit`] keeps one request in flight: an operation that commits
//! while a sync runs joins the next batch, which goes out as soon as the
//! sync ends. So the writer thread wakes one task per sync, the courier,
//! and the courier sends the next request and wakes the batch's operations
//! from inside the runtime, where a wake-up is a push onto the worker's own
//! queue, not a trip through the runtime's shared queue that often ends in
//! a parked worker's futex. Measured (BENCHMARKS.md): ~16 operations per
//! sync at 64 ATMs, each of which was such a wake-up.
//!
//! Bounds: the batch waiting for the next sync holds one entry per
//! operation in flight, which the server's concurrency limits bound; the
//! courier's queue holds at most one finished batch, since the next request
//! goes out only once the courier has taken the last one.

use std::{
    mem,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::{mpsc, oneshot};

use crate::{context::Core, error::LedgerError, store::FlushDone};

/// A sync's outcome, as its waiters are told it.
type Outcome = Result<(), String>;

/// Operations waiting for one sync.
type Batch = Vec<oneshot::Sender<Outcome>>;

/// The handle operations wait on.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
}

/// Asks for a sync covering a batch of this many operations; calls the
/// callback when it ends (the store's [`crate::store::Store::flush_then`]).
type Syncer = Box<dyn Fn(usize, FlushDone) + Send + Sync>;

struct Shared {
    sync: Syncer,
    state: Mutex<State>,
    /// To the courier: a batch whose sync ended, with its outcome.
    synced: mpsc::UnboundedSender<(Batch, Outcome)>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    /// A flush request is with the store, or its batch with the courier.
    in_flight: bool,
    /// Operations that committed since that request was sent: the next batch.
    next: Batch,
}

impl GroupCommit {
    /// Syncs `core`'s store and counts each sync in its stats. Starts the
    /// courier on the current runtime; it stops with the handle.
    pub(crate) fn start(core: Arc<Core>) -> Self {
        Self::with_sync(Box::new(move |operations, done| {
            let counted = Arc::clone(&core);
            core.store.flush_then(Box::new(move |outcome, figures| {
                if let Some(figures) = figures {
                    counted.stats.record_flush(operations, figures.took);
                }
                done(outcome, figures);
            }));
        }))
    }

    fn with_sync(sync: Syncer) -> Self {
        let (synced, batches) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            sync,
            state: Mutex::new(State::default()),
            synced,
        });
        tokio::spawn(courier(Arc::downgrade(&shared), batches));
        Self { shared }
    }

    /// Returns once everything this caller committed is on disk.
    pub(crate) async fn wait(&self) -> Result<(), LedgerError> {
        let (sender, answer) = oneshot::channel();
        let batch = {
            let mut state = self.shared.lock();
            state.next.push(sender);
            if state.in_flight {
                None
            } else {
                state.in_flight = true;
                Some(mem::take(&mut state.next))
            }
        };
        if let Some(batch) = batch {
            self.shared.request(batch);
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(LedgerError::Invariant(format!("flush failed: {message}"))),
            Err(_) => Err(LedgerError::ShuttingDown),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a sync for `batch`, every operation of which committed
    /// before this request is queued behind its commit.
    fn request(&self, batch: Batch) {
        let synced = self.synced.clone();
        (self.sync)(
            batch.len(),
            Box::new(move |outcome, _figures| {
                if let Err(error) = &outcome {
                    tracing::error!(%error, "durable flush failed");
                }
                let outcome = outcome.map_err(|error| error.to_string());
                if let Err(mpsc::error::SendError((batch, outcome))) = synced.send((batch, outcome))
                {
                    // The courier has stopped (the ledger is closing): answer here.
                    answer(batch, &outcome);
                }
            }),
        );
    }

    /// The next batch, if operations gathered while the last sync ran;
    /// otherwise nothing is in flight any more.
    fn take_next(&self) -> Option<Batch> {
        let mut state = self.lock();
        if state.next.is_empty() {
            state.in_flight = false;
            None
        } else {
            Some(mem::take(&mut state.next))
        }
    }
}

/// Sends the next request as each sync ends, then answers the batch it
/// covered. Runs until the group commit is dropped.
async fn courier(
    shared: std::sync::Weak<Shared>,
    mut batches: mpsc::UnboundedReceiver<(Batch, Outcome)>,
) {
    while let Some((batch, outcome)) = batches.recv().await {
        if let Some(shared) = shared.upgrade()
            && let Some(next) = shared.take_next()
        {
            shared.request(next);
        }
        answer(batch, &outcome);
    }
}

fn answer(batch: Batch, outcome: &Outcome) {
    for waiter in batch {
        // A waiter whose caller has gone needs no answer.
        let _ = waiter.send(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use tokio::task::JoinHandle;

    /// Sync requests that the test ends by hand: each batch's size and callback.
    type Requests = Arc<Mutex<Vec<(usize, FlushDone)>>>;

    fn by_hand() -> (Arc<GroupCommit>, Requests) {
        let requests = Requests::default();
        let held = Arc::clone(&requests);
        let group = GroupCommit::with_sync(Box::new(move |operations, done| {
            held.lock().unwrap().push((operations, done));
        }));
        (Arc::new(group), requests)
    }

    fn operation(group: &Arc<GroupCommit>) -> JoinHandle<Result<(), LedgerError>> {
        let group = Arc::clone(group);
        tokio::spawn(async move { group.wait().await })
    }

    /// Lets every spawned task run until it waits (one runtime thread).
    async fn settle() {
        for _ in 0..32 {
            tokio::task::yield_now().await;
        }
    }

    /// Ends the oldest sync requested; returns how many operations it covered.
    fn end_sync(requests: &Requests, outcome: Result<(), StoreError>) -> usize {
        let (operations, done) = requests.lock().unwrap().remove(0);
        done(outcome, None);
        operations
    }

    fn in_flight(requests: &Requests) -> Vec<usize> {
        requests.lock().unwrap().iter().map(|(n, _)| *n).collect()
    }

    /// Goal: an operation is acknowledged only by a sync requested after it
    /// committed. Method: a sync in flight, two more operations commit, the
    /// sync ends: they must still wait, for a second sync that covers both.
    #[tokio::test]
    async fn operations_that_commit_during_a_sync_wait_for_the_next_one() {
        let (group, requests) = by_hand();
        let first = operation(&group);
        settle().await;
        assert_eq!(in_flight(&requests), [1]);
        let (second, third) = (operation(&group), operation(&group));
        settle().await;
        assert_eq!(in_flight(&requests), [1], "one sync in flight at a time");

        assert_eq!(end_sync(&requests, Ok(())), 1);
        settle().await;
        assert!(first.is_finished());
        first.await.unwrap().unwrap();
        assert!(!second.is_finished() && !third.is_finished());
        assert_eq!(in_flight(&requests), [2], "the next batch goes out at once");

        assert_eq!(end_sync(&requests, Ok(())), 2);
        second.await.unwrap().unwrap();
        third.await.unwrap().unwrap();
        assert!(in_flight(&requests).is_empty());

        // Idle again: the next operation starts a sync of its own.
        let fourth = operation(&group);
        settle().await;
        assert_eq!(in_flight(&requests), [1]);
        end_sync(&requests, Ok(()));
        fourth.await.unwrap().unwrap();
    }

    /// Goal: a failed sync fails each operation it covered and no other.
    #[tokio::test]
    async fn a_failed_sync_fails_its_batch_and_the_next_batch_goes_on() {
        let (group, requests) = by_hand();
        let first = operation(&group);
        settle().await;
        let second = operation(&group);
        settle().await;
        let failure = StoreError::Corrupt {
            what: "journal",
            detail: "fdatasync: EIO".into(),
        };
        end_sync(&requests, Err(failure));
        let refused = first.await.unwrap().unwrap_err();
        assert!(
            refused.to_string().contains("fdatasync: EIO"),
            "the store's error reaches the caller: {refused}"
        );
        settle().await;
        assert!(!second.is_finished());
        end_sync(&requests, Ok(()));
        second.await.unwrap().unwrap();
    }

    /// Goal: an operation whose caller has gone does not hold the others up.
    #[tokio::test]
    async fn a_caller_gone_mid_sync_leaves_the_rest_answered() {
        let (group, requests) = by_hand();
        let first = operation(&group);
        settle().await;
        let (gone, kept) = (operation(&group), operation(&group));
        settle().await;
        gone.abort();
        end_sync(&requests, Ok(()));
        first.await.unwrap().unwrap();
        settle().await;
        end_sync(&requests, Ok(()));
        kept.await.unwrap().unwrap();
    }
}
