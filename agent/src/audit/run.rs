//! The run note: a file in the state directory that bounds the uses a
//! crash can lose (the writer keeps it ahead of the queue), and the
//! `crash-gap` record the next start writes from it.

use std::time::UNIX_EPOCH;

/// The run note's file name in the state directory.
pub const RUN_NOTE: &str = "audit-run";

/// The least number of queued events the run note reserves ahead.
pub(crate) const MIN_HEADROOM: u64 = 1024;

/// Bytes the run note is padded to: one write of one block replaces it.
pub(crate) const NOTE_SIZE: usize = 512;

/// What the run note says (format 1), as JSON padded to [`NOTE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct NoteState {
    /// The agent's process.
    pub(crate) pid: u32,
    /// When the run began (microseconds since the epoch).
    pub(crate) started_us: u64,
    /// The run ended with a clean stop: everything queued was stored.
    pub(crate) clean: bool,
    /// Events queued in this run that the trail now holds (or that an
    /// `audit-gap` record accounts for).
    pub(crate) accounted: u64,
    /// The trail's head seq when `accounted` was counted.
    pub(crate) seq: u64,
    /// Every event queued before this time is in the trail.
    pub(crate) stored_until_us: u64,
    /// No more events than this were queued in this run.
    pub(crate) reserved: u64,
    /// When the note was written.
    pub(crate) noted_us: u64,
}

/// The run note's file and what it last said.
pub(crate) struct RunNote {
    pub(crate) file: std::fs::File,
    pub(crate) path: std::path::PathBuf,
    /// What is on disk.
    pub(crate) disk: NoteState,
    /// Progress not yet on disk: `accounted`, `seq`, `stored_until_us`.
    pub(crate) progress: NoteState,
    /// `Queue::total` at the writer's last note, and the headroom it gave.
    pub(crate) last_total: u64,
    pub(crate) headroom: u64,
    /// The last write failed (said once).
    pub(crate) failing: bool,
}

impl RunNote {
    /// Writes `state` over the note (one write of [`NOTE_SIZE`] bytes; no
    /// sync: what a process crash must not lose is in the page cache).
    pub(crate) fn write(&mut self, state: NoteState) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut bytes = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
        if bytes.len() >= NOTE_SIZE {
            return Err(std::io::Error::other("the run note is too long"));
        }
        bytes.resize(NOTE_SIZE - 1, b' ');
        bytes.push(b'\n');
        let written = self.file.write_all_at(&bytes, 0);
        match &written {
            Ok(()) => {
                self.disk = state;
                if self.failing {
                    self.failing = false;
                    log::warn!(
                        "audit: the run note {} is written again",
                        self.path.display()
                    );
                }
            }
            Err(e) if !self.failing => {
                self.failing = true;
                log::error!(
                    "audit: cannot write the run note {} ({e}): after a crash, the count of \
                     uses that may be missing will be too low",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
        written
    }

    /// The note with the progress so far and `reserved`; `Some(reserved)`
    /// when written. Called with the queue locked, and `reserved` at least
    /// its total: the note never says fewer events than were queued.
    pub(crate) fn note(&mut self, reserved: u64) -> Option<u64> {
        let state = NoteState {
            reserved,
            noted_us: now_us(),
            ..self.progress
        };
        self.write(state).ok().map(|()| self.disk.reserved)
    }
}

/// Microseconds since the epoch.
pub(crate) fn now_us() -> u64 {
    crate::clock::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `2026-12-04T22:01:02.123456Z` for microseconds since the epoch.
pub fn format_us(us: u64) -> String {
    i64::try_from(us)
        .ok()
        .and_then(|us| jiff::Timestamp::from_microsecond(us).ok())
        .map_or_else(
            || format!("unix_us {us}"),
            |t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        )
}

/// The operation of the record a start after a crash writes.
pub const CRASH_GAP: &str = "crash-gap";

/// The reason of a [`CRASH_GAP`] record; [`crash_gap_of`] reads it back.
pub fn crash_gap_reason(from_us: u64, to_us: u64, at_most: u64, pid: u32, noted_us: u64) -> String {
    format!(
        "the agent (pid {pid}) did not stop cleanly: at most {at_most} uses and refusals \
         acknowledged between {} and {} may be missing from the trail \
         [unix_us {from_us}..{to_us}]; its last note was at {}",
        format_us(from_us),
        format_us(to_us),
        format_us(noted_us)
    )
}

/// The interval (microseconds since the epoch) and the bound a
/// [`crash_gap_reason`] says.
pub fn crash_gap_of(reason: &str) -> Option<(u64, u64, u64)> {
    let at_most = reason
        .split_once("at most ")?
        .1
        .split_once(' ')?
        .0
        .parse()
        .ok()?;
    let range = reason.split_once("[unix_us ")?.1.split_once(']')?.0;
    let (from, to) = range.split_once("..")?;
    Some((from.parse().ok()?, to.parse().ok()?, at_most))
}
