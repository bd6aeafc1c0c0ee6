//! Watching files for changes by polling their contents.
//!
//! Polling (not inotify) because Kubernetes updates Secret and ConfigMap volumes by swapping a symlink,
//! which inotify watches on the file itself miss; reading a few small files every couple of seconds
//! costs nothing.

use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

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
