//! Mutual authentication of a fresh TCP connection with the job's shared secret.
//!
//! Both sides send a `Hello` (identity + 32-byte random nonce), check the other's identity, then
//! prove knowledge of the secret with HMAC-SHA256 over both hellos and a role label, the
//! initiator first. Binding both nonces and identities into the MACs stops replays, reflection and
//! wrong-generation peers; a side that rejects simply closes the connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: [u8; 8] = *b"TSRAHELO";
const VERSION: u16 = 1;
const HELLO_LEN: usize = 72;
const MAC_LEN: usize = 32;

/// The job's shared secret; never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes (any length; use at least 16 random bytes).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// Parses the hex form processes pass it around in (environment, control messages);
    /// `None` when `hex` is not an even number of hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
        bytes.map(Secret)
    }

    /// The hex form (for handing the secret to another process; never for logs).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod hex_tests {
    use super::Secret;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let s = Secret::new(vec![0x00, 0x7f, 0xab, 0xff]);
        assert_eq!(s.to_hex(), "007fabff");
        assert_eq!(Secret::from_hex("007fabff").unwrap().0, vec![0x00, 0x7f, 0xab, 0xff]);
        assert!(Secret::from_hex("abc").is_none());
        assert!(Secret::from_hex("zz").is_none());
        assert!(Secret::from_hex("é0").is_none());
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Who may join: the job, its generation (bumped on every restart) and the shared secret.
#[derive(Clone, Debug)]
pub struct JobAuth {
    /// Job id, the same on every rank.
    pub job_id: u64,
    /// Membership generation; peers from another generation are refused.
    pub generation: u64,
    /// The shared secret.
    pub secret: Secret,
}

/// Which protocol the connection is for, so a ring peer cannot be replayed to a rendezvous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Ring neighbour link.
    Ring = 1,
    /// Rendezvous client/server.
    Rendezvous = 2,
}

/// One side's identity as announced in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// What the connection is for.
    pub purpose: Purpose,
    /// World size.
    pub world: u32,
    /// The sender's rank (the rendezvous server uses `world`).
    pub rank: u32,
    /// The rank the sender expects on the other side.
    pub peer: u32,
}

/// Why a handshake failed; the caller turns it into an `OpsError` with the peer's address.
#[derive(Debug)]
pub(crate) enum AuthError {
    /// Transport failure or early close (a refusing peer closes).
    Io(std::io::Error),
    /// The remote announced something we do not accept, or its MAC is wrong.
    Refused(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                f.write_str("peer closed the connection during the handshake (wrong secret, job or generation?)")
            }
            AuthError::Io(e) => write!(f, "i/o during handshake: {e}"),
            AuthError::Refused(s) => f.write_str(s),
        }
    }
}

impl From<std::io::Error> for AuthError {
    fn from(e: std::io::Error) -> Self {
        AuthError::Io(e)
    }
}

fn encode(job: &JobAuth, id: Identity, nonce: &[u8; 32]) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10] = id.purpose as u8;
    // Frames carry native-endian elements: refuse a peer with the other byte order.
    b[11] = u8::from(cfg!(target_endian = "little"));
    b[12..20].copy_from_slice(&job.job_id.to_le_bytes());
    b[20..28].copy_from_slice(&job.generation.to_le_bytes());
    b[28..32].copy_from_slice(&id.world.to_le_bytes());
    b[32..36].copy_from_slice(&id.rank.to_le_bytes());
    b[36..40].copy_from_slice(&id.peer.to_le_bytes());
    b[40..72].copy_from_slice(nonce);
    b
}

fn u32_at(b: &[u8; HELLO_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks the remote hello against ours; `expected_rank` is `None` when any rank below the
/// world size is acceptable (the rendezvous server). Returns the remote rank.
fn check(ours: &[u8; HELLO_LEN], theirs: &[u8; HELLO_LEN], me: Identity, expected_rank: Option<u32>) -> Result<u32, AuthError> {
    if theirs[0..8] != MAGIC || theirs[8..10] != VERSION.to_le_bytes() {
        return Err(AuthError::Refused("not a tessera-ops peer (bad magic or version)".into()));
    }
    if theirs[10] != ours[10] {
        return Err(AuthError::Refused(format!("peer speaks protocol {} not {}", theirs[10], ours[10])));
    }
    if theirs[11] != ours[11] {
        return Err(AuthError::Refused("peer has a different byte order".into()));
    }
    if theirs[12..28] != ours[12..28] {
        return Err(AuthError::Refused("peer belongs to another job or generation".into()));
    }
    let (world, rank, peer) = (u32_at(theirs, 28), u32_at(theirs, 32), u32_at(theirs, 36));
    if world != me.world {
        return Err(AuthError::Refused(format!("peer has world size {world}, expected {}", me.world)));
    }
    if peer != me.rank {
        return Err(AuthError::Refused(format!("peer expected rank {peer} here, this is rank {}", me.rank)));
    }
    match expected_rank {
        Some(r) if rank != r => Err(AuthError::Refused(format!("peer is rank {rank}, expected rank {r}"))),
        None if rank >= me.world => Err(AuthError::Refused(format!("peer rank {rank} out of world {}", me.world))),
        _ => Ok(rank),
    }
}

fn mac(job: &JobAuth, label: &[u8], initiator: &[u8; HELLO_LEN], responder: &[u8; HELLO_LEN]) -> Hmac<Sha256> {
    // new_from_slice accepts any key length for HMAC, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&job.secret.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(label);
    m.update(initiator);
    m.update(responder);
    m
}

const LABEL_INITIATOR: &[u8] = b"tessera-ops/initiator";
const LABEL_RESPONDER: &[u8] = b"tessera-ops/responder";

/// Runs the handshake as the connecting side; `expected_rank` is the rank we dialled.
pub(crate) fn initiate(
    stream: &mut TcpStream,
    job: &JobAuth,
    me: Identity,
    expected_rank: u32,
    timeout: Duration,
) -> Result<(), AuthError> {
    with_timeout(stream, timeout, |s| {
        let ours = encode(job, me, &rand::random());
        s.write_all(&ours)?;
        let mut theirs = [0u8; HELLO_LEN];
        s.read_exact(&mut theirs)?;
        check(&ours, &theirs, me, Some(expected_rank))?;
        s.write_all(&mac(job, LABEL_INITIATOR, &ours, &theirs).finalize().into_bytes())?;
        let mut proof = [0u8; MAC_LEN];
        s.read_exact(&mut proof)?;
        mac(job, LABEL_RESPONDER, &ours, &theirs)
            .verify_slice(&proof)
            .map_err(|_| AuthError::Refused("peer does not know the job secret".into()))
    })
}

/// Runs the handshake as the accepting side; returns the authenticated remote rank.
pub(crate) fn respond(
    stream: &mut TcpStream,
    job: &JobAuth,
    me: Identity,
    expected_rank: Option<u32>,
    timeout: Duration,
) -> Result<u32, AuthError> {
    with_timeout(stream, timeout, |s| {
        let mut theirs = [0u8; HELLO_LEN];
        s.read_exact(&mut theirs)?;
        let nonce = rand::random();
        let rank = check(&encode(job, me, &nonce), &theirs, me, expected_rank)?;
        // A server that accepts any rank names the authenticated one as its expected peer.
        let ours = encode(job, Identity { peer: rank, ..me }, &nonce);
        s.write_all(&ours)?;
        let mut proof = [0u8; MAC_LEN];
        s.read_exact(&mut proof)?;
        mac(job, LABEL_INITIATOR, &theirs, &ours)
            .verify_slice(&proof)
            .map_err(|_| AuthError::Refused("peer does not know the job secret".into()))?;
        s.write_all(&mac(job, LABEL_RESPONDER, &theirs, &ours).finalize().into_bytes())?;
        Ok(rank)
    })
}

/// Bounds every read and write of the handshake, then restores blocking I/O.
fn with_timeout<R>(s: &mut TcpStream, timeout: Duration, f: impl FnOnce(&mut TcpStream) -> Result<R, AuthError>) -> Result<R, AuthError> {
    let timeout = timeout.max(Duration::from_millis(1));
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let r = f(s)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn job(secret: &str, generation: u64) -> JobAuth {
        JobAuth { job_id: 7, generation, secret: Secret::new(secret.as_bytes()) }
    }

    fn pair(a: JobAuth, b: JobAuth) -> (Result<(), AuthError>, Result<u32, AuthError>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let me = Identity { purpose: Purpose::Ring, world: 2, rank: 1, peer: 0 };
            respond(&mut s, &b, me, Some(0), Duration::from_secs(5))
        });
        let mut s = TcpStream::connect(addr).unwrap();
        let me = Identity { purpose: Purpose::Ring, world: 2, rank: 0, peer: 1 };
        let r = initiate(&mut s, &a, me, 1, Duration::from_secs(5));
        drop(s);
        (r, t.join().unwrap())
    }

    #[test]
    fn same_secret_is_accepted() {
        let (a, b) = pair(job("s3cret", 1), job("s3cret", 1));
        assert!(a.is_ok(), "{a:?}");
        assert_eq!(b.unwrap(), 0);
    }

    #[test]
    fn wrong_secret_or_generation_is_refused_on_both_sides() {
        let (a, b) = pair(job("s3cret", 1), job("other", 1));
        assert!(a.is_err() && b.is_err());
        let (a, b) = pair(job("s3cret", 1), job("s3cret", 2));
        assert!(a.is_err() && b.is_err());
    }
}
