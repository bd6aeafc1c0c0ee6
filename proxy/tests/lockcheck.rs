//! `tollgate-proxy lock-check`, the binary itself, without root: toward a local UDP and TCP listener nothing
//! refuses a packet, so the check must fail, naming each target and what happened, in one JSON log line.
//! (That a locked network namespace passes is tested with the tollgate-cni plugin, as root.)

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-proxy");

fn lock_check(targets: &[String]) -> (Output, Duration) {
    let started = Instant::now();
    let mut command = Command::new(BIN);
    command.arg("lock-check").env_remove("TOLLGATE_LOG");
    for target in targets {
        command.args(["--target", target]);
    }
    let output = command.output().unwrap();
    (output, started.elapsed())
}

/// The one JSON line on stderr.
fn log_line(output: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one log line: {stderr}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

/// A UDP socket and a TCP listener on the same loopback port.
fn listeners() -> (UdpSocket, TcpListener, u16) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            return (udp, tcp, port);
        }
    }
    panic!("no port free for both UDP and TCP");
}

const MISSING: &str = "the egress lock is missing: a container other than tollgate-proxy can send packets out of this pod. The tollgate-cni plugin did not lock this pod's network namespace (is the tollgate-cni DaemonSet running on this node and chained into its CNI config?)";

#[test]
fn a_packet_that_leaves_fails_the_check_and_names_the_target() {
    let (udp, tcp, port) = listeners();
    let target = format!("127.0.0.1:{port}");
    let (output, took) = lock_check(std::slice::from_ref(&target));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty());
    let line = log_line(&output);
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["message"], MISSING, "{line}");
    let left = line["left"].as_str().unwrap();
    assert!(left.contains(&format!("udp {target}: sent 1 byte")), "{left}");
    assert!(left.contains(&format!("tcp {target}: connected")), "{left}");
    assert!(line["uid"].is_u64(), "{line}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // And the packets did arrive.
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut byte = [9u8; 4];
    let (n, _) = udp.recv_from(&mut byte).unwrap();
    assert_eq!(&byte[..n], &[0]);
    tcp.set_nonblocking(true).unwrap();
    let (mut stream, _) = tcp.accept().expect("the connection reached the listener");
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the check sends nothing over TCP");
}

#[test]
fn a_refused_connection_left_the_pod_too_and_every_target_is_named() {
    let (udp, tcp, open) = listeners();
    drop(tcp);
    // A second port where nothing listens at all.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let targets = [format!("127.0.0.1:{open}"), format!("127.0.0.1:{closed}")];
    let (output, _) = lock_check(&targets);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let line = log_line(&output);
    let left = line["left"].as_str().unwrap();
    for target in &targets {
        assert!(left.contains(&format!("udp {target}: sent 1 byte")), "{left}");
        assert!(left.contains(&format!("tcp {target}: Connection refused")), "{left}");
    }
    drop(udp);
}

#[test]
fn help_says_what_it_is_for() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("lock-check"), "{help}");
    let output = Command::new(BIN).args(["lock-check", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for part in ["egress lock", "tollgate-lock-check", "tollgate-cni", "--target <ADDR:PORT>", "192.0.2.1:9"] {
        assert!(help.contains(part), "{part:?} not in {help}");
    }
    let output = Command::new(BIN).args(["lock-check", "--target", "not-an-address"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}
