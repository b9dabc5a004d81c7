//! Opening a store: the views of the last checkpoint, then a replay of
//! every commit it does not cover.

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex},
    time::Instant,
};

use super::{
    Mirror,
    layout::{JournalRecord, Trees, account_id_of},
    lock,
    writer::{Requests, Shared, Views, Written, checkpoint_views},
};
use crate::store::{StoreError, decode_account, decode_record, request_index::hash_id};

/// What opening found: the committers' mirror, the state shared with the
/// writer, and how many commits were replayed.
pub(super) struct Recovered {
    pub(super) mirror: Mirror,
    pub(super) shared: Arc<Shared>,
    pub(super) rolled_forward_commits: u64,
}

/// Reads the last checkpoint's views and replays the journal past it.
pub(super) fn recover(trees: &Trees) -> Result<Recovered, StoreError> {
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
    let mut requests = Requests::new(checkpoint.index.clone())?;
    checkpoint
        .index
        .for_each_hash(&trees.request_index, |hash| requests.seen.insert(hash))?;
    let mut views = Views {
        accounts: HashMap::new(),
        requests: Vec::new(),
        covered: checkpoint.covered,
        index: checkpoint.index,
        last: Instant::now(),
    };
    // Replay what the checkpoint does not cover, from the segment that
    // holds its first uncovered seq to the last segment.
    let segments = match trees.segment_of(checkpoint.covered)? {
        Some((key, _)) => trees.journal.range(key..),
        None => trees.journal.range::<&[u8], _>(..),
    };
    let mut rolled_forward_commits = 0;
    for item in segments {
        let (_, value) = item?;
        let segment: Vec<JournalRecord> = decode_record("journal segment", &value)?;
        if let Some(last) = segment.last() {
            mirror.next_seq = last.entry.seq + 1;
        }
        let uncovered: Vec<JournalRecord> = segment
            .into_iter()
            .filter(|record| record.entry.seq >= checkpoint.covered)
            .collect();
        for record in &uncovered {
            if let Some((id, request)) = &record.request {
                requests.seen.insert(hash_id(id.as_str()));
                requests
                    .pending
                    .insert(id.as_str().to_owned(), (record.entry.seq, request.clone()));
            }
        }
        rolled_forward_commits += u64::try_from(uncovered.len()).unwrap_or(u64::MAX);
        views.fold(&uncovered);
    }
    // The fold kept each replayed account's last state.
    mirror.accounts.extend(views.accounts.clone());
    mirror.next_seq = mirror.next_seq.max(views.covered);
    views.covered = mirror.next_seq;
    let shared = Arc::new(Shared {
        written: Mutex::new(Written::default()),
        progress: Condvar::new(),
        wake: Condvar::new(),
        requests: Mutex::new(requests),
        views: Mutex::new(views),
    });
    if rolled_forward_commits > 0 {
        tracing::warn!(
            rolled_forward_commits,
            "replayed the journal past the last checkpoint (the process stopped without one)"
        );
        checkpoint_views(trees, &shared, &mut lock(&shared.views))?;
    }
    Ok(Recovered {
        mirror,
        shared,
        rolled_forward_commits,
    })
}
