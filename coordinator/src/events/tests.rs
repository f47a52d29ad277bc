use std::collections::BTreeMap;
use std::io::Write;

use super::{EVENTS_SCHEMA, EventLog, JobEvent, LoggedEvent};
use crate::error::CoordinatorError;

/// One event of every kind, so a serde attribute mistake on any variant shows up.
fn all_events() -> Vec<JobEvent> {
    vec![
        JobEvent::CoordinatorStarted { resumed_step: Some(400) },
        JobEvent::WorkerJoined { worker: 7, addr: "127.0.0.1:4100".into() },
        JobEvent::WorkerRemoved { worker: 7, reason: "heartbeat timeout".into() },
        JobEvent::GenerationStarted { generation: 2, ranks: vec![3, 5], start_step: 400, restore: Some(400) },
        JobEvent::GenerationEnded { generation: 2, reason: "resize".into() },
        JobEvent::CheckpointCommitted { step: 500, dir: "ckpt/step-500".into(), bytes: 1 << 30, duration_s: 2.5 },
        JobEvent::CheckpointFailed { step: 600, reason: "rank 1: disk full".into() },
        JobEvent::ScaleRequested { workers: 4 },
        JobEvent::MixtureChanged {
            version: 1,
            effective_step: 700,
            weights: BTreeMap::from([("cc12m".to_string(), 0.75), ("coco".to_string(), 0.25)]),
        },
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
    assert_eq!(first, r#"{"v":1,"ts_ms":1000,"event":{"type":"coordinator_started","resumed_step":400}}"#);
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
