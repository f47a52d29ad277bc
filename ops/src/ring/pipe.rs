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
//!
//! Calls whose writes can never wait on the neighbour skip the thread and write inline (see
//! [`run`]); payloads go through the link's shared-memory file when it has one (`super::shm`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::element::Element;
use crate::frame::{HEADER_LEN, Header, read_header};
use crate::types::ReduceOp;

use super::guard::Shared;
use super::shm::{Inbox, Outbox, SLOTS};

/// Payloads up to this size are copied behind their header and written with one syscall.
const COALESCE_BYTES: usize = 32 * 1024;

/// Calls on buffers up to this size carry payloads on the socket and write from the owning
/// thread instead of a sender thread, whose start would dominate their latency. Writing before
/// reading cannot block here: a link never holds more than about one call's traffic (under 2x
/// this size) unread, far below the kernel's socket buffers.
const INLINE_BYTES: usize = 32 * 1024;

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
    /// Connection from rank - 1: frames in, shared-memory credits out.
    pub left: &'s TcpStream,
    /// Connection to rank + 1: frames out, shared-memory credits in.
    pub right: &'s TcpStream,
    /// Shuts both sockets down on the first fault so the other side unblocks promptly.
    pub shared: &'s Shared,
    /// Same-host payload path to the right neighbour, if set up.
    pub outbox: Option<&'s mut Outbox>,
    /// Same-host payload path from the left neighbour, if set up.
    pub inbox: Option<&'s mut Inbox>,
}

enum Out<'a, T> {
    /// Read-only data that needs no return (e.g. reduce-scatter input).
    Shared(&'a [T]),
    /// Chunk `id` of the slot table, returned after it is written.
    Lent(usize, &'a mut [T]),
}

/// Where lent chunks go.
enum Sink<'a, 's, T> {
    /// To the sender thread, which hands lent chunks back after writing them.
    Thread { tx: Sender<(u16, Out<'a, T>)>, back: Receiver<(usize, &'a mut [T])> },
    /// Written at once by the owning thread (small calls, see [`INLINE_BYTES`] and [`run`]).
    Inline { right: &'s TcpStream, outbox: Option<&'s mut Outbox>, template: Header, frame: Vec<u8> },
}

/// The owning thread's side of the sender: lends chunks and collects them back.
pub(crate) struct Lender<'a, 's, T> {
    sink: Sink<'a, 's, T>,
    slots: Vec<Option<&'a mut [T]>>,
}

fn sender_stopped() -> Fault {
    // Only reached after the sender recorded its own (earlier, and therefore reported) fault.
    Fault::Send(io::Error::other("sender thread stopped"))
}

impl<'a, T: Element> Lender<'a, '_, T> {
    /// Chunk `id`, waiting for the sender to return it if it is lent.
    pub fn slot(&mut self, id: usize) -> Result<&mut [T], Fault> {
        while self.slots[id].is_none() {
            let Sink::Thread { back, .. } = &self.sink else { return Err(sender_stopped()) };
            let (i, chunk) = back.recv().map_err(|_| sender_stopped())?;
            self.slots[i] = Some(chunk);
        }
        self.slots[id].as_deref_mut().ok_or_else(sender_stopped)
    }

    /// Queues chunk `id` for sending as part of `step`.
    pub fn lend(&mut self, step: usize, id: usize) -> Result<(), Fault> {
        self.slot(id)?;
        match &mut self.sink {
            Sink::Thread { tx, .. } => {
                let chunk = self.slots[id].take().ok_or_else(sender_stopped)?;
                tx.send((step as u16, Out::Lent(id, chunk))).map_err(|_| sender_stopped())
            }
            Sink::Inline { right, outbox, template, frame } => {
                let chunk = self.slots[id].as_deref().ok_or_else(sender_stopped)?;
                send_frame(right, outbox.as_deref_mut(), template, step as u16, bytemuck::cast_slice(chunk), frame).map_err(Fault::Send)
            }
        }
    }

    /// Queues read-only data for sending as part of `step`.
    pub fn send_shared(&mut self, step: usize, data: &'a [T]) -> Result<(), Fault> {
        match &mut self.sink {
            Sink::Thread { tx, .. } => tx.send((step as u16, Out::Shared(data))).map_err(|_| sender_stopped()),
            Sink::Inline { right, outbox, template, frame } => {
                send_frame(right, outbox.as_deref_mut(), template, step as u16, bytemuck::cast_slice(data), frame).map_err(Fault::Send)
            }
        }
    }
}

/// Sends one frame: the payload into the shared-memory slot when `outbox` is given (before the
/// header, so it is there when the header arrives), else behind the header on the socket, where
/// small payloads are copied behind the header to make one syscall.
fn send_frame(
    mut right: &TcpStream,
    outbox: Option<&mut Outbox>,
    template: &Header,
    step: u16,
    bytes: &[u8],
    small: &mut Vec<u8>,
) -> io::Result<()> {
    let header = Header { step, len: bytes.len() as u64, ..*template }.encode();
    if let Some(outbox) = outbox {
        outbox.put(right, bytes)?;
        right.write_all(&header)
    } else if bytes.len() <= COALESCE_BYTES {
        small.clear();
        small.extend_from_slice(&header);
        small.extend_from_slice(bytes);
        right.write_all(small)
    } else {
        right.write_all(&header).and_then(|()| right.write_all(bytes))
    }
}

/// The owning thread's side of the left connection.
pub(crate) struct Reader<'s> {
    left: &'s TcpStream,
    template: Header,
    /// Where payloads are (None: behind the header on the socket).
    inbox: Option<&'s mut Inbox>,
}

impl Reader<'_> {
    /// Receives the frame of `step` into `dst`, which must have exactly the frame's length.
    pub fn recv<T: Element>(&mut self, step: usize, dst: &mut [T]) -> Result<(), Fault> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        let want = Header { step: step as u16, len: bytes.len() as u64, ..self.template };
        let raw = read_header(self.left).map_err(Fault::Recv)?;
        want.check(&raw).map_err(Fault::Protocol)?;
        match &mut self.inbox {
            Some(inbox) => inbox.take(self.left, bytes).map_err(Fault::Recv),
            None => {
                let mut left = self.left;
                left.read_exact(bytes).map_err(Fault::Recv)
            }
        }
    }

    /// Receives the frame of `step` into `scratch` and combines it into `dst`.
    pub fn recv_reduce<T: Element>(&mut self, step: usize, dst: &mut [T], scratch: &mut [T], op: ReduceOp) -> Result<(), Fault> {
        let incoming = &mut scratch[..dst.len()];
        self.recv(step, incoming)?;
        T::combine(dst, incoming, op);
        Ok(())
    }
}

/// Runs `body` with a sender attached; returns the first fault of either side.
///
/// `template` carries the op, dtype and sequence number of every frame; `slots` is the table of
/// chunks `body` may lend; `total_bytes` is the size of the call's buffer and `frames` an upper
/// bound on the frames this rank sends in the call.
///
/// Payloads travel through shared memory when the link has it and the call is above
/// [`INLINE_BYTES`] (both ends derive this from the same size). Independently, and locally, the
/// owning thread writes frames itself instead of starting a sender thread when writing can
/// never wait on the neighbour: small socket payloads, or at most `SLOTS / 2` shared-memory
/// frames (any frames of the previous call still unread are consumed by the neighbour without
/// our help, and then enough slots are free for the whole call).
pub(crate) fn run<'a, T: Element, R>(
    link: &mut Link<'_>,
    template: Header,
    slots: Vec<&'a mut [T]>,
    total_bytes: usize,
    frames: usize,
    body: impl FnOnce(&mut Lender<'a, '_, T>, &mut Reader<'_>) -> Result<R, Fault>,
) -> Result<R, Fault> {
    let slots: Vec<Option<&'a mut [T]>> = slots.into_iter().map(Some).collect();
    let on_socket = total_bytes <= INLINE_BYTES;
    let inbox = if on_socket { None } else { link.inbox.as_deref_mut() };
    let mut reader = Reader { left: link.left, template, inbox };
    let outbox = if on_socket { None } else { link.outbox.as_deref_mut() };
    let inline = on_socket || (outbox.is_some() && frames <= SLOTS / 2);
    if inline {
        let sink = Sink::Inline { right: link.right, outbox, template, frame: Vec::new() };
        let r = body(&mut Lender { sink, slots }, &mut reader);
        if r.is_err() {
            link.shared.shutdown_streams();
        }
        return r;
    }
    let first: OnceLock<Fault> = OnceLock::new();
    let result = std::thread::scope(|scope| {
        let (tx, rx) = channel();
        let (back_tx, back) = channel();
        let first = &first;
        let (right, shared) = (link.right, link.shared);
        scope.spawn(move || send_loop(rx, back_tx, right, outbox, template, first, shared));
        let mut lender = Lender { sink: Sink::Thread { tx, back }, slots };
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
    right: &TcpStream,
    mut outbox: Option<&mut Outbox>,
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
        let written = send_frame(right, outbox.as_deref_mut(), &template, step, bytes, &mut small);
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
