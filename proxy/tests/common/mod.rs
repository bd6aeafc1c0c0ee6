#![allow(dead_code)] // each test file uses a part

//! Real parts for the proxy's tests: upstreams that record exactly what they received, a token
//! endpoint that counts its calls, the proxy binary as a process, and a raw HTTP client that sends
//! bytes exactly as written.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
// Shared with the other crates' suites.
pub use tollgate_testkit::{RawResponse, free_port};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What `localhost` resolves to first here, as the proxy resolves it (127.0.0.1, or ::1 on some hosts).
pub async fn localhost() -> IpAddr {
    tokio::net::lookup_host(("localhost", 0)).await.unwrap().next().unwrap().ip()
}

/// An upstream that records every request and answers 200 with a small body.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    /// Milliseconds to wait before answering.
    pub delay_ms: Arc<AtomicU64>,
    /// Connections accepted, whether or not a request followed.
    pub accepted: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_on("127.0.0.1".parse().unwrap()).await
    }

    /// An upstream listening on `ip` (a free port).
    pub async fn start_on(ip: IpAddr) -> Upstream {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (seen2, delay2, accepted2) = (seen.clone(), delay_ms.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let (seen, delay) = (seen2.clone(), delay2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (seen, delay) = (seen.clone(), delay.clone());
                        async move {
                            let method = request.method().to_string();
                            let target = request.uri().to_string();
                            let headers = request
                                .headers()
                                .iter()
                                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                                .collect();
                            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            seen.lock().unwrap().push(Recorded { method, target, headers, body });
                            let delay = delay.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"upstream says hi"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        Upstream { addr, seen, delay_ms, accepted }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

/// A token endpoint: counts calls, answers per its mode.
pub struct Idp {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    /// 200 to issue tokens, anything else to fail with that status.
    pub status: Arc<AtomicU64>,
    pub delay_ms: Arc<AtomicU64>,
    pub expires_in: Arc<AtomicU64>,
    /// When set, `expires_in` exactly as this JSON value (a string, a float, ...) instead of `expires_in`.
    pub expires_in_json: Arc<Mutex<Option<serde_json::Value>>>,
    pub forms: Arc<Mutex<Vec<String>>>,
    /// Connections accepted, whether or not a request followed.
    pub accepted: Arc<AtomicUsize>,
}

impl Idp {
    pub async fn start() -> Idp {
        Idp::start_on("127.0.0.1".parse().unwrap()).await
    }

    /// A token endpoint listening on `ip` (a free port).
    pub async fn start_on(ip: IpAddr) -> Idp {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = Idp {
            addr,
            calls: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(AtomicU64::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            expires_in: Arc::new(AtomicU64::new(300)),
            expires_in_json: Arc::new(Mutex::new(None)),
            forms: Arc::new(Mutex::new(Vec::new())),
            accepted: Arc::new(AtomicUsize::new(0)),
        };
        let (calls, status, delay, forms, accepted) =
            (idp.calls.clone(), idp.status.clone(), idp.delay_ms.clone(), idp.forms.clone(), idp.accepted.clone());
        let expires_in = (idp.expires_in.clone(), idp.expires_in_json.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (calls, status, delay, expires_in, forms) =
                    (calls.clone(), status.clone(), delay.clone(), expires_in.clone(), forms.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (calls, status, delay, (expires_in, expires_in_json), forms) =
                            (calls.clone(), status.clone(), delay.clone(), expires_in.clone(), forms.clone());
                        async move {
                            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            forms.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                            tokio::time::sleep(Duration::from_millis(delay.load(Ordering::SeqCst))).await;
                            let code = status.load(Ordering::SeqCst) as u16;
                            let body = if code == 200 {
                                let expires_in =
                                    expires_in_json.lock().unwrap().clone().unwrap_or_else(|| expires_in.load(Ordering::SeqCst).into());
                                serde_json::json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": expires_in})
                            } else {
                                serde_json::json!({"error": "temporarily_unavailable"})
                            };
                            let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
                            *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        idp
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The proxy binary, running with a config; killed on drop.
pub struct Proxy {
    pub child: Child,
    pub egress: SocketAddr,
    pub admin: SocketAddr,
    pub ingress: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Proxy {
    /// Start with `config` (YAML without the listen section) and wait until /healthz answers.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let [egress, admin, ingress]: [SocketAddr; 3] = std::array::from_fn(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
        // `{dir}` in the config is this proxy's own temporary directory (for credential files).
        std::fs::write(dir.path().join("client-id"), "analysis-7\n").unwrap();
        std::fs::write(dir.path().join("client-secret"), "s3cr3t&=%\n").unwrap();
        std::fs::write(dir.path().join("bearer"), "static-token\n").unwrap();
        let config = config.replace("{dir}", dir.path().to_str().unwrap());
        let config = format!("listen: {{ egress: '{egress}', admin: '{admin}', ingress: '{ingress}' }}\n{config}");
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, &config).unwrap();
        let log = dir.path().join("proxy.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate-proxy"))
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let proxy = Proxy { child, egress, admin, ingress, dir, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while raw(proxy.admin, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.status != 200 {
            assert!(Instant::now() < deadline, "proxy did not start:\n{}", proxy.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // pingora starts its services one after the other: the admin listener can answer before the egress
        // (and ingress) listeners are bound. A connection closed before a byte is sent is no request.
        let has_ingress = config.lines().any(|l| l.starts_with("ingress:"));
        for listener in std::iter::once(proxy.egress).chain(has_ingress.then_some(proxy.ingress)) {
            while TcpStream::connect(listener).await.is_err() {
                assert!(Instant::now() < deadline, "proxy did not listen on {listener}:\n{}", proxy.logs());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        proxy
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The audit lines (`"message": "request"`) logged so far, once there are at least `n` of them (the
    /// line is written after the response, so it may trail it a little).
    pub async fn audit(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<serde_json::Value> = self
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["message"] == "request")
                .collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn get(&self, target: &str) -> RawResponse {
        raw(self.egress, format!("GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes()).await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `request` byte for byte and read the response until the server closes (status 0 when none).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    raw_from(None, addr, request).await
}

/// A connection to `addr` from `source` (any loopback address: 127.0.0.0/8 is all this host's), or from
/// wherever the OS picks.
pub async fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect(addr).await };
    let socket = if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// [`raw`], from `source`.
pub async fn raw_from(source: Option<IpAddr>, addr: SocketAddr, request: &[u8]) -> RawResponse {
    let Ok(mut stream) = connect_from(source, addr).await else { return RawResponse::default() };
    if stream.write_all(request).await.is_err() {
        return RawResponse::default();
    }
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut bytes)).await;
    RawResponse::parse(&bytes)
}

// ---- upstreams that fail mid-response (tests/faults.rs, tests/ingress.rs) ----

/// How the fake upstream misbehaves once it has read the request head.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Chunked: one chunk, then the connection closes.
    ChunkedThenClose,
    /// Content-Length 100, five bytes, then the connection closes.
    ShortThenClose,
    /// Chunked: one chunk, then silence (the proxy's read timeout fires).
    ChunkedThenStall,
    /// Content-Length 100, five bytes, then a reset (SO_LINGER 0).
    ShortThenReset,
}

/// Reads a request head off `conn`; false if the connection ended first.
pub async fn read_head(conn: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that answers every connection with `fault`.
pub async fn faulty_upstream(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut conn).await {
                    return;
                }
                let response: &[u8] = match fault {
                    Fault::ChunkedThenClose | Fault::ChunkedThenStall => {
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
                    }
                    Fault::ShortThenClose | Fault::ShortThenReset => {
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\nhello"
                    }
                };
                let _ = conn.write_all(response).await;
                let _ = conn.flush().await;
                match fault {
                    Fault::ChunkedThenStall => tokio::time::sleep(Duration::from_secs(30)).await,
                    Fault::ShortThenReset => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = conn.set_zero_linger();
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            });
        }
    });
    addr
}

/// Every byte the client gets, until the proxy closes the connection.
pub async fn exchange(addr: SocketAddr, request: &str) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the proxy kept the connection open after the upstream failed: {}", String::from_utf8_lossy(&bytes));
    (bytes, started.elapsed())
}

/// The client can tell the response is incomplete, and nothing of the proxy's was mixed into it.
pub fn assert_truncated(bytes: &[u8], what: &str) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{what}: no response head: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{what}: the upstream's head was relayed: {head}");
    assert!(body.contains("hello"), "{what}: the bytes that came were relayed: {body:?}");
    assert!(!body.contains("error") && !body.contains("decision") && !body.contains('{'), "{what}: something was appended: {body:?}");
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        assert!(!body.ends_with("0\r\n\r\n"), "{what}: a final chunk made the body look complete: {body:?}");
    } else {
        let length: usize = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("{what}: neither chunked nor a length: {head}"));
        assert!(body.len() < length, "{what}: {} bytes of a declared {length} look complete", body.len());
    }
}
