//! The memory policy of tollgate's servers (the webhook and the proxy), measured in bench/ (README.md,
//! Speed):
//!
//! - **mimalloc** as the allocator ([`Allocator`], named by each binary as its `#[global_allocator]`): both
//!   servers make many small short-lived allocations per request. mimalloc takes a fraction of glibc's
//!   instructions for them (the webhook's reviews), and pingora's request path on it serves about 1.2× the
//!   requests at a smaller resident set (the proxy).
//! - **No transparent huge pages** ([`disable_huge_pages`]): on hosts with THP `always` every region the
//!   allocator touches was backed by 2 MiB pages, which doubled the resident set at rest for no measurable
//!   gain in speed.
//! - **Memory handed back** ([`release`]): mimalloc keeps what a thread freed until that thread allocates
//!   again; a thread that goes idle after a burst calls this.

/// The allocator both servers run on.
pub type Allocator = mimalloc::MiMalloc;

/// Turn transparent huge pages off for this process, then hand back what was touched before (as huge
/// pages), to come again as small ones. Call once, early in `main`; an error (a kernel without the prctl)
/// only means the resident set stays larger.
pub fn disable_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's memory policy.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    release();
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The calling thread's free memory, and the allocator's, given back to the system now.
pub fn release() {
    // SAFETY: mi_collect only frees memory that no allocation holds; it is safe on any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    /// The kernel's own record of the process's policy (`THP_enabled` in /proc/self/status, Linux 5.0+).
    fn thp_enabled() -> Option<String> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        status.lines().find_map(|line| line.strip_prefix("THP_enabled:")).map(|v| v.trim().to_owned())
    }

    #[test]
    fn huge_pages_are_off_for_the_process_afterwards() {
        // The test process itself: the flag is per process and nothing else in this crate's tests needs THP.
        if thp_enabled().is_none() {
            eprintln!("this kernel does not report THP_enabled; nothing to check");
            return;
        }
        super::disable_huge_pages().expect("PR_SET_THP_DISABLE");
        assert_eq!(thp_enabled().as_deref(), Some("0"));
    }
}
