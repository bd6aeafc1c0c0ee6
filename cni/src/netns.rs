//! Moving this (single-threaded) process into a network namespace.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Enters the network namespace at `path` (a bind mount like `/run/netns/cni-…` or `/proc/PID/ns/net`).
/// `setns` moves only the calling thread: callers are single-threaded, as the CNI binary is.
pub fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("opening network namespace {}: {e}", path.display())))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("entering network namespace {}: {e}", path.display())))
}
