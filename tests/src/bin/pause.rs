//! `tollgate-pause`: the pod sandbox's process, doing what registry.k8s.io/pause does — it holds the pod's
//! namespaces by sleeping forever, reaps the children it inherits when it is PID 1 (a pod sharing its process
//! namespace), and exits 0 on SIGTERM or SIGINT. The images harness builds it into `localhost/tollgate/pause`.
//!
//! The three signals are blocked and taken synchronously with sigwait(2), so no handler runs at an arbitrary
//! point, and as PID 1 (where the kernel drops signals without a handler that are not blocked) they still arrive.

use std::process::ExitCode;

const USAGE: &str = "usage: tollgate-pause [--help | --version]

Sleeps until SIGTERM or SIGINT, then exits 0; reaps any child it inherits (as PID 1 of a pod).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["--help" | "-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        ["--version" | "-V" | "-v"] => {
            println!("tollgate-pause {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    if std::process::id() != 1 {
        eprintln!("tollgate-pause: warning: not PID 1, so orphans of the pod are not reaped here");
    }

    let signals = [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD];
    // SAFETY: a zeroed sigset_t is valid storage for sigemptyset to initialize; the calls only touch `set`
    // and this thread's signal mask (there are no other threads).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        let failed = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if failed != 0 {
            eprintln!("tollgate-pause: blocking signals failed: {}", std::io::Error::from_raw_os_error(failed));
            return ExitCode::FAILURE;
        }
        set
    };
    // Children that exited before the mask was set would have no pending SIGCHLD of their own.
    reap();
    loop {
        let mut signal = 0;
        // SAFETY: `set` is initialized and `signal` is a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            continue;
        }
        match signal {
            libc::SIGCHLD => reap(),
            _ => {
                eprintln!("tollgate-pause: signal {signal}, exiting");
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// Collects every exited child; SIGCHLDs coalesce, so one signal may stand for many.
fn reap() {
    loop {
        // SAFETY: waitpid with a null status pointer is allowed.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}
