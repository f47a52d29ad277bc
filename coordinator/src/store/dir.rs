//! The state-directory backend: the embedded single-machine default. One file per record,
//! each written whole (temp file, fsync, rename, fsync of the directory), writers serialised by
//! an exclusive `flock` on `store.lock`.
//!
//! Layout: `leader.lock` (flocked by the holder for as long as it holds the store; the kernel
//! drops it when the process dies, which is this backend's lease), `leader.json` (holder and
//! epoch: the fence token), `jobs/<id>.json`, `idem/<key>` (-> id), `schedules/<id>/<v>.json`,
//! `checkpoints/<id>/<step>.json`, `audit.jsonl`.
//!
//! Crash safety: each change has one commit point, the rename of its record; the idempotency
//! file is written before the job (a retry after a crash in between finds no job and submits
//! again), the audit line after it (a crash in between loses that line, never state). The queue
//! is derived from the job records, so it cannot disagree with them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_protocol::ledger::ScheduleVersion;

use super::error::{StoreError, StoreResult};
use super::types::{
    AuditEntry, AuditEvent, CheckpointRecord, Fence, HolderId, JobId, JobRecord, JobState, NewJob, Priority, QueueEntry, Submitted,
};
use super::{JobStore, Leadership};

/// The store in a state directory; cheap to clone.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

/// `leader.json`: who holds the store, under which epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaderFile {
    holder: HolderId,
    epoch: u64,
    /// `false` once resigned: the epoch's fence is void even before the next holder comes.
    held: bool,
}

/// An I/O error at `path`.
fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

/// Reads and decodes `path`; `None` if it does not exist.
fn read<T: DeserializeOwned>(path: &Path) -> StoreResult<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|source| StoreError::Decode { key: path.display().to_string(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Writes `value` to `path` durably: temp file, fsync, rename, fsync of the directory.
fn write<T: Serialize>(path: &Path, value: &T) -> StoreResult<()> {
    let dir = path.parent().expect("store files live in a directory");
    std::fs::create_dir_all(dir).map_err(io("create dir", dir))?;
    // Appended, not replacing the extension: an idempotency key may contain dots.
    let name = path.file_name().expect("a store file has a name").to_string_lossy();
    let tmp = path.with_file_name(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&serde_json::to_vec(value).expect("store records serialise")).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync dir", dir))
}

/// Every `*.json` record in `dir`, decoded, in file-name order (`None`: no such dir).
fn list<T: DeserializeOwned>(dir: &Path) -> StoreResult<Vec<T>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(io("list", dir))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    paths.iter().filter_map(|p| read(p).transpose()).collect()
}

impl DirStore {
    /// Opens (creating) the state directory `root`.
    pub fn open(root: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(root).map_err(io("create dir", root))?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `f` on a blocking thread (file I/O and fsync must not stall the runtime).
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&DirStore) -> StoreResult<T> + Send + 'static) -> StoreResult<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(|source| StoreError::Task { dir: self.root.clone(), source })?
    }

    /// Takes the writers' lock (released when the returned guard drops).
    fn lock(&self) -> StoreResult<Flock<File>> {
        let path = self.root.join("store.lock");
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io("open", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io("lock", &path)(e.into()))
    }

    /// Takes the writers' lock and checks `fence` under it.
    fn lock_fenced(&self, fence: &Fence) -> StoreResult<Flock<File>> {
        let guard = self.lock()?;
        match read::<LeaderFile>(&self.root.join("leader.json"))? {
            Some(l) if l.held && l.epoch == fence.token() => Ok(guard),
            _ => Err(fence.refused()),
        }
    }

    /// Appends the audit entry of `event` (after the change it records: see the module doc).
    fn append_audit(&self, fence: &Fence, event: AuditEvent) -> StoreResult<()> {
        let path = self.root.join("audit.jsonl");
        let mut line = serde_json::to_vec(&fence.audit(event)).expect("audit entries serialise");
        line.push(b'\n');
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(io("open", &path))?;
        file.write_all(&line).map_err(io("append", &path))?;
        file.sync_all().map_err(io("fsync", &path))
    }

    /// `jobs/<id>.json`.
    fn job_path(&self, id: JobId) -> PathBuf {
        self.root.join("jobs").join(format!("{}.json", id.key()))
    }

    /// Rewrites job `id` through `change` under the fenced lock.
    fn update_job(
        &self,
        fence: &Fence,
        id: JobId,
        change: impl FnOnce(&JobRecord) -> StoreResult<(JobRecord, AuditEvent)>,
    ) -> StoreResult<()> {
        let _guard = self.lock_fenced(fence)?;
        let path = self.job_path(id);
        let old: JobRecord = read(&path)?.ok_or(StoreError::UnknownJob { job: id })?;
        let (new, event) = change(&old)?;
        write(&path, &new)?;
        self.append_audit(fence, event)
    }

    /// Stores `value` at `rel` if absent and job `id` exists (append-only records).
    fn put_new<T: Serialize>(&self, fence: &Fence, id: JobId, rel: String, value: &T, event: AuditEvent) -> StoreResult<()> {
        let _guard = self.lock_fenced(fence)?;
        if !self.job_path(id).exists() {
            return Err(StoreError::UnknownJob { job: id });
        }
        let path = self.root.join(&rel);
        if path.exists() {
            return Err(StoreError::Duplicate { key: path.display().to_string() });
        }
        write(&path, value)?;
        self.append_audit(fence, event)
    }
}

/// Holding a state-dir store: the `flock` on `leader.lock`.
pub struct DirLeadership {
    fence: Fence,
    store: DirStore,
    _lock: Flock<File>,
}

impl Leadership for DirLeadership {
    fn fence(&self) -> &Fence {
        &self.fence
    }

    async fn resign(self) -> StoreResult<()> {
        let store = self.store.clone();
        let fence = self.fence.clone();
        store
            .blocking(move |s| {
                let _guard = s.lock_fenced(&fence)?;
                write(&s.root.join("leader.json"), &LeaderFile { holder: fence.holder().clone(), epoch: fence.token(), held: false })?;
                // The flock goes with `self` once the void epoch is on disk.
                drop(self);
                Ok(())
            })
            .await
    }
}

impl JobStore for DirStore {
    type Leadership = DirLeadership;

    async fn acquire(&self, holder: HolderId) -> StoreResult<DirLeadership> {
        self.blocking(move |s| {
            let path = s.root.join("leader.lock");
            let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io("open", &path))?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let current = read::<LeaderFile>(&s.root.join("leader.json"))?;
                    return Err(StoreError::Held { holder: current.map_or_else(|| HolderId("(starting)".into()), |l| l.holder) });
                }
                Err((_, e)) => return Err(io("lock", &path)(e.into())),
            };
            let _guard = s.lock()?;
            let leader = s.root.join("leader.json");
            let epoch = read::<LeaderFile>(&leader)?.map_or(0, |l| l.epoch) + 1;
            write(&leader, &LeaderFile { holder: holder.clone(), epoch, held: true })?;
            let fence = Fence::new(holder, epoch);
            s.append_audit(&fence, AuditEvent::LeaderAcquired)?;
            Ok(DirLeadership { fence, store: s.clone(), _lock: lock })
        })
        .await
    }

    async fn put_job(&self, fence: &Fence, job: NewJob) -> StoreResult<Submitted> {
        let fence = fence.clone();
        self.blocking(move |s| {
            let _guard = s.lock_fenced(&fence)?;
            let idem = job.idempotency_key.as_ref().map(|k| s.root.join("idem").join(k.as_str()));
            if let Some(idem) = &idem
                && let Some(existing) = read::<JobId>(idem)?
                && let Some(record) = read::<JobRecord>(&s.job_path(existing))?
            {
                let key = job.idempotency_key.clone().expect("an idempotency key was read");
                return match record.job.same_submission(&job) {
                    true => Ok(Submitted { id: existing, created: false }),
                    false => Err(StoreError::IdempotencyConflict { key, job: existing }),
                };
            }
            let jobs = s.root.join("jobs");
            let last = match std::fs::read_dir(&jobs) {
                Ok(entries) => {
                    entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json")?.parse::<u64>().ok()).max().unwrap_or(0)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(io("list", &jobs)(e)),
            };
            let id = JobId(last + 1);
            if let Some(idem) = &idem {
                write(idem, &id)?;
            }
            write(&s.job_path(id), &JobRecord { id, state: JobState::Queued, job, note: None })?;
            s.append_audit(&fence, AuditEvent::JobSubmitted { job: id })?;
            Ok(Submitted { id, created: true })
        })
        .await
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        self.blocking(move |s| read(&s.job_path(id))).await
    }

    async fn jobs(&self) -> StoreResult<Vec<JobRecord>> {
        self.blocking(|s| list(&s.root.join("jobs"))).await
    }

    async fn set_state(&self, fence: &Fence, id: JobId, from: JobState, to: JobState) -> StoreResult<()> {
        let fence = fence.clone();
        self.blocking(move |s| {
            s.update_job(&fence, id, |old| {
                if old.state != from {
                    return Err(StoreError::StateConflict { job: id, expected: from, found: old.state });
                }
                Ok((JobRecord { state: to, ..old.clone() }, AuditEvent::StateChanged { job: id, from, to }))
            })
        })
        .await
    }

    async fn set_priority(&self, fence: &Fence, id: JobId, priority: Priority) -> StoreResult<()> {
        let fence = fence.clone();
        self.blocking(move |s| {
            s.update_job(&fence, id, |old| {
                let mut new = old.clone();
                new.job.priority = priority;
                Ok((new, AuditEvent::PriorityChanged { job: id, from: old.job.priority, to: priority }))
            })
        })
        .await
    }

    async fn set_note(&self, fence: &Fence, id: JobId, note: String) -> StoreResult<()> {
        let fence = fence.clone();
        self.blocking(move |s| {
            s.update_job(&fence, id, |old| Ok((JobRecord { note: Some(note), ..old.clone() }, AuditEvent::NoteSet { job: id })))
        })
        .await
    }

    async fn queue(&self) -> StoreResult<Vec<QueueEntry>> {
        let jobs = self.jobs().await?;
        let mut entries: Vec<QueueEntry> =
            jobs.iter().filter(|j| j.state == JobState::Queued).map(|j| QueueEntry { job: j.id, priority: j.job.priority }).collect();
        QueueEntry::sort(&mut entries);
        Ok(entries)
    }

    async fn put_schedule_version(&self, fence: &Fence, id: JobId, version: ScheduleVersion) -> StoreResult<()> {
        let fence = fence.clone();
        self.blocking(move |s| {
            let rel = format!("schedules/{}/{:010}.json", id.key(), version.version);
            let event = AuditEvent::ScheduleVersionAdded { job: id, version: version.version };
            s.put_new(&fence, id, rel, &version, event)
        })
        .await
    }

    async fn schedule_versions(&self, id: JobId) -> StoreResult<Vec<ScheduleVersion>> {
        self.blocking(move |s| list(&s.root.join("schedules").join(id.key()))).await
    }

    async fn commit_checkpoint(&self, fence: &Fence, id: JobId, checkpoint: CheckpointRecord) -> StoreResult<()> {
        let fence = fence.clone();
        self.blocking(move |s| {
            let rel = format!("checkpoints/{}/{:020}.json", id.key(), checkpoint.step);
            let event = AuditEvent::CheckpointCommitted { job: id, step: checkpoint.step };
            s.put_new(&fence, id, rel, &checkpoint, event)
        })
        .await
    }

    async fn checkpoints(&self, id: JobId) -> StoreResult<Vec<CheckpointRecord>> {
        self.blocking(move |s| list(&s.root.join("checkpoints").join(id.key()))).await
    }

    async fn audit(&self) -> StoreResult<Vec<AuditEntry>> {
        self.blocking(|s| {
            let path = s.root.join("audit.jsonl");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io("read", &path)(e)),
            };
            let lines: Vec<&str> = text.lines().collect();
            let mut entries = Vec::with_capacity(lines.len());
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str(line) {
                    Ok(entry) => entries.push(entry),
                    // A torn last line is a crash during an append: that entry never happened.
                    Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                    Err(source) => return Err(StoreError::Decode { key: format!("{}:{}", path.display(), i + 1), source }),
                }
            }
            Ok(entries)
        })
        .await
    }
}
