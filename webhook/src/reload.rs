//! Watching files for changes by polling their contents.
//!
//! Polling (not inotify) because Kubernetes updates Secret and ConfigMap volumes by swapping a symlink,
//! which inotify watches on the file itself miss; reading a few small files every couple of seconds
//! costs nothing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tollgate_api::names::VERSION;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    result: &'static str,
}

/// `tollgate_webhook_reloads_total`: reloads of watched files, by file and result.
#[derive(Clone)]
pub struct ReloadCounter(Family<ReloadLabels, Counter>);

impl ReloadCounter {
    pub fn register(registry: &mut Registry) -> ReloadCounter {
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("reloads", "Reloads of watched files, by file and result", reloads.clone());
        ReloadCounter(reloads)
    }

    /// `file` (the watcher's name) changed, and was applied (`ok`) or rejected.
    pub fn observe(&self, file: &'static str, ok: bool) {
        self.0.get_or_create(&ReloadLabels { file, result: if ok { "success" } else { "failure" } }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    version: &'static str,
    policy: String,
}

/// `tollgate_webhook_policy_info{version, policy} 1`: this webhook's release and the digest of the policy in
/// force, one series, replaced when a changed policy is loaded. A namespace's effective policy carries the
/// policy's digest, so the overrides need no series of their own. The proxy exports the same pair as
/// `tollgate_proxy_info`; a proxy whose pair no webhook has is stale (the chart's `TollgateStaleProxies`).
#[derive(Clone)]
pub struct PolicyInfo {
    family: Family<PolicyLabels, Gauge>,
    current: Arc<Mutex<Option<PolicyLabels>>>,
}

impl PolicyInfo {
    pub fn register(registry: &mut Registry) -> PolicyInfo {
        let family = Family::<PolicyLabels, Gauge>::default();
        registry.register("policy_info", "The webhook's release and the digest of the policy in force (always 1)", family.clone());
        PolicyInfo { family, current: Arc::default() }
    }

    /// The policy with this digest is in force: its series is 1, the previous one's is gone.
    pub fn observe(&self, digest: &str) {
        let labels = PolicyLabels { version: VERSION, policy: digest.to_owned() };
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Set before the old one goes: a scrape in between sees two, never none.
        self.family.get_or_create(&labels).set(1);
        if let Some(previous) = current.replace(labels.clone())
            && previous != labels
        {
            self.family.remove(&previous);
        }
    }
}

/// Calls `apply` with the contents of `paths` whenever any of them changes (and not on the first read,
/// which the caller has done). A change is applied only once two reads in a row agree, so a file
/// caught half-written (an in-place write, not Kubernetes' atomic swap) is never applied. `apply`
/// returns an error for content it rejects; that is logged once per distinct content, and the next
/// change is tried again.
pub fn spawn_watcher<F>(
    name: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    initial: Vec<Vec<u8>>,
    mut shutdown: watch::Receiver<bool>,
    mut apply: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static,
{
    tokio::spawn(async move {
        let mut seen = initial;
        let mut pending: Option<Vec<Vec<u8>>> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let mut contents = Vec::with_capacity(paths.len());
            for path in &paths {
                match tokio::fs::read(path).await {
                    Ok(bytes) => contents.push(bytes),
                    // Mid-swap or briefly missing: keep what is loaded, look again next tick.
                    Err(e) => {
                        tracing::debug!(watcher = name, path = %path.display(), error = %e, "cannot read watched file");
                        break;
                    }
                }
            }
            if contents.len() != paths.len() || contents == seen {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&contents) {
                pending = Some(contents);
                continue;
            }
            pending = None;
            match apply(&contents) {
                Ok(()) => tracing::info!(watcher = name, "reloaded"),
                Err(error) => tracing::error!(watcher = name, %error, "rejected changed file; keeping the previous version"),
            }
            seen = contents;
        }
    })
}
