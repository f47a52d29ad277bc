//! The service's API listener under TLS: an [`axum::serve::Listener`] that accepts TCP
//! connections and hands axum only those whose TLS handshake completed. Each handshake runs in
//! its own task with a time limit, so a peer that stalls or speaks something else (plain HTTP,
//! random bytes) holds up nobody; its refusal is logged with its address, like a token refusal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::ServerTls;

/// A peer that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight at most; a connection beyond them is dropped at once (a flood of
/// half-open connections must not grow the task count without bound).
const MAX_HANDSHAKES: usize = 256;

/// Accepts TCP connections on a listener and completes their TLS handshakes.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    slots: Arc<Semaphore>,
    ready_tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Serves TLS with `tls` on `tcp`.
    pub fn new(tcp: TcpListener, tls: &ServerTls) -> Self {
        let (ready_tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        Self { tcp, acceptor: tls.acceptor(), slots: Arc::new(Semaphore::new(MAX_HANDSHAKES)), ready_tx, ready }
    }

    /// Starts the handshake of a connection just accepted from `peer`.
    fn handshake(&self, stream: TcpStream, peer: SocketAddr) {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            tessera_protocol::say!("[service] refused a connection from {peer}: {MAX_HANDSHAKES} TLS handshakes already in progress");
            return;
        };
        let (acceptor, ready) = (self.acceptor.clone(), self.ready_tx.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                // The listener may be gone (the server stopped meanwhile): the connection closes.
                Ok(Ok(tls)) => drop(ready.send((tls, peer)).await),
                Ok(Err(e)) => tessera_protocol::say!("[service] refused a connection from {peer}: TLS handshake failed: {e}"),
                Err(_) => tessera_protocol::say!(
                    "[service] refused a connection from {peer}: no TLS handshake within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                // Never `None`: the listener holds a sender.
                Some(done) = self.ready.recv() => return done,
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => self.handshake(stream, peer),
                    // A connection reset before it was accepted concerns nobody; anything else
                    // (out of file descriptors) gets a pause before the next try, as axum does.
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) => {}
                    Err(e) => {
                        tessera_protocol::say!("[service] accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
