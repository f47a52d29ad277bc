use std::collections::BTreeMap;
use std::io::Write;

use super::{EVENTS_SCHEMA, EndReason, EventLog, JobEvent, LoggedEvent};
use crate::control::{StopReason, WorkerId};
use crate::error::CoordinatorError;

/// One event of every kind, so a serde attribute mistake on any variant shows up.
fn all_events() -> Vec<JobEvent> {
    vec![
        JobEvent::CoordinatorStarted { resumed_step: Some(400) },
        JobEvent::WorkerJoined { worker: 7, addr: "127.0.0.1:4100".into() },
        JobEvent::WorkerRemoved { worker: 7, reason: "heartbeat timeout".into() },
        JobEvent::GenerationStarted { generation: 2, ranks: vec![3, 5], start_step: 400, restore: Some(400) },
        JobEvent::GenerationEnded { generation: 2, reason: StopReason::Resize.into() },
        JobEvent::GenerationEnded { generation: 3, reason: StopReason::MemberLost { worker: WorkerId(5) }.into() },
        JobEvent::CheckpointCommitted { step: 500, dir: "ckpt/step-500".into(), bytes: 1 << 30, duration_s: 2.5 },
        JobEvent::CheckpointFailed { step: 600, reason: "rank 1: disk full".into() },
        JobEvent::ScaleRequested { workers: 4 },
        JobEvent::MixtureChanged {
            version: 1,
            effective_step: 700,
            weights: BTreeMap::from([("cc12m".to_string(), 0.75), ("coco".to_string(), 0.25)]),
        },
        JobEvent::GenerationAdopted { generation: 4, ranks: vec![3, 5, 6], start_step: 717 },
        JobEvent::JobFinished { step: 1000 },
    ]
}

#[test]
fn event_log_round_trips_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut log = EventLog::open(&path).unwrap();
    for (i, e) in all_events().iter().enumerate() {
        log.record_at(1_000 + i as u64, e).unwrap();
    }
    drop(log);
    // Reopening appends after the existing records.
    EventLog::open(&path).unwrap().record(&JobEvent::JobFinished { step: 1001 }).unwrap();

    let read = EventLog::read_all(&path).unwrap();
    let events = all_events();
    assert_eq!(read.len(), events.len() + 1);
    for (i, (got, want)) in read.iter().zip(&events).enumerate() {
        assert_eq!(got, &LoggedEvent { v: EVENTS_SCHEMA, ts_ms: 1_000 + i as u64, event: want.clone() });
    }
    assert_eq!(read.last().unwrap().event, JobEvent::JobFinished { step: 1001 });
    assert!(read.last().unwrap().ts_ms > 1_600_000_000_000, "record() stamps wall-clock UNIX millis");

    // The wire format is part of the contract: tagged by `type`, snake_case.
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(first, r#"{"v":3,"ts_ms":1000,"event":{"type":"coordinator_started","resumed_step":400}}"#);
    // A generation's end carries the typed reason, tagged by `kind`.
    let ended: Vec<&str> = text.lines().filter(|l| l.contains("generation_ended")).collect();
    assert_eq!(
        ended,
        [
            r#"{"v":3,"ts_ms":1004,"event":{"type":"generation_ended","generation":2,"reason":{"kind":"resize"}}}"#,
            r#"{"v":3,"ts_ms":1005,"event":{"type":"generation_ended","generation":3,"reason":{"kind":"member_lost","worker":5}}}"#,
        ]
    );
    // Schema 3: an adoption is its own event.
    let adopted = text.lines().find(|l| l.contains("generation_adopted")).unwrap();
    assert!(adopted.ends_with(r#""event":{"type":"generation_adopted","generation":4,"ranks":[3,5,6],"start_step":717}}"#), "{adopted}");
    // A line written before the schema was versioned still reads, as version 0.
    let old: LoggedEvent = serde_json::from_str(r#"{"ts_ms":7,"event":{"type":"job_finished","step":3}}"#).unwrap();
    assert_eq!(old, LoggedEvent { v: 0, ts_ms: 7, event: JobEvent::JobFinished { step: 3 } });
}

/// Schema 1 wrote a generation's end reason as free text: it reads as that text, verbatim.
#[test]
fn a_schema_1_end_reason_reads_as_its_text() {
    for text in ["Resize", "aborted: MemberLost(WorkerId(3))", "stopped"] {
        let line = format!(r#"{{"v":1,"ts_ms":7,"event":{{"type":"generation_ended","generation":4,"reason":"{text}"}}}}"#);
        let read: LoggedEvent = serde_json::from_str(&line).unwrap();
        let want = JobEvent::GenerationEnded { generation: 4, reason: EndReason::Legacy(text.into()) };
        assert_eq!(read, LoggedEvent { v: 1, ts_ms: 7, event: want });
    }
    // A reason that is neither text nor a known kind is corruption, not a legacy line.
    let bad = r#"{"v":3,"ts_ms":7,"event":{"type":"generation_ended","generation":4,"reason":{"kind":"bogus"}}}"#;
    assert!(serde_json::from_str::<LoggedEvent>(bad).is_err());
}

#[test]
fn event_log_ignores_torn_last_line_and_open_cuts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut log = EventLog::open(&path).unwrap();
    log.record_at(1, &JobEvent::ScaleRequested { workers: 2 }).unwrap();
    log.record_at(2, &JobEvent::JobFinished { step: 9 }).unwrap();
    drop(log);
    // A crash in the middle of the third record.
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"ts_ms":3,"event":{"type":"checkpoint_comm"#).unwrap();
    drop(f);

    let read = EventLog::read_all(&path).unwrap();
    assert_eq!(read.iter().map(|e| e.ts_ms).collect::<Vec<_>>(), [1, 2]);

    // Appending after the crash must not glue the new record onto the torn one.
    let mut log = EventLog::open(&path).unwrap();
    log.record_at(4, &JobEvent::WorkerJoined { worker: 1, addr: "a".into() }).unwrap();
    let read = EventLog::read_all(&path).unwrap();
    assert_eq!(read.iter().map(|e| e.ts_ms).collect::<Vec<_>>(), [1, 2, 4]);
}

#[test]
fn event_log_reports_corrupt_middle_line_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let good = r#"{"ts_ms":1,"event":{"type":"job_finished","step":3}}"#;
    std::fs::write(&path, format!("{good}\n{good}\n{{\"ts_ms\":2,\"event\":{{\"type\":\"bogus\"}}}}\n{good}\n")).unwrap();
    match EventLog::read_all(&path) {
        Err(CoordinatorError::EventLog { line, reason, .. }) => {
            assert_eq!(line, 3);
            assert!(reason.contains("bogus"), "{reason}");
        }
        other => panic!("expected an event-log error, got {other:?}"),
    }
    let err = EventLog::read_all(&path).unwrap_err().to_string();
    assert!(err.contains("events.jsonl:3:"), "{err}");
}

#[test]
fn event_log_reads_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    drop(EventLog::open(&path).unwrap());
    assert!(EventLog::read_all(&path).unwrap().is_empty());
}

/// The feed numbers records by their line in the log, across a reopen, and a cursor answers
/// only what came after it.
#[test]
fn the_feed_pages_from_a_cursor_and_keeps_line_numbers_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut log = EventLog::open(&path).unwrap();
    let feed = log.feed();
    assert_eq!(feed.page(None, 10), super::EventPage { events: vec![], next: 0, missed: 0 });
    for step in 0..3 {
        log.record_at(10 + step, &JobEvent::JobFinished { step }).unwrap();
    }
    let newest = feed.page(None, 2);
    assert_eq!(newest.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((newest.next, newest.missed, newest.events[0].ts_ms), (3, 0, 11));
    assert!(feed.page(Some(3), 10).events.is_empty());
    log.record_at(20, &JobEvent::ScaleRequested { workers: 2 }).unwrap();
    let new = feed.page(Some(3), 10);
    assert_eq!((new.events.len(), new.events[0].seq, new.next), (1, 3, 4));
    assert_eq!(new.events[0].event, JobEvent::ScaleRequested { workers: 2 });
    // A cursor past the end (another log's) is answered with this log's end.
    assert_eq!(feed.page(Some(99), 10).next, 4);
    drop(log);

    // A corrupt line is a gap in the numbering, not a renumbering of what follows.
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{not json}\n").unwrap();
    let mut log = EventLog::open(&path).unwrap();
    log.record_at(30, &JobEvent::JobFinished { step: 9 }).unwrap();
    let all = log.feed().page(Some(0), 100);
    assert_eq!(all.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2, 3, 5]);
    assert_eq!(all.next, 6);
}

/// Beyond its capacity the feed drops the oldest records and says how many a late cursor
/// missed; a page is at most `limit` long and the next one continues after it.
#[test]
fn the_feed_drops_the_oldest_beyond_its_capacity_and_counts_what_a_late_poller_missed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let text: String = (0..super::FEED_CAPACITY as u64 + 5)
        .map(|step| {
            serde_json::to_string(&LoggedEvent { v: EVENTS_SCHEMA, ts_ms: step, event: JobEvent::JobFinished { step } }).unwrap() + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    let feed = EventLog::open(&path).unwrap().feed();
    let late = feed.page(Some(2), 3);
    assert_eq!(late.missed, 3);
    assert_eq!(late.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6, 7]);
    // The rest, paged: at most MAX_PAGE at a time, each page continuing after the last.
    let on = feed.page(Some(late.next), super::MAX_PAGE);
    assert_eq!((on.events.len(), on.events[0].seq, on.next, on.missed), (super::MAX_PAGE, 8, 8 + super::MAX_PAGE as u64, 0));
    let rest = feed.page(Some(on.next), super::MAX_PAGE);
    let end = super::FEED_CAPACITY as u64 + 5;
    assert_eq!((rest.events.len() as u64, rest.next, rest.missed), (end - on.next, end, 0));
}
