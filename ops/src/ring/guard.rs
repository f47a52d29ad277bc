//! Deadline and abort enforcement for a ring communicator.
//!
//! Blocking socket I/O cannot be interrupted directly, so both a missed deadline and an abort
//! shut the sockets down (through cloned handles): every blocked read or write on them returns at
//! once, and the owning thread then asks the guard *why* to report `Timeout` or `Aborted` rather
//! than the resulting I/O error. A watchdog thread per communicator sleeps until the armed deadline.

use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::collective::AbortTarget;
use crate::types::OpKind;

/// Why the guard shut the sockets down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fired {
    /// `AbortHandle::abort` was called.
    Aborted,
    /// The deadline of call `seq` passed.
    Timeout {
        /// The op that timed out.
        op: OpKind,
        /// Sequence number of the call that timed out.
        seq: u64,
    },
}

#[derive(Default)]
struct State {
    /// Deadline of the call in progress, with its op and sequence number.
    armed: Option<(Instant, OpKind, u64)>,
    fired: Option<Fired>,
    closing: bool,
}

/// State shared by the owning thread, the watchdog and every `AbortHandle`.
pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Clones of the ring's sockets, shut down to unblock I/O.
    streams: Vec<TcpStream>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not turn into a second panic here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shuts every socket of the communicator down (idempotent).
    pub fn shutdown_streams(&self) {
        for s in &self.streams {
            // Already-closed sockets report ENOTCONN; nothing to do about it.
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn fire(&self, state: &mut State, why: Fired) {
        if state.fired.is_none() {
            state.fired = Some(why);
        }
        self.shutdown_streams();
    }

    /// Why the sockets were shut down, if the guard did it.
    pub fn fired(&self) -> Option<Fired> {
        self.lock().fired
    }
}

impl AbortTarget for Shared {
    fn abort(&self) {
        let mut st = self.lock();
        self.fire(&mut st, Fired::Aborted);
        self.wake.notify_all();
    }
}

/// Owns the watchdog thread; dropping it stops the thread.
pub(crate) struct Guard {
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
}

impl Guard {
    /// Starts the watchdog for the given sockets.
    pub fn new(streams: Vec<TcpStream>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), wake: Condvar::new(), streams });
        let s = Arc::clone(&shared);
        let watchdog = std::thread::Builder::new().name("tessera-ring-watchdog".into()).spawn(move || watch(&s))?;
        Ok(Guard { shared, watchdog: Some(watchdog) })
    }

    /// The shared state (for abort handles and for shutting sockets down on a fault).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts the deadline of call `seq`.
    pub fn arm(&self, deadline: Instant, op: OpKind, seq: u64) {
        self.shared.lock().armed = Some((deadline, op, seq));
        self.shared.wake.notify_all();
    }

    /// Ends the deadline of the current call (the watchdog notices lazily).
    pub fn disarm(&self) {
        self.shared.lock().armed = None;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.watchdog.take() {
            let _ = h.join();
        }
    }
}

/// The watchdog loop: sleep until the armed deadline, fire if the same call is still running.
fn watch(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        if st.closing {
            return;
        }
        st = match st.armed {
            Some((deadline, op, seq)) => {
                let now = Instant::now();
                if now >= deadline {
                    st.armed = None;
                    shared.fire(&mut st, Fired::Timeout { op, seq });
                    st
                } else {
                    shared.wake.wait_timeout(st, deadline - now).unwrap_or_else(PoisonError::into_inner).0
                }
            }
            None => shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
        };
    }
}
