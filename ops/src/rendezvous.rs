//! A small authenticated rendezvous: every rank announces its ring listener address to one
//! server and receives the full table once all `world` ranks have joined.
//!
//! After the usual handshake (purpose `Rendezvous`, the server announcing itself as rank
//! `world`), a client sends its address as a `u16` length plus UTF-8 text; the server answers
//! with a `u32` count and the addresses in rank order in the same encoding. Unauthenticated
//! connections are dropped and do not count; a rank that reconnects replaces its earlier entry.
//!
//! *Payload* ([`join_with_payload`]): a client may set the top bit of its address length; it then
//! sends a `u32` length and an opaque payload after its address (only rank 0's is non-empty, e.g.
//! the NCCL unique id), and the server appends rank 0's payload (`u32` length + bytes, empty when
//! rank 0 sent none) to that client's table. Clients without the bit (plain [`join`]) see the
//! original exchange byte for byte, so the TCP ring's wire format is unchanged.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::{self, Identity, JobAuth, Purpose};
use crate::error::{OpsError, Result};
use crate::types::{OpKind, Rank};

/// Between polls of the non-blocking listener (std has no accept with a timeout).
const POLL: Duration = Duration::from_millis(5);
/// Longest address text accepted from the network.
const MAX_ADDR_LEN: usize = 256;
/// Bound on an incoming connection's handshake and address message.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Set in a client's address length when a payload follows (addresses are at most 256 bytes).
const PAYLOAD_FLAG: u16 = 0x8000;
/// Largest payload accepted from the network (an NCCL unique id is 128 bytes).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// What the server keeps of one admitted client.
struct Member {
    stream: TcpStream,
    addr: SocketAddr,
    /// `Some` when the client asked for rank 0's payload; holds its own contribution.
    payload: Option<Vec<u8>>,
}

/// The rendezvous server for one job generation.
pub struct RendezvousServer {
    listener: TcpListener,
    world: usize,
    auth: JobAuth,
}

impl RendezvousServer {
    /// Binds the server (use port 0 and [`RendezvousServer::local_addr`] in tests).
    pub fn bind(addr: impl ToSocketAddrs, world: usize, auth: JobAuth) -> Result<Self> {
        let setup = |detail: String| OpsError::Setup { op: OpKind::Rendezvous, rank: Rank(world as u32), detail };
        if world == 0 {
            return Err(setup("world size must be at least 1".into()));
        }
        let listener = TcpListener::bind(addr).map_err(|e| setup(format!("bind: {e}")))?;
        Ok(RendezvousServer { listener, world, auth })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| OpsError::Setup {
            op: OpKind::Rendezvous,
            rank: Rank(self.world as u32),
            detail: e.to_string(),
        })
    }

    /// Runs [`RendezvousServer::serve`] on a new thread.
    pub fn spawn(self, timeout: Duration) -> JoinHandle<Result<Vec<SocketAddr>>> {
        std::thread::spawn(move || self.serve(timeout))
    }

    /// Collects every rank's address, sends the table to all of them and returns it.
    pub fn serve(self, timeout: Duration) -> Result<Vec<SocketAddr>> {
        let deadline = Instant::now() + timeout;
        let server_rank = Rank(self.world as u32);
        let setup = |detail: String| OpsError::Setup { op: OpKind::Rendezvous, rank: server_rank, detail };
        self.listener.set_nonblocking(true).map_err(|e| setup(e.to_string()))?;
        let mut joined: Vec<Option<Member>> = (0..self.world).map(|_| None).collect();
        let me = Identity { purpose: Purpose::Rendezvous, world: self.world as u32, rank: self.world as u32, peer: 0 };
        // Clients are authenticated on their own threads so a slow stray cannot hold up the job.
        let (tx, rx) = mpsc::channel();
        while joined.iter().any(Option::is_none) {
            while let Ok((rank, member)) = rx.try_recv() {
                // A rank that reconnects replaces its earlier entry.
                joined[rank as usize] = Some(member);
            }
            if !joined.iter().any(Option::is_none) {
                break;
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = joined.iter().enumerate().filter(|(_, j)| j.is_none()).map(|(r, _)| r.to_string()).collect();
                return Err(setup(format!("ranks {} did not join within {timeout:?}", missing.join(", "))));
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let (tx, auth) = (tx.clone(), self.auth.clone());
                    std::thread::spawn(move || {
                        // A stray or failed client is simply dropped; the server keeps waiting.
                        if let Ok(admitted) = admit(stream, &auth, me) {
                            let _ = tx.send(admitted);
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(setup(format!("accept: {e}"))),
            }
        }
        let table: Vec<SocketAddr> = joined.iter().flatten().map(|m| m.addr).collect();
        let mut reply = (table.len() as u32).to_le_bytes().to_vec();
        for a in &table {
            encode_addr(&mut reply, a);
        }
        // Only rank 0 contributes; a plain client at rank 0 contributes nothing.
        let root_payload = joined.first().and_then(|m| m.as_ref()?.payload.clone()).unwrap_or_default();
        let mut with_payload = reply.clone();
        with_payload.extend_from_slice(&(root_payload.len() as u32).to_le_bytes());
        with_payload.extend_from_slice(&root_payload);
        for (rank, mut m) in joined.into_iter().flatten().enumerate() {
            let _ = m.stream.set_write_timeout(Some(CLIENT_TIMEOUT));
            let bytes = if m.payload.is_some() { &with_payload } else { &reply };
            m.stream.write_all(bytes).map_err(|e| setup(format!("sending the table to rank {rank}: {e}")))?;
        }
        Ok(table)
    }
}

/// Authenticates one client and reads its address (and its payload when it sends one).
fn admit(mut stream: TcpStream, auth: &JobAuth, me: Identity) -> std::result::Result<(u32, Member), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    let rank = auth::respond(&mut stream, auth, me, None, CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(|e| e.to_string())?;
    let (addr, flagged) = read_tagged_addr(&mut stream).map_err(|e| e.to_string())?;
    let payload = if flagged { Some(read_payload(&mut stream).map_err(|e| e.to_string())?) } else { None };
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok((rank, Member { stream, addr, payload }))
}

/// Parameters of [`join`].
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// This rank.
    pub rank: Rank,
    /// World size.
    pub world: usize,
    /// This rank's ring listener address, as the others should dial it.
    pub listen_addr: SocketAddr,
    /// Deadline for the whole exchange (waiting for every other rank included).
    pub timeout: Duration,
}

/// Announces `req.listen_addr` to the server at `server` and returns every rank's address.
pub fn join(server: SocketAddr, auth: &JobAuth, req: &JoinRequest) -> Result<Vec<SocketAddr>> {
    exchange(server, auth, req, None).map(|(table, _)| table)
}

/// Like [`join`], and also carries one opaque payload from rank 0 to every rank: rank 0 passes
/// `Some(bytes)` (at most [`MAX_PAYLOAD`]), every other rank `None`. Returns the address table and
/// rank 0's payload (empty if rank 0 joined with plain [`join`]).
pub fn join_with_payload(
    server: SocketAddr,
    auth: &JobAuth,
    req: &JoinRequest,
    payload: Option<&[u8]>,
) -> Result<(Vec<SocketAddr>, Vec<u8>)> {
    let setup = |detail: String| OpsError::Setup { op: OpKind::Rendezvous, rank: req.rank, detail };
    let bytes = match payload {
        Some(_) if req.rank != Rank(0) => return Err(setup("only rank 0 contributes a rendezvous payload".into())),
        Some(p) if p.len() > MAX_PAYLOAD => return Err(setup(format!("payload of {} bytes exceeds {MAX_PAYLOAD}", p.len()))),
        Some(p) => p,
        None => &[],
    };
    let (table, payload) = exchange(server, auth, req, Some(bytes))?;
    Ok((table, payload.unwrap_or_default()))
}

/// The client side: `payload` `Some` sets the payload flag (and contributes the bytes).
fn exchange(server: SocketAddr, auth: &JobAuth, req: &JoinRequest, payload: Option<&[u8]>) -> Result<(Vec<SocketAddr>, Option<Vec<u8>>)> {
    let server_rank = Rank(req.world as u32);
    let fail = |detail: String| OpsError::Unreachable { op: OpKind::Rendezvous, peer: server_rank, addr: server, detail };
    let deadline = Instant::now() + req.timeout;
    let remaining = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
    let mut stream = loop {
        let Some(left) = remaining() else { return Err(fail("no connection before the deadline".into())) };
        match TcpStream::connect_timeout(&server, left) {
            Ok(s) => break s,
            // The server may not be listening yet.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::thread::sleep(POLL),
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let me = Identity { purpose: Purpose::Rendezvous, world: req.world as u32, rank: req.rank.0, peer: server_rank.0 };
    let left = remaining().unwrap_or(Duration::from_millis(1));
    auth::initiate(&mut stream, auth, me, server_rank.0, left).map_err(|e| OpsError::Handshake {
        op: OpKind::Rendezvous,
        peer: server_rank,
        addr: server,
        detail: e.to_string(),
    })?;
    let mut msg = Vec::new();
    encode_addr(&mut msg, &req.listen_addr);
    if let Some(p) = payload {
        // The address is at most a few dozen bytes, so the top bit of its length is free.
        msg[1] |= (PAYLOAD_FLAG >> 8) as u8;
        msg.extend_from_slice(&(p.len() as u32).to_le_bytes());
        msg.extend_from_slice(p);
    }
    stream.write_all(&msg).map_err(|e| fail(format!("sending our address: {e}")))?;
    stream.set_read_timeout(Some(remaining().unwrap_or(Duration::from_millis(1)))).map_err(|e| fail(e.to_string()))?;
    let mut count = [0u8; 4];
    stream.read_exact(&mut count).map_err(|e| fail(format!("waiting for the address table: {e}")))?;
    let count = u32::from_le_bytes(count) as usize;
    if count != req.world {
        return Err(fail(format!("server sent {count} addresses for world size {}", req.world)));
    }
    let table = (0..count)
        .map(|_| read_addr(&mut stream).map_err(|e| fail(format!("reading the address table: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let payload = match payload {
        Some(_) => Some(read_payload(&mut stream).map_err(|e| fail(format!("reading rank 0's payload: {e}")))?),
        None => None,
    };
    Ok((table, payload))
}

fn encode_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    let text = addr.to_string();
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn read_addr(r: &mut impl Read) -> io::Result<SocketAddr> {
    match read_tagged_addr(r)? {
        (addr, false) => Ok(addr),
        (_, true) => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected payload flag in the address table")),
    }
}

/// Reads an address whose length may carry [`PAYLOAD_FLAG`]; returns whether it did.
fn read_tagged_addr(r: &mut impl Read) -> io::Result<(SocketAddr, bool)> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let tagged = u16::from_le_bytes(len);
    let (flagged, len) = (tagged & PAYLOAD_FLAG != 0, (tagged & !PAYLOAD_FLAG) as usize);
    if len > MAX_ADDR_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("address of {len} bytes")));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)?;
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "address is not a socket address"))
        .map(|addr| (addr, flagged))
}

/// Reads a `u32`-length-prefixed payload of at most [`MAX_PAYLOAD`] bytes.
fn read_payload(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("payload of {len} bytes")));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}
