//! The journal file: the commit point of every operation, kept out of sled.
//!
//! ```text
//!   journal-<epoch>.log:  [frame][frame][frame]...[zeros]  appended by the writer thread
//!   frame:                length u32 LE | crc32 u32 LE | payload (postcard: the segment's records)
//! ```
//!
//! Why a file of our own: in sled the journal was one key per segment, and
//! two costs grew with it. Reading it back (a reopen, an audit, an export)
//! went through sled's page cache, which kept what it read well past its
//! capacity: a 30-minute load's reopen and audit peaked at 1.3-2.0 GB. And a
//! durable acknowledgement needed `sled::Db::flush`, which wakes sled's IO
//! threads and cost about 10 µs of CPU per operation. A file read in order
//! holds one buffer, and an `fdatasync` of one file is all a flush needs.
//!
//! Durability: frames are appended in seq order and an fdatasync covers
//! every byte written before it, so the synced part of the file is an intact
//! prefix. A crash can leave a torn or unsynced tail; opening keeps the
//! frames up to the first one that is short or fails its checksum and cuts
//! the rest, none of which was acknowledged as durable.
//!
//! The epoch names the file: a Reset starts a new, empty file and the
//! checkpoint record says which one is current, so a crash during a Reset
//! never replays a journal the Reset meant to remove.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufReader, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::layout::JournalRecord;
use crate::store::{StoreError, decode_record, encode_record};

/// A frame's header: the payload's length and its CRC-32, both u32 LE.
const HEADER_BYTES: usize = 8;

/// The largest payload a frame may declare. A segment holds at most a few
/// hundred commits of a few hundred bytes each; a larger length is a torn or
/// corrupt header, refused before allocating for it.
const FRAME_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// How far ahead of the last frame the file is filled with zeros. An
/// fdatasync after an append that grows the file must also commit the new
/// size through the filesystem's journal: measured on ext4 here, about 1 ms
/// per flush against 0.2-0.5 ms when the frames overwrite blocks already
/// written. Zeros are written (not fallocated: ext4 then still converts the
/// extents at the first write), a chunk at a time, a few times a second at
/// full load; a zero header reads as the end of the journal.
const PREALLOCATE_BYTES: u64 = 8 * 1024 * 1024;

/// How much of the file a sequential read holds at once.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// The journal file of one epoch, open for appending.
#[derive(Debug)]
pub(super) struct JournalFile {
    file: Arc<File>,
    epoch: u64,
    path: PathBuf,
    /// Where replay starts: the bytes the last checkpoint covers.
    replay_from: u64,
    /// Bytes of whole frames in the file: where the next frame goes.
    end: u64,
    /// Bytes of the file written (frames, then zeros): appends below this
    /// change no file metadata.
    allocated: u64,
}

fn path_of(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("journal-{epoch}.log"))
}

fn io_error(what: &'static str, path: &Path, error: io::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: format!("{}: {error}", path.display()),
    }
}

/// Opens (or creates) `path` for reading and positioned writes.
fn open_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_error("journal file", path, e))
}

impl JournalFile {
    /// Opens epoch `epoch`'s file in `dir` (creating it), of which a
    /// checkpoint covers `from` bytes, and removes the files of other epochs.
    /// [`JournalFile::replay`] then reads the rest.
    pub(super) fn open(dir: &Path, epoch: u64, from: u64) -> Result<Self, StoreError> {
        let path = path_of(dir, epoch);
        let file = open_file(&path)?;
        let length = file
            .metadata()
            .map_err(|e| io_error("journal file", &path, e))?
            .len();
        if length < from {
            return Err(StoreError::Corrupt {
                what: "journal file",
                detail: format!(
                    "{} holds {length} bytes but the checkpoint covers {from}: \
                     the journal lost synced data",
                    path.display()
                ),
            });
        }
        remove_other_epochs(dir, epoch)?;
        Ok(Self {
            file: Arc::new(file),
            epoch,
            path,
            replay_from: from,
            end: length,
            allocated: length,
        })
    }

    /// Visits each whole frame past the checkpoint's offset, with its
    /// offset, and cuts the file after the last one: what follows is a torn
    /// tail, written and never synced.
    pub(super) fn replay(
        &mut self,
        visit: &mut dyn FnMut(u64, Vec<JournalRecord>),
    ) -> Result<(), StoreError> {
        let length = self.end;
        let mut frames = Frames::new(Arc::clone(&self.file), self.replay_from, length);
        let mut end = self.replay_from;
        let torn = loop {
            match frames.next_or_zeros() {
                Ok(Some((offset, records))) => {
                    visit(offset, records);
                    end = frames.position;
                }
                Ok(None) => break None,
                Err(FrameFault::Torn(error)) => break Some(error),
                Err(FrameFault::Fatal(error)) => return Err(error),
            }
        };
        if let Some(error) = torn {
            tracing::warn!(
                path = %self.path.display(),
                %error,
                kept_bytes = end,
                cut_bytes = length - end,
                "cut the journal's torn tail (written, never synced, never acknowledged as durable)"
            );
        }
        // The zeros past the end go too, so that no fragment of a torn
        // frame lingers past the next frames; appends write new zeros.
        if end < length {
            self.file
                .set_len(end)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| io_error("journal file", &self.path, e))?;
        }
        self.end = end;
        self.allocated = end;
        Ok(())
    }

    /// Starts epoch `epoch` with an empty file (a Reset); the caller
    /// records the epoch in a checkpoint, then calls [`remove_other_epochs`].
    pub(super) fn create(dir: &Path, epoch: u64) -> Result<Self, StoreError> {
        let path = path_of(dir, epoch);
        let file = open_file(&path)?;
        file.set_len(0)
            .and_then(|()| file.sync_all())
            .and_then(|()| File::open(dir)?.sync_all())
            .map_err(|e| io_error("journal file", &path, e))?;
        Ok(Self {
            file: Arc::new(file),
            epoch,
            path,
            replay_from: 0,
            end: 0,
            allocated: 0,
        })
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes of whole frames written so far.
    pub(super) fn end(&self) -> u64 {
        self.end
    }

    /// A handle that reads or syncs the file while the writer appends.
    pub(super) fn handle(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Appends one segment as a frame and returns the offset it starts at.
    /// Not synced: [`JournalFile::sync`] makes it durable.
    pub(super) fn append(&mut self, records: &[JournalRecord]) -> Result<u64, StoreError> {
        let payload = encode_record(&records);
        let length = u32::try_from(payload.len())
            .ok()
            .filter(|length| *length <= FRAME_BYTES_MAX)
            .ok_or_else(|| StoreError::Corrupt {
                what: "journal segment",
                detail: format!(
                    "{} bytes, more than a frame holds ({FRAME_BYTES_MAX})",
                    payload.len()
                ),
            })?;
        let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
        frame.extend_from_slice(&length.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let offset = self.end;
        let frame_bytes = u64::try_from(frame.len()).unwrap_or(u64::MAX);
        self.preallocate(offset + frame_bytes)?;
        self.file
            .write_all_at(&frame, offset)
            .map_err(|e| io_error("journal file", &self.path, e))?;
        self.end += frame_bytes;
        Ok(offset)
    }

    /// Fills the file with zeros in [`PREALLOCATE_BYTES`] chunks until it
    /// holds `needed` bytes, and makes the new size durable once for all.
    fn preallocate(&mut self, needed: u64) -> Result<(), StoreError> {
        if needed <= self.allocated {
            return Ok(());
        }
        let chunk = vec![0u8; usize::try_from(PREALLOCATE_BYTES).unwrap_or(usize::MAX)];
        while self.allocated < needed {
            self.file
                .write_all_at(&chunk, self.allocated)
                .map_err(|e| io_error("journal file", &self.path, e))?;
            self.allocated += PREALLOCATE_BYTES;
        }
        self.file
            .sync_data()
            .map_err(|e| io_error("journal file", &self.path, e))
    }
}

/// Makes every frame written to `file` so far durable.
pub(super) fn sync(file: &File) -> Result<(), StoreError> {
    file.sync_data().map_err(|e| StoreError::Corrupt {
        what: "journal file",
        detail: format!("fdatasync failed: {e}"),
    })
}

/// Removes the journal files of every epoch but `epoch`.
pub(super) fn remove_other_epochs(dir: &Path, epoch: u64) -> Result<(), StoreError> {
    let keep = path_of(dir, epoch);
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("data directory", dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path != keep && name.starts_with("journal-") && name.ends_with(".log") {
            std::fs::remove_file(&path).map_err(|e| io_error("journal file", &path, e))?;
        }
    }
    Ok(())
}

/// Why a frame could not be read.
enum FrameFault {
    /// Short, of a length no frame has, or failing its checksum: what a
    /// write cut short leaves behind (a torn tail, when opening).
    Torn(StoreError),
    /// An I/O error, or a frame whose checksum holds but whose records do
    /// not decode: no torn write does that, so opening refuses rather than
    /// cut synced frames away.
    Fatal(StoreError),
}

impl From<FrameFault> for StoreError {
    fn from(fault: FrameFault) -> Self {
        match fault {
            FrameFault::Torn(error) | FrameFault::Fatal(error) => error,
        }
    }
}

fn read_fault(offset: u64, error: &io::Error) -> FrameFault {
    let corrupt = corrupt_at(offset, &error.to_string());
    if error.kind() == io::ErrorKind::UnexpectedEof {
        FrameFault::Torn(corrupt)
    } else {
        FrameFault::Fatal(corrupt)
    }
}

/// Reads the frame at `offset` (a request index lookup).
pub(super) fn read_frame(file: &File, offset: u64) -> Result<Vec<JournalRecord>, StoreError> {
    let mut position = offset;
    let frame = decode_frame(offset, |buf| {
        file.read_exact_at(buf, position)?;
        position += u64::try_from(buf.len()).unwrap_or(u64::MAX);
        Ok(())
    })?;
    frame
        .map(|(_, records)| records)
        .ok_or_else(|| corrupt_at(offset, "no frame here (zeros)"))
}

/// Decodes the frame at `offset`, reading its bytes in order through
/// `read`: its length and records, or None at the zeros past the last
/// frame. The length is checked before anything is allocated for it.
fn decode_frame(
    offset: u64,
    mut read: impl FnMut(&mut [u8]) -> io::Result<()>,
) -> Result<Option<(u32, Vec<JournalRecord>)>, FrameFault> {
    let mut header = [0u8; HEADER_BYTES];
    read(&mut header).map_err(|e| read_fault(offset, &e))?;
    let (length, crc) = parse_header(header);
    if length == 0 && crc == 0 {
        return Ok(None);
    }
    if length == 0 || length > FRAME_BYTES_MAX {
        return Err(FrameFault::Torn(corrupt_at(
            offset,
            "the frame's length is 0 or past the maximum",
        )));
    }
    let mut payload = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX)];
    read(&mut payload).map_err(|e| read_fault(offset, &e))?;
    if crc32fast::hash(&payload) != crc {
        return Err(FrameFault::Torn(corrupt_at(offset, "checksum mismatch")));
    }
    let records = decode_record("journal segment", &payload).map_err(FrameFault::Fatal)?;
    Ok(Some((length, records)))
}

fn parse_header(header: [u8; HEADER_BYTES]) -> (u32, u32) {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    (
        u32::from_le_bytes([l0, l1, l2, l3]),
        u32::from_le_bytes([c0, c1, c2, c3]),
    )
}

fn corrupt_at(offset: u64, detail: &str) -> StoreError {
    StoreError::Corrupt {
        what: "journal frame",
        detail: format!("at byte {offset}: {detail}"),
    }
}

/// A reader at its own position in a shared file (pread), so that readers
/// and the appending writer never move each other's cursor.
struct At {
    file: Arc<File>,
    position: u64,
    end: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.position)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        let Some(buf) = buf.get_mut(..want) else {
            return Ok(0);
        };
        let read = self.file.read_at(buf, self.position)?;
        self.position += u64::try_from(read).unwrap_or(u64::MAX);
        Ok(read)
    }
}

/// The frames of a file between two offsets, read in order through one buffer.
pub(super) struct Frames {
    reader: BufReader<At>,
    /// The offset of the next frame.
    position: u64,
    end: u64,
}

impl Frames {
    pub(super) fn new(file: Arc<File>, from: u64, end: u64) -> Self {
        Self {
            reader: BufReader::with_capacity(
                READ_BUFFER_BYTES,
                At {
                    file,
                    position: from,
                    end,
                },
            ),
            position: from,
            end,
        }
    }

    /// The next frame and its offset, within a range of whole frames (a
    /// scan of what the writer has written): any bad frame, zeros included,
    /// is an error.
    pub(super) fn next_frame(&mut self) -> Result<Option<(u64, Vec<JournalRecord>)>, StoreError> {
        if self.position >= self.end {
            return Ok(None);
        }
        let offset = self.position;
        self.next_or_zeros()?
            .map(Some)
            .ok_or_else(|| corrupt_at(offset, "zeros inside the written journal"))
    }

    /// The next frame, or None at the end or at the zeros ahead of the last
    /// frame (opening, where the range runs to the file's length).
    fn next_or_zeros(&mut self) -> Result<Option<(u64, Vec<JournalRecord>)>, FrameFault> {
        if self.position >= self.end {
            return Ok(None);
        }
        let offset = self.position;
        let reader = &mut self.reader;
        let Some((length, records)) = decode_frame(offset, |buf| reader.read_exact(buf))? else {
            return Ok(None);
        };
        self.position = offset + HEADER_BYTES as u64 + u64::from(length);
        Ok(Some((offset, records)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u64) -> Vec<JournalRecord> {
        let entry = crate::journal::JournalEntry {
            seq: n,
            kind: crate::bank::EntryKind::Deposit,
            request_id: None,
            transfer_id: None,
            counterparty: None,
            mode: crate::config::Mode::Mutex,
            amount_cents: 1,
            fee_cents: 0,
            legs: vec![],
            time_unix_ns: 0,
        };
        vec![JournalRecord {
            entry,
            request: None,
        }]
    }

    fn seqs(dir: &Path, epoch: u64) -> (Vec<u64>, JournalFile) {
        let mut seen = Vec::new();
        let mut file = JournalFile::open(dir, epoch, 0).unwrap();
        file.replay(&mut |_, records| {
            seen.extend(records.iter().map(|record| record.entry.seq));
        })
        .unwrap();
        (seen, file)
    }

    /// Goal: frames read back in order, by position and by offset; a torn
    /// tail (a half-written frame, a flipped byte, garbage past the last
    /// frame) is cut at the last whole frame and appending goes on from
    /// there; the zeros written ahead read as the end; other epochs' files
    /// are removed. Method: write three frames, tear the file by hand three
    /// ways, reopen each time.
    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(dir.path(), 3);
        let mut offsets = Vec::new();
        let end = {
            let (seen, mut file) = seqs(dir.path(), 3);
            assert!(seen.is_empty());
            for n in 0..3 {
                offsets.push(file.append(&records(n)).unwrap());
            }
            let third = read_frame(&file.handle(), offsets[2]).unwrap();
            assert_eq!(third[0].entry.seq, 2);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                PREALLOCATE_BYTES,
                "zeros ahead"
            );
            file.end()
        };
        assert_eq!(
            seqs(dir.path(), 3).0,
            vec![0, 1, 2],
            "zeros end the journal"
        );
        std::fs::write(path_of(dir.path(), 2), b"an older epoch").unwrap();
        // Half of the third frame survived.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(end - 3).unwrap();
        drop(file);
        let (seen, mut file) = seqs(dir.path(), 3);
        assert_eq!(seen, vec![0, 1]);
        assert_eq!(file.end(), offsets[2]);
        assert!(!path_of(dir.path(), 2).exists(), "the other epoch is gone");
        assert_eq!(file.append(&records(2)).unwrap(), offsets[2]);
        assert_eq!(file.end(), end);
        drop(file);
        // A flipped byte in the last payload fails its checksum.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, end - 1).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], end - 1).unwrap();
        drop(file);
        assert_eq!(seqs(dir.path(), 3).0, vec![0, 1]);
        // Garbage after the last whole frame is cut, not read.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[7u8; 64], offsets[2]).unwrap();
        drop(file);
        let (seen, file) = seqs(dir.path(), 3);
        assert_eq!(seen, vec![0, 1]);
        assert_eq!(file.end(), offsets[2]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), offsets[2]);
    }

    /// Goal: what no torn write leaves is refused, not cut away: a frame
    /// whose checksum holds but whose records do not decode fails the open
    /// and the file keeps its bytes; zeros inside the written range fail a
    /// scan instead of ending it quietly. Method: frames written by hand.
    #[test]
    fn an_undecodable_frame_or_zeros_inside_are_errors_not_tails() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(dir.path(), 0);
        let offset = {
            let (_, mut file) = seqs(dir.path(), 0);
            file.append(&records(0)).unwrap();
            file.end()
        };
        let payload = [0xffu8; 16];
        let mut frame = 16u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&frame, offset).unwrap();
        drop(file);
        let length = std::fs::metadata(&path).unwrap().len();
        let mut journal = JournalFile::open(dir.path(), 0, 0).unwrap();
        let error = journal.replay(&mut |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("journal segment"), "{error}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            length,
            "nothing cut"
        );
        let handle = journal.handle();
        let mut frames = Frames::new(Arc::clone(&handle), offset, offset + 64);
        assert!(frames.next_frame().is_err(), "the undecodable frame");
        let zeros_at = offset + 1024;
        let mut frames = Frames::new(handle, zeros_at, zeros_at + 64);
        let error = frames.next_frame().unwrap_err().to_string();
        assert!(error.contains("zeros"), "{error}");
    }

    /// Goal: a checkpoint that covers more than the file holds is refused,
    /// not silently read as an empty journal.
    #[test]
    fn a_file_shorter_than_its_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = JournalFile::open(dir.path(), 0, 100)
            .unwrap_err()
            .to_string();
        assert!(error.contains("lost synced data"), "{error}");
    }
}
