//! The control-plane protocol: the message enums of the coordinator and worker actors (their
//! whole API) and the payloads they carry. Messages cross processes through ractor_cluster, so
//! every payload is wrapped in [`Wire`], which serialises it as JSON and turns a payload that
//! does not decode into an error value the receiving actor reports, instead of a panic.
//!
//! Discovery uses ractor process groups: the coordinator actor joins its [`coordinator_group`];
//! each worker actor joins its own [`worker_group`] (named by a nonce it announces in
//! [`WorkerEvent::Hello`]), so the coordinator can address the sender of a hello. A lost worker
//! shows as its node session closing ([`CoordinatorMsg::SessionClosed`]), not as a group leave:
//! see [`crate::node::CoordinatorNode::watch_sessions`].

use std::net::SocketAddr;
use std::path::PathBuf;

use ractor::{BytesConvertable, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api_error::ApiError;
use crate::checkpoint::{FileEntry, Manifest};
use crate::ids::{Generation, Rank, Step, WorkerId};
use crate::ledger::MixtureSchedule;
use crate::reply::Answer;
use crate::report::StepReport;

/// What kind of failure ended a rank's generation: the coordinator tells a lost peer
/// (collective) from a problem of the job itself (data, numerics) without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A collective failed or was aborted (usually another rank vanished).
    Collective,
    /// Reading or decoding the job's data.
    Data,
    /// Writing, reading or restoring a checkpoint.
    Checkpoint,
    /// A non-finite loss or gradient with skipping disabled.
    Numerics,
    /// The model (config, layout, device, libtorch).
    Model,
    /// The job's spec does not fit this generation (e.g. a batch smaller than the world).
    Job,
    /// The worker process itself (a thread, a file, the welcome).
    Worker,
}

/// Why a rank left its generation with an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The rank that failed.
    pub rank: Rank,
    /// The step count when it failed.
    pub step: Step,
    /// The error as the rank words it.
    pub message: String,
}

impl std::fmt::Display for RankFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} at step {} ({:?}): {}", self.rank, self.step, self.kind, self.message)
    }
}

/// Process group of the coordinator actor of a job that has a process to itself.
pub const COORDINATOR_GROUP: &str = "tessera.coordinator";

/// The process group of job `scope`'s coordinator actor: a coordinator service hosts several
/// jobs in one process, and process groups are visible to every linked node, so each job's
/// workers must look for their own coordinator by name. `None` is [`COORDINATOR_GROUP`].
pub fn coordinator_group(scope: Option<&str>) -> String {
    match scope {
        Some(s) => format!("{COORDINATOR_GROUP}.{s}"),
        None => COORDINATOR_GROUP.to_string(),
    }
}
/// The process group only the worker that announced `nonce` joins.
pub fn worker_group(nonce: u64) -> String {
    format!("tessera.worker.{nonce:016x}")
}

/// A payload as it travels between processes: JSON, decoded on arrival; a payload that does
/// not decode (version skew, corruption) arrives as `Err(reason)`.
#[derive(Debug, Clone)]
pub struct Wire<T>(pub Result<T, String>);

impl<T> Wire<T> {
    /// Wraps a payload to send.
    pub fn new(value: T) -> Self {
        Wire(Ok(value))
    }
}

impl<T: Serialize + DeserializeOwned> BytesConvertable for Wire<T> {
    fn into_bytes(self) -> Vec<u8> {
        match self.0 {
            Ok(v) => serde_json::to_vec(&v).unwrap_or_else(|e| format!("\u{0}unserialisable payload: {e}").into_bytes()),
            Err(e) => format!("\u{0}{e}").into_bytes(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        if let Some(reason) = bytes.strip_prefix(b"\0") {
            return Wire(Err(String::from_utf8_lossy(reason).into_owned()));
        }
        Wire(serde_json::from_slice(&bytes).map_err(|e| format!("undecodable {}: {e}", std::any::type_name::<T>())))
    }
}

/// The job as a worker needs it: resolved and validated once, by the coordinator, so that no
/// worker parses a config (and a bad config is found at submission, not by a worker). The job
/// travels as JSON text decoded by [`JobSpec::open`] after its tokenizer-defined modalities are
/// registered: their keys (`tok_depth@64`) do not decode in a process that has not seen them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Tokenizer-defined token modalities to register before decoding `job`.
    pub token_modalities: Vec<tessera_tokenizers::TokenModalityDef>,
    /// The resolved job (absolute paths; every default decided), as JSON.
    pub job: String,
}

impl JobSpec {
    /// The spec of a resolved job.
    pub fn new(job: &crate::job::ResolvedJob) -> Self {
        Self { token_modalities: job.model.token_modalities.clone(), job: serde_json::to_string(job).expect("a resolved job serialises") }
    }

    /// Registers the job's token modalities in this process, then decodes the job.
    pub fn open(&self) -> crate::Result<crate::job::ResolvedJob> {
        for def in &self.token_modalities {
            def.register()?;
        }
        serde_json::from_str(&self.job).map_err(|e| crate::ProtocolError::Config {
            origin: "the coordinator's job spec".into(),
            field: "job".into(),
            reason: format!("does not decode: {e}"),
        })
    }
}

/// What a worker sends the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerEvent {
    /// A new worker process announces itself (its actor joined [`worker_group`]`(nonce)`).
    Hello {
        /// Names the worker's private process group.
        nonce: u64,
        /// Its OS process id (for the supervisor of local processes and for humans).
        pid: u32,
        /// Where its collective listener accepts ring connections.
        ring_addr: SocketAddr,
        /// CPU threads it will use.
        threads: usize,
        /// It re-attaches after its coordinator died, holding this generation's state
        /// (`None`: a new worker, or a coordinator that predates re-attaching).
        #[serde(default)]
        orphan: Option<Orphan>,
    },
    /// The worker is alive (sent periodically by its actor, independent of the device thread).
    Heartbeat {
        /// The worker.
        worker: WorkerId,
    },
    /// A rank finished a step.
    Step {
        /// The worker.
        worker: WorkerId,
        /// The report.
        report: StepReport,
    },
    /// The ranks scored the held-out set (sent by rank 0 for all of them).
    Validated {
        /// The worker.
        worker: WorkerId,
        /// The scores.
        report: crate::validation::ValidationReport,
    },
    /// A rank's checkpoint shard is durable in the generation's temp directory.
    ShardWritten {
        /// The worker.
        worker: WorkerId,
        /// Generation.
        generation: Generation,
        /// Step count the checkpoint holds.
        step: Step,
        /// The rank.
        rank: Rank,
        /// The file, with size and checksum.
        file: FileEntry,
        /// The manifest to commit (rank 0 only): layout and training position, without files.
        manifest: Option<Box<Manifest>>,
        /// Seconds from snapshot to durable file.
        write_s: f64,
    },
    /// A rank could not write its checkpoint shard.
    ShardFailed {
        /// The worker.
        worker: WorkerId,
        /// Generation.
        generation: Generation,
        /// Step count.
        step: Step,
        /// What failed (a checkpoint failure: the disk, a file, the shard's tensors).
        error: RankFailure,
    },
    /// The rank left the training loop of its generation.
    GenerationEnded {
        /// The worker.
        worker: WorkerId,
        /// Generation.
        generation: Generation,
        /// Steps completed when it stopped.
        step: Step,
        /// Why (`None`: asked to stop or finished; `Some`: what failed).
        error: Option<RankFailure>,
    },
    /// The worker asks to leave at the next step boundary, after a checkpoint (its process was
    /// interrupted: SIGTERM/SIGINT, e.g. a preemption notice); it trains on until released.
    Draining {
        /// The worker.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// The worker is leaving now (it cannot serve the job); an interrupted worker sends
    /// [`WorkerEvent::Draining`] instead.
    Leaving {
        /// The worker.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
}

/// A rank that lost its coordinator and keeps its generation's state in memory, paused at a
/// step boundary every rank of the generation agreed on; a coordinator that adopts every rank
/// of the generation continues it from `step` with no checkpoint restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// The worker's id under the lost coordinator (kept when adopted).
    pub worker: WorkerId,
    /// The generation it trains.
    pub generation: Generation,
    /// Steps completed (the next step to train).
    pub step: Step,
    /// Its rank.
    pub rank: Rank,
    /// The generation's world size.
    pub world: u32,
}

/// A generation: the ranks that train together until the membership changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationPlan {
    /// Generation number (strictly increasing).
    pub generation: Generation,
    /// Rank `i` is `ranks[i]`.
    pub ranks: Vec<WorkerId>,
    /// First step it trains.
    pub start_step: Step,
    /// Step of the committed checkpoint it restores (`None`: fresh start).
    pub restore: Option<Step>,
}

/// A generation as one rank receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationStart {
    /// The plan (ranks, start step, checkpoint to restore).
    pub plan: GenerationPlan,
    /// This worker's rank in it.
    pub rank: Rank,
    /// Ring addresses by rank.
    pub peers: Vec<SocketAddr>,
    /// The checkpoint directory to restore (committed and verified by the coordinator).
    pub restore_dir: Option<PathBuf>,
    /// The mixture schedule in force.
    pub schedule: MixtureSchedule,
    /// Stop (with a checkpoint) after this step count even if the job has more steps.
    pub stop_at: Option<Step>,
}

/// What the coordinator tells a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// The reply to a hello: the worker's id and the job.
    Welcome {
        /// Its id.
        worker: WorkerId,
        /// The job.
        job: JobSpec,
        /// Hex secret of the collective handshake.
        secret: String,
        /// How often to send heartbeats (ms).
        heartbeat_ms: u64,
    },
    /// Join a generation.
    Start(GenerationStart),
    /// Write a checkpoint at the next step boundary all ranks agree on.
    Checkpoint {
        /// Generation.
        generation: Generation,
        /// The coordinator's next step when it asked: a checkpoint this rank already took
        /// beyond it (another rank's copy of this request arrived first and the ranks agreed on
        /// it) answers the request, so a late copy does not take a second one.
        #[serde(default)]
        asked_at: Step,
    },
    /// Leave the training loop at the next agreed step boundary (after a checkpoint if asked).
    Stop {
        /// Generation.
        generation: Generation,
        /// Checkpoint first.
        checkpoint: bool,
    },
    /// A rank is gone: abort the generation's collectives now.
    Abort {
        /// Generation.
        generation: Generation,
        /// Why.
        reason: String,
    },
    /// Exit the process.
    Exit {
        /// Why.
        why: ExitReason,
    },
}

/// Why the coordinator tells a worker to exit; a worker declared lost exits with a failure
/// status, so whatever supervises it (a shell, Slurm, Kubernetes) sees that it was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// The job finished or stopped.
    JobDone,
    /// The job failed.
    JobFailed,
    /// Released from the job (drained, scaled down, or leaving on its own).
    Released,
    /// Removed as lost (silent past the heartbeat timeout, or its link broke).
    Lost,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::JobDone => "the job is done",
            Self::JobFailed => "the job failed",
            Self::Released => "released from the job",
            Self::Lost => "removed from the job as lost (no heartbeat in time, or the link broke)",
        })
    }
}

/// The worker actor's messages.
#[derive(RactorClusterMessage)]
pub enum WorkerMsg {
    /// A command from the coordinator.
    Command(Wire<Command>),
    /// Time to send a heartbeat.
    Beat(Wire<()>),
    /// The worker's process was interrupted (sent by its own signal watcher): ask the
    /// coordinator to drain it.
    Interrupted(Wire<String>),
    /// The coordinator is gone (sent by its own link watcher, pool mode): pause at the next
    /// agreed step boundary and keep the generation's state for a coordinator to adopt.
    Orphaned(Wire<()>),
    /// The link now leads to a new coordinator of the job (sent by its own link watcher):
    /// announce this worker there, with its orphaned state.
    Reattached(Wire<()>),
}

/// What the HTTP API and CLI ask the coordinator (answered through an RPC port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The job's status.
    Status,
    /// Run with this many workers.
    Scale {
        /// Desired worker count.
        workers: usize,
    },
    /// Checkpoint now.
    Checkpoint,
    /// Change the mixture weights from a step on (see `actor::mixture` for the rules).
    Mixture {
        /// Weight per dataset name; datasets not named keep their weight.
        weights: std::collections::BTreeMap<String, f64>,
        /// Step from which they apply (default and minimum: the coordinator's next step + 2).
        at_step: Option<u64>,
    },
    /// Checkpoint and stop the job (SIGTERM).
    Shutdown,
    /// Drain one worker at the next checkpointed boundary (it is not replaced).
    Drain {
        /// The worker.
        worker: WorkerId,
    },
}

/// The answer to a [`Request`]: the status or an acknowledgement ([`Answer`], the types the
/// HTTP API serves), or why it was refused, typed so the HTTP API answers the right status
/// and names the offending field.
pub type Reply = Result<Answer, ApiError>;

/// The coordinator actor's messages.
#[derive(RactorClusterMessage)]
pub enum CoordinatorMsg {
    /// An event from a worker.
    Worker(Wire<WorkerEvent>),
    /// A request, answered with a [`Reply`] (a reply that does not decode is a `Wire` error).
    #[rpc]
    Request(Wire<Request>, RpcReplyPort<Wire<Reply>>),
    /// A local worker process exited (from the embedded supervisor): pid and how.
    ProcessExited(Wire<(u32, String)>),
    /// Time passed (drives heartbeat deadlines and rendezvous grace).
    Tick(Wire<()>),
    /// The coordinator service lost this job's worker from its pool (its etcd lease expired,
    /// or it stopped reporting): the member that process is, if any, is lost.
    PoolLost(Wire<PoolLoss>),
    /// A node session of the job's node server closed (the link to a worker process broke, or
    /// the process ended): the members whose actors came over it are lost. Carries the
    /// session's node id, as in the remote actors' ids.
    SessionClosed(Wire<u64>),
}

/// A worker process the service's pool lost, as the job's actor finds its member: by the host
/// address its ring listens on and its process id (a pool has many processes per host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolLoss {
    /// The host address the worker offered (its ring listens there).
    pub ip: std::net::IpAddr,
    /// Its OS process id.
    pub pid: u32,
    /// Why the pool lost it (`lease expired`, `silent for over 4000 ms`).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trips_and_reports_garbage() {
        let ev = WorkerEvent::Heartbeat { worker: WorkerId(7) };
        let back = Wire::<WorkerEvent>::from_bytes(Wire::new(ev.clone()).into_bytes());
        assert_eq!(back.0, Ok(ev));
        let bad = Wire::<WorkerEvent>::from_bytes(b"{\"Nope\":1}".to_vec());
        assert!(bad.0.unwrap_err().contains("undecodable"));
        let err = Wire::<WorkerEvent>::from_bytes(Wire::<WorkerEvent>(Err("x failed".into())).into_bytes());
        assert_eq!(err.0, Err("x failed".into()));
    }
}
