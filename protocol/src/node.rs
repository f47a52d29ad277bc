//! Linking processes with ractor_cluster: the coordinator's node server, and a worker's link
//! to it. Node sessions authenticate with the job's cookie; a process with another cookie
//! never gets a session. The coordinator accepts connections on its own listener (so port 0
//! works and the bound address is known before anyone connects) and hands each stream to the
//! node server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef, pg};
use ractor_cluster::node::{NodeConnectionMode, NodeEventSubscription, NodeServerSessionInformation};
use ractor_cluster::{NetworkStream, NodeServer, NodeServerMessage};

use crate::error::{ProtocolError, Result};
use crate::messages::{CoordinatorMsg, Wire};

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
    cookie: String,
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
        Ok(Self { addr, cookie: cookie.to_string(), server, accept })
    }

    /// The cookie a process must present to get a session.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Tells `coordinator` of every node session of this server that closes
    /// ([`CoordinatorMsg::SessionClosed`]), until [`Self::unwatch_sessions`] with the same `id`.
    ///
    /// This is how a job finds a worker lost, not by process-group leaves: ractor numbers each
    /// node server's sessions from 0, so two node servers in one process give remote actors
    /// equal ids, and the process-wide group registry, keyed by id, then reports one server's
    /// departed actor as the other's. One server per process (a service shares it among its
    /// jobs) keeps ids unique; a session close names the link itself.
    pub fn watch_sessions(&self, coordinator: ActorRef<CoordinatorMsg>, id: &str) -> Result<()> {
        let subscription = Box::new(SessionWatch(coordinator));
        self.server
            .cast(NodeServerMessage::SubscribeToEvents { id: id.to_string(), subscription })
            .map_err(|e| actor_err(format!("watching the node sessions at {}", self.addr))(e.to_string()))
    }

    /// Stops telling the watcher `id` (its job ended); a server already stopped has nobody to tell.
    pub fn unwatch_sessions(&self, id: &str) {
        let _ = self.server.cast(NodeServerMessage::UnsubscribeToEvents(id.to_string()));
    }

    /// Closes the listener and every node session.
    pub fn stop(&self) {
        self.accept.abort();
        self.server.stop(None);
    }
}

/// Forwards session closes to the job's coordinator actor.
struct SessionWatch(ActorRef<CoordinatorMsg>);

impl NodeEventSubscription for SessionWatch {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        // The actor may have ended first (the job is over): nobody is left to tell.
        let _ = self.0.cast(CoordinatorMsg::SessionClosed(Wire::new(ses.node_id)));
    }

    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
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
    // A name of its own per link: a node server keeps one session per peer name (it elects
    // among sessions of the same name and closes the others), and `worker-PID` alone repeats
    // across hosts (containers all start with small pids) and across one process's links.
    let server = node_server(cookie, &format!("{name}-{:016x}", rand::random::<u64>())).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::ActorProcessingErr;
    use tokio::sync::mpsc;

    /// Stands in for a job's coordinator actor: forwards each session close, named by its node.
    struct Probe;

    impl Actor for Probe {
        type Msg = CoordinatorMsg;
        type State = (&'static str, mpsc::UnboundedSender<(&'static str, u64)>);
        type Arguments = Self::State;

        async fn pre_start(&self, _: ActorRef<Self::Msg>, args: Self::Arguments) -> std::result::Result<Self::State, ActorProcessingErr> {
            Ok(args)
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            msg: Self::Msg,
            state: &mut Self::State,
        ) -> std::result::Result<(), ActorProcessingErr> {
            if let CoordinatorMsg::SessionClosed(Wire(Ok(node))) = msg {
                let _ = state.1.send((state.0, node));
            }
            Ok(())
        }
    }

    async fn sessions(server: &ActorRef<NodeServerMessage>) -> Vec<u64> {
        let all = ractor::call!(server, NodeServerMessage::GetSessions).expect("the node server answers");
        all.values().filter(|s| s.peer_name.is_some()).map(|s| s.node_id).collect()
    }

    /// Two jobs' node servers in one process (a coordinator service) number their sessions
    /// alike, so one worker-side process linked to both has the same remote id on each: a
    /// closed link is reported by its own node only, for the job it belongs to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_node_reports_only_its_own_sessions_closing() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let (a, b) =
            (CoordinatorNode::serve(localhost, "cookie-a").await.unwrap(), CoordinatorNode::serve(localhost, "cookie-b").await.unwrap());
        let (probe_a, _) = Actor::spawn(None, Probe, ("a", tx.clone())).await.unwrap();
        let (probe_b, _) = Actor::spawn(None, Probe, ("b", tx)).await.unwrap();
        a.watch_sessions(probe_a.clone(), "a").unwrap();
        b.watch_sessions(probe_b.clone(), "b").unwrap();
        let client_a = node_server("cookie-a", "worker-a").await.unwrap();
        let client_b = node_server("cookie-b", "worker-b").await.unwrap();
        ractor_cluster::client_connect(&client_a, a.addr).await.unwrap();
        ractor_cluster::client_connect(&client_b, b.addr).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (on_a, on_b) = loop {
            let (on_a, on_b) = (sessions(&a.server).await, sessions(&b.server).await);
            if on_a.len() == 1 && on_b.len() == 1 {
                break (on_a, on_b);
            }
            assert!(Instant::now() < deadline, "sessions not authenticated: a {on_a:?}, b {on_b:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(on_a, on_b, "the premise: both servers number their first session alike");
        client_b.stop(None);
        let closed = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("b's close reported").unwrap();
        assert_eq!(closed, ("b", on_b[0]));
        // Node a's session is still open: nothing reported for it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rx.try_recv().is_err(), "a closed session reported by the wrong node");
        assert_eq!(sessions(&a.server).await, on_a);
        client_a.stop(None);
        let closed = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("a's close reported").unwrap();
        assert_eq!(closed, ("a", on_a[0]));
        for node in [a, b] {
            node.stop();
        }
        probe_a.stop(None);
        probe_b.stop(None);
    }

    /// Two workers that call themselves alike (`worker-7`: processes in two containers) both
    /// keep their link to one node: the server elects one session per peer name, so each link
    /// gets a name of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_named_alike_keep_their_own_sessions() {
        let node = CoordinatorNode::serve(SocketAddr::from(([127, 0, 0, 1], 0)), "cookie-c").await.unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let (probe, _) = Actor::spawn(None, Probe, ("c", tx)).await.unwrap();
        pg::join("tessera.test.alike".to_string(), vec![probe.get_cell()]);
        let timeout = Duration::from_secs(20);
        let (first, _) = connect(node.addr, node.cookie(), "tessera.test.alike", "worker-7", timeout).await.unwrap();
        let (second, _) = connect(node.addr, node.cookie(), "tessera.test.alike", "worker-7", timeout).await.unwrap();
        let deadline = Instant::now() + timeout;
        while sessions(&node.server).await.len() < 2 {
            assert!(Instant::now() < deadline, "two sessions never authenticated: {:?}", sessions(&node.server).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sessions(&node.server).await.len(), 2, "a link was closed by the election");
        first.stop(None);
        second.stop(None);
        node.stop();
        probe.stop(None);
    }
}
