//! `tessera worker --coordinator URL`: a worker of a coordinator service's pool. It reports to
//! the service (a heartbeat every 2 s, also while it trains), waits for an assignment, joins
//! that job's coordinator node with the cookie the service gave it over the authenticated
//! API, trains until the job lets it go, and asks for work again. A service that cannot be
//! reached is retried (it may be restarting); SIGTERM drains the job in hand, then exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tessera_coordinator::ApiClient;
use tessera_coordinator::cluster::{Beat, WorkerReport};
use tessera_coordinator::registry::WorkerAd;
use tessera_coordinator::store::JobId;
use tessera_worker::agent::link::{Attach, Reattach};
use tessera_worker::agent::{AgentOptions, run as run_agent};

use super::worker::{WorkerArgs, shutdown_flag};

/// How often a worker reports while it trains (the service's heartbeat timeout is 10 s).
const BEAT_EVERY: Duration = Duration::from_secs(2);

/// How often an orphaned worker reports (its job waits for every rank to be adopted).
const ORPHAN_BEAT_EVERY: Duration = Duration::from_millis(200);

/// The coordinators a worker knows (the active one and standbys); reports go to the current
/// one, and a failed report moves on to the next.
struct Coordinators {
    clients: Vec<(String, ApiClient)>,
    current: Mutex<usize>,
}

/// A report that did not go through: what happened, and whether the service refused the token
/// (then no retry can help: the worker stops and says so).
struct ReportError {
    text: String,
    refused_token: bool,
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Coordinators {
    fn report(&self, name: &str, report: &WorkerReport) -> Result<tessera_coordinator::cluster::WorkerReply, ReportError> {
        let i = *self.current.lock().expect("current");
        let (url, client) = &self.clients[i];
        client.report(name, report).map_err(|e| {
            *self.current.lock().expect("current") = (i + 1) % self.clients.len();
            let refused_token = matches!(e, tessera_coordinator::CoordinatorError::Http { status: 401, .. });
            ReportError { text: format!("{url}: {e}"), refused_token }
        })
    }
}

/// The local address this host uses to reach `peer`.
fn local_ip_towards(peer: std::net::SocketAddr) -> anyhow::Result<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind(if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    socket.connect(peer).with_context(|| format!("no route to the coordinator at {peer}"))?;
    Ok(socket.local_addr()?.ip())
}

/// Runs the pool worker until SIGTERM/SIGINT.
pub fn run(a: WorkerArgs) -> anyhow::Result<()> {
    let url = a.coordinator.clone().context("--coordinator")?;
    let urls: Vec<String> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
    let token_file = a.token_file.clone().or_else(|| std::env::var_os("TESSERA_TOKEN_FILE").map(std::path::PathBuf::from));
    let token_file = token_file.context("give --token-file F (or set TESSERA_TOKEN_FILE) with --coordinator")?;
    let token = std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
    let mut clients = Vec::new();
    for u in &urls {
        clients.push((u.clone(), ApiClient::for_url(u, token.trim(), a.ca_file.as_deref())?.with_timeout(Duration::from_secs(15))));
    }
    let addr = clients.first().context("--coordinator: no URL")?.1.endpoint().addr();
    let coordinators = Arc::new(Coordinators { clients, current: Mutex::new(0) });
    let ip = match a.advertise {
        Some(ip) => ip,
        None => local_ip_towards(addr)?,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "host".into(), |h| h.trim().to_string());
    let name = a.name.clone().unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    let mut labels = std::collections::BTreeMap::new();
    for kv in &a.labels {
        let (k, v) = kv.split_once('=').with_context(|| format!("--labels {kv}: expected k=v"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let ad = WorkerAd { addr: ip.to_string(), threads: a.threads as u32, labels, pid: std::process::id() };
    tch::set_num_threads(a.threads.max(1) as i32);
    let shutdown = shutdown_flag()?;
    let busy: Arc<Mutex<Option<JobId>>> = Arc::default();
    // What the job in hand kept when its coordinator died, and where the service sends it.
    let reattach = Reattach::new(Duration::from_secs(a.orphan_grace_s));
    let stop_beats = Arc::new(AtomicBool::new(false));
    let registration = super::pool_registry::spawn(&a.registry, &name, ad.clone(), Arc::clone(&stop_beats))?;
    let beats = {
        let (coordinators, name, ad, busy, stop, reattach) =
            (Arc::clone(&coordinators), name.clone(), ad.clone(), Arc::clone(&busy), Arc::clone(&stop_beats), Arc::clone(&reattach));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let job = *busy.lock().expect("busy");
                let orphan = reattach.orphan();
                if job.is_some() {
                    let report = WorkerReport { beat: Beat { ad: ad.clone(), busy_with: job, orphan }, wait_ms: 0 };
                    match coordinators.report(&name, &report) {
                        Ok(reply) => {
                            // Only an orphan is sent anywhere while it holds a job: to the job's
                            // new coordinator, which adopts it.
                            if let Some(a) = reply.assignment.filter(|a| orphan.is_some() && Some(a.job) == job) {
                                reattach.attach(Attach { node: a.node, cookie: a.cookie, group: a.group });
                            }
                            // Its job's coordinator is gone and the service will not adopt it.
                            if reply.release {
                                reattach.release();
                            }
                        }
                        Err(e) => tessera_protocol::say!("[{name}] heartbeat to the service failed: {e}"),
                    }
                }
                std::thread::sleep(if orphan.is_some() { ORPHAN_BEAT_EVERY } else { BEAT_EVERY });
            }
        })
    };
    tessera_protocol::say!("[{name}] offering itself to the pool at {url} ({} threads, reached at {ip})", a.threads);
    let mut unreachable = false;
    while !shutdown.load(Ordering::SeqCst) {
        let report = WorkerReport { beat: Beat { ad: ad.clone(), busy_with: None, orphan: None }, wait_ms: 2_000 };
        let assignment = match coordinators.report(&name, &report) {
            Ok(reply) => {
                if unreachable {
                    tessera_protocol::say!("[{name}] the service answers again");
                    unreachable = false;
                }
                reply.assignment
            }
            // A signal interrupts the report (EINTR): leave, without calling the service dead.
            Err(_) if shutdown.load(Ordering::SeqCst) => break,
            Err(e) if e.refused_token => {
                stop_beats.store(true, Ordering::Relaxed);
                anyhow::bail!("{e}: the service refused this worker's token (check --token-file or TESSERA_TOKEN_FILE)");
            }
            Err(e) => {
                if !unreachable {
                    tessera_protocol::say!("[{name}] the service does not answer ({e}); retrying");
                    unreachable = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Some(job) = assignment else { continue };
        tessera_protocol::say!("[{name}] assigned to {}: joining its node {}", job.job, job.node);
        *busy.lock().expect("busy") = Some(job.job);
        reattach.clear();
        let opts = AgentOptions {
            coordinator: job.node,
            cookie: job.cookie,
            group: job.group,
            threads: a.threads,
            connect_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(a.drain_timeout_s),
            reattach: Some(Arc::clone(&reattach)),
            log_name: Some(name.clone()),
        };
        match run_agent(&opts, Arc::clone(&shutdown)) {
            Ok(()) => tessera_protocol::say!("[{name}] released by {}", job.job),
            Err(e) => tessera_protocol::say!("[{name}] left {}: {e}", job.job),
        }
        *busy.lock().expect("busy") = None;
    }
    stop_beats.store(true, Ordering::Relaxed);
    let _ = beats.join();
    if let Some(r) = registration {
        let _ = r.join();
    }
    tessera_protocol::say!("[{name}] interrupted: leaving the pool");
    Ok(())
}
