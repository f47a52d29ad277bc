//! Building the ring: dial the right neighbour, accept the left one, authenticate both.
//!
//! The listener keeps accepting until the legitimate left neighbour has authenticated: a stray
//! client, a wrong secret or a peer of another job or generation is refused and dropped without
//! affecting the job. Once the ring stands the listener is closed, so later connection attempts
//! to the port are refused by the kernel.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::auth::{self, AuthError, Identity, JobAuth, Purpose};
use crate::error::{OpsError, Result};
use crate::types::{OpKind, Rank};

/// Pause between connection attempts while the right neighbour's listener is not up yet, and
/// between polls of the non-blocking listener (std has no accept with a timeout).
const RETRY: Duration = Duration::from_millis(5);

/// What `establish` needs besides the addresses.
pub(crate) struct Dial<'a> {
    /// This rank.
    pub rank: Rank,
    /// Every rank's ring listener address, indexed by rank.
    pub peers: &'a [SocketAddr],
    /// Job identity and secret.
    pub auth: &'a JobAuth,
    /// Deadline for the whole setup.
    pub deadline: Instant,
    /// Bound on one connection's handshake (so a silent stray cannot stall the listener long).
    pub handshake_timeout: Duration,
}

/// Returns `(left, right)`: the authenticated connections from rank-1 and to rank+1.
pub(crate) fn establish(listener: TcpListener, dial: &Dial<'_>) -> Result<(TcpStream, TcpStream)> {
    let world = dial.peers.len();
    let rank = dial.rank.index();
    let right = Rank(((rank + 1) % world) as u32);
    let left = Rank(((rank + world - 1) % world) as u32);
    let setup = |detail: String| OpsError::Setup { op: OpKind::Connect, rank: dial.rank, detail };
    listener.set_nonblocking(true).map_err(|e| setup(format!("listener: {e}")))?;
    std::thread::scope(|s| {
        let dialer = s.spawn(|| connect_right(dial, right));
        let accepted = accept_left(&listener, dial, left);
        let dialed = dialer.join().unwrap_or_else(|_| Err(setup("dialer thread panicked".into())));
        let (l, r) = (accepted?, dialed?);
        for stream in [&l, &r] {
            // Latency of small frames matters more than segment count.
            stream.set_nodelay(true).map_err(|e| setup(format!("TCP_NODELAY: {e}")))?;
        }
        Ok((l, r))
    })
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

fn connect_right(dial: &Dial<'_>, right: Rank) -> Result<TcpStream> {
    let addr = dial.peers[right.index()];
    let unreachable = |detail: String| OpsError::Unreachable { op: OpKind::Connect, peer: right, addr, detail };
    let me = Identity { purpose: Purpose::Ring, world: dial.peers.len() as u32, rank: dial.rank.0, peer: right.0 };
    loop {
        let Some(left_time) = remaining(dial.deadline) else {
            return Err(unreachable("no connection before the setup deadline".into()));
        };
        match TcpStream::connect_timeout(&addr, left_time) {
            Ok(mut stream) => {
                // The whole remaining time: the neighbour may be busy refusing a stray first.
                return match auth::initiate(&mut stream, dial.auth, me, right.0, left_time) {
                    Ok(()) => Ok(stream),
                    Err(e) => Err(OpsError::Handshake { op: OpKind::Connect, peer: right, addr, detail: e.to_string() }),
                };
            }
            // The neighbour may not have bound its listener yet.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => std::thread::sleep(RETRY),
            Err(e) => return Err(unreachable(e.to_string())),
        }
    }
}

fn accept_left(listener: &TcpListener, dial: &Dial<'_>, left: Rank) -> Result<TcpStream> {
    let me = Identity { purpose: Purpose::Ring, world: dial.peers.len() as u32, rank: dial.rank.0, peer: left.0 };
    // Each incoming connection is authenticated on its own thread, so a silent or slow stray
    // cannot delay the real neighbour; the threads end by themselves within the handshake bound.
    let (tx, rx) = mpsc::channel();
    let mut refused: Vec<String> = Vec::new();
    loop {
        while let Ok((from, outcome)) = rx.try_recv() {
            match outcome {
                Ok(stream) => return Ok(stream),
                Err(why) => refused.push(format!("{from}: {why}")),
            }
        }
        let Some(left_time) = remaining(dial.deadline) else {
            let detail = if refused.is_empty() { "nobody connected".to_string() } else { format!("refused: {}", refused.join("; ")) };
            return Err(OpsError::Unreachable {
                op: OpKind::Connect,
                peer: left,
                addr: dial.peers[left.index()],
                detail: format!("rank {left} did not connect before the setup deadline ({detail})"),
            });
        };
        match listener.accept() {
            Ok((mut stream, from)) => {
                let (tx, auth, budget) = (tx.clone(), dial.auth.clone(), dial.handshake_timeout.min(left_time));
                std::thread::spawn(move || {
                    let outcome = stream
                        .set_nonblocking(false)
                        .map_err(AuthError::Io)
                        .and_then(|()| auth::respond(&mut stream, &auth, me, Some(left.0), budget))
                        .map(|_| stream)
                        .map_err(|e| e.to_string());
                    // The receiver is gone once the ring is built or has failed: drop the stream.
                    let _ = tx.send((from, outcome));
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(RETRY),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(OpsError::Setup { op: OpKind::Connect, rank: dial.rank, detail: format!("accept failed: {e}") });
            }
        }
    }
}
