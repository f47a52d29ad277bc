//! The chunk pipeline of one ring call: the owning thread receives (and reduces) chunks from the
//! left neighbour while a scoped sender thread writes chunks to the right neighbour.
//!
//! Chunks are disjoint `&mut` pieces of the caller's buffer. Forwarding a chunk *lends* it to the
//! sender thread, which writes it and hands it back; receiving into a lent chunk first waits for
//! its return. This overlaps sending chunk k with receiving and reducing chunk k+1 without copies
//! and without `unsafe`.
//!
//! Waiting for a return cannot deadlock: the only chunks received into after being lent are
//! reduce-scatter chunks re-used by the all-gather phase of all-reduce, and a neighbour reaches
//! its own all-gather phase only after reading every reduce-scatter frame we send.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::element::Element;
use crate::frame::{HEADER_LEN, Header, read_header};
use crate::types::ReduceOp;

use super::guard::Shared;

/// Payloads up to this size are copied behind their header and written with one syscall.
const COALESCE_BYTES: usize = 32 * 1024;

/// What went wrong on one side of the pipeline; the ring turns it into an `OpsError`.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Reading from the left neighbour failed.
    Recv(io::Error),
    /// Writing to the right neighbour failed.
    Send(io::Error),
    /// The left neighbour sent a frame we did not expect.
    Protocol(String),
}

/// The sockets of a ring call and the guard that can shut them down.
pub(crate) struct Link<'s> {
    /// Connection from rank - 1 (we only read from it).
    pub left: &'s TcpStream,
    /// Connection to rank + 1 (we only write to it).
    pub right: &'s TcpStream,
    /// Shuts both sockets down on the first fault so the other side unblocks promptly.
    pub shared: &'s Shared,
}

enum Out<'a, T> {
    /// Read-only data that needs no return (e.g. reduce-scatter input).
    Shared(&'a [T]),
    /// Chunk `id` of the slot table, returned after it is written.
    Lent(usize, &'a mut [T]),
}

/// The owning thread's side of the sender: lends chunks and collects them back.
pub(crate) struct Lender<'a, T> {
    tx: Sender<(u16, Out<'a, T>)>,
    back: Receiver<(usize, &'a mut [T])>,
    slots: Vec<Option<&'a mut [T]>>,
}

fn sender_stopped() -> Fault {
    // Only reached after the sender recorded its own (earlier, and therefore reported) fault.
    Fault::Send(io::Error::other("sender thread stopped"))
}

impl<'a, T: Element> Lender<'a, T> {
    /// Chunk `id`, waiting for the sender to return it if it is lent.
    pub fn slot(&mut self, id: usize) -> Result<&mut [T], Fault> {
        while self.slots[id].is_none() {
            let (i, chunk) = self.back.recv().map_err(|_| sender_stopped())?;
            self.slots[i] = Some(chunk);
        }
        self.slots[id].as_deref_mut().ok_or_else(sender_stopped)
    }

    /// Queues chunk `id` for sending as part of `step`.
    pub fn lend(&mut self, step: usize, id: usize) -> Result<(), Fault> {
        self.slot(id)?;
        let chunk = self.slots[id].take().ok_or_else(sender_stopped)?;
        self.tx.send((step as u16, Out::Lent(id, chunk))).map_err(|_| sender_stopped())
    }

    /// Queues read-only data for sending as part of `step`.
    pub fn send_shared(&mut self, step: usize, data: &'a [T]) -> Result<(), Fault> {
        self.tx.send((step as u16, Out::Shared(data))).map_err(|_| sender_stopped())
    }
}

/// The owning thread's side of the left connection.
pub(crate) struct Reader<'s> {
    left: &'s TcpStream,
    template: Header,
}

impl Reader<'_> {
    /// Receives the frame of `step` into `dst`, which must have exactly the frame's length.
    pub fn recv<T: Element>(&mut self, step: usize, dst: &mut [T]) -> Result<(), Fault> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        let want = Header { step: step as u16, len: bytes.len() as u64, ..self.template };
        let raw = read_header(self.left).map_err(Fault::Recv)?;
        want.check(&raw).map_err(Fault::Protocol)?;
        let mut left = self.left;
        left.read_exact(bytes).map_err(Fault::Recv)
    }

    /// Receives the frame of `step` into `scratch` and combines it into `dst`.
    pub fn recv_reduce<T: Element>(&mut self, step: usize, dst: &mut [T], scratch: &mut [T], op: ReduceOp) -> Result<(), Fault> {
        let incoming = &mut scratch[..dst.len()];
        self.recv(step, incoming)?;
        T::combine(dst, incoming, op);
        Ok(())
    }
}

/// Runs `body` with a sender thread attached; returns the first fault of either side.
///
/// `template` carries the op, dtype and sequence number of every frame; `slots` is the table of
/// chunks `body` may lend.
pub(crate) fn run<'a, T: Element, R>(
    link: &Link<'_>,
    template: Header,
    slots: Vec<&'a mut [T]>,
    body: impl FnOnce(&mut Lender<'a, T>, &mut Reader<'_>) -> Result<R, Fault>,
) -> Result<R, Fault> {
    let first: OnceLock<Fault> = OnceLock::new();
    let result = std::thread::scope(|scope| {
        let (tx, rx) = channel();
        let (back_tx, back) = channel();
        let first = &first;
        scope.spawn(move || send_loop(rx, back_tx, link.right, template, first, link.shared));
        let mut lender = Lender { tx, back, slots: slots.into_iter().map(Some).collect() };
        let mut reader = Reader { left: link.left, template };
        let r = body(&mut lender, &mut reader);
        if let Err(fault) = r {
            let _ = first.set(fault);
            link.shared.shutdown_streams();
            return None;
        }
        // Dropping the lender closes the channel: the sender drains what is queued and exits.
        drop(lender);
        r.ok()
    });
    match (first.into_inner(), result) {
        (Some(fault), _) => Err(fault),
        (None, Some(r)) => Ok(r),
        (None, None) => Err(sender_stopped()),
    }
}

fn send_loop<'a, T: Element>(
    rx: Receiver<(u16, Out<'a, T>)>,
    back: Sender<(usize, &'a mut [T])>,
    mut right: &TcpStream,
    template: Header,
    first: &OnceLock<Fault>,
    shared: &Shared,
) {
    let mut small = Vec::with_capacity(HEADER_LEN + COALESCE_BYTES);
    for (step, out) in rx {
        let bytes: &[u8] = match &out {
            Out::Shared(d) => bytemuck::cast_slice(d),
            Out::Lent(_, d) => bytemuck::cast_slice(d),
        };
        let header = Header { step, len: bytes.len() as u64, ..template }.encode();
        let written = if bytes.len() <= COALESCE_BYTES {
            small.clear();
            small.extend_from_slice(&header);
            small.extend_from_slice(bytes);
            right.write_all(&small)
        } else {
            right.write_all(&header).and_then(|()| right.write_all(bytes))
        };
        if let Err(e) = written {
            let _ = first.set(Fault::Send(e));
            shared.shutdown_streams();
            return;
        }
        if let Out::Lent(id, chunk) = out {
            // After the owning thread has queued its last chunk it stops collecting returns;
            // keep draining the queue regardless.
            let _ = back.send((id, chunk));
        }
    }
}
