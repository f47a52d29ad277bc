//! A rank's host collective, either on a thread of its own, so that the trainer can start an
//! all-gather before the block that needs it (prefetch of the next unit) and a reduce-scatter
//! after the block that produced it while it computes, or inline on the caller's thread (the
//! same calls, each done when submitted).
//!
//! Calls run one at a time in submission order, the order every rank submits them in, which
//! keeps the collective's one-owning-thread contract. A submitted call returns a [`Ticket`];
//! blocking calls are a submit and a wait. Dropping the thread with calls still in flight (an
//! error elsewhere ended the step) aborts the collective so that nothing waits for peers that
//! moved on; otherwise it closes as the collective would.
//!
//! The thread pays off only where a core is free for it: with 2 ranks of 1 compute thread on
//! 2 cores, handing each call to another thread cost 13% of the tiny preset's step without
//! prefetch and 7% with it, hence `train.fsdp_prefetch` (off by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use tessera_ops::{AbortHandle, Collective, Element, OpKind, OpsError, Rank, ReduceOp};

type Job<C> = Box<dyn FnOnce(&mut C) + Send>;

/// The result of a submitted call, once it ran.
#[derive(Debug)]
pub struct Ticket<T> {
    rx: Receiver<Result<T, OpsError>>,
    op: OpKind,
    rank: Rank,
}

impl<T> Ticket<T> {
    /// Waits for the call's result.
    pub fn wait(self) -> Result<T, OpsError> {
        // A closed channel means the thread died with the job (a panic inside the collective).
        self.rx.recv().unwrap_or(Err(OpsError::Aborted { op: self.op, seq: 0, rank: self.rank }))
    }
}

/// The collective `C`, owned by its own thread or run inline.
pub struct CommThread<C> {
    rank: Rank,
    world: usize,
    abort: AbortHandle,
    in_flight: Arc<AtomicUsize>,
    tx: Option<Sender<Job<C>>>,
    thread: Option<JoinHandle<()>>,
    /// The collective itself when calls run on the caller's thread.
    inline: Option<std::cell::RefCell<C>>,
}

impl<C> std::fmt::Debug for CommThread<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommThread").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

impl<C: Collective + 'static> CommThread<C> {
    /// Moves `coll` onto a new thread.
    pub fn spawn(coll: C) -> std::io::Result<Self> {
        let (rank, world, abort) = (coll.rank(), coll.world(), coll.abort_handle());
        let (tx, rx) = channel::<Job<C>>();
        let thread = std::thread::Builder::new().name(format!("comm-rank-{}", rank.0)).spawn(move || {
            let mut coll = coll;
            for job in rx {
                job(&mut coll);
            }
        })?;
        Ok(Self { rank, world, abort, in_flight: Arc::new(AtomicUsize::new(0)), tx: Some(tx), thread: Some(thread), inline: None })
    }

    /// Keeps `coll` on the caller's thread: every call runs when submitted.
    pub fn inline(coll: C) -> Self {
        let (rank, world, abort) = (coll.rank(), coll.world(), coll.abort_handle());
        let in_flight = Arc::new(AtomicUsize::new(0));
        Self { rank, world, abort, in_flight, tx: None, thread: None, inline: Some(std::cell::RefCell::new(coll)) }
    }

    /// This rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    /// The world size.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Queues `f` behind the calls already submitted.
    pub fn submit<T: Send + 'static>(&self, op: OpKind, f: impl FnOnce(&mut C) -> Result<T, OpsError> + Send + 'static) -> Ticket<T> {
        let (tx, rx) = channel();
        if let Some(coll) = &self.inline {
            let _ = tx.send(f(&mut coll.borrow_mut()));
            return Ticket { rx, op, rank: self.rank };
        }
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.fetch_add(1, Ordering::SeqCst);
        let job: Job<C> = Box::new(move |c: &mut C| {
            let r = f(c);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(r);
        });
        if let Some(jobs) = &self.tx {
            // A send error leaves the ticket's channel closed: `wait` reports it.
            let _ = jobs.send(job);
        }
        Ticket { rx, op, rank: self.rank }
    }

    /// Starts an all-gather of this rank's shard `local` into a vector of `numel` elements.
    pub fn start_all_gather(&self, local: Vec<f32>, numel: usize) -> Ticket<Vec<f32>> {
        self.submit(OpKind::AllGather, move |c| {
            let mut full = vec![0f32; numel];
            c.all_gather(&local, &mut full).map(|()| full)
        })
    }

    /// Starts a summing reduce-scatter of `full`; the ticket holds this rank's `shard_len`
    /// elements of the result.
    pub fn start_reduce_scatter(&self, full: Vec<f32>, shard_len: usize) -> Ticket<Vec<f32>> {
        self.submit(OpKind::ReduceScatter, move |c| {
            let mut shard = vec![0f32; shard_len];
            c.reduce_scatter(&full, &mut shard, ReduceOp::Sum).map(|()| shard)
        })
    }

    /// Blocking all-reduce of `buf` in place (small buffers: it is copied to the thread).
    pub fn all_reduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<(), OpsError> {
        let mut v = buf.to_vec();
        let out = self
            .submit(OpKind::AllReduce, move |c| {
                c.all_reduce(&mut v, op)?;
                Ok(v)
            })
            .wait()?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    /// Blocking broadcast of `root`'s `buf` (small buffers).
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: Rank) -> Result<(), OpsError> {
        let mut v = buf.to_vec();
        let out = self
            .submit(OpKind::Broadcast, move |c| {
                c.broadcast(&mut v, root)?;
                Ok(v)
            })
            .wait()?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    /// Blocking barrier.
    pub fn barrier(&self) -> Result<(), OpsError> {
        self.submit(OpKind::Barrier, |c| c.barrier()).wait()
    }
}

impl<C> Drop for CommThread<C> {
    fn drop(&mut self) {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            self.abort.abort();
        }
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use tessera_ops::{JobAuth, RingConfig, Secret, TcpRing};

    use super::*;

    fn rings(world: usize) -> Vec<TcpRing> {
        let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(r, l)| {
                let peers = peers.clone();
                std::thread::spawn(move || {
                    let mut c = RingConfig::new(JobAuth { job_id: 3, generation: 0, secret: Secret::new(b"comm-test".to_vec()) });
                    c.timeout = Duration::from_secs(30);
                    TcpRing::connect(l, Rank(r as u32), &peers, c).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Submitted calls run in order and give the collective's results; started gathers and
    /// reduces overlap with the caller and still match on both ranks.
    #[test]
    fn calls_run_in_submission_order_with_the_collectives_results() {
        let threads: Vec<_> = rings(2)
            .into_iter()
            .map(|ring| {
                std::thread::spawn(move || {
                    let c = CommThread::spawn(ring).unwrap();
                    let r = c.rank().0 as f32;
                    let mine = tessera_ops::shard_len(5, 2, c.rank().0 as usize);
                    let g = c.start_all_gather(vec![r + 1.0; mine], 5);
                    let s = c.start_reduce_scatter(vec![r + 1.0; 5], mine);
                    let mut x = [r];
                    c.all_reduce(&mut x, ReduceOp::Sum).unwrap();
                    (g.wait().unwrap(), s.wait().unwrap(), x[0])
                })
            })
            .collect();
        let out: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(out[0].0, vec![1.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(out[1].0, out[0].0);
        assert_eq!(out[0].1, vec![3.0; 3]);
        assert_eq!(out[1].1, vec![3.0; 2]);
        assert_eq!((out[0].2, out[1].2), (1.0, 1.0));
    }

    /// Dropping the thread while a started call waits for a peer that never comes aborts it
    /// at once instead of waiting out the 30 s deadline.
    #[test]
    fn dropping_with_a_call_in_flight_aborts_it() {
        let mut rs = rings(2);
        let _silent_peer = rs.pop().unwrap();
        let c = CommThread::spawn(rs.pop().unwrap()).unwrap();
        let pending = c.start_all_gather(vec![1.0; 4], 8);
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        drop(c);
        assert!(t.elapsed() < Duration::from_secs(5), "drop took {:?}", t.elapsed());
        assert!(pending.wait().is_err());
    }
}
