//! The worker registry on a real etcd: joins, a loss by lease expiry, and a re-registration
//! under a new lease, seen through the coordinator's prefix watch; what a registration tells
//! its worker about its lease; and the service's pool fed by the watch.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::etcd;
use tessera_coordinator::registry::{Registration, RegistryConfig, RegistryEvent, RegistryWatch, WorkerAd, WorkerName};
use tessera_coordinator::store::LeaseState;

/// Lease TTL of the test (etcd's minimum with default timings).
const TTL_S: i64 = 2;

/// The next registry event, or a failure after `within`.
async fn next(watch: &mut RegistryWatch, within: Duration) -> RegistryEvent {
    tokio::time::timeout(within, watch.next()).await.unwrap_or_else(|_| panic!("no registry event within {within:?}")).unwrap()
}

fn ad(addr: &str) -> WorkerAd {
    WorkerAd { addr: addr.into(), threads: 2, labels: BTreeMap::from([("rack".into(), "1".into())]), pid: 1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_keepalive_stops_is_lost_within_the_ttl_and_rejoins_under_a_new_lease() {
    let config = RegistryConfig {
        endpoints: vec![etcd::shared().url()],
        prefix: etcd::unique_prefix("registry"),
        ttl_s: TTL_S,
        timeout: Duration::from_secs(5),
        access: Default::default(),
    };
    let w1 = WorkerName::new("host-a-0").unwrap();
    let w2 = WorkerName::new("host-b-0").unwrap();
    let first = Registration::register(&config, &w1, &ad("10.0.0.1:7000")).await.unwrap();
    let (members, mut watch) = RegistryWatch::start(&config).await.unwrap();
    assert_eq!(members, vec![(w1.clone(), ad("10.0.0.1:7000"))]);

    // A join after the watch started.
    let second = Registration::register(&config, &w2, &ad("10.0.0.2:7000")).await.unwrap();
    let joined = next(&mut watch, Duration::from_secs(5)).await;
    assert_eq!(joined, RegistryEvent::Joined { name: w2.clone(), ad: ad("10.0.0.2:7000"), lease: second.lease() });

    // Kept alive, both outlive their TTL: no event for TTL + 1 s.
    let quiet = tokio::time::timeout(Duration::from_secs(TTL_S as u64 + 1), watch.next()).await;
    assert!(quiet.is_err(), "a kept-alive worker was reported: {quiet:?}");

    // Keep-alives stop (what a crashed, hung or cut-off worker looks like): lost within the TTL
    // plus a margin for etcd's expiry sweep.
    let old_lease = first.lease();
    let stopped = Instant::now();
    drop(first);
    let lost = next(&mut watch, Duration::from_secs(TTL_S as u64 + 5)).await;
    let detection = stopped.elapsed();
    assert_eq!(lost, RegistryEvent::Lost { name: w1.clone() });
    println!("lease-expiry detection: {:.2} s after the keep-alives stopped (TTL {TTL_S} s)", detection.as_secs_f64());

    // It comes back under a new lease and is reported joined again.
    let back = Registration::register(&config, &w1, &ad("10.0.0.1:7001")).await.unwrap();
    assert_ne!(back.lease(), old_lease);
    let rejoined = next(&mut watch, Duration::from_secs(5)).await;
    assert_eq!(rejoined, RegistryEvent::Joined { name: w1.clone(), ad: ad("10.0.0.1:7001"), lease: back.lease() });

    // A clean leave is reported at once; the kept-alive worker is still there.
    second.deregister().await.unwrap();
    assert_eq!(next(&mut watch, Duration::from_secs(5)).await, RegistryEvent::Lost { name: w2 });
    let (members, _) = RegistryWatch::start(&config).await.unwrap();
    assert_eq!(members, vec![(w1, ad("10.0.0.1:7001"))]);
    back.deregister().await.unwrap();
}

/// Waits until `reg`'s lease state satisfies `ok`, failing after `within` with `what`.
async fn lease_state(reg: &Registration, what: &str, within: Duration, ok: impl Fn(&LeaseState) -> bool) -> Duration {
    let start = Instant::now();
    while !ok(&reg.state()) {
        assert!(start.elapsed() < within, "lease not {what} within {within:?}: {:?}", reg.state());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// What a worker acts on: its registration says `Failing` while etcd is down, `Kept` again
/// once etcd is back (a restart keeps leases), and `Gone` once the lease is revoked (as if it
/// had expired), when the worker must register again under a new lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_reports_failing_keepalives_recovery_and_a_lease_that_is_gone() {
    let mut server = etcd::Etcd::start().expect("start etcd");
    let config = RegistryConfig {
        endpoints: vec![server.url()],
        prefix: etcd::unique_prefix("lease-state"),
        ttl_s: TTL_S,
        timeout: Duration::from_secs(2),
        access: Default::default(),
    };
    let reg = Registration::register(&config, &WorkerName::new("w").unwrap(), &ad("10.0.0.1")).await.unwrap();
    assert_eq!((reg.state(), reg.ttl_s()), (LeaseState::Kept, TTL_S));
    server.stop();
    let t = lease_state(&reg, "failing", Duration::from_secs(10), |s| matches!(s, LeaseState::Failing { .. })).await;
    println!("etcd killed -> keep-alives failing: {:.2} s", t.as_secs_f64());
    server.restart().expect("restart etcd");
    lease_state(&reg, "kept again", Duration::from_secs(15), |s| *s == LeaseState::Kept).await;
    let other = etcd_client::Client::connect([server.url()], None).await.unwrap();
    other.lease_client().revoke(reg.lease()).await.unwrap();
    lease_state(&reg, "gone", Duration::from_secs(5), |s| *s == LeaseState::Gone).await;
}

#[test]
fn worker_names_that_would_escape_their_key_are_refused() {
    for bad in ["", "a/b", "..", "x y", &"n".repeat(129)] {
        assert!(WorkerName::new(bad).is_err(), "{bad:?}");
    }
    assert!(WorkerName::new("node-01.gpu_3").is_ok());
}

/// The service's pool fed by the registry watch (`cluster::registry_feed`), with a heartbeat
/// timeout far away: a worker whose lease runs out is lost by the lease alone, also when it
/// runs out across an etcd restart (the broken watch is started again); a kept-alive worker
/// stays, and one that reports again after its loss is pooled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_loses_a_worker_by_its_lease_across_a_watch_broken_by_an_etcd_restart() {
    use std::sync::Arc;
    use tessera_coordinator::cluster::{Beat, HostOptions, Service, ServiceOptions, WorkerReport, registry_feed};
    use tessera_coordinator::store::{DirStore, HolderId, JobStore};

    let mut server = etcd::Etcd::start().expect("start etcd");
    let config = RegistryConfig {
        endpoints: vec![server.url()],
        prefix: etcd::unique_prefix("feed"),
        ttl_s: TTL_S,
        timeout: Duration::from_secs(2),
        access: Default::default(),
    };
    let state = tempfile::tempdir().unwrap();
    let store = DirStore::open(state.path()).unwrap();
    let leadership = store.acquire(HolderId("feed-test".into())).await.unwrap();
    let host = HostOptions { node_ip: "127.0.0.1".parse().unwrap(), heartbeat_timeout_ms: 600_000 };
    let options = ServiceOptions { host, pool_timeout_ms: 600_000, reattach_wait_ms: 0 };
    let service = Service::start(store, leadership, options, Arc::new(|_| None)).await.unwrap();
    let feed = registry_feed::spawn(&service, config.clone());
    let report = || WorkerReport { beat: Beat { ad: ad("127.0.0.1"), busy_with: None, orphan: None }, wait_ms: 0 };
    let pooled = || async { service.workers().await.into_iter().map(|w| w.name).collect::<Vec<_>>() };
    let (kept, lost) = (WorkerName::new("kept").unwrap(), WorkerName::new("lost").unwrap());
    let _kept = Registration::register(&config, &kept, &ad("127.0.0.1")).await.unwrap();
    let doomed = Registration::register(&config, &lost, &ad("127.0.0.1")).await.unwrap();
    for name in ["kept", "lost"] {
        service.report(name, report()).await.unwrap();
    }
    assert_eq!(pooled().await, vec!["kept", "lost"]);

    // etcd restarts (the watch breaks) while `lost`'s keep-alives have stopped: its lease,
    // renewed by the restart, runs out after it.
    drop(doomed);
    server.restart().expect("restart etcd");
    let restarted = Instant::now();
    while pooled().await != vec!["kept"] {
        assert!(restarted.elapsed() < Duration::from_secs(15), "not lost by its lease within 15 s: {:?}", pooled().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("etcd restarted -> the pool lost the worker whose keep-alives stopped: {:.2} s", restarted.elapsed().as_secs_f64());
    service.report("lost", report()).await.unwrap();
    assert_eq!(pooled().await, vec!["kept", "lost"], "a report pools it again");
    feed.abort();
}
