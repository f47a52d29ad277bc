//! `tessera coordinator`: the long-running service that owns many jobs (cluster mode).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tessera_coordinator::ServerTls;
use tessera_coordinator::cluster::{ApiListener, FlopsFn, HostOptions, Service, ServiceOptions, registry_feed};
use tessera_coordinator::registry::RegistryConfig;
use tessera_coordinator::store::{DirStore, EtcdConfig, EtcdStore, HolderId, JobStore, StoreError};

use super::EtcdArgs;

/// Arguments of `tessera coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address the API listens on (`0.0.0.0:7450`, `10.0.0.1:0`, ...).
    #[arg(long)]
    listen: SocketAddr,
    /// The durable state (jobs, queue, checkpoints, audit) in a directory (one machine, or a
    /// shared filesystem); the default when no --etcd is given.
    #[arg(long, conflicts_with = "etcd")]
    state_dir: Option<PathBuf>,
    /// The durable state in etcd v3 (and the worker registry it watches).
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The bearer token every API call needs; created (mode 0600) at first start if missing.
    /// Default: STATE_DIR/token (required with --etcd).
    #[arg(long, env = "TESSERA_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The address workers reach this host at: job nodes bind it (default: the --listen
    /// address, which must then not be 0.0.0.0).
    #[arg(long)]
    advertise: Option<IpAddr>,
    /// A worker silent this long is lost (its job goes on without it at the next boundary).
    #[arg(long, default_value_t = 10)]
    heartbeat_timeout_s: u64,
    /// A job that was running when the coordinator before this one died waits this long for
    /// every rank of its generation to report the state it kept: then it goes on from there
    /// with no step redone; otherwise (a rank is missing) it restores its newest checkpoint.
    /// 0: restore at once.
    #[arg(long, default_value_t = 15)]
    reattach_wait_s: u64,
    /// Write the API's URL (`http://ADDR`, or `https://ADDR` with --tls-cert) to this file once
    /// listening (for scripts).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve the API over TLS with this certificate chain (PEM, the server's certificate
    /// first; its SAN must name the host or IP that clients put in their URL).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Wait as long as it takes for the store (a standby: it takes over when the active
    /// coordinator dies and its etcd lease expires). Without it, a coordinator gives up when the
    /// store is still held after 20 s (longer than a dead holder's lease).
    #[arg(long)]
    standby: bool,
}

/// How long a coordinator that is not a standby waits for the store: above etcd's lease TTL
/// (10 s), so a restart after kill -9 outlasts the dead holder's lease.
const RESTART_WAIT: Duration = Duration::from_secs(20);

/// The token in `path`, created (random, mode 0600) when the file does not exist.
fn token(path: &std::path::Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => bail!("{}: the token file is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let t = super::super::orchestrate::random_hex();
    super::super::orchestrate::write_secret(path, &t)?;
    tessera_protocol::say!("tessera coordinator: created the API token {}", path.display());
    Ok(t)
}

/// What the API is served with: its bearer token and, with --tls-cert, its certificate.
struct ApiSecrets {
    token: String,
    tls: Option<ServerTls>,
}

/// Runs `tessera coordinator` until SIGTERM/SIGINT.
pub fn run_coordinator(a: CoordinatorArgs) -> anyhow::Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).context("installing signal handlers")?;
    }
    let node_ip = match a.advertise {
        Some(ip) => ip,
        None if a.listen.ip().is_unspecified() => {
            bail!("--listen {} binds every address: give --advertise IP, the one workers reach", a.listen)
        }
        None => a.listen.ip(),
    };
    let token_file = match (&a.token_file, &a.state_dir) {
        (Some(f), _) => f.clone(),
        (None, Some(dir)) => dir.join("token"),
        (None, None) => bail!("give --token-file (or TESSERA_TOKEN_FILE) with --etcd"),
    };
    // Read before anything is bound or taken, so a bad certificate stops the start at once.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::load(cert, key)?),
        _ => None,
    };
    let secrets = ApiSecrets { token: token(&token_file)?, tls };
    let options = ServiceOptions {
        host: HostOptions { node_ip, heartbeat_timeout_ms: a.heartbeat_timeout_s * 1000 },
        pool_timeout_ms: a.heartbeat_timeout_s * 1000,
        reattach_wait_ms: a.reattach_wait_s * 1000,
    };
    let flops: FlopsFn = Arc::new(|job| super::super::orchestrate::flops_model(job, None, job.train.threads.max(1)).ok());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        if a.etcd.etcd.is_empty() {
            let dir = a.state_dir.clone().context("give --state-dir DIR or --etcd URLS")?;
            let store = DirStore::open(&dir).with_context(|| format!("opening the state directory {}", dir.display()))?;
            serve(store, options, flops, secrets, &a, interrupted, None).await
        } else {
            let config = EtcdConfig { access: a.etcd.access()?, ..EtcdConfig::new(a.etcd.etcd.clone(), &a.etcd.etcd_prefix) };
            // The pool also learns of workers from the registry beside the store.
            let registry = RegistryConfig {
                endpoints: config.endpoints.clone(),
                prefix: config.prefix.clone(),
                ttl_s: config.lease_ttl_s,
                timeout: config.timeout,
                access: config.access.clone(),
            };
            let store = EtcdStore::connect(config).await?;
            serve(store, options, flops, secrets, &a, interrupted, Some(registry)).await
        }
    })
}

async fn serve<S: JobStore + 'static>(
    store: S,
    options: ServiceOptions,
    flops: FlopsFn,
    ApiSecrets { token, tls }: ApiSecrets,
    a: &CoordinatorArgs,
    interrupted: Arc<AtomicBool>,
    registry: Option<RegistryConfig>,
) -> anyhow::Result<()> {
    let holder = HolderId(format!("coordinator@{}:{}", options.host.node_ip, std::process::id()));
    // Bound first, so that a restarted coordinator holds its address at once; until it holds
    // the store it answers 503, and clients and workers try the next coordinator they know.
    let bound = std::net::TcpListener::bind(a.listen).with_context(|| format!("binding the API at {}", a.listen))?;
    bound.set_nonblocking(true)?;
    let url = format!("{}://{}", if tls.is_some() { "https" } else { "http" }, bound.local_addr()?);
    if let Some(f) = &a.addr_file {
        tessera_tokenizers::atomic::write_atomic(f, format!("{url}\n").as_bytes())?;
    }
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let waiting = tokio::spawn(tessera_coordinator::cluster::serve_waiting(
        ApiListener::new(tokio::net::TcpListener::from_std(bound.try_clone()?)?, tls.clone()),
        format!("the coordinator at {url} does not hold the job store (yet): try another"),
        async move {
            let _ = ready_rx.await;
        },
    ));
    let since = std::time::Instant::now();
    let mut told = false;
    // Since when a standby has found etcd unreachable (it waits on: the active coordinator
    // outlives a short outage too, and the standby is still needed after it).
    let mut unreachable: Option<std::time::Instant> = None;
    let leadership = loop {
        let attempt = store.acquire(holder.clone()).await;
        if let Some(t) = unreachable.take_if(|_| !matches!(attempt, Err(StoreError::Connect { .. } | StoreError::Etcd { .. }))) {
            tessera_protocol::say!("tessera coordinator: standby at {url}: etcd answers again after {:.1} s", t.elapsed().as_secs_f64());
        }
        match attempt {
            Ok(l) => break l,
            Err(e @ (StoreError::Connect { .. } | StoreError::Etcd { .. })) if a.standby && !interrupted.load(Ordering::SeqCst) => {
                if unreachable.is_none() {
                    tessera_protocol::say!("tessera coordinator: standby at {url}: {e}; trying again every second");
                    unreachable = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(StoreError::Held { holder: other })
                if !interrupted.load(Ordering::SeqCst) && (a.standby || since.elapsed() < RESTART_WAIT) =>
            {
                if !told {
                    let role = if a.standby { "standby" } else { "waiting" };
                    tessera_protocol::say!(
                        "tessera coordinator: {role} at {url}: the job store is held by {other}; waiting until it lets go (or its lease expires)"
                    );
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(StoreError::Held { holder: other }) if !a.standby => {
                bail!("the job store is held by {other} (a live coordinator); give --standby to wait for it")
            }
            Err(e) => return Err(e).context("taking the job store"),
        }
    };
    if told {
        tessera_protocol::say!("tessera coordinator: took the job store after {:.1} s", since.elapsed().as_secs_f64());
    }
    let _ = ready_tx.send(());
    waiting.await.context("the waiting API task")??;
    let listener = ApiListener::new(tokio::net::TcpListener::from_std(bound)?, tls);
    let service = Service::start(store, leadership, options, flops).await.context("recovering the jobs")?;
    let feed = registry.map(|config| registry_feed::spawn(&service, config));
    tessera_protocol::say!("tessera coordinator: API {url} ({holder}; the jobs' actor node on {})", options.host.node_ip);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(tessera_coordinator::cluster::serve(listener, token, Arc::clone(&service), async move {
        let _ = stop_rx.await;
    }));
    while !interrupted.load(Ordering::SeqCst) && !api.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tessera_protocol::say!("tessera coordinator: stopping (running jobs checkpoint and resume under the next coordinator)");
    service.shutdown(Duration::from_secs(60)).await;
    if let Some(feed) = feed {
        feed.abort();
    }
    let _ = stop_tx.send(());
    api.await.context("the API task")??;
    Ok(())
}
