//! `tollgate-proxy lock-check`: from inside the pod, as a user other than the proxy's, check that the egress
//! lock is in place — that the kernel refuses to let this process send a packet out of the pod.
//!
//! The webhook runs it as the init container `tollgate-lock-check` when its policy requires the lock, so the
//! pod starts only if the tollgate-cni plugin locked the pod's network namespace. For each target (by default
//! the documentation addresses `192.0.2.1:9` and `[2001:db8::1]:9`, which nothing answers): one UDP datagram
//! from an unbound socket, and a TCP connect with a 100 ms timeout, all at once (the check sits before the
//! proxy in every locked pod's start, so it must be quick). The lock drops them in the
//! output hook. For the datagram the kernel answers `EPERM` at once; a family without a route (or without
//! IPv6 at all) cannot send either. Anything else means the packet left: a datagram sent (UDP needs only a
//! local route, never an answer, so it is the decisive probe), a connection made or refused.
//!
//! A TCP connect whose SYN the lock drops does not fail with `EPERM`: Linux ignores the output hook's
//! verdict on a SYN and retransmits until the connect times out, exactly as when the SYN left and nothing
//! answered. So a timeout counts as dropped by the lock only when the datagram to the same target was
//! refused with `EPERM`; otherwise it counts as a packet that left.

use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use nix::errno::Errno;

/// The documentation addresses (RFC 5737, RFC 3849), port 9 (discard).
pub const DEFAULT_TARGETS: [&str; 2] = ["192.0.2.1:9", "[2001:db8::1]:9"];

/// How long a TCP connect may take; the connects run in parallel, so this bounds the whole check. Short on
/// purpose: in a locked pod every connect times out (see above) and the datagram decides; the connect only
/// adds evidence when something answers at once (a listener, a reset), which takes far less.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

pub const MISSING: &str = "the egress lock is missing: a container other than tollgate-proxy can send packets out of this pod. The tollgate-cni plugin did not lock this pod's network namespace (is the tollgate-cni DaemonSet running on this node and chained into its CNI config?)";

/// What one attempt to send says about the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The kernel refused to send it (`EPERM`): the lock at work.
    Blocked,
    /// Nothing of this family can leave: no route, no address, no IPv6.
    NoRoute,
    /// No answer in time (TCP): dropped by the lock or somewhere outside the pod; [`settle`] decides which.
    Unanswered,
    /// The packet left the pod (sent, connected, refused by the peer), or the check could not tell: not
    /// locked.
    Left,
}

/// The class of an attempt's result.
pub fn classify(result: &io::Result<()>) -> Class {
    let Err(error) = result else { return Class::Left };
    match error.raw_os_error().map(Errno::from_raw) {
        // EACCES too: the kernel (an LSM, a firewall) refused, and nothing was sent.
        Some(Errno::EPERM | Errno::EACCES) => Class::Blocked,
        Some(Errno::ENETUNREACH | Errno::EHOSTUNREACH | Errno::EADDRNOTAVAIL | Errno::EAFNOSUPPORT | Errno::EPROTONOSUPPORT) => {
            Class::NoRoute
        }
        Some(Errno::ETIMEDOUT) => Class::Unanswered,
        _ if error.kind() == io::ErrorKind::PermissionDenied => Class::Blocked,
        _ if error.kind() == io::ErrorKind::TimedOut => Class::Unanswered,
        _ => Class::Left,
    }
}

/// One attempt: `udp 192.0.2.1:9: sent 1 byte`.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub protocol: &'static str,
    pub target: SocketAddr,
    pub class: Class,
    pub what: String,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.protocol, self.target, self.what)
    }
}

fn attempt(protocol: &'static str, target: SocketAddr, result: io::Result<()>, success: &str) -> Attempt {
    let what = match &result {
        Ok(()) => success.to_owned(),
        Err(e) => e.to_string(),
    };
    Attempt { protocol, target, class: classify(&result), what }
}

fn udp(target: SocketAddr) -> Attempt {
    let unspecified: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal address");
    let result = UdpSocket::bind(unspecified).and_then(|socket| socket.send_to(&[0], target)).map(drop);
    attempt("udp", target, result, "sent 1 byte")
}

fn tcp(target: SocketAddr) -> Attempt {
    let result = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).map(drop);
    attempt("tcp", target, result, "connected")
}

/// Every attempt, UDP and TCP to each target, in parallel (so the whole check takes at most about
/// [`CONNECT_TIMEOUT`]), in target order.
pub fn check(targets: &[SocketAddr]) -> Vec<Attempt> {
    std::thread::scope(|scope| {
        let running: Vec<_> =
            targets.iter().flat_map(|target| [scope.spawn(move || udp(*target)), scope.spawn(move || tcp(*target))]).collect();
        settle(running.into_iter().map(|handle| handle.join().expect("an attempt does not panic")).collect())
    })
}

/// Decide each unanswered attempt by the datagram to the same target: refused by the lock (`EPERM`), the
/// SYN was dropped by it too; otherwise nothing in the pod stopped the SYN, and it left.
pub fn settle(mut attempts: Vec<Attempt>) -> Vec<Attempt> {
    let refused: Vec<SocketAddr> = attempts.iter().filter(|a| a.protocol == "udp" && a.class == Class::Blocked).map(|a| a.target).collect();
    for attempt in attempts.iter_mut().filter(|a| a.class == Class::Unanswered) {
        if refused.contains(&attempt.target) {
            attempt.class = Class::Blocked;
            attempt.what.push_str(" (dropped by the lock, which refused the datagram to the same target)");
        } else {
            attempt.class = Class::Left;
            attempt.what.push_str(" (the SYN left: nothing in the pod refused the datagram to the same target)");
        }
    }
    attempts
}

/// What the attempts say together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing left, and at least one attempt was refused by the kernel.
    Locked,
    /// Nothing left because nothing could: no route out of the pod in any family.
    NoRoute,
    /// These attempts left the pod.
    Missing(Vec<String>),
}

pub fn verdict(attempts: &[Attempt]) -> Verdict {
    let left: Vec<String> = attempts.iter().filter(|a| a.class == Class::Left).map(ToString::to_string).collect();
    if !left.is_empty() {
        Verdict::Missing(left)
    } else if attempts.iter().any(|a| a.class == Class::Blocked) {
        Verdict::Locked
    } else {
        Verdict::NoRoute
    }
}

/// Run the check and log one line: exit 0 when nothing can leave, 1 when something did.
pub fn run(targets: &[SocketAddr]) -> ExitCode {
    let attempts = check(targets);
    let all: Vec<String> = attempts.iter().map(ToString::to_string).collect();
    let all = all.join("; ");
    // The user this runs as (the owner of /proc/self): the lock lets only the proxy's out.
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).ok();
    match verdict(&attempts) {
        Verdict::Locked => {
            tracing::info!(uid, attempts = %all, "egress lock verified");
            ExitCode::SUCCESS
        }
        Verdict::NoRoute => {
            tracing::info!(uid, attempts = %all, note = "no route out of the pod", "egress lock verified");
            ExitCode::SUCCESS
        }
        Verdict::Missing(left) => {
            tracing::error!(uid, left = %left.join("; "), attempts = %all, "{MISSING}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: Errno) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(errno as i32))
    }

    #[test]
    fn the_classifier_knows_each_errno_class() {
        // The lock: the kernel refuses to send.
        assert_eq!(classify(&os(Errno::EPERM)), Class::Blocked);
        assert_eq!(classify(&os(Errno::EACCES)), Class::Blocked);
        assert_eq!(classify(&Err(io::Error::from(io::ErrorKind::PermissionDenied))), Class::Blocked);
        // No way out in that family.
        for errno in [Errno::ENETUNREACH, Errno::EHOSTUNREACH, Errno::EADDRNOTAVAIL, Errno::EAFNOSUPPORT, Errno::EPROTONOSUPPORT] {
            assert_eq!(classify(&os(errno)), Class::NoRoute, "{errno}");
        }
        // The packet left: sent, connected, refused by the other end, no answer in time, anything unknown.
        assert_eq!(classify(&Ok(())), Class::Left);
        for errno in [Errno::ECONNREFUSED, Errno::ECONNRESET, Errno::EMFILE] {
            assert_eq!(classify(&os(errno)), Class::Left, "{errno}");
        }
        assert_eq!(classify(&Err(io::Error::from(io::ErrorKind::WouldBlock))), Class::Left);
        // No answer: the lock's drop or silence outside; settled by the datagram to the same target.
        assert_eq!(classify(&os(Errno::ETIMEDOUT)), Class::Unanswered);
        assert_eq!(classify(&Err(io::Error::from(io::ErrorKind::TimedOut))), Class::Unanswered);
    }

    #[test]
    fn a_timeout_is_the_locks_only_where_it_refused_the_datagram() {
        let (v4, v6): (SocketAddr, SocketAddr) = (DEFAULT_TARGETS[0].parse().unwrap(), DEFAULT_TARGETS[1].parse().unwrap());
        let of = |protocol, target, class| Attempt { protocol, target, class, what: "x".to_owned() };
        let settled = settle(vec![
            of("udp", v4, Class::Blocked),
            of("tcp", v4, Class::Unanswered),
            of("udp", v6, Class::Left),
            of("tcp", v6, Class::Unanswered),
        ]);
        let classes: Vec<Class> = settled.iter().map(|a| a.class).collect();
        assert_eq!(classes, [Class::Blocked, Class::Blocked, Class::Left, Class::Left]);
        assert!(settled[1].what.contains("dropped by the lock"), "{}", settled[1]);
        assert!(settled[3].what.contains("the SYN left"), "{}", settled[3]);
        // A datagram without a route explains no timeout either.
        let settled = settle(vec![of("udp", v4, Class::NoRoute), of("tcp", v4, Class::Unanswered)]);
        assert_eq!(settled[1].class, Class::Left);
    }

    fn attempts(classes: &[Class]) -> Vec<Attempt> {
        let target: SocketAddr = DEFAULT_TARGETS[0].parse().unwrap();
        classes.iter().map(|class| Attempt { protocol: "udp", target, class: *class, what: format!("{class:?}") }).collect()
    }

    #[test]
    fn one_packet_out_is_enough_to_fail() {
        assert_eq!(verdict(&attempts(&[Class::Blocked, Class::Blocked, Class::NoRoute, Class::NoRoute])), Verdict::Locked);
        assert_eq!(verdict(&attempts(&[Class::NoRoute, Class::NoRoute])), Verdict::NoRoute);
        assert_eq!(verdict(&attempts(&[])), Verdict::NoRoute);
        assert_eq!(
            verdict(&attempts(&[Class::Blocked, Class::Left, Class::NoRoute])),
            Verdict::Missing(vec!["udp 192.0.2.1:9: Left".to_owned()])
        );
    }

    #[test]
    fn the_default_targets_are_one_of_each_family() {
        let targets: Vec<SocketAddr> = DEFAULT_TARGETS.iter().map(|t| t.parse().unwrap()).collect();
        assert!(targets[0].is_ipv4() && targets[1].is_ipv6());
    }
}
