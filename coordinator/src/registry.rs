//! The worker registry on etcd: each worker process registers a key under a lease that it
//! keeps alive; the coordinator watches the prefix and learns of joins and losses. Lease expiry
//! (the process died, hung, or lost the network for longer than the TTL) deletes the key, which
//! the watch reports as [`RegistryEvent::Lost`] — a failure signal beside the actor link and
//! heartbeats.
//!
//! Keys: `P/workers/<name>` -> [`WorkerAd`], attached to the worker's lease. A worker that
//! registers again (after an outage, under a new lease) is reported joined again.
//!
//! Both halves live here for now: the `tessera` binary links this crate, so a `tessera worker`
//! process can register without the worker crate depending on the coordinator.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions, WatchStream};
use serde::{Deserialize, Serialize};

use crate::store::{EtcdAccess, LeaseState, StoreError, StoreResult, check_name};
use crate::store::{decode_kv, encode_value, etcd_connect, etcd_error, spawn_lease_keepalive};

/// A worker process's registered name (unique in the cluster, e.g. `host-gpu0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerName(String);

impl WorkerName {
    /// Validates `name`: 1 to 128 characters of `[A-Za-z0-9._-]` (it becomes part of a key).
    pub fn new(name: &str) -> StoreResult<Self> {
        check_name("worker name", name)?;
        Ok(Self(name.into()))
    }
}

impl fmt::Display for WorkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a worker offers the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAd {
    /// Address of its actor node (the host's real address).
    pub addr: String,
    /// CPU threads it trains with.
    pub threads: u32,
    /// Free-form labels (`gpu=h100`, `rack=3`) the scheduler may match.
    pub labels: BTreeMap<String, String>,
    /// Its OS process id, by which a job's actor finds the member this worker is (0: a worker
    /// that predates it).
    #[serde(default)]
    pub pid: u32,
}

/// Where the registry lives and how long a silent worker counts as alive.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix (the cluster's, shared with its job store).
    pub prefix: String,
    /// Lease TTL, seconds: a worker whose keep-alives stop is lost after about this long
    /// (etcd rounds TTLs below its minimum, 2 s with default timings, up).
    pub ttl_s: i64,
    /// Deadline of every request.
    pub timeout: Duration,
    /// TLS and user options of a secured etcd.
    pub access: EtcdAccess,
}

impl RegistryConfig {
    /// `P/workers/`.
    fn dir(&self) -> String {
        format!("{}/workers/", self.prefix.trim_end_matches('/'))
    }
}

/// A live registration: the key and its lease, kept alive in the background. Dropping it
/// stops the keep-alives (the key then expires after the TTL, as for a crashed worker);
/// [`Registration::deregister`] removes it at once.
pub struct Registration {
    client: Client,
    lease: i64,
    ttl_s: i64,
    keepalive: tokio::task::JoinHandle<()>,
    state: tokio::sync::watch::Receiver<LeaseState>,
}

impl Registration {
    /// Registers `name` with `ad` under a new lease of `config.ttl_s`.
    pub async fn register(config: &RegistryConfig, name: &WorkerName, ad: &WorkerAd) -> StoreResult<Self> {
        let client = etcd_connect(&config.endpoints, config.timeout, &config.access).await?;
        let key = format!("{}{name}", config.dir());
        let granted = client.lease_client().grant(config.ttl_s, None).await.map_err(etcd_error("grant", &key))?;
        // etcd raises a TTL below its minimum: keep-alives follow what it granted.
        let (lease, ttl_s) = (granted.id(), granted.ttl().max(1));
        let put = client.kv_client().put(key.as_str(), encode_value(ad), Some(PutOptions::new().with_lease(lease))).await;
        if let Err(source) = put {
            let _ = client.lease_client().revoke(lease).await;
            return Err(StoreError::Etcd { op: "put", key, source });
        }
        let (keepalive, state) = spawn_lease_keepalive(client.clone(), lease, ttl_s);
        Ok(Self { client, lease, ttl_s, keepalive, state })
    }

    /// The lease the key is attached to.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease's TTL as etcd granted it (seconds).
    pub fn ttl_s(&self) -> i64 {
        self.ttl_s
    }

    /// What the keep-alives last saw of the lease: once [`LeaseState::Gone`], the key is gone
    /// too and the worker must register again (under a new lease).
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Removes the registration now (a clean leave).
    pub async fn deregister(self) -> StoreResult<()> {
        crate::store::revoke_lease(&self.client, &self.keepalive, self.lease).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// A change of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A worker registered (or registered again, under a new lease).
    Joined {
        /// Its name.
        name: WorkerName,
        /// What it offers.
        ad: WorkerAd,
        /// Its lease.
        lease: i64,
    },
    /// A worker's key is gone: its lease expired or it left.
    Lost {
        /// Its name.
        name: WorkerName,
    },
}

/// The registry's current members and a watch of the changes after them.
pub struct RegistryWatch {
    stream: WatchStream,
    dir: String,
    pending: std::collections::VecDeque<RegistryEvent>,
}

impl RegistryWatch {
    /// Reads the registered workers and starts watching from just after that read, so that
    /// no change is missed or reported twice.
    pub async fn start(config: &RegistryConfig) -> StoreResult<(Vec<(WorkerName, WorkerAd)>, Self)> {
        let client = etcd_connect(&config.endpoints, config.timeout, &config.access).await?;
        let dir = config.dir();
        let resp = client.kv_client().get(dir.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(etcd_error("get", &dir))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut members = Vec::new();
        for kv in resp.kvs() {
            members.push((name_of(&dir, kv.key())?, decode_kv(kv)?));
        }
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let stream = client.watch_client().watch(dir.as_str(), Some(options)).await.map_err(etcd_error("watch", &dir))?;
        Ok((members, Self { stream, dir, pending: Default::default() }))
    }

    /// The next change; waits until there is one (callers bound the wait with a timeout).
    pub async fn next(&mut self) -> StoreResult<RegistryEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let dir = self.dir.clone();
            let resp = self.stream.message().await.map_err(|source| StoreError::Etcd { op: "watch", key: dir.clone(), source })?;
            let Some(resp) = resp else {
                return Err(StoreError::WatchEnded { key: dir });
            };
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let name = name_of(&self.dir, kv.key())?;
                self.pending.push_back(match event.event_type() {
                    EventType::Put => RegistryEvent::Joined { name, ad: decode_kv(kv)?, lease: kv.lease() },
                    EventType::Delete => RegistryEvent::Lost { name },
                });
            }
        }
    }
}

/// The worker name of registry key `key`.
fn name_of(dir: &str, key: &[u8]) -> StoreResult<WorkerName> {
    let key = String::from_utf8_lossy(key);
    WorkerName::new(key.strip_prefix(dir).unwrap_or(&key))
}
