//! The coordinator's typed answers to a [`Request`](crate::messages::Request): the job status
//! and the acknowledgements. They cross two process boundaries, as the coordinator actor's
//! [`Reply`](crate::messages::Reply) and as the JSON bodies of its HTTP API that `tessera
//! status|scale|checkpoint|mixture|drain` read, so they live in the contract crate: the API
//! serialises exactly these types and the client deserialises them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::StepTimings;

/// Where the job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// No generation yet: waiting for enough workers.
    Waiting,
    /// A generation is training.
    Running,
    /// A generation was aborted; the next one restores the last checkpoint.
    Recovering,
    /// The running generation is asked to stop at a step boundary.
    Stopping,
    /// Every step is done.
    Finished,
}

impl JobPhase {
    /// The lowercase name used in JSON and in the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Waiting => "waiting",
            JobPhase::Running => "running",
            JobPhase::Recovering => "recovering",
            JobPhase::Stopping => "stopping",
            JobPhase::Finished => "finished",
        }
    }
}

/// One registered worker, as `GET /status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub worker: u64,
    /// Its address.
    pub addr: String,
    /// Its rank in the running generation (`None`: not part of it).
    pub rank: Option<u32>,
    /// Milliseconds since it was last heard from.
    pub seen_ms_ago: u64,
    /// Asked to leave at the next generation boundary.
    pub draining: bool,
    /// Total seconds of its last reported step.
    pub last_step_s: Option<f64>,
    /// Its last step's phases (the rank's own time is `total_s - comm_s`).
    #[serde(default)]
    pub timings: Option<StepTimings>,
    /// Its resident memory after its last step.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// Flagged as a straggler in the running generation.
    #[serde(default)]
    pub straggler: bool,
}

/// The last validation of the held-out set (scored by the ranks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationStatus {
    /// The step count at which it was scored.
    pub step: u64,
    /// Held-out loss per target modality (nats per token).
    pub loss: BTreeMap<crate::ids::ModalityName, f64>,
    /// Seconds the ranks spent scoring it (training waited for them).
    #[serde(default)]
    pub seconds: f64,
}

/// The answer of `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's name.
    pub job: String,
    /// Where the job is.
    pub phase: JobPhase,
    /// The running (or last) generation.
    pub generation: u64,
    /// Ranks of the running generation (0 when none runs).
    pub world_size: u32,
    /// The next step to train (steps done).
    pub step: u64,
    /// Steps of the whole job.
    pub total_steps: u64,
    /// Loss of the last step.
    pub loss: Option<f64>,
    /// Workers the job wants.
    pub target_workers: usize,
    /// Fewest workers a generation may have.
    pub min_workers: usize,
    /// Most workers a generation may have.
    pub max_workers: usize,
    /// Step of the newest committed checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Generations aborted and restarted.
    pub restarts: u64,
    /// Version of the dataset-mixture schedule in force.
    pub schedule_version: u64,
    /// The registered workers.
    pub members: Vec<MemberStatus>,
    /// The last validation, if one ran in this process's lifetime.
    #[serde(default)]
    pub validation: Option<ValidationStatus>,
}

/// The answer of `POST /scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleAck {
    /// The target the coordinator now works towards.
    pub target_workers: usize,
}

/// The answer of `POST /checkpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointAck {
    /// The step count the checkpoint will hold (`None`: no generation runs; it is taken at the
    /// first boundary of the next one).
    pub step: Option<u64>,
}

/// The answer of `POST /mixture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixtureAck {
    /// Version of the schedule that holds the new weights.
    pub version: u64,
    /// First step that uses them.
    pub effective_step: u64,
}

/// The answer of `POST /drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAck {
    /// The worker that leaves at the next checkpointed boundary.
    pub worker: u64,
}

/// The answer to `Request::Shutdown` (what SIGTERM asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownAck {
    /// The job checkpoints at the next boundary and stops.
    pub shutting_down: bool,
}

/// The answer to one [`Request`](crate::messages::Request), by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// `Request::Status` (boxed: it is by far the largest answer).
    Status(Box<JobStatus>),
    /// `Request::Scale`.
    Scale(ScaleAck),
    /// `Request::Checkpoint`.
    Checkpoint(CheckpointAck),
    /// `Request::Mixture`.
    Mixture(MixtureAck),
    /// `Request::Drain`.
    Drain(DrainAck),
    /// `Request::Shutdown`.
    Shutdown(ShutdownAck),
}

impl Answer {
    /// The request kind this answers (for an error that names what was asked).
    pub fn kind(&self) -> &'static str {
        match self {
            Answer::Status(_) => "status",
            Answer::Scale(_) => "scale",
            Answer::Checkpoint(_) => "checkpoint",
            Answer::Mixture(_) => "mixture",
            Answer::Drain(_) => "drain",
            Answer::Shutdown(_) => "shutdown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP API's bodies are these types' JSON: field names are the wire contract.
    #[test]
    fn acknowledgements_keep_their_json_field_names() {
        assert_eq!(json(&ScaleAck { target_workers: 3 }), r#"{"target_workers":3}"#);
        assert_eq!(json(&CheckpointAck { step: Some(7) }), r#"{"step":7}"#);
        assert_eq!(json(&MixtureAck { version: 2, effective_step: 12 }), r#"{"version":2,"effective_step":12}"#);
        assert_eq!(json(&DrainAck { worker: 4 }), r#"{"worker":4}"#);
        assert_eq!(json(&ShutdownAck { shutting_down: true }), r#"{"shutting_down":true}"#);
        assert_eq!(serde_json::to_string(&JobPhase::Recovering).unwrap(), r#""recovering""#);
    }

    #[test]
    fn answers_round_trip() {
        let status = JobStatus {
            job: "j".into(),
            phase: JobPhase::Running,
            generation: 1,
            world_size: 2,
            step: 5,
            total_steps: 10,
            loss: Some(2.5),
            target_workers: 2,
            min_workers: 1,
            max_workers: 3,
            last_checkpoint: Some(4),
            restarts: 0,
            schedule_version: 0,
            members: vec![MemberStatus {
                worker: 0,
                addr: "127.0.0.1:1".into(),
                rank: Some(0),
                seen_ms_ago: 3,
                draining: false,
                last_step_s: Some(0.5),
                timings: None,
                rss_bytes: None,
                straggler: false,
            }],
            validation: None,
        };
        for a in [
            Answer::Status(Box::new(status)),
            Answer::Scale(ScaleAck { target_workers: 2 }),
            Answer::Shutdown(ShutdownAck { shutting_down: true }),
        ] {
            let back: Answer = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
            assert_eq!(back, a);
        }
    }

    fn json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }
}
