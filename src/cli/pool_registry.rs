//! `tessera worker --coordinator URL --etcd URLS`: the pool worker's key in the etcd worker
//! registry, under a lease it keeps alive, beside its reports to the service. The coordinator
//! loses a worker whose lease expired at once (a cut-off worker is found by the lease TTL, not
//! only by the heartbeat timeout). etcd out of reach never stops training: the worker goes
//! on and registers again, under a new lease, once etcd answers; it logs both.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tessera_coordinator::registry::{Registration, RegistryConfig, WorkerAd, WorkerName};
use tessera_coordinator::store::LeaseState;

use super::cluster::EtcdArgs;

/// How often the registration's state is looked at.
const POLL: Duration = Duration::from_millis(250);

/// A pool worker's registration in etcd (none without --etcd).
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Where the worker registers (pool mode).
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// TTL of the registration's etcd lease, seconds: a worker cut off is lost after about
    /// this long (etcd raises it to its minimum, 2 s with default timings).
    #[arg(long, default_value_t = 5)]
    pub lease_ttl_s: i64,
}

/// Keeps `name` registered with `ad` on its own thread until `stop` is set, then removes the
/// key (a clean leave). `Ok(None)` without --etcd.
pub fn spawn(args: &RegistryArgs, name: &str, ad: WorkerAd, stop: Arc<AtomicBool>) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    if args.etcd.etcd.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(args.lease_ttl_s >= 1, "--lease-ttl-s {}: at least 1 second", args.lease_ttl_s);
    let config = RegistryConfig {
        endpoints: args.etcd.etcd.clone(),
        prefix: args.etcd.etcd_prefix.clone(),
        ttl_s: args.lease_ttl_s,
        timeout: Duration::from_secs(5),
        access: args.etcd.access()?,
    };
    let name = WorkerName::new(name).with_context(|| format!("--name {name}: not usable as an etcd key"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the registration's runtime")?;
    Ok(Some(std::thread::spawn(move || rt.block_on(keep_registered(config, name, ad, stop)))))
}

/// Registers, watches the lease, and registers again under a new lease once it is gone.
async fn keep_registered(config: RegistryConfig, name: WorkerName, ad: WorkerAd, stop: Arc<AtomicBool>) {
    let mut held: Option<Registration> = None;
    // Since when etcd has not answered (registering, or keeping the lease alive).
    let mut unreachable: Option<Instant> = None;
    let key = format!("{}/workers/{name}", config.prefix.trim_end_matches('/'));
    while !stop.load(Ordering::Relaxed) {
        match &held {
            None => match Registration::register(&config, &name, &ad).await {
                Ok(r) => {
                    let after =
                        unreachable.take().map_or(String::new(), |t| format!(" after {:.1} s without etcd", t.elapsed().as_secs_f64()));
                    tessera_protocol::say!("[{name}] registered {key} in etcd under lease {:x} (TTL {} s){after}", r.lease(), r.ttl_s());
                    held = Some(r);
                }
                Err(e) => {
                    if unreachable.is_none() {
                        tessera_protocol::say!("[{name}] cannot register in etcd ({e}); training goes on, retrying");
                        unreachable = Some(Instant::now());
                    }
                }
            },
            Some(r) => match r.state() {
                LeaseState::Kept => {
                    if let Some(t) = unreachable.take() {
                        tessera_protocol::say!(
                            "[{name}] etcd answers again after {:.1} s: lease {:x} kept",
                            t.elapsed().as_secs_f64(),
                            r.lease()
                        );
                    }
                }
                LeaseState::Failing { error } => {
                    let since = *unreachable.get_or_insert_with(|| {
                        tessera_protocol::say!("[{name}] etcd does not answer its keep-alives ({error}); training goes on");
                        Instant::now()
                    });
                    // Unanswered for a TTL more: the lease is gone at etcd. Its client may hang on
                    // a connection that died behind a cut link, so a new one registers.
                    if since.elapsed() > Duration::from_secs(r.ttl_s() as u64) {
                        tessera_protocol::say!(
                            "[{name}] no keep-alive answered for {:.1} s: lease {:x} expired: registering again under a new lease",
                            since.elapsed().as_secs_f64(),
                            r.lease()
                        );
                        held = None;
                        continue;
                    }
                }
                LeaseState::Gone => {
                    tessera_protocol::say!("[{name}] its etcd lease {:x} expired: registering again under a new lease", r.lease());
                    held = None;
                    continue;
                }
            },
        }
        tokio::time::sleep(POLL).await;
    }
    if let Some(r) = held {
        let _ = tokio::time::timeout(Duration::from_secs(2), r.deregister()).await;
    }
}
