//! Opening a store: the views of the last checkpoint, then a replay of
//! every commit it does not cover, from the journal file past its offset.

use std::{
    path::Path,
    sync::{Arc, Condvar, Mutex},
    time::Instant,
};

use super::{
    checkpoint::{self, Checkpoints},
    journal_file::JournalFile,
    layout::{JournalRecord, Trees, account_id_of},
    seen::SeenIds,
    state::{Mirror, lock},
    writer::{Owed, Requests, Shared, Views, Written},
};
use crate::store::{StoreError, decode_account, request_index::hash_id};

/// What opening found: the committers' mirror, the state shared with the
/// writer, and how many commits were replayed.
pub(super) struct Recovered {
    pub(super) mirror: Mirror,
    pub(super) shared: Arc<Shared>,
    pub(super) rolled_forward_commits: u64,
}

/// Reads the last checkpoint's views and replays the journal past it.
pub(super) fn recover(dir: &Path, trees: &Trees) -> Result<Recovered, StoreError> {
    let checkpoint = trees.checkpoint()?;
    let swept = checkpoint.index.sweep(&trees.request_index)?;
    if swept > 0 {
        tracing::warn!(
            swept,
            "removed request index chunks no checkpoint lists (a crash cut a checkpoint short)"
        );
    }
    let mut mirror = Mirror::default();
    for item in trees.accounts.iter() {
        let (key, value) = item?;
        mirror
            .accounts
            .insert(account_id_of(&key)?, decode_account(&value)?);
    }
    let mut journal = JournalFile::open(dir, checkpoint.journal_epoch, checkpoint.journal_offset)?;
    let mut requests = Requests::new(checkpoint.index.clone(), journal.handle())?;
    let saved = SeenIds::take_saved(dir, checkpoint.journal_epoch, checkpoint.covered)?;
    match saved {
        Some(seen) => requests.seen = seen,
        None => checkpoint
            .index
            .for_each_hash(&trees.request_index, |hash| requests.seen.insert(hash))?,
    }
    // Replay what the checkpoint does not cover: the journal file past its offset.
    let mut owed = Owed {
        covered: checkpoint.covered,
        ..Owed::default()
    };
    let mut rolled_forward_commits = 0;
    journal.replay(&mut |offset, segment| {
        let uncovered: Vec<JournalRecord> = segment
            .into_iter()
            .filter(|record| record.entry.seq >= checkpoint.covered)
            .collect();
        for record in &uncovered {
            if let Some((id, request)) = &record.request {
                requests.seen.insert(hash_id(id.as_str()));
                requests
                    .pending
                    .insert(id.as_str().to_owned(), record.entry.seq, request.clone());
            }
        }
        rolled_forward_commits += u64::try_from(uncovered.len()).unwrap_or(u64::MAX);
        owed.fold(&uncovered, offset);
    })?;
    // The fold kept each replayed account's last state.
    mirror.accounts.extend(owed.accounts.clone());
    mirror.next_seq = owed.covered;
    let written = Written::new(journal.handle(), journal.end());
    let checkpoints = Checkpoints {
        index: checkpoint.index,
        epoch: journal.epoch(),
    };
    let views = Views {
        owed,
        last: Instant::now(),
        journal,
    };
    let shared = Arc::new(Shared {
        written: Mutex::new(written),
        progress: Condvar::new(),
        wake: Condvar::new(),
        requests: Mutex::new(requests),
        views: Mutex::new(views),
        checkpoints: Mutex::new(checkpoints),
    });
    if rolled_forward_commits > 0 {
        tracing::warn!(
            rolled_forward_commits,
            "replayed the journal past the last checkpoint (the process stopped without one)"
        );
        let job = lock(&shared.views).hand_over();
        checkpoint::checkpoint(trees, &shared, job)?;
    }
    Ok(Recovered {
        mirror,
        shared,
        rolled_forward_commits,
    })
}
