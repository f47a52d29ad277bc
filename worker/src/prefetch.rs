//! Overlaps data loading with compute: a background thread produces the micro-batches of the
//! coming steps (in ledger order) while the trainer runs the current one.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use tessera_model::MaskedBatch;
use tessera_protocol::{SampleLedger, SampleRef};

use crate::error::{Result, WorkerError};
use crate::source::BatchSource;

type Produced = (Vec<SampleRef>, Result<MaskedBatch>);

/// A [`BatchSource`] that predicts the next requests (consecutive micro-batches of the ledger)
/// and prepares them on a background thread, `depth` batches ahead. A request that differs from
/// the prediction (resume, schedule change) restarts the thread at that position, so results
/// are always those of the inner source for exactly the requested references.
pub struct Prefetcher<S: BatchSource + 'static> {
    ledger: SampleLedger,
    micro: u64,
    depth: usize,
    inner: Option<S>,
    running: Option<Running<S>>,
    skipped: Arc<AtomicU64>,
}

struct Running<S> {
    rx: Receiver<Produced>,
    stop: SyncSender<()>,
    handle: JoinHandle<S>,
}

impl<S: BatchSource + 'static> Prefetcher<S> {
    /// Prefetches `depth` micro-batches of `micro` samples from `inner`, following `ledger`.
    pub fn new(inner: S, ledger: SampleLedger, micro: usize, depth: usize) -> Self {
        let skipped = inner.skipped_counter();
        Self { ledger, micro: micro as u64, depth: depth.max(1), inner: Some(inner), running: None, skipped }
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.try_send(());
            drop(r.rx); // unblocks a producer waiting to send
            if let Ok(inner) = r.handle.join() {
                self.inner = Some(inner);
            }
        }
    }

    fn start(&mut self, from: u64) {
        let Some(mut inner) = self.inner.take() else { return };
        let (tx, rx) = sync_channel::<Produced>(self.depth);
        let (stop_tx, stop_rx) = sync_channel::<()>(1);
        let ledger = self.ledger.clone();
        let micro = self.micro;
        let handle = std::thread::Builder::new()
            .name("tessera-prefetch".into())
            .spawn(move || {
                let mut pos = from;
                loop {
                    if stop_rx.try_recv().is_ok() {
                        break;
                    }
                    let refs = ledger.locate_range(pos, micro);
                    let batch = inner.batch(&refs);
                    if tx.send((refs, batch)).is_err() {
                        break;
                    }
                    pos += micro;
                }
                inner
            })
            .expect("spawning the prefetch thread");
        self.running = Some(Running { rx, stop: stop_tx, handle });
    }
}

impl<S: BatchSource + 'static> BatchSource for Prefetcher<S> {
    fn batch(&mut self, refs: &[SampleRef]) -> Result<MaskedBatch> {
        if refs.len() as u64 != self.micro {
            // Not the predicted shape: serve it directly.
            self.stop();
            return self.inner.as_mut().expect("inner source is home when stopped").batch(refs);
        }
        if self.running.is_none() {
            self.start(refs[0].index);
        }
        if let Some(Ok((predicted, batch))) = self.running.as_ref().map(|r| r.rx.recv())
            && predicted == refs
        {
            return batch;
        }
        // Mispredicted (another position or another ledger): serve this request directly and
        // predict again from the position after it.
        self.stop();
        let inner =
            self.inner.as_mut().ok_or_else(|| WorkerError::Thread { thread: "the prefetch thread", detail: "it panicked".into() })?;
        let batch = inner.batch(refs);
        self.start(refs[0].index + self.micro);
        batch
    }

    fn set_ledger(&mut self, ledger: &SampleLedger) {
        self.stop();
        self.ledger = ledger.clone();
    }

    fn skipped_counter(&self) -> Arc<AtomicU64> {
        // Skips are counted when batches are produced, possibly a few batches ahead of use.
        Arc::clone(&self.skipped)
    }
}

impl<S: BatchSource + 'static> Drop for Prefetcher<S> {
    fn drop(&mut self) {
        self.stop();
    }
}
