//! The store conformance suite on both backends: etcd (Debian's real server, one shared by the
//! tests of this binary, each check under its own key prefix) and a state directory.

mod common;

use std::path::PathBuf;

use common::etcd::{self, Etcd};
use tessera_coordinator::store::conformance::{self, Backend};
use tessera_coordinator::store::{DirStore, EtcdConfig, EtcdStore, HolderId, JobStore, Leadership, StoreResult};

/// Stores on an etcd server: a fresh key prefix per store.
struct EtcdBackend<'a> {
    server: EtcdServer<'a>,
    name: &'static str,
    prefix: String,
}

/// The shared server, or one this backend owns (it may restart it).
enum EtcdServer<'a> {
    Shared(&'a Etcd),
    Owned(Etcd),
}

impl EtcdServer<'_> {
    fn get(&self) -> &Etcd {
        match self {
            EtcdServer::Shared(e) => e,
            EtcdServer::Owned(e) => e,
        }
    }
}

impl EtcdBackend<'_> {
    async fn open(&self) -> StoreResult<EtcdStore> {
        EtcdStore::connect(EtcdConfig::new(vec![self.server.get().url()], &self.prefix)).await
    }
}

impl Backend for EtcdBackend<'_> {
    type Store = EtcdStore;

    async fn fresh(&mut self) -> StoreResult<EtcdStore> {
        self.prefix = etcd::unique_prefix(self.name);
        self.open().await
    }

    async fn restart(&mut self, store: EtcdStore) -> StoreResult<EtcdStore> {
        drop(store);
        match &mut self.server {
            EtcdServer::Owned(server) => server.restart().expect("restart etcd"),
            EtcdServer::Shared(_) => panic!("restart needs a server of its own"),
        }
        self.open().await
    }
}

/// Stores in state directories under one temp dir.
struct DirBackend {
    tmp: tempfile::TempDir,
    n: usize,
}

impl DirBackend {
    fn new() -> Self {
        Self { tmp: tempfile::tempdir().expect("temp dir"), n: 0 }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join(format!("state-{}", self.n))
    }
}

impl Backend for DirBackend {
    type Store = DirStore;

    async fn fresh(&mut self) -> StoreResult<DirStore> {
        self.n += 1;
        DirStore::open(&self.dir())
    }

    async fn restart(&mut self, store: DirStore) -> StoreResult<DirStore> {
        // The state dir has no server: a re-open from the files is what a restart is.
        drop(store);
        DirStore::open(&self.dir())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_conformance() {
    let mut backend = EtcdBackend { server: EtcdServer::Shared(etcd::shared()), name: "store", prefix: String::new() };
    conformance::run(&mut backend).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_survives_a_server_crash_and_restart() {
    let server = Etcd::start().expect("start etcd");
    let mut backend = EtcdBackend { server: EtcdServer::Owned(server), name: "restart", prefix: String::new() };
    conformance::durable_across_restart(&mut backend).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_store_conformance() {
    conformance::run(&mut DirBackend::new()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_store_survives_a_reopen() {
    conformance::durable_across_restart(&mut DirBackend::new()).await.unwrap();
}

/// The realistic deposition: the holder does not resign, its keep-alives stop (crash, hang,
/// partition); once the lease expired a successor takes over and the old fence is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_holder_whose_lease_expired_cannot_commit() {
    let mut config = EtcdConfig::new(vec![etcd::shared().url()], &etcd::unique_prefix("expiry"));
    config.lease_ttl_s = 2;
    let store = EtcdStore::connect(config).await.unwrap();
    let a = store.acquire(HolderId("a".into())).await.unwrap();
    let stale = a.fence().clone();
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let b = loop {
        match store.acquire(HolderId("b".into())).await {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting for the old lease to expire: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => panic!("the old holder's lease did not expire within 15 s: {e}"),
        }
    };
    let refused = store.put_job(&stale, conformance::new_job("late", 0, None)).await;
    assert!(matches!(refused, Err(tessera_coordinator::store::StoreError::Fenced { .. })), "{refused:?}");
    store.put_job(b.fence(), conformance::new_job("ok", 0, None)).await.unwrap();
    b.resign().await.unwrap();
}

/// Prints what each store call costs in etcd round trips (`cargo test --test store -- --nocapture etcd_round_trips`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_round_trips_per_store_call() {
    use tessera_coordinator::store::{JobState, Priority};
    let store = EtcdStore::connect(EtcdConfig::new(vec![etcd::shared().url()], &etcd::unique_prefix("ops"))).await.unwrap();
    let mut last = store.requests();
    let mut cost = |what: &str, store: &EtcdStore| {
        let now = store.requests();
        println!("etcd round trips: {what:<32} {}", now - last);
        last = now;
    };
    let lead = store.acquire(HolderId("a".into())).await.unwrap();
    cost("acquire (grant + txn + audit)", &store);
    let f = lead.fence();
    let id = store.put_job(f, conformance::new_job("a", 0, Some("k"))).await.unwrap().id;
    cost("put_job (fresh store)", &store);
    store.put_job(f, conformance::new_job("b", 0, None)).await.unwrap();
    cost("put_job", &store);
    store.put_job(f, conformance::new_job("a", 0, Some("k"))).await.unwrap();
    cost("put_job (idempotent retry)", &store);
    store.set_state(f, id, JobState::Queued, JobState::Running).await.unwrap();
    cost("set_state", &store);
    store.set_priority(f, id, Priority(1)).await.unwrap();
    cost("set_priority", &store);
    store.queue().await.unwrap();
    cost("queue", &store);
    store.job(id).await.unwrap();
    cost("job", &store);
    lead.resign().await.unwrap();
}

/// A service's commit gate (every checkpoint commit of its jobs passes it): once the holder's
/// lease expired and a successor took the store, the deposed holder's commits are refused,
/// the successor's pass, and a step committed again after a restore passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_coordinator_cannot_commit_a_checkpoint() {
    use std::sync::Arc;
    use tessera_coordinator::actor::CommitGate;
    use tessera_coordinator::cluster::StoreGate;
    use tessera_protocol::checkpoint::{Manifest, TrainState};
    use tessera_protocol::ledger::MixtureSchedule;

    let mut config = EtcdConfig::new(vec![etcd::shared().url()], &etcd::unique_prefix("gate"));
    config.lease_ttl_s = 2;
    let store = Arc::new(EtcdStore::connect(config).await.unwrap());
    let a = store.acquire(HolderId("a".into())).await.unwrap();
    let job = store.put_job(a.fence(), conformance::new_job("gated", 0, None)).await.unwrap().id;
    let manifest = |step| {
        let mut state = TrainState::start(MixtureSchedule::new(vec![1.0]).unwrap());
        state.step = step;
        Manifest::new("gated", 1, 2, state, Vec::new())
    };
    let dir = std::path::Path::new("/shared/out/checkpoints/step-x");
    let gate_a = StoreGate::new(Arc::clone(&store), a.fence().clone(), job);
    gate_a.admit(&manifest(2), 0, dir).expect("the holder commits");
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let b = loop {
        match store.acquire(HolderId("b".into())).await {
            Ok(b) => break b,
            Err(_) if std::time::Instant::now() < deadline => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            Err(e) => panic!("the old holder's lease did not expire within 15 s: {e}"),
        }
    };
    let refused = gate_a.admit(&manifest(4), 1, dir).expect_err("a deposed holder's commit is refused");
    assert!(refused.contains("no longer holds the store"), "{refused}");
    let gate_b = StoreGate::new(Arc::clone(&store), b.fence().clone(), job);
    gate_b.admit(&manifest(4), 1, dir).expect("the successor commits");
    gate_b.admit(&manifest(2), 2, dir).expect("a step committed again after a restore");
    let steps: Vec<u64> = store.checkpoints(job).await.unwrap().iter().map(|c| c.step).collect();
    assert_eq!(steps, vec![2, 4], "the refused commit left no record");
    b.resign().await.unwrap();
}
