//! Giving back the disk a child's journal no longer needs.
//!
//! A journal (`crate::journal`) is needed only for what the coordinator has not *released*
//! (a durable checkpoint covers it, or the coordinator does not checkpoint): a replay after
//! an agent crash skips everything below. A child lives as long as the run, so without this
//! its journal would grow by every report it ever wrote — about 150 bytes each, a gigabyte
//! an hour per host at the extreme config's rates.
//!
//! How: while reading a child's connection, the agent notes every [`MARK_EVERY`] lines where
//! the next line starts in the journal (its lines are the connection's bytes, so the offset
//! is the bytes read). When batches are released, the outbox says the highest released line
//! per journal ([`Reclaimer::released`]); past [`RECLAIM_MIN`] bytes of released lines, the
//! agent first writes `<journal>.released` (`<offset> <next line>`, by rename, so it is
//! whole or absent), then punches a hole over the released prefix (`fallocate` with
//! `PUNCH_HOLE | KEEP_SIZE`: the file keeps its size and offsets, the blocks are freed, the
//! child appending to it notices nothing). A replay starts at that offset with that line
//! number ([`replay_start`]). Crash-safe either way round: a mark written but not yet
//! punched only wastes disk.
//!
//! A file system without hole punching keeps the whole journal (logged once); a journal
//! whose byte before the offset is not a newline (a child that wrote something else to its
//! journal than to its socket, against the contract) is left alone from then on.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{FallocateFlags, fallocate};
use tracing::{debug, warn};

/// Lines between two offset marks of a connection.
pub const MARK_EVERY: u64 = 256;
/// Released bytes of a journal worth a hole.
pub const RECLAIM_MIN: u64 = 4 << 20;
/// Holes are whole pages.
const PAGE: u64 = 4096;

/// The journals whose released prefix can be given back.
#[derive(Debug, Default)]
pub struct Reclaimer {
    journals: Mutex<HashMap<u64, Tracked>>,
}

#[derive(Debug)]
struct Tracked {
    path: PathBuf,
    /// (next line, its offset), oldest first.
    marks: VecDeque<(u64, u64)>,
    /// Bytes given back so far.
    reclaimed: u64,
    /// Not touched again (see the module docs).
    left_alone: bool,
}

impl Reclaimer {
    /// Journal `journal` is the file `path`.
    pub fn track(&self, journal: u64, path: PathBuf) {
        self.lock().insert(
            journal,
            Tracked {
                path,
                marks: VecDeque::new(),
                reclaimed: 0,
                left_alone: false,
            },
        );
    }

    /// In `journal`, line `next_line` starts at byte `offset`.
    pub fn mark(&self, journal: u64, next_line: u64, offset: u64) {
        if let Some(tracked) = self.lock().get_mut(&journal) {
            tracked.marks.push_back((next_line, offset));
        }
    }

    /// The coordinator released every line up to `line` of each journal in `lines`.
    pub fn released(&self, lines: &HashMap<u64, u64>) {
        let mut journals = self.lock();
        for (journal, line) in lines {
            let Some(tracked) = journals.get_mut(journal) else {
                continue;
            };
            // The newest mark whose lines before it are all released.
            let mut usable = None;
            while tracked
                .marks
                .front()
                .is_some_and(|(next, _)| *next <= line + 1)
            {
                usable = tracked.marks.pop_front();
            }
            let Some((next_line, offset)) = usable else {
                continue;
            };
            if tracked.left_alone || offset < tracked.reclaimed + RECLAIM_MIN {
                // Not worth a hole yet: keep the mark for the next release.
                tracked.marks.push_front((next_line, offset));
                continue;
            }
            match reclaim(&tracked.path, offset, next_line) {
                Ok(()) => tracked.reclaimed = offset,
                Err(why) => {
                    warn!(journal = %tracked.path.display(), %why, "journal space not given back; the journal is kept whole");
                    tracked.left_alone = true;
                }
            }
        }
    }

    /// `journal`'s child is gone and its file with it.
    pub fn forget(&self, journal: u64) {
        self.lock().remove(&journal);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.journals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The mark file of `journal`.
fn mark_path(journal: &Path) -> PathBuf {
    journal.with_extension("released")
}

/// Mark `journal` as replayable from `offset` (line `next_line`), then free what is before.
fn reclaim(journal: &Path, offset: u64, next_line: u64) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(journal)
        .map_err(|e| e.to_string())?;
    let mut before = [0u8; 1];
    file.seek(SeekFrom::Start(offset - 1))
        .and_then(|_| file.read_exact(&mut before))
        .map_err(|e| e.to_string())?;
    if before[0] != b'\n' {
        return Err(format!(
            "byte {} is not the end of a line: the journal does not hold what the socket carried",
            offset - 1
        ));
    }
    let marks = mark_path(journal);
    let temporary = marks.with_extension("released.tmp");
    std::fs::File::create(&temporary)
        .and_then(|mut f| writeln!(f, "{offset} {next_line}"))
        .and_then(|()| std::fs::rename(&temporary, &marks))
        .map_err(|e| e.to_string())?;
    let hole = offset / PAGE * PAGE;
    let length = i64::try_from(hole).map_err(|e| e.to_string())?;
    if length > 0 {
        fallocate(
            &file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            length,
        )
        .map_err(|e| format!("punching a hole: {e}"))?;
    }
    debug!(journal = %journal.display(), offset, next_line, "journal prefix given back");
    Ok(())
}

/// Where a replay of `journal` starts: (offset, line number of the line there).
pub fn replay_start(journal: &Path) -> (u64, u64) {
    std::fs::read_to_string(mark_path(journal))
        .ok()
        .and_then(|text| {
            let mut fields = text.split_whitespace().map(str::parse::<u64>);
            Some((fields.next()?.ok()?, fields.next()?.ok()?))
        })
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// Lines of a journal released past the threshold are given back: the file keeps its
    /// size, uses fewer blocks, and a replay starts at the first unreleased line.
    #[test]
    fn a_released_prefix_is_given_back_and_the_replay_starts_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0000000000000007.jsonl");
        let line = format!("{}\n", "x".repeat(99)); // 100 bytes
        let lines = 3 * RECLAIM_MIN / 100; // 12 MiB
        let mut file = std::fs::File::create(&path).expect("create");
        for _ in 0..lines {
            file.write_all(line.as_bytes()).expect("write");
        }
        file.sync_all().expect("sync");
        let reclaimer = Reclaimer::default();
        reclaimer.track(7, path.clone());
        for next in (MARK_EVERY..lines).step_by(MARK_EVERY as usize) {
            reclaimer.mark(7, next, next * 100);
        }
        let blocks_before = std::fs::metadata(&path).expect("meta").blocks();

        // Released up to just short of the threshold: nothing yet.
        reclaimer.released(&HashMap::from([(7, RECLAIM_MIN / 100 - MARK_EVERY)]));
        assert_eq!(replay_start(&path), (0, 0));

        // Released two thirds: given back up to the last mark before it.
        let released = 2 * lines / 3;
        reclaimer.released(&HashMap::from([(7, released)]));
        let (offset, next) = replay_start(&path);
        assert_eq!(offset, next * 100, "a mark");
        assert!(
            next <= released + 1 && next + MARK_EVERY > released + 1,
            "{next}"
        );
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(meta.len(), lines * 100, "the size is kept");
        assert!(
            meta.blocks() < blocks_before / 2,
            "blocks freed: {} of {blocks_before}",
            meta.blocks()
        );
        // What a replay reads from there is whole lines.
        let mut rest = String::new();
        let mut file = std::fs::File::open(&path).expect("open");
        file.seek(SeekFrom::Start(offset)).expect("seek");
        file.read_to_string(&mut rest).expect("read");
        assert_eq!(rest.len() as u64, (lines - next) * 100);
        assert!(rest.starts_with('x') && rest.ends_with("x\n"));
    }

    /// A journal whose bytes are not the socket's (against the contract) is left alone.
    #[test]
    fn a_journal_that_does_not_match_its_socket_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0000000000000008.jsonl");
        std::fs::write(&path, vec![b'y'; (2 * RECLAIM_MIN) as usize]).expect("write");
        let reclaimer = Reclaimer::default();
        reclaimer.track(8, path.clone());
        reclaimer.mark(8, 100_000, RECLAIM_MIN + 1);
        reclaimer.released(&HashMap::from([(8, 200_000)]));
        assert_eq!(replay_start(&path), (0, 0), "no mark written");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            vec![b'y'; (2 * RECLAIM_MIN) as usize],
            "nothing punched"
        );
    }
}
