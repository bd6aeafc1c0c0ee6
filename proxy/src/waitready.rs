//! `tollgate-proxy wait-ready`: block until this pod's proxy answers 200 on `/readyz`, polling its admin
//! listener on loopback every 20 ms. The webhook runs it as the sidecar's `postStart` hook: the kubelet
//! starts the next container only once the hook has returned, so the app starts as soon as the proxy is
//! ready — not at the next tick of a startupProbe, whose period cannot be shorter than a second.
//! Exits 0 once ready, 1 when `timeout` passes first (the kubelet then kills and restarts the sidecar, as
//! after a startupProbe's last failure).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// Where to ask: the admin listener's port, on loopback of the listener's family.
pub fn probe_address(admin_listen: SocketAddr) -> SocketAddr {
    let ip = if admin_listen.is_ipv6() { Ipv6Addr::LOCALHOST.into() } else { Ipv4Addr::LOCALHOST.into() };
    SocketAddr::new(ip, admin_listen.port())
}

/// Whether `/readyz` at `address` answers 200 now.
fn ready(address: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(&head == b"HTTP/1.1 200")
    };
    attempt().unwrap_or(false)
}

pub fn run(admin_listen: SocketAddr, timeout: Duration) -> ExitCode {
    let address = probe_address(admin_listen);
    let started = Instant::now();
    while started.elapsed() < timeout {
        if ready(address) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(POLL);
    }
    eprintln!("tollgate-proxy wait-ready: http://{address}/readyz did not answer 200 within {timeout:?}");
    ExitCode::FAILURE
}
