//! The plugin binary, run exactly as a container runtime runs it, against real network namespaces: a "pod"
//! namespace joined by a veth pair to an "outside" namespace with TCP and UDP servers (IPv4 and IPv6, and a
//! UDP port 53 standing in for DNS). Processes inside the pod run as the app's UID and as the proxy's UID.
//!
//! Needs root (network namespaces, setns, changing UID). Its own `main` (no libtest harness): the steps share
//! one pair of namespaces and run in order, and the same binary doubles as the probe it starts inside the
//! pod under another UID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

const APP_UID: u32 = 10000;
const PROXY_UID: u32 = 10001;
const INGRESS_PORT: u16 = 15006;
const ADMIN_PORT: u16 = 15021;
const APP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 8000;
const DNS_PORT: u16 = 53;
const PROBE_ENV: &str = "TOLLGATE_NETNS_PROBE";

fn main() {
    if let Ok(spec) = std::env::var(PROBE_ENV) {
        println!("{}", probe(&spec));
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { nix::libc::geteuid() } != 0 {
        if std::env::var_os("TOLLGATE_SKIP_PRIVILEGED").is_some() {
            eprintln!("netns: SKIPPED (not root, TOLLGATE_SKIP_PRIVILEGED set)");
            return;
        }
        panic!("the network-namespace tests need root (set TOLLGATE_SKIP_PRIVILEGED=1 to skip them knowingly)");
    }
    let pair = Pair::new();
    locks_a_hardened_pod(&pair);
    leaves_other_pods_alone(&pair);
    refuses_malformed_input(&pair);
    println!("netns: all steps passed");
}

// ---- the namespaces -----------------------------------------------------------------------------------------

struct Pair {
    pod: String,
    outside: String,
    pod_v4: String,
    outside_v4: String,
    pod_v6: String,
    outside_v6: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2's ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Pair {
    fn new() -> Pair {
        let id = std::process::id() % 200 + 20;
        let pair = Pair {
            pod: format!("tg-pod-{id}"),
            outside: format!("tg-out-{id}"),
            pod_v4: format!("10.251.{id}.2"),
            outside_v4: format!("10.251.{id}.1"),
            pod_v6: format!("fd00:251:{id}::2"),
            outside_v6: format!("fd00:251:{id}::1"),
        };
        for ns in [&pair.pod, &pair.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
            ip(&["netns", "add", ns]);
        }
        ip(&["link", "add", "tgv-pod", "netns", &pair.pod, "type", "veth", "peer", "name", "tgv-out", "netns", &pair.outside]);
        for (ns, dev, v4, v6) in
            [(&pair.pod, "tgv-pod", &pair.pod_v4, &pair.pod_v6), (&pair.outside, "tgv-out", &pair.outside_v4, &pair.outside_v6)]
        {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair.serve_outside();
        // IPv6 answers only once the link-local addresses are past duplicate detection (about a second).
        let v6 = format!("tcp [{}]:{ECHO_PORT}", pair.outside_v6);
        let ready = (0..20).any(|_| {
            let v6 = v6.clone();
            in_netns(&Pair::path(&pair.pod), move || probe(&v6)) == "ok" || {
                thread::sleep(Duration::from_millis(250));
                false
            }
        });
        assert!(ready, "IPv6 between the namespaces never came up");
        pair
    }

    fn path(ns: &str) -> PathBuf {
        Path::new("/run/netns").join(ns)
    }

    /// Echo servers in the outside namespace: TCP and UDP on both families, and UDP 53.
    fn serve_outside(&self) {
        let addrs: Vec<SocketAddr> = vec![
            format!("{}:{ECHO_PORT}", self.outside_v4).parse().unwrap(),
            format!("[{}]:{ECHO_PORT}", self.outside_v6).parse().unwrap(),
            format!("{}:{DNS_PORT}", self.outside_v4).parse().unwrap(),
        ];
        in_netns(&Pair::path(&self.outside), move || {
            for addr in addrs {
                serve_echo(addr);
            }
        });
    }

    /// Listeners inside the pod: the proxy's ports and the app's own, plus loopback.
    fn serve_in_pod(&self) {
        let addrs: Vec<SocketAddr> = [INGRESS_PORT, ADMIN_PORT, APP_PORT]
            .iter()
            .map(|p| SocketAddr::from(([0u16; 8], *p))) // [::] takes IPv4 too
            .chain(std::iter::once(SocketAddr::from(([127, 0, 0, 1], ECHO_PORT))))
            .collect();
        in_netns(&Pair::path(&self.pod), move || {
            for addr in addrs {
                serve_echo(addr);
            }
        });
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered the namespace: sockets it creates live there for good.
fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_path_buf();
    thread::spawn(move || {
        tollgate_cni::netns::enter(&netns).expect("setns");
        f()
    })
    .join()
    .expect("thread in netns")
}

fn serve_echo(addr: SocketAddr) {
    if addr.port() != DNS_PORT {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
        thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = conn.read(&mut buf) {
                        let _ = conn.write_all(&buf[..n]);
                    }
                });
            }
        });
    }
    let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], peer);
        }
    });
}

// ---- probes -------------------------------------------------------------------------------------------------

/// In the probe process: "tcp ADDR" or "udp ADDR" → "ok", "EPERM" or the error.
fn probe(spec: &str) -> String {
    let (proto, addr) = spec.split_once(' ').expect("probe spec");
    let addr: SocketAddr = addr.parse().expect("probe address");
    let timeout = Duration::from_millis(800);
    let outcome = match proto {
        "tcp" => TcpStream::connect_timeout(&addr, timeout).and_then(|mut s| {
            s.set_read_timeout(Some(timeout))?;
            s.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)
        }),
        _ => {
            let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
            UdpSocket::bind(bind).and_then(|s| {
                s.set_read_timeout(Some(timeout))?;
                s.send_to(b"ping", addr)?;
                let mut buf = [0u8; 4];
                s.recv_from(&mut buf).map(|_| ())
            })
        }
    };
    match outcome {
        Ok(()) => "ok".into(),
        Err(e) if e.raw_os_error() == Some(1) => "EPERM".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// Starts this binary inside the pod's namespace as `uid` to run one probe.
fn probe_as(netns: &Path, uid: u32, spec: &str) -> String {
    let spec = spec.to_string();
    in_netns(netns, move || {
        let out = Command::new(std::env::current_exe().unwrap())
            .env(PROBE_ENV, &spec)
            .uid(uid)
            .gid(uid)
            .stderr(Stdio::inherit())
            .output()
            .expect("probe process");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// `tollgate-proxy lock-check` inside the pod as `uid`, aimed at the outside namespace (the pod has no route
/// to its default documentation addresses): whether it passed, and its log.
fn lock_check(netns: &Path, uid: u32, pair: &Pair) -> (bool, String) {
    let proxy = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().join("tollgate-proxy");
    assert!(proxy.exists(), "{} is not built; run `cargo build --workspace` first (scripts/test.sh does)", proxy.display());
    let targets = [format!("{}:9", pair.outside_v4), format!("[{}]:9", pair.outside_v6)];
    in_netns(netns, move || {
        let out = Command::new(&proxy)
            .arg("lock-check")
            .args(targets.iter().flat_map(|t| ["--target", t.as_str()]))
            .uid(uid)
            .gid(uid)
            .output()
            .expect("tollgate-proxy lock-check");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    })
}

/// A connection from the outside namespace to the pod.
fn connect_from_outside(pair: &Pair, addr: SocketAddr) -> String {
    in_netns(&Pair::path(&pair.outside), move || probe(&format!("tcp {addr}")))
}

/// What a dropped first packet looks like to its sender: UDP's send fails at once with EPERM; TCP's connect
/// ignores the failed SYN and retransmits it (dropped again) until it times out.
fn assert_refused(outcome: &str, target: &str) {
    let refused = if target.starts_with("udp") { outcome == "EPERM" } else { outcome == "EPERM" || outcome.contains("timed out") };
    assert!(refused, "app → {target} must be refused by the lock, got {outcome:?}");
}

// ---- the plugin, as the runtime runs it -------------------------------------------------------------------

fn plugin(command: &str, netns: Option<&Path>, stdin: &[u8]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-cni"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "0123456789abcdef")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=analysis;K8S_POD_NAME=job-1");
    if let Some(netns) = netns {
        cmd.env("CNI_NETNS", netns);
    }
    // The plugin stops reading oversized input; what it did not read is not an error here.
    let out = tollgate_testkit::output_with_stdin(&mut cmd, stdin);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn prev_result() -> Value {
    json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
           "ips": [{"address": "10.251.0.2/24", "interface": 0}]})
}

fn netconf(annotations: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tollgate-cni",
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "prevResult": prev_result(),
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations},
    }))
    .unwrap()
}

fn hardened() -> Vec<u8> {
    let lock = format!(r#"{{"proxyUid":{PROXY_UID},"inboundPorts":[{INGRESS_PORT},{ADMIN_PORT}]}}"#);
    netconf(json!({"tollgate.dev/egress-lock": lock, "kubernetes.io/config.source": "api"}))
}

fn status(netns: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-cni")).args(["status", "--netns"]).arg(netns).output().unwrap();
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Targets {
    tcp4: String,
    tcp6: String,
    udp4: String,
    udp6: String,
    dns: String,
}

impl Targets {
    fn of(pair: &Pair) -> Targets {
        Targets {
            tcp4: format!("tcp {}:{ECHO_PORT}", pair.outside_v4),
            tcp6: format!("tcp [{}]:{ECHO_PORT}", pair.outside_v6),
            udp4: format!("udp {}:{ECHO_PORT}", pair.outside_v4),
            udp6: format!("udp [{}]:{ECHO_PORT}", pair.outside_v6),
            dns: format!("udp {}:{DNS_PORT}", pair.outside_v4),
        }
    }

    fn all(&self) -> [&str; 5] {
        [&self.tcp4, &self.tcp6, &self.udp4, &self.udp6, &self.dns]
    }
}

// ---- the steps ----------------------------------------------------------------------------------------------

fn locks_a_hardened_pod(pair: &Pair) {
    let pod = Pair::path(&pair.pod);
    let targets = Targets::of(pair);
    pair.serve_in_pod();

    // Before the plugin: the app reaches everything (so the probes below can tell a lock from a broken setup).
    for target in targets.all() {
        assert_eq!(probe_as(&pod, APP_UID, target), "ok", "before ADD, app → {target}");
    }

    // The pod's own check (the tollgate-lock-check init container) fails while the namespace is open...
    let (locked, log) = lock_check(&pod, APP_UID, pair);
    assert!(!locked && log.contains("the egress lock is missing"), "lock-check before ADD: {log}");

    let (ok, stdout, stderr) = plugin("ADD", Some(&pod), &hardened());
    assert!(ok, "ADD failed: {stdout} {stderr}");
    // ...and passes once it is locked, as the app's user (never as the proxy's, which may send).
    let (locked, log) = lock_check(&pod, APP_UID, pair);
    assert!(locked && log.contains("egress lock verified"), "lock-check after ADD: {log}");
    assert!(!lock_check(&pod, PROXY_UID, pair).0, "the proxy's UID is let out, so the check must fail for it");
    let result: Value = serde_json::from_str(&stdout).expect("ADD prints a result");
    assert_eq!(result, prev_result(), "a chained plugin passes the previous result on unchanged");

    for target in targets.all() {
        assert_refused(&probe_as(&pod, APP_UID, target), target);
        assert_eq!(probe_as(&pod, PROXY_UID, target), "ok", "proxy (uid {PROXY_UID}) → {target}");
    }
    // Another UID that is neither is refused like the app; loopback stays open to everyone.
    assert_refused(&probe_as(&pod, 4242, &targets.tcp4), &targets.tcp4);
    for uid in [APP_UID, PROXY_UID] {
        assert_eq!(probe_as(&pod, uid, &format!("tcp 127.0.0.1:{ECHO_PORT}")), "ok", "uid {uid} → loopback");
        assert_eq!(probe_as(&pod, uid, &format!("udp 127.0.0.1:{ECHO_PORT}")), "ok", "uid {uid} → loopback udp");
    }

    // Inbound: only the proxy's ports, on both families.
    for port in [INGRESS_PORT, ADMIN_PORT] {
        assert_eq!(connect_from_outside(pair, format!("{}:{port}", pair.pod_v4).parse().unwrap()), "ok", "→ pod:{port}");
        assert_eq!(connect_from_outside(pair, format!("[{}]:{port}", pair.pod_v6).parse().unwrap()), "ok", "→ [pod]:{port}");
    }
    let app_port = connect_from_outside(pair, format!("{}:{APP_PORT}", pair.pod_v4).parse().unwrap());
    assert!(app_port.contains("timed out"), "the app's own port must not admit connections from outside: {app_port}");

    let counted = status(&pod);
    assert_eq!(counted["locked"], true);
    let (out, inn) = (counted["droppedPackets"]["output"].as_u64().unwrap(), counted["droppedPackets"]["input"].as_u64().unwrap());
    assert!(out >= 6 && inn >= 1, "the drops are counted: {counted}");

    // CHECK: in place → success, silent; gone → a CNI error naming the missing table.
    let (ok, stdout, _) = plugin("CHECK", Some(&pod), &hardened());
    assert!(ok && stdout.is_empty(), "CHECK on a locked pod: {stdout}");
    in_netns(&pod, || tollgate_cni::nft::Nftables::open().unwrap().remove().unwrap());
    let (ok, stdout, _) = plugin("CHECK", Some(&pod), &hardened());
    let err: Value = serde_json::from_str(&stdout).unwrap();
    assert!(!ok && err["code"] == 102 && err["msg"].as_str().unwrap().contains("analysis/job-1"), "{stdout}");
    assert_eq!(probe_as(&pod, APP_UID, &targets.tcp4), "ok", "with the table gone the app is out again");

    // ADD again (a runtime retry) restores it; a second ADD replaces rather than duplicates.
    for _ in 0..2 {
        assert!(plugin("ADD", Some(&pod), &hardened()).0);
    }
    assert_eq!(status(&pod)["rules"].as_array().unwrap().len(), 15, "one copy of the lock");
    assert!(plugin("CHECK", Some(&pod), &hardened()).0);
    assert_refused(&probe_as(&pod, APP_UID, &targets.udp6), &targets.udp6);

    // DEL removes everything and may be repeated, also once the namespace is gone.
    for _ in 0..2 {
        let (ok, stdout, stderr) = plugin("DEL", Some(&pod), &hardened());
        assert!(ok && stdout.is_empty(), "DEL: {stdout} {stderr}");
    }
    assert_eq!(status(&pod)["locked"], false);
    assert_eq!(probe_as(&pod, APP_UID, &targets.tcp4), "ok", "after DEL nothing of the lock is left");
    assert!(plugin("DEL", Some(Path::new("/run/netns/tollgate-no-such-netns")), &hardened()).0, "DEL of a vanished netns");
    assert!(plugin("DEL", None, &hardened()).0, "DEL without CNI_NETNS");
    println!("netns: a hardened pod is locked, CHECKed, re-ADDed and DELeted");
}

fn leaves_other_pods_alone(pair: &Pair) {
    let pod = Pair::path(&pair.pod);
    let other = netconf(json!({"kubernetes.io/config.source": "api"}));
    for command in ["ADD", "CHECK", "DEL"] {
        let (ok, stdout, stderr) = plugin(command, Some(&pod), &other);
        assert!(ok, "{command} for a pod that is not tollgate's: {stdout} {stderr}");
        if command == "ADD" {
            assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), prev_result());
        }
        assert_eq!(status(&pod)["locked"], false, "{command} must not touch a pod that is not tollgate's");
    }
    assert_eq!(probe_as(&pod, APP_UID, &Targets::of(pair).dns), "ok");
    println!("netns: a pod without the annotation is untouched");
}

fn refuses_malformed_input(pair: &Pair) {
    let pod = Pair::path(&pair.pod);
    let bad_lock = netconf(json!({"tollgate.dev/egress-lock": r#"{"proxyUid":0,"inboundPorts":[15006]}"#}));
    let no_prev = br#"{"cniVersion":"1.0.0","name":"n","type":"tollgate-cni"}"#.to_vec();
    let old_version = br#"{"cniVersion":"0.2.0","name":"n","type":"tollgate-cni","prevResult":{}}"#.to_vec();
    let huge = vec![b'['; 4 << 20];
    let cases: Vec<(&str, Option<&Path>, Vec<u8>, u64)> = vec![
        ("ADD", Some(&pod), b"".to_vec(), 6),
        ("ADD", Some(&pod), b"{\"cniVersion\": 1}".to_vec(), 6),
        ("ADD", Some(&pod), huge, 6),
        ("ADD", Some(&pod), b"\xff\xfe".to_vec(), 6),
        ("ADD", Some(&pod), old_version, 1),
        ("ADD", Some(&pod), no_prev, 7),
        ("ADD", Some(&pod), bad_lock.clone(), 100),
        ("ADD", None, hardened(), 4),
        ("ADD", Some(Path::new("/run/netns/tollgate-no-such-netns")), hardened(), 101),
        ("ADD", Some(Path::new("/etc/hostname")), hardened(), 101),
        ("CHECK", Some(&pod), bad_lock, 100),
        ("FROB", Some(&pod), hardened(), 4),
    ];
    for (command, netns, stdin, code) in cases {
        let (ok, stdout, stderr) = plugin(command, netns, &stdin);
        assert!(!ok, "{command} with bad input must fail");
        assert!(!stderr.contains("panicked"), "{command}: a panic: {stderr}");
        let err: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{command}: not a CNI error result ({e}): {stdout}"));
        assert_eq!(err["code"], code, "{command}: {err}");
        assert!(!err["msg"].as_str().unwrap_or("").is_empty(), "{err}");
    }
    assert_eq!(status(&pod)["locked"], false, "a refused ADD installs nothing");
    println!("netns: malformed input gets CNI error results");
}
