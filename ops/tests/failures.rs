//! In-process failure semantics of the TCP ring: deadlines, abort, poisoning, protocol
//! mismatches, and peers that go away.

mod common;

use std::time::{Duration, Instant};

use tessera_ops::{Collective, OpKind, OpsError, Rank, ReduceOp};

#[test]
fn deadline_names_op_sequence_and_peer_then_poisons() {
    let mut comms = common::ring(2, &common::config(4096, Duration::from_millis(300))).unwrap();
    // Rank 1 keeps its communicator but never calls.
    let _idle = comms.pop().unwrap();
    let mut r0 = comms.pop().unwrap();
    let start = Instant::now();
    let first = r0.barrier().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(first.to_string(), "barrier #0 timed out after 300ms waiting for rank 1");
    let mut buf = vec![1.0f32; 1000];
    let err = r0.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err();
    // The barrier (#0) timed out; the all-reduce (#1) is refused with that original error.
    match &err {
        OpsError::Poisoned { op: OpKind::AllReduce, seq: 1, cause } => match cause.as_ref() {
            OpsError::Timeout { op: OpKind::Barrier, seq: 0, peer: Rank(1), .. } => {}
            other => panic!("unexpected cause {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("all_reduce #1") && text.contains("barrier #0 timed out") && text.contains("rank 1"), "{text}");
}

#[test]
fn timeout_returns_within_the_deadline() {
    let mut comms = common::ring(3, &common::config(4096, Duration::from_millis(400))).unwrap();
    let _silent = comms.pop().unwrap();
    let (mut r1, mut r0) = (comms.pop().unwrap(), comms.pop().unwrap());
    let start = Instant::now();
    let t = std::thread::spawn(move || {
        let mut buf = vec![2i64; 10_000];
        r1.all_reduce(&mut buf, ReduceOp::Max)
    });
    let mut buf = vec![1i64; 10_000];
    let e0 = r0.all_reduce(&mut buf, ReduceOp::Max).unwrap_err();
    let e1 = t.join().unwrap().unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    for e in [&e0, &e1] {
        let text = e.to_string();
        assert!(text.starts_with("all_reduce #0"), "{text}");
    }
    // Rank 0 reads from the silent rank 2 directly.
    assert!(matches!(e0, OpsError::Timeout { peer: Rank(2), .. } | OpsError::PeerClosed { .. }), "{e0:?}");
}

#[test]
fn abort_unblocks_a_blocked_call_promptly() {
    let mut comms = common::ring(2, &common::config(4096, Duration::from_secs(60))).unwrap();
    let _idle = comms.pop().unwrap();
    let mut r0 = comms.pop().unwrap();
    let handle = r0.abort_handle();
    let aborter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        handle.abort();
    });
    let start = Instant::now();
    let mut buf = vec![0.5f32; 1 << 16];
    let err = r0.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert!(matches!(err, OpsError::Aborted { op: OpKind::AllReduce, seq: 0, rank: Rank(0) }), "{err:?}");
    aborter.join().unwrap();
    // Later calls fail fast with the original error.
    let later = r0.barrier().unwrap_err();
    assert!(matches!(&later, OpsError::Poisoned { op: OpKind::Barrier, seq: 1, cause } if matches!(**cause, OpsError::Aborted { .. })));
}

#[test]
fn abort_of_a_single_rank_world_fails_later_calls() {
    let mut comms = common::ring(1, &common::config(4096, Duration::from_secs(1))).unwrap();
    let mut solo = comms.pop().unwrap();
    let mut buf = [3.0f32, 4.0];
    solo.all_reduce(&mut buf, ReduceOp::Avg).unwrap();
    assert_eq!(buf, [3.0, 4.0]);
    solo.abort_handle().abort();
    assert!(matches!(solo.barrier(), Err(OpsError::Aborted { .. })));
}

#[test]
fn dropped_peer_fails_the_neighbour_without_waiting_for_the_deadline() {
    let mut comms = common::ring(2, &common::config(4096, Duration::from_secs(30))).unwrap();
    let r1 = comms.pop().unwrap();
    let mut r0 = comms.pop().unwrap();
    let start = Instant::now();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(r1);
    });
    let mut buf = vec![1.0f32; 4096];
    let err = r0.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err();
    t.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, OpsError::PeerClosed { op: OpKind::AllReduce, seq: 0, peer: Rank(1) } | OpsError::Io { .. }), "{err:?}");
}

#[test]
fn mismatched_calls_are_protocol_errors_not_garbage() {
    let mut comms = common::ring(2, &common::config(4096, Duration::from_secs(5))).unwrap();
    let mut r1 = comms.pop().unwrap();
    let mut r0 = comms.pop().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = vec![1i64; 64];
        r1.all_reduce(&mut buf, ReduceOp::Sum)
    });
    let mut buf = vec![1.0f32; 64];
    let e0 = r0.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err();
    let e1 = t.join().unwrap().unwrap_err();
    let both = format!("{e0} | {e1}");
    assert!(both.contains("protocol violation") && both.contains("dtype code"), "{both}");
}

#[test]
fn invalid_buffers_are_rejected_and_poison() {
    let mut comms = common::ring(2, &common::config(4096, Duration::from_secs(5))).unwrap();
    let _r1 = comms.pop().unwrap();
    let mut r0 = comms.pop().unwrap();
    let mut out = vec![0.0f32; 3];
    let err = r0.reduce_scatter(&[1.0f32; 10], &mut out, ReduceOp::Sum).unwrap_err();
    assert!(matches!(err, OpsError::InvalidArgument { op: OpKind::ReduceScatter, seq: 0, .. }), "{err:?}");
    assert!(matches!(r0.barrier(), Err(OpsError::Poisoned { seq: 1, .. })));
}
