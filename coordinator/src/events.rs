//! The job's event log: an append-only JSON-lines file, one [`JobEvent`] per line with its UNIX
//! time in milliseconds. It is the audit trail of the job (which checkpoints were committed,
//! who joined, why generations ended), so every record is flushed and fsynced before
//! [`EventLog::record`] returns.
//!
//! A record is complete only with its terminating newline, which is written in the same write
//! as the record. Text after the last newline is therefore a record torn by a crash and never
//! acknowledged: [`EventLog::read_all`] ignores it and [`EventLog::open`] cuts it off before
//! appending (otherwise the next record would be glued onto it and corrupt a middle line).
//! Any complete line that does not parse is corruption and is reported with its line number.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::control::StopReason;
use crate::error::{CoordinatorError, Result};
use tessera_protocol::ModalityName;
use tessera_protocol::jsonl::JsonLines;

mod feed;

pub use feed::{DEFAULT_PAGE, EventFeed, EventPage, FEED_CAPACITY, MAX_PAGE, SeqEvent};

/// Version of the `events.jsonl` line schema ([`LoggedEvent::v`]): `{"v", "ts_ms", "event":
/// {"type": …, fields}}`, one [`JobEvent`] per line. A new event type or field is a new
/// version; readers skip nothing silently (an unknown type is an error naming the line).
///
/// Version 2: `generation_ended`'s `reason` is the typed [`StopReason`] (`{"kind": …}`) where
/// version 1 wrote free text; version 1 lines still read (see [`EndReason::Legacy`]).
/// Version 3: `generation_adopted`, where version 2 logged an adoption as a second
/// `generation_started` of the same generation.
pub const EVENTS_SCHEMA: u32 = 3;

/// The version of lines written before `v` existed (the same shape as version 1).
fn unversioned() -> u32 {
    0
}

/// Why a generation ended, as `generation_ended` records it: a bare JSON string is a line of
/// schema 1 or older, an object is a [`StopReason`] (the form the coordinator writes now).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EndReason {
    /// The state machine's reason (schema 2).
    Stop(StopReason),
    /// The free text of a schema-1 line, kept verbatim. It is not parsed back into a
    /// [`StopReason`]: it was the Rust `Debug` form of whatever type the coordinator of the
    /// day had (`"Resize"`, `"aborted: MemberLost(WorkerId(3))"`), and `"stopped"` had no
    /// typed counterpart at all, so a parse would be a guess presented as a fact.
    Legacy(String),
}

impl From<StopReason> for EndReason {
    fn from(reason: StopReason) -> Self {
        Self::Stop(reason)
    }
}

/// Something that happened to the job, as recorded in the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// The coordinator started (fresh, or resuming from a committed checkpoint).
    CoordinatorStarted {
        /// Step of the checkpoint it resumes from (`None`: fresh job).
        resumed_step: Option<u64>,
    },
    /// A worker registered.
    WorkerJoined {
        /// Its id.
        worker: u64,
        /// Its address.
        addr: String,
    },
    /// A worker was removed (left, timed out, drained).
    WorkerRemoved {
        /// Its id.
        worker: u64,
        /// Why.
        reason: String,
    },
    /// A generation started.
    GenerationStarted {
        /// Its number.
        generation: u64,
        /// Worker id of each rank (rank `i` is `ranks[i]`).
        ranks: Vec<u64>,
        /// First step it trains.
        start_step: u64,
        /// Step of the checkpoint it restores (`None`: fresh start).
        restore: Option<u64>,
    },
    /// A generation cut off from its coordinator (which died) goes on under this one: every
    /// rank kept its state, nothing is restored or trained twice (schema 3).
    GenerationAdopted {
        /// Its number (unchanged).
        generation: u64,
        /// Worker id of each rank (rank `i` is `ranks[i]`), as its new coordinator names them.
        ranks: Vec<u64>,
        /// First step it trains under this coordinator.
        start_step: u64,
    },
    /// A generation ended.
    GenerationEnded {
        /// Its number.
        generation: u64,
        /// Why (resize, member lost, finished, ...).
        reason: EndReason,
    },
    /// A checkpoint was committed (every shard durable, manifest in place).
    CheckpointCommitted {
        /// The step count it holds.
        step: u64,
        /// Its directory.
        dir: String,
        /// Its size.
        bytes: u64,
        /// Seconds from request to commit.
        duration_s: f64,
    },
    /// The ranks scored the held-out set (the whole table is in `eval_log.jsonl`).
    Validated {
        /// The step count scored.
        step: u64,
        /// Mean cross-entropy per target modality.
        loss: BTreeMap<ModalityName, f64>,
    },
    /// A checkpoint attempt failed and will never be used.
    CheckpointFailed {
        /// The step it was for.
        step: u64,
        /// Why.
        reason: String,
    },
    /// The user asked for a number of workers.
    ScaleRequested {
        /// The requested worker count.
        workers: usize,
    },
    /// The dataset mixture changed.
    MixtureChanged {
        /// Version of the mixture schedule.
        version: u64,
        /// First step that uses it.
        effective_step: u64,
        /// Weight per dataset name.
        weights: BTreeMap<String, f64>,
    },
    /// A rank was flagged as a straggler: its own step time (data and compute, not waiting in
    /// collectives) exceeded the configured factor × the other ranks' median for the configured
    /// number of steps in a row.
    StragglerFlagged {
        /// Its worker id.
        worker: u64,
        /// Its rank.
        rank: u32,
        /// The generation.
        generation: u64,
        /// The step at which it was flagged.
        step: u64,
        /// Its own time in that step (seconds).
        own_s: f64,
        /// The median own time of the other ranks in that step (seconds).
        others_median_s: f64,
        /// It is drained at the next checkpointed boundary (`[stragglers] drain = true`).
        drain: bool,
    },
    /// Every step is done.
    JobFinished {
        /// Steps trained.
        step: u64,
    },
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Schema version: [`EVENTS_SCHEMA`] (lines written before there was one have none).
    #[serde(default = "unversioned")]
    pub v: u32,
    /// When it was recorded (UNIX time, milliseconds).
    pub ts_ms: u64,
    /// What happened.
    pub event: JobEvent,
}

/// An open event log, appending.
#[derive(Debug)]
pub struct EventLog {
    lines: JsonLines,
    /// Its newest records, shared with the API (`GET /events`).
    feed: EventFeed,
}

impl EventLog {
    /// Opens (or creates) the log at `path` for appending, cutting off a torn last line; its
    /// newest [`FEED_CAPACITY`] records are loaded into its [`EventFeed`].
    pub fn open(path: &Path) -> Result<Self> {
        let lines = JsonLines::open(path)?;
        let feed = EventFeed::default();
        let existing = JsonLines::complete_lines(path)?;
        let first_kept = existing.len().saturating_sub(FEED_CAPACITY);
        for (seq, line) in existing.iter().enumerate().skip(first_kept) {
            // A corrupt line is reported by `read_all` to whoever audits the log; the feed only
            // leaves a gap, so appending (what the job needs) still works.
            match serde_json::from_slice::<LoggedEvent>(line) {
                Ok(record) => feed.push_at(seq as u64, record),
                Err(_) => feed.skip_to(seq as u64),
            }
        }
        Ok(Self { lines, feed })
    }

    /// A handle on the log's newest records, updated by every [`EventLog::record`].
    pub fn feed(&self) -> EventFeed {
        self.feed.clone()
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        self.lines.path()
    }

    /// Appends `event` stamped with the current time; durable when this returns.
    pub fn record(&mut self, event: &JobEvent) -> Result<()> {
        // A clock before 1970 is a broken machine; 0 keeps the record rather than losing it.
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.record_at(ts_ms, event)
    }

    /// Appends `event` stamped `ts_ms`; durable when this returns.
    pub fn record_at(&mut self, ts_ms: u64, event: &JobEvent) -> Result<()> {
        let record = LoggedEvent { v: EVENTS_SCHEMA, ts_ms, event: event.clone() };
        self.lines.append(&record, true)?;
        // Only what is durable in the log is shown: a poller never sees a record the log lacks.
        self.feed.push(record);
        Ok(())
    }

    /// Every complete record of the log at `path`, oldest first (a torn last line is skipped).
    pub fn read_all(path: &Path) -> Result<Vec<LoggedEvent>> {
        JsonLines::complete_lines(path)?
            .iter()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_slice(line).map_err(|e| CoordinatorError::EventLog {
                    path: path.display().to_string(),
                    line: i + 1,
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
