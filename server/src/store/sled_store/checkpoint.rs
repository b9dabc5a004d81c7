//! Checkpoints: the views (balances and the request index) brought up to a
//! point of the journal, on a thread of their own.
//!
//! A checkpoint writes each account touched since the last one, adds the
//! request ids as a sorted run to the index (their values: the offsets of
//! their segments in the journal file), syncs the journal file, and then
//! writes the checkpoint record: the seq and the journal offset up to which
//! the views are complete.
//!
//! Why a thread of its own: a checkpoint of a second's commits takes the
//! writer 10-50 ms (sled inserts, index merges), and the writer is what a
//! `--durability sync` operation waits for. Checkpointing on the writer
//! thread stood every such operation still that long, once a second (the
//! flush maximum of 40-70 ms that `atm load` reported). The writer now hands
//! what it owes the views over and goes on writing.

use std::{
    fs::File,
    sync::{Arc, mpsc},
};

use super::{
    journal_file,
    layout::{CHECKPOINT_KEY, Checkpoint, Trees},
    state::lock,
    writer::{Owed, Shared},
};
use crate::store::{
    StoreError, encode_account, encode_record,
    request_index::{RequestIndex, hash_id},
};

/// What the checkpointer owns, under one lock that [`Store::clear`] also
/// takes: the index as of the last checkpoint and the journal epoch it is for.
///
/// [`Store::clear`]: super::SledStore::clear
#[derive(Debug)]
pub(super) struct Checkpoints {
    pub(super) index: RequestIndex,
    /// The journal epoch the views are of. A job for another (handed over
    /// before a Reset) is dropped: the Reset's own checkpoint stands.
    pub(super) epoch: u64,
}

/// What the writer owes the views as of one point of the journal.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) owed: Owed,
    pub(super) epoch: u64,
    /// The journal file's bytes of whole frames at that point.
    pub(super) journal_offset: u64,
    pub(super) journal: Arc<File>,
}

/// Jobs waiting for the checkpointer: one, so that a writer that gets a
/// second ahead waits for it and what it owes stays bounded.
pub(super) const JOBS_QUEUED_MAX: usize = 1;

/// The checkpointer thread: checkpoints each job in the order handed over,
/// until the writer closes the channel.
pub(super) fn run(trees: &Trees, shared: &Shared, jobs: &mpsc::Receiver<Job>) {
    for job in jobs {
        if lock(&shared.written).failure.is_some() {
            continue;
        }
        if let Err(error) = checkpoint(trees, shared, job) {
            lock(&shared.written).fail(&error);
            shared.progress.notify_all();
        }
    }
}

/// Brings the views up to `job`'s point of the journal and writes the
/// checkpoint record.
pub(super) fn checkpoint(trees: &Trees, shared: &Shared, job: Job) -> Result<(), StoreError> {
    let mut state = lock(&shared.checkpoints);
    let Job {
        mut owed,
        epoch,
        journal_offset,
        journal,
    } = job;
    if epoch != state.epoch || owed.is_empty() {
        return Ok(());
    }
    let pairs = owed
        .requests
        .iter()
        .map(|(id, _, offset)| (hash_id(id), *offset))
        .collect();
    let replaced = state.index.add(&trees.request_index, pairs)?;
    for (account, account_state) in owed.accounts.drain() {
        trees
            .accounts
            .insert(account.as_str(), &encode_account(account_state))?;
    }
    // The checkpoint record must never cover journal that could be lost:
    // sync the file up to what the views cover before saying so.
    journal_file::sync(&journal)?;
    let record = Checkpoint {
        covered: owed.covered,
        index: state.index.clone(),
        journal_epoch: epoch,
        journal_offset,
    };
    trees.meta.insert(CHECKPOINT_KEY, encode_record(&record))?;
    let indexed = {
        let mut requests = lock(&shared.requests);
        requests.index = Arc::new(record.index);
        requests.pending.indexed_below(record.covered)
    };
    // Freed outside the lock: every operation's lookup waits on it.
    drop(indexed);
    RequestIndex::delete_runs(&trees.request_index, &replaced)?;
    tracing::debug!(
        covered = record.covered,
        index_runs = state.index.runs(),
        index_pairs = state.index.len(),
        merged_runs = replaced.len(),
        "checkpoint"
    );
    Ok(())
}
