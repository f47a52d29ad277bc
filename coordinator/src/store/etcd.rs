//! The etcd v3 backend: one key per record under a configurable prefix, every change one
//! transaction that also checks the writer's fence and writes its audit entry.
//!
//! Keys (`P` = prefix): `P/leader` (the holder, attached to its lease), `P/next_job` (the next
//! id), `P/jobs/<id>`, `P/idem/<key>` (-> id), `P/queue/<id>` (queued jobs only),
//! `P/schedules/<id>/<version>`, `P/checkpoints/<id>/<step>`, `P/audit/<token>/<seq>`. Ids,
//! versions and steps are zero-padded so that etcd's key order is their order.
//!
//! The fence is the leader key's create revision: a new holder can create the key only after
//! the old one's lease is gone, so its revision is larger, and a write that compares
//! `create_revision(P/leader) == token` fails for any earlier holder.
//!
//! Round trips per call (counted by [`EtcdStore::requests`]): `put_job` 1 (2 when another
//! writer allocated ids since this client last did; 2 on an idempotent retry), `set_state` and
//! `set_priority` 2 (read, then a compare-and-swap on the record's revision), every other write
//! 1, every read 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_protocol::ledger::ScheduleVersion;

use super::error::{StoreError, StoreResult};
use super::etcd_access::{EtcdAccess, connect};
use super::types::{
    AuditEntry, AuditEvent, CheckpointRecord, Fence, HolderId, JobId, JobRecord, JobState, NewJob, Priority, QueueEntry, Submitted,
};
use super::{JobStore, Leadership};

/// Optimistic transaction attempts before [`StoreError::Contention`].
const ATTEMPTS: usize = 16;

/// How to reach etcd and where the store lives in it.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix of this store (no trailing `/`), so that clusters can share an etcd.
    pub prefix: String,
    /// TTL of the holder's lease, seconds: how long a crashed holder blocks a successor.
    pub lease_ttl_s: i64,
    /// Deadline of every request (and of connecting).
    pub timeout: Duration,
    /// TLS and user options of a secured etcd.
    pub access: EtcdAccess,
}

impl EtcdConfig {
    /// Defaults for `endpoints` and `prefix`: a 10 s lease, 5 s request deadline, no TLS
    /// files and no user.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            endpoints,
            prefix: prefix.trim_end_matches('/').into(),
            lease_ttl_s: 10,
            timeout: Duration::from_secs(5),
            access: EtcdAccess::default(),
        }
    }
}

/// The store on etcd; cheap to clone (one client, shared counters).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    config: EtcdConfig,
    requests: Arc<AtomicU64>,
    /// The next job id as this client last saw it, so that `put_job` usually takes one round.
    next_id: Arc<AtomicU64>,
}

/// Decodes a stored JSON value.
pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> StoreResult<T> {
    serde_json::from_slice(kv.value()).map_err(|source| StoreError::Decode { key: String::from_utf8_lossy(kv.key()).into_owned(), source })
}

/// Encodes a value for storing (the store's types always encode).
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise")
}

impl EtcdStore {
    /// Connects to the store described by `config`.
    pub async fn connect(config: EtcdConfig) -> StoreResult<Self> {
        let client = connect(&config.endpoints, config.timeout, &config.access).await?;
        Ok(Self { client, config, requests: Arc::new(AtomicU64::new(0)), next_id: Arc::new(AtomicU64::new(1)) })
    }

    /// etcd requests (round trips) this store made so far, for measuring what a call costs.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `P/<rel>`.
    fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.config.prefix)
    }

    /// Runs `txn`, counted.
    async fn txn(&self, key: &str, txn: Txn) -> StoreResult<etcd_client::TxnResponse> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.client.kv_client().txn(txn).await.map_err(|source| StoreError::Etcd { op: "txn", key: key.into(), source })
    }

    /// Reads `key` (with `prefix`: every key under it, in key order), counted.
    async fn get(&self, key: &str, prefix: bool) -> StoreResult<Vec<KeyValue>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let options = prefix.then(|| GetOptions::new().with_prefix());
        let mut resp =
            self.client.kv_client().get(key, options).await.map_err(|source| StoreError::Etcd { op: "get", key: key.into(), source })?;
        Ok(resp.take_kvs())
    }

    /// Every value under `P/<rel>/`, decoded, in key order.
    async fn list<T: DeserializeOwned>(&self, rel: &str) -> StoreResult<Vec<T>> {
        self.get(&self.key(&format!("{rel}/")), true).await?.iter().map(decode).collect()
    }

    /// Runs a fenced write: `compares` and the fence hold -> `ops` plus the audit entry of
    /// `event`. Returns `Ok(None)` when it committed, `Ok(Some(else_responses))` when one of
    /// `compares` failed (the fence held), [`StoreError::Fenced`] when the fence failed. The
    /// else branch reads the leader key first, then `reads`.
    async fn fenced(
        &self,
        fence: &Fence,
        key: &str,
        compares: Vec<Compare>,
        mut ops: Vec<TxnOp>,
        event: AuditEvent,
        reads: Vec<TxnOp>,
    ) -> StoreResult<Option<Vec<TxnOpResponse>>> {
        let leader = self.key("leader");
        let mut when = vec![Compare::create_revision(leader.as_str(), CompareOp::Equal, fence.token() as i64)];
        when.extend(compares);
        let entry = fence.audit(event);
        ops.push(TxnOp::put(self.key(&format!("audit/{:020}/{:020}", entry.token, entry.seq)), encode(&entry), None));
        let mut or_else = vec![TxnOp::get(leader.as_str(), None)];
        or_else.extend(reads);
        let resp = self.txn(key, Txn::new().when(when).and_then(ops).or_else(or_else)).await?;
        if resp.succeeded() {
            return Ok(None);
        }
        let mut responses = resp.op_responses();
        let TxnOpResponse::Get(leader_now) = responses.remove(0) else { unreachable!("the else branch starts with a get") };
        if leader_now.kvs().first().is_none_or(|kv| kv.create_revision() != fence.token() as i64) {
            return Err(fence.refused());
        }
        Ok(Some(responses))
    }

    /// Reads job `id` with its key-value (for its mod revision).
    async fn job_kv(&self, id: JobId) -> StoreResult<(JobRecord, i64)> {
        let key = self.key(&format!("jobs/{}", id.key()));
        let kvs = self.get(&key, false).await?;
        let kv = kvs.first().ok_or(StoreError::UnknownJob { job: id })?;
        Ok((decode(kv)?, kv.mod_revision()))
    }

    /// Rewrites job `id` through `change` (which may refuse), compare-and-swap on its revision;
    /// the queue entry follows the new record.
    async fn update_job(
        &self,
        fence: &Fence,
        id: JobId,
        change: impl Fn(&JobRecord) -> StoreResult<(JobRecord, AuditEvent)>,
    ) -> StoreResult<()> {
        let key = self.key(&format!("jobs/{}", id.key()));
        let queue_key = self.key(&format!("queue/{}", id.key()));
        for _ in 0..ATTEMPTS {
            let (old, revision) = self.job_kv(id).await?;
            let (new, event) = change(&old)?;
            let mut ops = vec![TxnOp::put(key.as_str(), encode(&new), None)];
            ops.push(match new.state {
                JobState::Queued => TxnOp::put(queue_key.as_str(), encode(&QueueEntry { job: id, priority: new.job.priority }), None),
                _ => TxnOp::delete(queue_key.as_str(), None),
            });
            let compares = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)];
            if self.fenced(fence, &key, compares, ops, event, Vec::new()).await?.is_none() {
                return Ok(());
            }
        }
        Err(StoreError::Contention { key, attempts: ATTEMPTS })
    }

    /// Stores `value` at `P/<rel>` if absent and job `id` exists (append-only records).
    async fn put_new<T: Serialize>(&self, fence: &Fence, id: JobId, rel: String, value: &T, event: AuditEvent) -> StoreResult<()> {
        let key = self.key(&rel);
        let job_key = self.key(&format!("jobs/{}", id.key()));
        let compares = vec![
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Compare::create_revision(job_key.as_str(), CompareOp::Greater, 0),
        ];
        let reads = vec![TxnOp::get(job_key.as_str(), None)];
        match self.fenced(fence, &key, compares, vec![TxnOp::put(key.as_str(), encode(value), None)], event, reads).await? {
            None => Ok(()),
            Some(r) if matches!(&r[0], TxnOpResponse::Get(g) if g.kvs().is_empty()) => Err(StoreError::UnknownJob { job: id }),
            Some(_) => Err(StoreError::Duplicate { key }),
        }
    }
}

/// Holding an etcd store: the lease of the leader key, kept alive by a background task.
pub struct EtcdLeadership {
    fence: Fence,
    lease: i64,
    client: Client,
    keepalive: tokio::task::JoinHandle<()>,
}

impl EtcdLeadership {
    /// The lease id the leader key is attached to.
    pub fn lease(&self) -> i64 {
        self.lease
    }
}

impl Leadership for EtcdLeadership {
    fn fence(&self) -> &Fence {
        &self.fence
    }

    async fn resign(self) -> StoreResult<()> {
        revoke_lease(&self.client, &self.keepalive, self.lease).await
    }
}

impl Drop for EtcdLeadership {
    fn drop(&mut self) {
        // Without keep-alives the lease expires after its TTL: what a crashed holder leaves.
        self.keepalive.abort();
    }
}

/// Stops keeping `lease` alive and revokes it now (a clean leave: its keys go at once instead
/// of after the TTL).
pub(crate) async fn revoke_lease(client: &Client, keepalive: &tokio::task::JoinHandle<()>, lease: i64) -> StoreResult<()> {
    keepalive.abort();
    client.lease_client().revoke(lease).await.map_err(|source| StoreError::Etcd {
        op: "revoke",
        key: format!("lease {lease:x}"),
        source,
    })?;
    Ok(())
}

/// What a lease's keep-alive task last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// The server confirmed the lease at the last keep-alive.
    Kept,
    /// Keep-alives fail (etcd unreachable, restarting): the lease runs out unless they succeed
    /// again within its TTL.
    Failing {
        /// The last failure.
        error: String,
    },
    /// The server says the lease is gone (it expired or was revoked); nothing is kept alive.
    Gone,
}

/// Keeps `lease` alive every third of `ttl_s`, reconnecting the keep-alive stream after an
/// error or an answer that does not come within the TTL (a connection that died silently, as
/// behind a cut link; an etcd restart keeps leases), until the server says the lease is gone.
/// Publishes what it sees.
pub(crate) fn spawn_keepalive(
    client: Client,
    lease: i64,
    ttl_s: i64,
) -> (tokio::task::JoinHandle<()>, tokio::sync::watch::Receiver<LeaseState>) {
    let ttl = Duration::from_secs(ttl_s.max(1) as u64);
    let (tx, rx) = tokio::sync::watch::channel(LeaseState::Kept);
    let task = tokio::spawn(async move {
        loop {
            let error = match client.lease_client().keep_alive(lease).await {
                Ok((mut keeper, mut stream)) => loop {
                    if let Err(e) = keeper.keep_alive().await {
                        break e.to_string();
                    }
                    match tokio::time::timeout(ttl, stream.message()).await {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                            tx.send_if_modified(|s| std::mem::replace(s, LeaseState::Kept) != LeaseState::Kept);
                        }
                        // TTL 0: the lease expired or was revoked; nothing left to keep.
                        Ok(Ok(Some(_))) => {
                            let _ = tx.send(LeaseState::Gone);
                            return;
                        }
                        Ok(Ok(None)) => break "the keep-alive stream ended".to_string(),
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break format!("no keep-alive answer within {ttl:?}"),
                    }
                    tokio::time::sleep(ttl / 3).await;
                },
                Err(e) => e.to_string(),
            };
            tx.send_if_modified(|s| match s {
                LeaseState::Kept => {
                    *s = LeaseState::Failing { error };
                    true
                }
                _ => false,
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (task, rx)
}

impl JobStore for EtcdStore {
    type Leadership = EtcdLeadership;

    async fn acquire(&self, holder: HolderId) -> StoreResult<EtcdLeadership> {
        let leader = self.key("leader");
        self.requests.fetch_add(1, Ordering::Relaxed);
        let lease = self
            .client
            .lease_client()
            .grant(self.config.lease_ttl_s, None)
            .await
            .map_err(|source| StoreError::Etcd { op: "grant", key: leader.clone(), source })?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(leader.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(leader.as_str(), encode(&holder), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(leader.as_str(), None)]);
        let resp = self.txn(&leader, txn).await?;
        if !resp.succeeded() {
            // Best effort: an unused lease expires by itself anyway.
            let _ = self.client.lease_client().revoke(lease).await;
            let current = match resp.op_responses().first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(decode::<HolderId>).transpose()?,
                _ => None,
            };
            return Err(StoreError::Held { holder: current.unwrap_or_else(|| HolderId("(gone since)".into())) });
        }
        let token = resp.header().map_or(0, |h| h.revision()) as u64;
        let (keepalive, _) = spawn_keepalive(self.client.clone(), lease, self.config.lease_ttl_s);
        let leadership = EtcdLeadership { fence: Fence::new(holder, token), lease, client: self.client.clone(), keepalive };
        self.fenced(leadership.fence(), &leader, Vec::new(), Vec::new(), AuditEvent::LeaderAcquired, Vec::new()).await?;
        Ok(leadership)
    }

    async fn put_job(&self, fence: &Fence, job: NewJob) -> StoreResult<Submitted> {
        let counter = self.key("next_job");
        let idem = job.idempotency_key.as_ref().map(|k| self.key(&format!("idem/{k}")));
        for _ in 0..ATTEMPTS {
            let id = JobId(self.next_id.load(Ordering::Relaxed));
            let job_key = self.key(&format!("jobs/{}", id.key()));
            let mut compares = vec![match id.0 {
                1 => Compare::version(counter.as_str(), CompareOp::Equal, 0),
                n => Compare::value(counter.as_str(), CompareOp::Equal, n.to_string()),
            }];
            let mut ops = vec![
                TxnOp::put(counter.as_str(), (id.0 + 1).to_string(), None),
                TxnOp::put(job_key.as_str(), encode(&JobRecord { id, state: JobState::Queued, job: job.clone(), note: None }), None),
                TxnOp::put(self.key(&format!("queue/{}", id.key())), encode(&QueueEntry { job: id, priority: job.priority }), None),
            ];
            let mut reads = vec![TxnOp::get(counter.as_str(), None)];
            if let Some(idem) = &idem {
                compares.push(Compare::create_revision(idem.as_str(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(idem.as_str(), encode(&id), None));
                reads.push(TxnOp::get(idem.as_str(), None));
            }
            let Some(responses) = self.fenced(fence, &job_key, compares, ops, AuditEvent::JobSubmitted { job: id }, reads).await? else {
                self.next_id.fetch_max(id.0 + 1, Ordering::Relaxed);
                return Ok(Submitted { id, created: true });
            };
            if let Some(TxnOpResponse::Get(g)) = responses.get(1)
                && let Some(kv) = g.kvs().first()
            {
                let existing: JobId = decode(kv)?;
                let (record, _) = self.job_kv(existing).await?;
                let key = job.idempotency_key.clone().expect("an idempotency key was compared");
                return match record.job.same_submission(&job) {
                    true => Ok(Submitted { id: existing, created: false }),
                    false => Err(StoreError::IdempotencyConflict { key, job: existing }),
                };
            }
            // Another writer allocated ids: continue from the counter it left.
            let next = match responses.first() {
                Some(TxnOpResponse::Get(g)) => match g.kvs().first() {
                    Some(kv) => String::from_utf8_lossy(kv.value()).parse().unwrap_or(1),
                    None => 1,
                },
                _ => 1,
            };
            self.next_id.store(next, Ordering::Relaxed);
        }
        Err(StoreError::Contention { key: counter, attempts: ATTEMPTS })
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        let kvs = self.get(&self.key(&format!("jobs/{}", id.key())), false).await?;
        kvs.first().map(decode).transpose()
    }

    async fn jobs(&self) -> StoreResult<Vec<JobRecord>> {
        self.list("jobs").await
    }

    async fn set_state(&self, fence: &Fence, id: JobId, from: JobState, to: JobState) -> StoreResult<()> {
        self.update_job(fence, id, |old| {
            if old.state != from {
                return Err(StoreError::StateConflict { job: id, expected: from, found: old.state });
            }
            Ok((JobRecord { state: to, ..old.clone() }, AuditEvent::StateChanged { job: id, from, to }))
        })
        .await
    }

    async fn set_priority(&self, fence: &Fence, id: JobId, priority: Priority) -> StoreResult<()> {
        self.update_job(fence, id, |old| {
            let mut new = old.clone();
            new.job.priority = priority;
            Ok((new, AuditEvent::PriorityChanged { job: id, from: old.job.priority, to: priority }))
        })
        .await
    }

    async fn set_note(&self, fence: &Fence, id: JobId, note: String) -> StoreResult<()> {
        self.update_job(fence, id, |old| Ok((JobRecord { note: Some(note.clone()), ..old.clone() }, AuditEvent::NoteSet { job: id }))).await
    }

    async fn queue(&self) -> StoreResult<Vec<QueueEntry>> {
        let mut entries = self.list("queue").await?;
        QueueEntry::sort(&mut entries);
        Ok(entries)
    }

    async fn put_schedule_version(&self, fence: &Fence, id: JobId, version: ScheduleVersion) -> StoreResult<()> {
        let rel = format!("schedules/{}/{:010}", id.key(), version.version);
        let event = AuditEvent::ScheduleVersionAdded { job: id, version: version.version };
        self.put_new(fence, id, rel, &version, event).await
    }

    async fn schedule_versions(&self, id: JobId) -> StoreResult<Vec<ScheduleVersion>> {
        self.list(&format!("schedules/{}", id.key())).await
    }

    async fn commit_checkpoint(&self, fence: &Fence, id: JobId, checkpoint: CheckpointRecord) -> StoreResult<()> {
        let rel = format!("checkpoints/{}/{:020}", id.key(), checkpoint.step);
        let event = AuditEvent::CheckpointCommitted { job: id, step: checkpoint.step };
        self.put_new(fence, id, rel, &checkpoint, event).await
    }

    async fn checkpoints(&self, id: JobId) -> StoreResult<Vec<CheckpointRecord>> {
        self.list(&format!("checkpoints/{}", id.key())).await
    }

    async fn audit(&self) -> StoreResult<Vec<AuditEntry>> {
        self.list("audit").await
    }
}
