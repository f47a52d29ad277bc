//! The cluster API's calls on [`ApiClient`] (the CLI's `submit`, `jobs`, `cancel`, `logs`, and the
//! worker's reports); one job's routes go through [`ApiClient::for_job`].

use super::logs::{LogPage, LogQuery};
use super::types::{ClusterJob, JobCheckpoints, PooledWorker, SubmitReply, SubmitRequest, WorkerReply, WorkerReport};
use crate::client::ApiClient;
use crate::error::Result;
use crate::store::JobId;

impl ApiClient {
    /// `POST /v1/jobs`.
    pub fn submit(&self, req: &SubmitRequest) -> Result<SubmitReply> {
        self.call("POST", "/v1/jobs", Some(req))
    }

    /// `GET /v1/jobs`.
    pub fn jobs(&self) -> Result<Vec<ClusterJob>> {
        self.call::<_, ()>("GET", "/v1/jobs", None)
    }

    /// `GET /v1/jobs/ID`.
    pub fn job(&self, id: JobId) -> Result<ClusterJob> {
        self.call::<_, ()>("GET", &format!("/v1/jobs/{}", id.0), None)
    }

    /// `POST /v1/jobs/ID/cancel`.
    pub fn cancel(&self, id: JobId) -> Result<ClusterJob> {
        self.call::<_, ()>("POST", &format!("/v1/jobs/{}/cancel", id.0), None)
    }

    /// `GET /v1/jobs/ID/checkpoints`.
    pub fn job_checkpoints(&self, id: JobId) -> Result<JobCheckpoints> {
        self.call::<_, ()>("GET", &format!("/v1/jobs/{}/checkpoints", id.0), None)
    }

    /// `GET /v1/jobs/ID/logs`: a page of the job's per-worker logs.
    pub fn logs(&self, id: JobId, query: &LogQuery) -> Result<LogPage> {
        self.call::<_, ()>("GET", &format!("/v1/jobs/{}/logs?{}", id.0, query.to_query()), None)
    }

    /// `POST /v1/workers/NAME`: a worker's report (and, idle, its wait for an assignment).
    pub fn report(&self, name: &str, report: &WorkerReport) -> Result<WorkerReply> {
        self.call("POST", &format!("/v1/workers/{name}"), Some(report))
    }

    /// `GET /v1/workers`.
    pub fn workers(&self) -> Result<Vec<PooledWorker>> {
        self.call::<_, ()>("GET", "/v1/workers", None)
    }
}
