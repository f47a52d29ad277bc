//! The device thread: the one thread that owns libtorch and the collective of a worker. It
//! waits for a generation, builds the ring and the FSDP trainer for it, restores the chosen
//! checkpoint, trains step by step (reporting each step), takes the decisions that must be
//! taken at the same step on every rank through a tiny all-reduce, scores the held-out set
//! at validation steps (all ranks together; rank 0 reports), and snapshots checkpoints that a
//! background thread writes while training goes on.

mod pause;

use std::net::TcpListener;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tessera_ops::{AbortHandle, Collective, JobAuth, RingConfig, TcpRing};
use tessera_protocol::messages::{FailureKind, GenerationStart, RankFailure, WorkerEvent};
use tessera_protocol::{Generation, Rank, ResolvedJob, Step, WorkerId};

use crate::data::DataPipeline;
use crate::driver::report::{peak_rss_bytes, step_report};
use crate::driver::{Boundary, Ended, HeldOut, Plan, Requests, Validation, drive};
use crate::error::{Result, WorkerError};
use crate::fsdp::snapshot::Snapshot;
use crate::fsdp::{FsdpTrainer, Resident};

use super::link::{Link, Reattach};
use pause::{Paused, Recent, Resumed, wait_adopted};

/// What the worker actor tells the device thread.
#[derive(Debug)]
pub enum DeviceCmd {
    /// Train a generation.
    Start(Box<GenerationStart>),
    /// Checkpoint at the next agreed boundary.
    Checkpoint {
        /// Generation.
        generation: Generation,
        /// The coordinator's next step when it asked ([`tessera_protocol::messages::Command::Checkpoint`]).
        asked_at: Step,
    },
    /// The coordinator is gone: pause at the next agreed boundary and keep the state for a
    /// coordinator to adopt (pool mode).
    Orphaned,
    /// Leave the loop at the next agreed boundary.
    Stop {
        /// Generation.
        generation: Generation,
        /// Checkpoint first.
        checkpoint: bool,
    },
    /// Finish (pending checkpoint writes complete) and end the thread.
    Exit,
}

/// Abort bookkeeping shared by the actor (which receives `Abort`) and the device thread
/// (which owns the communicator): an abort can arrive before the ring of its generation exists.
#[derive(Debug, Default)]
pub struct AbortState {
    current: Option<(Generation, AbortHandle)>,
    /// Generations at or below this were aborted.
    aborted_through: Option<Generation>,
}

impl AbortState {
    /// Aborts `generation`'s collective now, or as soon as it exists.
    pub fn abort(&mut self, generation: Generation) {
        self.aborted_through = Some(self.aborted_through.map_or(generation, |g| g.max(generation)));
        if let Some((g, h)) = &self.current
            && *g <= generation
        {
            h.abort();
        }
    }

    /// True once `generation` was aborted.
    fn is_aborted(&self, generation: Generation) -> bool {
        self.aborted_through.is_some_and(|g| g >= generation)
    }

    fn install(&mut self, generation: Generation, handle: AbortHandle) -> bool {
        let aborted = self.aborted_through.is_some_and(|g| g >= generation);
        if aborted {
            handle.abort();
        }
        self.current = Some((generation, handle));
        !aborted
    }
}

/// Everything the device thread needs.
pub struct DeviceCtx {
    /// The job.
    pub job: ResolvedJob,
    /// Ring listener (cloned for each generation).
    pub listener: TcpListener,
    /// libtorch threads.
    pub threads: usize,
    /// Where events go, this worker's id and the collective secret (a re-attached worker
    /// reports to its new coordinator).
    pub link: Link,
    /// Where an orphaned rank publishes its paused state (pool mode; `None`: a lost
    /// coordinator ends the generation).
    pub reattach: Option<Arc<Reattach>>,
    /// Shared abort state.
    pub abort: Arc<Mutex<AbortState>>,
}

impl DeviceCtx {
    fn send(&self, ev: WorkerEvent) {
        // A lost coordinator link shows up as the node session closing; nothing to do here.
        self.link.send(ev);
    }

    /// This worker's id (set at the welcome, before the device thread starts).
    fn worker(&self) -> WorkerId {
        self.link.worker().unwrap_or(WorkerId(u64::MAX))
    }
}

/// The job id of the collective handshake (the generation is added per generation).
pub fn job_id(job: &ResolvedJob) -> u64 {
    tessera_protocol::seeds::job_id(job.seed, &job.name)
}

/// The identity and secret of `generation`'s communicators.
fn auth_of(ctx: &DeviceCtx, generation: Generation) -> JobAuth {
    JobAuth {
        job_id: job_id(&ctx.job),
        generation: generation.0,
        secret: ctx.link.secret().expect("the welcome sets the secret before the device thread runs"),
    }
}

/// Runs the device thread until `Exit` (or the actor's end), then waits for pending writes.
pub fn device_main(ctx: DeviceCtx, rx: Receiver<DeviceCmd>) {
    tch::set_num_threads(ctx.threads.max(1) as i32);
    let mut writers: Vec<JoinHandle<()>> = Vec::new();
    // The model and data source outlive a generation: a generation that restores a checkpoint
    // (every one after a failure or resize) reuses them instead of initialising again.
    let mut resident: Option<Resident<DataPipeline>> = None;
    // The held-out set, loaded at the first validation step and kept too (`Some(None)`: this
    // rank could not load it).
    let mut held_out = HeldOut::default();
    // A generation that a new coordinator started while this rank waited to be adopted.
    let mut next: Option<Box<GenerationStart>> = None;
    loop {
        let cmd = match next.take() {
            Some(g) => DeviceCmd::Start(g),
            None => match rx.recv() {
                Ok(cmd) => cmd,
                Err(_) => break,
            },
        };
        match cmd {
            DeviceCmd::Start(g) => {
                // A held-out set this rank could not load is tried again in each new generation:
                // what stopped it (a file being rewritten, a mount that was away) may be gone,
                // and a long job should not lose validation for good.
                held_out.retry_failed();
                let generation = g.plan.generation;
                tessera_protocol::worker_log::set_rank(Some((g.rank, generation)));
                let (step, failed, exit) = run_generation(&ctx, &g, &rx, &mut writers, &mut resident, &mut held_out, &mut next);
                if let Some(e) = &failed {
                    tessera_protocol::say!("[{}] generation {generation} ended at step {step}: {e}", ctx.worker());
                }
                tessera_protocol::worker_log::set_rank(None);
                let error = failed.map(|e| RankFailure { kind: e.kind(), rank: g.rank, step, message: e.to_string() });
                ctx.send(WorkerEvent::GenerationEnded { worker: ctx.worker(), generation, step, error });
                if exit {
                    break;
                }
            }
            DeviceCmd::Exit => break,
            // A command for a generation this thread already left, or a loss noticed between
            // generations (there is nothing to keep).
            DeviceCmd::Checkpoint { .. } | DeviceCmd::Stop { .. } | DeviceCmd::Orphaned => {}
        }
        writers.retain(|w| !w.is_finished());
    }
    for w in writers {
        let _ = w.join();
    }
}

/// One generation; returns (steps completed, error, exit requested).
fn run_generation(
    ctx: &DeviceCtx,
    g: &GenerationStart,
    rx: &Receiver<DeviceCmd>,
    writers: &mut Vec<JoinHandle<()>>,
    resident: &mut Option<Resident<DataPipeline>>,
    held_out: &mut HeldOut,
    next: &mut Option<Box<GenerationStart>>,
) -> (Step, Option<WorkerError>, bool) {
    let generation = g.plan.generation;
    let mut step = g.plan.start_step;
    let mut exit = false;
    // Holds the trainer so that what it keeps survives an error (an aborted ring).
    let mut slot: Option<FsdpTrainer<TcpRing, DataPipeline>> = None;
    let result = (|| -> Result<()> {
        let t_start = std::time::Instant::now();
        let mut config = RingConfig::new(auth_of(ctx, generation));
        config.timeout = ctx.job.train.collective_timeout;
        let listener = ctx.listener.try_clone().map_err(crate::error::io_err("cloning the ring listener", "ring"))?;
        let mut ring = TcpRing::connect(listener, tessera_ops::Rank(g.rank.0), &g.peers, config).map_err(|source| {
            WorkerError::Collective { rank: g.rank.0, step: step.0, op: format!("connecting the ring of generation {generation}"), source }
        })?;
        if !ctx.abort.lock().expect("abort state").install(generation, ring.abort_handle()) {
            return Err(WorkerError::Aborted { rank: g.rank.0, generation: generation.0 });
        }
        let world = ring.world() as u32;
        // CUDA jobs move the units' flat vectors with NCCL; the ring keeps the small host
        // collectives (counts, flags, losses) and carries NCCL's unique id.
        let nccl = crate::fsdp::flat::device_comm(&mut ring, &ctx.job, auth_of(ctx, generation))?;
        if let Some(n) = &nccl {
            // An abort of this generation must also end a call blocked inside NCCL.
            let both = AbortHandle::all(vec![ring.abort_handle(), n.abort_handle()]);
            if !ctx.abort.lock().expect("abort state").install(generation, both) {
                return Err(WorkerError::Aborted { rank: g.rank.0, generation: generation.0 });
            }
        }
        let ring_s = t_start.elapsed().as_secs_f64();
        let mut job = ctx.job.clone();
        job.schedule = g.schedule.clone();
        let cfg = crate::four_m_config(&job.model, &job.origin)?;
        let total = job.train.total_steps;
        let tokens_per_sample = (job.train.num_input_tokens + job.train.num_target_tokens) as u64;
        let plan = Plan {
            generation,
            stop_at: g.stop_at.map_or(total, |s| s.0).min(total),
            total,
            // Periodic checkpoints the ranks take on their own; the end of the plan is the
            // coordinator's to checkpoint (it asks, and asks again after a failed write).
            checkpoint_every: job.checkpoint.every_steps,
            validate_every: if job.validates() { job.eval.every_steps } else { 0 },
            checkpoint_at_end: false,
        };
        let open = |job: &ResolvedJob| -> Result<(DataPipeline, Vec<u64>)> {
            let source = crate::data::open_job_data(job, &cfg.all_domains())?;
            let lens = source.dataset_lens();
            Ok((source, lens))
        };
        let (reused, model_s, t) = match (&g.restore_dir, resident.take()) {
            (Some(dir), kept) => {
                let reused = kept.is_some();
                let kept = match kept {
                    Some(r) => r,
                    None => {
                        let (source, lens) = open(&job)?;
                        Resident::new(&cfg, &job, source, lens)?
                    }
                };
                let model_s = t_start.elapsed().as_secs_f64() - ring_s;
                (reused, model_s, slot.insert(FsdpTrainer::restored(job, &cfg, kept, ring, dir)?.with_device_comm(nccl)?))
            }
            // Without a checkpoint the model must be the seed's: a kept one is never reused.
            (None, _) => {
                let (source, lens) = open(&job)?;
                let t = FsdpTrainer::new(job, &cfg, source, lens, ring)?.with_device_comm(nccl)?;
                (false, t_start.elapsed().as_secs_f64() - ring_s, slot.insert(t))
            }
        };
        t.set_schedule(g.schedule.clone())?;
        step = Step(t.state().step);
        if g.rank == Rank(0) {
            let total_s = t_start.elapsed().as_secs_f64();
            tessera_protocol::say!(
                "[{}] generation {generation} ready: ring {ring_s:.2}s, model + restore {:.2}s (model and data {}: {model_s:.2}s, restore {:.2}s)",
                ctx.worker(),
                total_s - ring_s,
                if reused { "kept from the last generation" } else { "built" },
                total_s - ring_s - model_s
            );
        }
        if step != g.plan.start_step {
            return Err(WorkerError::PlanMismatch { rank: g.rank.0, restored: step.0, planned: g.plan.start_step.0 });
        }
        let who = format!("[{}] ", ctx.worker());
        let val = Validation { job: &ctx.job, cfg: &cfg, held_out, who: &who };
        let mut b = Coordinated {
            ctx,
            g,
            rx,
            writers,
            world,
            tokens_per_sample,
            want_stop: false,
            want_ckpt: false,
            checkpointed: None,
            exit: false,
            orphaned: false,
            recent: Recent::default(),
            next: None,
        };
        let ended = drive(t, &mut b, &plan, val);
        exit = b.exit;
        *next = b.next.take();
        let (orphaned, recent) = (b.orphaned, std::mem::take(&mut b.recent));
        step = Step(t.state().step);
        // What `tools/bench/fsdp_vs_torch.sh` compares with PyTorch FSDP's memory.
        tessera_protocol::say!(
            "[{}] generation {generation}: peak RSS {:.1} MiB, sharded master weights + AdamW state {:.1} MiB",
            ctx.worker(),
            peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0),
            (t.local_state_elements() * 4) as f64 / (1024.0 * 1024.0)
        );
        if ended? == Ended::Stopped {
            // A stop's boundary checkpoint is what the next generation (or a restart) resumes
            // from: report it written before the generation's end, so that the coordinator
            // commits it instead of rolling back to the one before.
            for w in writers.drain(..) {
                let _ = w.join();
            }
            return Ok(());
        }
        if !exit {
            let end = FinalBoundary { world, orphaned, recent };
            (exit, *next) = final_boundary(ctx, t, g, rx, writers, end)?;
        }
        Ok(())
    })();
    ctx.abort.lock().expect("abort state").current = None;
    if let Some(t) = slot {
        match t.into_resident() {
            Ok(r) => *resident = Some(r),
            Err(e) => tessera_protocol::say!("[{}] generation {generation}: the model is rebuilt next time: {e}", ctx.worker()),
        }
    }
    (step, result.err(), exit)
}

/// Writes a snapshot of this rank's shards on a thread of its own (training goes on), which
/// reports the result to the coordinator, who commits the step once every rank wrote.
fn write_snapshot(ctx: &DeviceCtx, g: &GenerationStart, snap: Snapshot, writers: &mut Vec<JoinHandle<()>>) -> Result<()> {
    let (generation, step) = (g.plan.generation, snap.step);
    if g.rank == Rank(0) {
        tessera_protocol::say!("[{}] step {step}: checkpoint snapshot {:.3}s (training continues)", ctx.worker(), snap.copy_s);
    }
    let (coord, worker, rank) = (ctx.link.clone(), ctx.worker(), g.rank);
    let name = format!("ckpt-writer-{step}");
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let (snap_step, manifest) = (Step(snap.step), snap.manifest.clone().map(Box::new));
        let ev = match snap.write() {
            Ok((file, write_s)) => WorkerEvent::ShardWritten { worker, generation, step: snap_step, rank, file, manifest, write_s },
            Err(e) => {
                let error = RankFailure { kind: FailureKind::Checkpoint, rank, step: snap_step, message: e.to_string() };
                WorkerEvent::ShardFailed { worker, generation, step: snap_step, error }
            }
        };
        coord.send(ev);
    });
    writers.push(spawned.map_err(crate::error::io_err("starting a checkpoint writer", "thread"))?);
    Ok(())
}

/// The boundary of a rank under a coordinator: the coordinator's commands are its requests,
/// its steps and held-out scores go to the coordinator, and its checkpoint shards are written
/// in the background and committed by the coordinator.
struct Coordinated<'a> {
    ctx: &'a DeviceCtx,
    g: &'a GenerationStart,
    rx: &'a Receiver<DeviceCmd>,
    writers: &'a mut Vec<JoinHandle<()>>,
    world: u32,
    tokens_per_sample: u64,
    want_stop: bool,
    want_ckpt: bool,
    /// The step of the last checkpoint this rank took in this generation.
    checkpointed: Option<u64>,
    /// The worker must exit after this generation (told to, or its agent is gone).
    exit: bool,
    /// The coordinator is gone: pause at the next agreed boundary.
    orphaned: bool,
    /// Reports re-sent to a coordinator that adopts this rank.
    recent: Recent,
    /// A new coordinator started another generation while this rank was paused.
    next: Option<Box<GenerationStart>>,
}

impl Boundary for Coordinated<'_> {
    fn stepped(&mut self, r: &crate::trainer::StepReport, state: &tessera_protocol::checkpoint::TrainState) -> Result<()> {
        let report = step_report(self.g.plan.generation, (self.g.rank, self.world), r, self.tokens_per_sample, state);
        let ev = WorkerEvent::Step { worker: self.ctx.worker(), report };
        self.recent.keep(ev.clone());
        self.ctx.send(ev);
        Ok(())
    }

    fn requests(&mut self, _step: u64) -> Requests {
        let generation = self.g.plan.generation;
        loop {
            match self.rx.try_recv() {
                // A late copy of a request that the ranks already answered (another rank got it
                // first) asks for nothing new.
                Ok(DeviceCmd::Checkpoint { generation: x, asked_at }) if x == generation => {
                    self.want_ckpt |= self.checkpointed.is_none_or(|s| s <= asked_at.0);
                }
                Ok(DeviceCmd::Stop { generation: x, checkpoint }) if x == generation => {
                    self.want_stop = true;
                    self.want_ckpt |= checkpoint;
                }
                // A closed channel stays closed: without the break this loop would spin forever
                // once the agent is gone (a coordinator lost to SIGKILL).
                Ok(DeviceCmd::Exit) | Err(TryRecvError::Disconnected) => {
                    self.exit = true;
                    self.want_stop = true;
                    break;
                }
                // Only a pool worker keeps its state for a new coordinator.
                Ok(DeviceCmd::Orphaned) => self.orphaned = self.ctx.reattach.is_some(),
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
            }
        }
        Requests { stop: self.want_stop, checkpoint: self.want_ckpt, pause: self.orphaned }
    }

    fn validated(&mut self, report: tessera_protocol::ValidationReport) -> Result<()> {
        let ev = WorkerEvent::Validated { worker: self.ctx.worker(), report };
        self.recent.keep(ev.clone());
        self.ctx.send(ev);
        Ok(())
    }

    fn validation_skipped(&mut self, step: u64) {
        tessera_protocol::say!("[{}] validation of step {step} skipped: a rank has no held-out set", self.ctx.worker());
    }

    fn checkpoint(&mut self, snap: Snapshot) -> Result<()> {
        self.want_ckpt = false;
        self.checkpointed = Some(snap.step);
        // Written in the background while training goes on: it must own its copy.
        if snap.live {
            return Err(WorkerError::Checkpoint {
                path: snap.root().to_path_buf(),
                reason: "a world of one's live snapshot cannot be written in the background".into(),
            });
        }
        write_snapshot(self.ctx, self.g, snap, self.writers)
    }

    fn pause(&mut self, step: u64) -> Result<bool> {
        // Shards written so far are reported (to whoever listens) before the state is offered.
        for w in self.writers.drain(..) {
            let _ = w.join();
        }
        let at = Paused { generation: self.g.plan.generation, rank: self.g.rank, world: self.world, step: Step(step) };
        Ok(match wait_adopted(self.ctx, self.rx, at, &self.recent) {
            Resumed::Adopted => {
                // What the lost coordinator asked for is not the new one's.
                (self.orphaned, self.want_stop, self.want_ckpt) = (false, false, false);
                true
            }
            Resumed::Replaced(g) => {
                self.next = Some(g);
                false
            }
            Resumed::Exit => {
                self.exit = true;
                false
            }
        })
    }
}

/// What the end of a plan carries over from the loop.
struct FinalBoundary {
    world: u32,
    /// The coordinator was lost before the plan's end.
    orphaned: bool,
    recent: Recent,
}

/// At the last step of the generation's plan the ranks wait for the coordinator: each
/// `Checkpoint` writes the final state again (the one before failed, e.g. a full disk), and
/// `Stop` ends the generation once the shards written so far are reported. A lost coordinator
/// (pool mode) leaves every rank here waiting for one to adopt them. Returns true when the
/// worker must exit (told to, or its agent is gone), and a generation to run next. No
/// collective runs here.
fn final_boundary(
    ctx: &DeviceCtx,
    t: &mut FsdpTrainer<TcpRing, DataPipeline>,
    g: &GenerationStart,
    rx: &Receiver<DeviceCmd>,
    writers: &mut Vec<JoinHandle<()>>,
    end: FinalBoundary,
) -> Result<(bool, Option<Box<GenerationStart>>)> {
    let generation = g.plan.generation;
    let mut next = None;
    let mut orphaned = end.orphaned && ctx.reattach.is_some();
    let exit = loop {
        if orphaned {
            for w in writers.drain(..) {
                let _ = w.join();
            }
            let at = Paused { generation, rank: g.rank, world: end.world, step: Step(t.state().step) };
            match wait_adopted(ctx, rx, at, &end.recent) {
                Resumed::Adopted => orphaned = false,
                Resumed::Replaced(g) => {
                    next = Some(g);
                    break false;
                }
                Resumed::Exit => break true,
            }
        }
        if ctx.abort.lock().expect("abort state").is_aborted(generation) {
            break false;
        }
        match rx.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(DeviceCmd::Checkpoint { generation: x, .. }) if x == generation => {
                write_snapshot(ctx, g, t.snapshot(generation.0), writers)?
            }
            Ok(DeviceCmd::Stop { generation: x, checkpoint }) if x == generation => {
                if checkpoint {
                    write_snapshot(ctx, g, t.snapshot(generation.0), writers)?;
                }
                break false;
            }
            Ok(DeviceCmd::Exit) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break true,
            Ok(DeviceCmd::Orphaned) => orphaned = ctx.reattach.is_some(),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    // Reported written before the generation's end, as at any stop.
    for w in writers.drain(..) {
        let _ = w.join();
    }
    Ok((exit, next))
}
