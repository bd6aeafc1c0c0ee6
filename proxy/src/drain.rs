//! Shutdown that waits for requests, not for the clock. pingora's SIGTERM handling closes the listeners
//! and then sleeps the whole grace period whatever is in flight; a native sidecar gets its SIGTERM only after
//! the app has exited, so that sleep was pure delay at the end of every analysis pod. [`Terminate`] keeps
//! pingora's handling (listeners closed, requests in flight carry on, the grace as the upper bound) and
//! ends the process as soon as no request is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// One request the proxy is handling (egress or ingress), from its parsed head until it is done with.
/// Kept in the request's context, so that it ends on every path pingora takes.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    pub fn begin() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// A head that had arrived when the signal did gets this long to be parsed and counted.
const SETTLE: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(10);

/// pingora's signals (SIGTERM graceful, SIGINT fast, SIGQUIT upgrade), with SIGTERM ending the process
/// once nothing is in flight instead of after the whole grace period.
pub struct Terminate {
    /// Set on SIGTERM: `/readyz` answers 503 on whatever admin connection is still open (pingora closes the
    /// admin listener with the others).
    pub draining: Arc<AtomicBool>,
}

#[async_trait]
impl ShutdownSignalWatch for Terminate {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut terminate), Ok(mut interrupt), Ok(mut quit)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::quit()))
        else {
            tracing::error!("cannot watch for signals; exiting");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = terminate.recv() => {
                self.draining.store(true, Ordering::Relaxed);
                // pingora now closes the listeners and sleeps the grace on its main thread; this one ends
                // the process early once the requests still running are done.
                let started = std::time::Instant::now();
                std::thread::Builder::new()
                    .name("drain".into())
                    .spawn(move || {
                        std::thread::sleep(SETTLE);
                        while in_flight() > 0 {
                            std::thread::sleep(POLL);
                        }
                        tracing::info!(after_ms = started.elapsed().as_millis() as u64, "no request in flight; exiting");
                        std::process::exit(0);
                    })
                    .map_err(|e| tracing::warn!(error = %e, "no drain thread: waiting the whole grace"))
                    .ok();
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}
