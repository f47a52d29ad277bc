//! Linking processes with ractor_cluster: the coordinator's node server, and a worker's link
//! to it. Node sessions authenticate with the job's cookie; a process with another cookie
//! never gets a session. The coordinator accepts connections on its own listener (so port 0
//! works and the bound address is known before anyone connects) and hands each stream to the
//! node server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef, pg};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NetworkStream, NodeServer, NodeServerMessage};

use crate::error::{ProtocolError, Result};
use crate::messages::CoordinatorMsg;

fn actor_err(context: String) -> impl FnOnce(String) -> ProtocolError {
    move |reason| ProtocolError::Actor { context, reason }
}

async fn node_server(cookie: &str, name: &str) -> Result<ActorRef<NodeServerMessage>> {
    // Port 0: the server's own listener is not advertised (the coordinator accepts on its own,
    // workers only dial out).
    let server = NodeServer::new(0, cookie.to_string(), name.to_string(), "localhost".into(), None, Some(NodeConnectionMode::Isolated))
        .with_listen_addr(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let (actor, _) = Actor::spawn(None, server, ()).await.map_err(|e| actor_err(format!("starting node {name}"))(e.to_string()))?;
    Ok(actor)
}

/// The coordinator's end: a node server and the accept loop feeding it.
#[derive(Debug)]
pub struct CoordinatorNode {
    /// Where workers connect.
    pub addr: SocketAddr,
    server: ActorRef<NodeServerMessage>,
    accept: tokio::task::JoinHandle<()>,
}

impl CoordinatorNode {
    /// Binds `bind` (port 0 picks a free port) and serves node sessions authenticated by `cookie`.
    pub async fn serve(bind: SocketAddr, cookie: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| ProtocolError::Io { path: format!("binding the coordinator at {bind}"), source })?;
        let addr = listener.local_addr().map_err(|source| ProtocolError::Io { path: format!("{bind}"), source })?;
        let server = node_server(cookie, &format!("coordinator@{addr}")).await?;
        let to = server.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, peer_addr)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let Ok(local_addr) = stream.local_addr() else { continue };
                let stream = NetworkStream::Raw { peer_addr, local_addr, stream };
                if to.cast(NodeServerMessage::ConnectionOpened { stream: Box::new(stream), is_server: true }).is_err() {
                    break;
                }
            }
        });
        Ok(Self { addr, server, accept })
    }

    /// Closes the listener and every node session.
    pub fn stop(&self) {
        self.accept.abort();
        self.server.stop(None);
    }
}

/// A worker's link: connects to the coordinator node at `addr` and returns the coordinator
/// actor once its process group `group` ([`crate::messages::coordinator_group`]) is visible here, or an error naming the address (a wrong
/// cookie shows as no session within `timeout`).
pub async fn connect(
    addr: SocketAddr,
    cookie: &str,
    group: &str,
    name: &str,
    timeout: Duration,
) -> Result<(ActorRef<NodeServerMessage>, ActorRef<CoordinatorMsg>)> {
    let context = format!("joining the coordinator at {addr}");
    let server = node_server(cookie, name).await?;
    ractor_cluster::client_connect(&server, addr).await.map_err(|e| actor_err(context.clone())(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(cell) = pg::get_members(&group.to_string()).into_iter().next() {
            return Ok((server, ActorRef::from(cell)));
        }
        if Instant::now() > deadline {
            server.stop(None);
            return Err(actor_err(context)(format!(
                "no coordinator actor became visible within {timeout:?} (is the cookie right? is the job still running?)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
