//! [`EventFeed`]: the newest records of the job's event log kept in memory for `GET /events`, so
//! a poller (`tessera top`) is answered without the API reading `events.jsonl` on every call
//! and without asking the coordinator actor. Every record carries its sequence number, which is
//! its 0-based line number in `events.jsonl`: it stays valid across coordinator restarts (the
//! log is appended to, never rewritten), so a cursor a poller holds is never silently reused.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::{JobEvent, LoggedEvent};

/// Records kept in memory: far more than a poller asking once a second ever falls behind by
/// (a job records a few events per checkpoint interval), and a few hundred KiB at most.
pub const FEED_CAPACITY: usize = 1024;

/// Records answered when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 50;

/// The most records one answer carries (a poller that is further behind pages on).
pub const MAX_PAGE: usize = 1000;

/// One record of the log with its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeqEvent {
    /// Its 0-based line number in `events.jsonl`.
    pub seq: u64,
    /// When it was recorded (UNIX time, milliseconds).
    pub ts_ms: u64,
    /// What happened.
    pub event: JobEvent,
}

/// The answer to `GET /events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    /// The records, oldest first.
    pub events: Vec<SeqEvent>,
    /// The cursor to ask with next (`since=next`): one past the last record answered, or the
    /// end of the log when nothing was answered.
    pub next: u64,
    /// Records at or after `since` that are no longer kept in memory (the poller fell more than
    /// [`FEED_CAPACITY`] records behind); they are still in `events.jsonl`.
    pub missed: u64,
}

#[derive(Debug, Default)]
struct Tail {
    /// Sequence number the next record gets (the log's line count).
    next: u64,
    /// The newest records, ascending by `seq` (a corrupt line found at open leaves a gap).
    kept: VecDeque<SeqEvent>,
}

/// A shared handle on the newest records; clones see the same records.
#[derive(Debug, Clone, Default)]
pub struct EventFeed {
    tail: Arc<Mutex<Tail>>,
}

impl EventFeed {
    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // Every mutation below leaves the tail consistent at each statement, so a lock poisoned
        // by a panic elsewhere is still usable.
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `record` as line `seq` of the log, dropping the oldest beyond [`FEED_CAPACITY`].
    pub(super) fn push_at(&self, seq: u64, record: LoggedEvent) {
        let mut tail = self.tail();
        tail.kept.push_back(SeqEvent { seq, ts_ms: record.ts_ms, event: record.event });
        tail.next = seq + 1;
        if tail.kept.len() > FEED_CAPACITY {
            tail.kept.pop_front();
        }
    }

    /// Appends `record` as the log's next line.
    pub(super) fn push(&self, record: LoggedEvent) {
        let seq = self.tail().next;
        self.push_at(seq, record);
    }

    /// Counts line `seq` of the log, which is not kept (corrupt): later lines keep their numbers.
    pub(super) fn skip_to(&self, seq: u64) {
        self.tail().next = seq + 1;
    }

    /// The records from sequence number `since` on (at most `limit`, oldest first), or with
    /// `since` = `None` the newest `limit` ones.
    pub fn page(&self, since: Option<u64>, limit: usize) -> EventPage {
        let tail = self.tail();
        let newest = || tail.kept.get(tail.kept.len().saturating_sub(limit)).map_or(tail.next, |e| e.seq);
        let from = since.unwrap_or_else(newest);
        let oldest = tail.kept.front().map_or(tail.next, |e| e.seq);
        let missed = oldest.saturating_sub(from);
        let events: Vec<SeqEvent> = tail.kept.iter().filter(|e| e.seq >= from).take(limit).cloned().collect();
        // A cursor past the end (from another log) gets the end: the poller resynchronizes.
        let next = events.last().map_or(tail.next, |e| e.seq + 1);
        EventPage { events, next, missed }
    }
}
