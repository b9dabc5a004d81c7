//! Following the crowd's histories while they are written: each member's
//! file (NAME.jsonl.part while it runs, NAME.jsonl once it is done), read
//! from where the last look stopped, whole lines only, on the wall clock
//! its header states.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use overdraft_history::format::{Header, OpLine, Outcome};

use crate::load::PART_SUFFIX;

/// Most bytes read from one file per look: a look never stalls on a
/// member that wrote a lot since the last one; the rest waits for the next.
/// 8 MiB twice a second keeps up with about 80,000 operations a second
/// from one file.
const READ_BYTES_MAX: u64 = 8 << 20;

/// How far behind a file may fall (a view started late on a long run, or
/// a burst) before the view skips to its recent end: the page shows the
/// last seconds, not a replay.
const BEHIND_BYTES_MAX: u64 = 4 * READ_BYTES_MAX;

/// Longest line kept: anything longer is no history line and is skipped.
const LINE_BYTES_MAX: usize = 64 << 10;

/// Most files followed: a crowd, not a fleet (the referee's own bound).
pub(super) const FILES_MAX: usize = crate::referee::MEMBERS_MAX;

/// Most operations one look collects, all files together; the files not
/// read yet wait for the next look.
const SEEN_PER_LOOK_MAX: usize = 100_000;

/// Looks a file may be missing from the directory before it is forgotten:
/// a listing taken during the .part rename can see neither name.
const MISSING_LOOKS_MAX: u32 = 3;

/// One operation a member recorded, on the wall clock.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    /// The ATM's name (its member's, or `atm N` in a file of several).
    pub(super) atm: String,
    /// `deposit`, `withdraw`, `transfer` or `balance`.
    pub(super) op: String,
    /// The account (a transfer's source).
    pub(super) account: String,
    /// A transfer's destination.
    pub(super) to: Option<String>,
    /// The amount (0 for reads).
    pub(super) amount_cents: i64,
    /// What the ATM knows of its fate.
    pub(super) outcome: Option<Outcome>,
    /// The gRPC code when not ok.
    pub(super) code: Option<String>,
    /// Its idempotency key.
    pub(super) request_id: String,
    /// When it was sent, ns since the Unix epoch.
    pub(super) invoke_unix_ns: u64,
    /// When its reply came, ns since the Unix epoch.
    pub(super) complete_unix_ns: u64,
}

#[derive(Debug, Default)]
struct Follow {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// Dropping the rest of a line (too long, or cut by a skip ahead).
    skipping: bool,
    wall_zero_ns: Option<u64>,
    /// Looks in a row that did not find the file.
    missing: u32,
}

/// The histories of one directory, followed.
#[derive(Debug)]
pub(super) struct Tail {
    dir: PathBuf,
    files: HashMap<String, Follow>,
}

impl Tail {
    /// Follows the histories in `dir` (which may not exist yet).
    pub(super) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            files: HashMap::new(),
        }
    }

    /// Reads what every member wrote since the last look into `out`.
    pub(super) fn poll(&mut self, out: &mut Vec<Seen>) -> std::io::Result<()> {
        let present = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.files.clear();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut live: HashMap<String, PathBuf> = HashMap::new();
        for entry in present.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name
                .strip_suffix(PART_SUFFIX)
                .unwrap_or(&name)
                .strip_suffix(".jsonl");
            if let Some(stem) = stem
                && live.len() < FILES_MAX
            {
                live.insert(stem.to_owned(), entry.path());
            }
        }
        // A member's file that is gone (a new run cleared the directory),
        // after a grace for a rename in progress.
        self.files.retain(|stem, follow| {
            if live.contains_key(stem) {
                follow.missing = 0;
                true
            } else {
                follow.missing += 1;
                follow.missing <= MISSING_LOOKS_MAX
            }
        });
        for (stem, path) in live {
            if out.len() >= SEEN_PER_LOOK_MAX {
                break;
            }
            let follow = self.files.entry(stem).or_default();
            // Renamed from .part when its run ended: the same bytes.
            follow.path = path;
            follow.read(out)?;
        }
        Ok(())
    }
}

impl Follow {
    fn read(&mut self, out: &mut Vec<Seen>) -> std::io::Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let length = file.metadata()?.len();
        if length < self.offset {
            // Written anew from the start: another run under the same name.
            *self = Self {
                path: std::mem::take(&mut self.path),
                ..Self::default()
            };
        }
        if self.wall_zero_ns.is_none() && self.offset == 0 && length > BEHIND_BYTES_MAX {
            // Found late: the header first (its clock), then the recent end.
            let mut header = Vec::new();
            std::io::BufReader::new(&mut file)
                .take(LINE_BYTES_MAX as u64)
                .read_until(b'\n', &mut header)?;
            self.line(&header, out);
            self.offset = length;
        }
        if length - self.offset > BEHIND_BYTES_MAX {
            // Skip ahead, dropping the line the jump lands in.
            self.offset = length - READ_BYTES_MAX;
            self.partial.clear();
            self.skipping = true;
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut chunk = Vec::new();
        file.take(READ_BYTES_MAX).read_to_end(&mut chunk)?;
        self.offset += chunk.len() as u64;
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            let complete = piece.ends_with(b"\n");
            if self.skipping {
                self.skipping = !complete;
                continue;
            }
            self.partial.extend_from_slice(piece);
            if self.partial.len() > LINE_BYTES_MAX {
                self.partial.clear();
                self.skipping = !complete;
                continue;
            }
            if complete {
                let line = std::mem::take(&mut self.partial);
                self.line(&line, out);
            }
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Seen>) {
        if line.starts_with(b"{\"schema\"") {
            if let Ok(header) = serde_json::from_slice::<Header>(line) {
                self.wall_zero_ns = Some(header.wall_unix_ns_at_zero);
            }
            return;
        }
        let (Some(zero), Ok(op)) = (self.wall_zero_ns, serde_json::from_slice::<OpLine>(line))
        else {
            // An open line, a line before its header, or no history line.
            return;
        };
        if op.final_read {
            return;
        }
        let atm = op
            .atm_name
            .clone()
            .unwrap_or_else(|| format!("atm {}", op.atm.unwrap_or_default()));
        let account = op.account_id.or(op.from_account_id).unwrap_or_default();
        out.push(Seen {
            atm,
            op: op.op,
            account,
            to: op.to_account_id,
            amount_cents: op.amount_cents.unwrap_or(0),
            outcome: op.outcome,
            code: op.code,
            request_id: op.request_id,
            invoke_unix_ns: zero.saturating_add(op.invoke_ns),
            complete_unix_ns: zero.saturating_add(op.complete_ns),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Goal: lines are taken whole as they are written, across a rename
    /// from .part, with times on the header's wall clock; open lines, final
    /// reads and overlong lines are left out, and a cleared directory
    /// forgets its files.
    #[test]
    fn follows_lines_across_writes_and_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("m1.jsonl.part");
        let mut file = File::create(&part).unwrap();
        let header = r#"{"schema":2,"kind":"overdraft-history","mode":"unsafe","seed":1,"overdraft":{"policy":"reject"},"wall_unix_ns_at_zero":1000000000}"#;
        writeln!(file, "{header}").unwrap();
        writeln!(
            file,
            r#"{{"op":"open","account_id":"acct-0","balance_cents":5,"version":0}}"#
        )
        .unwrap();
        let deposit = r#"{"atm":0,"atm_name":"m1","op":"deposit","account_id":"acct-0","amount_cents":7,"request_id":"r1","invoke_ns":10,"complete_ns":20,"outcome":"ok"}"#;
        write!(file, "{}", &deposit[..40]).unwrap();
        file.flush().unwrap();
        let mut tail = Tail::new(dir.path());
        let mut seen = Vec::new();
        tail.poll(&mut seen).unwrap();
        assert!(seen.is_empty(), "half a line waits");

        writeln!(file, "{}", &deposit[40..]).unwrap();
        writeln!(file, "{}", "x".repeat(LINE_BYTES_MAX + 10)).unwrap();
        file.flush().unwrap();
        tail.poll(&mut seen).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].atm, "m1");
        assert_eq!(seen[0].amount_cents, 7);
        assert_eq!(seen[0].complete_unix_ns, 1_000_000_020);

        let withdraw = deposit.replace("deposit", "withdraw").replace("r1", "r2");
        writeln!(file, "{withdraw}").unwrap();
        writeln!(file, r#"{{"op":"balance","account_id":"acct-0","invoke_ns":30,"complete_ns":30,"outcome":"ok","balance_cents":1,"version":2,"final":true}}"#).unwrap();
        drop(file);
        std::fs::rename(&part, dir.path().join("m1.jsonl")).unwrap();
        tail.poll(&mut seen).unwrap();
        assert_eq!(seen.len(), 2, "the rename continues where it was");
        assert_eq!(seen[1].request_id, "r2");

        std::fs::remove_file(dir.path().join("m1.jsonl")).unwrap();
        for _ in 0..=MISSING_LOOKS_MAX {
            assert!(!tail.files.is_empty(), "kept through a rename's gap");
            tail.poll(&mut seen).unwrap();
        }
        assert!(tail.files.is_empty());
    }

    /// Goal: a view started late on a long history shows its recent end
    /// on the header's clock, not a replay from the start. Operation: a
    /// file past BEHIND_BYTES_MAX; one look.
    #[test]
    fn a_long_history_found_late_is_read_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::io::BufWriter::new(File::create(dir.path().join("big.jsonl")).unwrap());
        writeln!(file, r#"{{"schema":2,"kind":"overdraft-history","mode":"cas","seed":1,"overdraft":{{"policy":"reject"}},"wall_unix_ns_at_zero":5}}"#).unwrap();
        let mut k = 0u64;
        let mut written = 0u64;
        while written <= BEHIND_BYTES_MAX + 1_000 {
            let line = format!(
                r#"{{"atm":0,"op":"deposit","account_id":"acct-0","amount_cents":1,"request_id":"r{k}","invoke_ns":{k},"complete_ns":{k},"outcome":"ok"}}"#
            );
            writeln!(file, "{line}").unwrap();
            written += line.len() as u64 + 1;
            k += 1;
        }
        drop(file);
        let mut tail = Tail::new(dir.path());
        let mut seen = Vec::new();
        tail.poll(&mut seen).unwrap();
        assert!(seen.is_empty(), "the backlog is skipped");
        let mut file = File::options()
            .append(true)
            .open(dir.path().join("big.jsonl"))
            .unwrap();
        writeln!(file, r#"{{"atm":0,"op":"deposit","account_id":"acct-0","amount_cents":1,"request_id":"last","invoke_ns":9,"complete_ns":10,"outcome":"ok"}}"#).unwrap();
        tail.poll(&mut seen).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].request_id, "last");
        assert_eq!(seen[0].complete_unix_ns, 15, "on the header's clock");
    }
}
