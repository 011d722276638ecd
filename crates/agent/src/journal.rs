//! The crash-safe journal: one JSON line per event in `STATE_DIR/journal.jsonl`,
//! each written and fsync'd before the step it announces. An intent is
//! recorded before a process is touched and its outcome after, so a start
//! after a crash (or `hotpatch repair`) knows which processes were being
//! changed. The process itself stays the record of what is applied (its region
//! headers); the journal says where to look and what was meant.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const JOURNAL: &str = "journal.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What was about to happen to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: u64,
    /// "apply" or "rollback".
    pub op: String,
    pub pid: i32,
    /// The process's start time (clock ticks after boot): a pid reused by
    /// another process is not mistaken for this one.
    pub start_time: u64,
    pub patch_id: String,
    pub level: u32,
    pub build_id: String,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: u64,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Intent(Intent),
    Outcome(Outcome),
}

pub struct Journal {
    path: PathBuf,
    file: File,
    next_id: u64,
    /// Events appended since the journal was last compacted.
    appended: usize,
}

/// A long-running agent compacts its journal (keeping the open intents) after
/// this many events, so the file does not grow without end.
const COMPACT_AFTER: usize = 4096;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Start time of a process (field 22 of `/proc/PID/stat`), `None` once it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every event that was written whole; a torn last line (a crash mid-write) is skipped.
pub fn read_events(state_dir: &Path) -> Result<Vec<Event>, JournalError> {
    let path = state_dir.join(JOURNAL);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(JournalError::Io { path, source }),
    };
    let mut events = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| JournalError::Io { path: path.clone(), source })?;
        match serde_json::from_str::<Event>(&line) {
            Ok(e) => events.push(e),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable journal line"),
        }
    }
    Ok(events)
}

/// Intents with no outcome: the work a crash interrupted.
pub fn open_intents(state_dir: &Path) -> Result<Vec<Intent>, JournalError> {
    let events = read_events(state_dir)?;
    let closed: std::collections::HashSet<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Outcome(o) => Some(o.id),
            Event::Intent(_) => None,
        })
        .collect();
    Ok(events
        .into_iter()
        .filter_map(|e| match e {
            Event::Intent(i) if !closed.contains(&i.id) => Some(i),
            _ => None,
        })
        .collect())
}

/// True for an empty file too.
fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(true);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

impl Journal {
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join(JOURNAL);
        let io = |source| JournalError::Io { path: path.clone(), source };
        let next_id = read_events(state_dir)?
            .iter()
            .map(|e| match e {
                Event::Intent(i) => i.id,
                Event::Outcome(o) => o.id,
            })
            .max()
            .map_or(1, |m| m + 1);
        let mut file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io)?;
        // A crash mid-line leaves a torn last line: end it, so the next event
        // starts a line of its own instead of being glued to the fragment.
        if !ends_with_newline(&path).map_err(io)? {
            file.write_all(b"\n").and_then(|()| file.sync_data()).map_err(io)?;
        }
        // The file's own name must survive a crash too.
        File::open(state_dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(Journal { path, file, next_id, appended: 0 })
    }

    /// Writes `events` and makes them durable with one sync: a batch costs
    /// one disk flush, not one per event.
    fn append_all(&mut self, events: &[Event]) -> Result<(), JournalError> {
        let mut lines = Vec::new();
        for event in events {
            lines.extend(serde_json::to_vec(event).unwrap_or_default());
            lines.push(b'\n');
        }
        self.file
            .write_all(&lines)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| JournalError::Io { path: self.path.clone(), source })
    }

    /// Records, durably and in one write, that `op` of `patch_id` is about to
    /// touch each of `pids` (one intent each, ids in the same order).
    pub fn intents(
        &mut self,
        op: &str,
        pids: &[i32],
        patch_id: &str,
        level: u32,
        build_id: &str,
    ) -> Result<Vec<u64>, JournalError> {
        let first = self.next_id;
        let events: Vec<Event> = pids
            .iter()
            .enumerate()
            .map(|(n, &pid)| {
                Event::Intent(Intent {
                    id: first + n as u64,
                    op: op.to_string(),
                    pid,
                    start_time: start_time(pid).unwrap_or(0),
                    patch_id: patch_id.to_string(),
                    level,
                    build_id: build_id.to_string(),
                    at: now(),
                })
            })
            .collect();
        self.append_all(&events)?;
        self.next_id = first + pids.len() as u64;
        Ok((first..self.next_id).collect())
    }

    /// Records, durably, that `op` of `patch_id` is about to touch `pid`.
    pub fn intent(
        &mut self,
        op: &str,
        pid: i32,
        patch_id: &str,
        level: u32,
        build_id: &str,
    ) -> Result<u64, JournalError> {
        let ids = self.intents(op, &[pid], patch_id, level, build_id)?;
        Ok(ids.first().copied().unwrap_or_default())
    }

    pub fn outcome(&mut self, id: u64, ok: bool, detail: &str) -> Result<(), JournalError> {
        self.outcomes([(id, ok, detail)])
    }

    /// Records the outcomes `(intent id, ok, detail)` in one durable write.
    pub fn outcomes<'d>(
        &mut self,
        outcomes: impl IntoIterator<Item = (u64, bool, &'d str)>,
    ) -> Result<(), JournalError> {
        let events: Vec<Event> = outcomes
            .into_iter()
            .map(|(id, ok, detail)| Event::Outcome(Outcome { id, ok, detail: detail.to_string() }))
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        self.append_all(&events)?;
        self.appended += 2 * events.len();
        if self.appended >= COMPACT_AFTER
            && let Some(dir) = self.path.parent().map(Path::to_path_buf)
        {
            self.compact(&dir)?;
        }
        Ok(())
    }

    /// Rewrites the journal with only the open intents (after a repair closed
    /// the others), through a temporary file and a rename.
    pub fn compact(&mut self, state_dir: &Path) -> Result<(), JournalError> {
        let open = open_intents(state_dir)?;
        let tmp = state_dir.join(format!(".{JOURNAL}.tmp"));
        let io = |source| JournalError::Io { path: tmp.clone(), source };
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        for i in open {
            let mut line = serde_json::to_vec(&Event::Intent(i)).unwrap_or_default();
            line.push(b'\n');
            f.write_all(&line).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        File::open(state_dir).and_then(|d| d.sync_all()).map_err(io)?;
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(io)?;
        self.appended = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_outcomes_torn_lines_and_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        let a = j.intent("apply", 1, "p", 1, "aa").expect("intent");
        let b = j.intent("apply", 2, "p", 1, "aa").expect("intent");
        j.outcome(a, true, "applied").expect("outcome");
        // A crash in the middle of a line leaves half of it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .expect("open")
            .write_all(b"{\"outcome\":{\"id\":")
            .expect("write");
        let open = open_intents(dir.path()).expect("read");
        assert_eq!(open.iter().map(|i| i.id).collect::<Vec<_>>(), [b]);
        let mut j = Journal::open(dir.path()).expect("reopen");
        assert!(j.intent("apply", 3, "p", 1, "aa").expect("intent") > b, "ids keep rising");
        j.compact(dir.path()).expect("compact");
        assert_eq!(read_events(dir.path()).expect("read").len(), 2, "only the open intents stay");
    }

    #[test]
    fn a_batch_of_intents_and_outcomes_reads_back_like_single_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        let first = j.intent("apply", 7, "p", 1, "aa").expect("intent");
        let ids = j.intents("apply", &[11, 12, 13], "p", 2, "aa").expect("intents");
        assert_eq!(ids, [first + 1, first + 2, first + 3]);
        j.outcomes([(ids[0], true, "applied"), (ids[2], false, "busy")]).expect("outcomes");
        j.outcomes([]).expect("nothing to write");
        let open = open_intents(dir.path()).expect("read");
        let open: Vec<(u64, i32)> = open.iter().map(|i| (i.id, i.pid)).collect();
        assert_eq!(open, [(first, 7), (ids[1], 12)]);
        let mut j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.intent("apply", 8, "p", 1, "aa").expect("intent"), ids[2] + 1, "ids keep rising");
    }
}
