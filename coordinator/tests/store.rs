//! The store conformance suite on both backends: etcd (Debian's real server, one shared by the
//! tests of this binary, each check under its own key prefix) and a state directory; and the
//! etcd client's TLS and user options against servers of their own that require them.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::etcd::{self, Etcd};
use tessera_coordinator::registry::{Registration, RegistryConfig, RegistryWatch, WorkerAd, WorkerName};
use tessera_coordinator::store::conformance::{self, Backend};
use tessera_coordinator::store::{DirStore, EtcdAccess, EtcdConfig, EtcdStore, HolderId, JobStore, Leadership, StoreResult};

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
    use tessera_protocol::Generation;
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
    gate_a.admit(&manifest(2), Generation(0), dir).expect("the holder commits");
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let b = loop {
        match store.acquire(HolderId("b".into())).await {
            Ok(b) => break b,
            Err(_) if std::time::Instant::now() < deadline => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            Err(e) => panic!("the old holder's lease did not expire within 15 s: {e}"),
        }
    };
    let refused = gate_a.admit(&manifest(4), Generation(1), dir).expect_err("a deposed holder's commit is refused");
    assert!(refused.contains("no longer holds the store"), "{refused}");
    let gate_b = StoreGate::new(Arc::clone(&store), b.fence().clone(), job);
    gate_b.admit(&manifest(4), Generation(1), dir).expect("the successor commits");
    gate_b.admit(&manifest(2), Generation(2), dir).expect("a step committed again after a restore");
    let steps: Vec<u64> = store.checkpoints(job).await.unwrap().iter().map(|c| c.step).collect();
    assert_eq!(steps, vec![2, 4], "the refused commit left no record");
    b.resign().await.unwrap();
}

/// `config` for `server` under a fresh prefix, with `access` and short deadlines (a refusal
/// must show quickly).
fn secured(server: &Etcd, access: EtcdAccess) -> EtcdConfig {
    EtcdConfig { access, timeout: Duration::from_secs(2), ..EtcdConfig::new(vec![server.url()], &etcd::unique_prefix("secured")) }
}

/// The first error of connecting to `config`'s store and reading its jobs.
async fn refusal(config: EtcdConfig) -> String {
    match EtcdStore::connect(config).await {
        Ok(store) => store.jobs().await.expect_err("read without the right options").to_string(),
        Err(e) => e.to_string(),
    }
}

/// An etcd that speaks TLS only and checks client certificates: the store takes it and
/// submits, the worker registry registers and watches, with its CA and a client certificate;
/// without the certificate, or without the CA, the first request fails and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_etcd_is_used_with_its_ca_and_a_client_certificate_and_refused_without() {
    let server = Etcd::start_tls().expect("start etcd with TLS");
    let tls = server.tls().expect("TLS files");
    let read = |p: &PathBuf| std::fs::read(p).unwrap();
    let access = EtcdAccess { ca_pem: Some(read(&tls.ca)), identity: Some((read(&tls.client.0), read(&tls.client.1))), user: None };
    let config = secured(&server, access.clone());
    let registry = RegistryConfig {
        endpoints: config.endpoints.clone(),
        prefix: config.prefix.clone(),
        ttl_s: 2,
        timeout: config.timeout,
        access: access.clone(),
    };
    let store = EtcdStore::connect(config).await.unwrap();
    let lead = store.acquire(HolderId("tls".into())).await.unwrap();
    store.put_job(lead.fence(), conformance::new_job("over-tls", 0, None)).await.unwrap();
    assert_eq!(store.jobs().await.unwrap().len(), 1);
    let name = WorkerName::new("tls-worker").unwrap();
    let ad = WorkerAd { addr: "127.0.0.1".into(), threads: 1, labels: Default::default(), pid: 1 };
    let registration = Registration::register(&registry, &name, &ad).await.unwrap();
    let (members, _watch) = RegistryWatch::start(&registry).await.unwrap();
    assert_eq!(members, vec![(name, ad)]);
    registration.deregister().await.unwrap();
    lead.resign().await.unwrap();

    let no_cert = refusal(secured(&server, EtcdAccess { identity: None, ..access.clone() })).await;
    println!("TLS etcd, no client certificate: {no_cert}");
    let no_ca = refusal(secured(&server, EtcdAccess { ca_pem: None, ..access })).await;
    println!("TLS etcd, no CA: {no_ca}");
    // TLS 1.3: the server refuses once the client's side of the handshake is done; the client
    // reads its alert (BadCertificate), or only the closed connection, whichever comes first.
    assert!(no_cert.starts_with("etcd: get ") && no_cert.contains("transport::Error(Transport"), "{no_cert}");
    assert!(no_ca.contains("certificate"), "{no_ca}");
}

/// An etcd with authentication enabled: the store works as its user; without a user every
/// request is refused, and a wrong password fails at connect, each saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_with_authentication_is_used_as_its_user_and_refused_without() {
    let server = Etcd::start().expect("start etcd");
    server.enable_auth("s3cret").expect("enable auth");
    let user = |password: &str| EtcdAccess { user: Some(("root".into(), password.into())), ..EtcdAccess::default() };
    let store = EtcdStore::connect(secured(&server, user("s3cret"))).await.unwrap();
    let lead = store.acquire(HolderId("authenticated".into())).await.unwrap();
    store.put_job(lead.fence(), conformance::new_job("as-root", 0, None)).await.unwrap();
    assert_eq!(store.jobs().await.unwrap().len(), 1);
    lead.resign().await.unwrap();

    let anonymous = refusal(secured(&server, EtcdAccess::default())).await;
    println!("auth etcd, no user: {anonymous}");
    assert!(anonymous.contains("user name is empty"), "{anonymous}");
    let wrong = refusal(secured(&server, user("wrong"))).await;
    println!("auth etcd, wrong password: {wrong}");
    assert!(wrong.contains("authentication failed"), "{wrong}");
}
