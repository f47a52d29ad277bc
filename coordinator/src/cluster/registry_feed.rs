//! Feeds the service's pool from the etcd worker registry ([`crate::registry`]): a worker
//! whose key is gone (its lease expired: it died, hung, or was cut off for longer than the TTL)
//! is lost at once, beside the heartbeat timeout. A watch that breaks (etcd restarted or out of
//! reach) is started again, and the members it then reads show the losses missed meanwhile.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Service;
use crate::registry::{RegistryConfig, RegistryEvent, RegistryWatch};
use crate::store::JobStore;

/// How long to wait before watching again after a failed start.
const RETRY: Duration = Duration::from_secs(1);

/// Watches the registry of `config` for `service` until the service is gone (abort the task to
/// stop it sooner).
pub fn spawn<S: JobStore + 'static>(service: &Arc<Service<S>>, config: RegistryConfig) -> tokio::task::JoinHandle<()> {
    let service = Arc::downgrade(service);
    tokio::spawn(async move {
        let mut broken = false;
        loop {
            let started = RegistryWatch::start(&config).await;
            let Some(s) = service.upgrade() else { return };
            match started {
                Ok((members, watch)) => {
                    if broken {
                        tessera_protocol::say!("[service] watching the worker registry again");
                    }
                    s.registry_members(members.into_iter().map(|(name, _)| name).collect()).await;
                    drop(s);
                    if !follow(&service, watch).await {
                        return;
                    }
                    // Told by `follow`; the next start says when it is back.
                    broken = true;
                }
                Err(e) => {
                    if !broken {
                        tessera_protocol::say!("[service] cannot watch the worker registry ({e}); retrying");
                        broken = true;
                    }
                    drop(s);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    })
}

/// Hands the watch's events to the service until the watch breaks (true: watch again) or the
/// service is gone (false).
async fn follow<S: JobStore + 'static>(service: &Weak<Service<S>>, mut watch: RegistryWatch) -> bool {
    loop {
        let event = watch.next().await;
        let Some(s) = service.upgrade() else { return false };
        match event {
            Ok(RegistryEvent::Joined { name, .. }) => s.registry_joined(&name).await,
            Ok(RegistryEvent::Lost { name }) => s.registry_lost(&name).await,
            Err(e) => {
                tessera_protocol::say!("[service] the worker registry watch broke ({e}); watching again");
                return true;
            }
        }
    }
}
