//! `tollgate-example-analysis`: an analysis as the FLAME node runs one, talking only through the tollgate-proxy
//! sidecar at `$TOLLGATE_EGRESS_URL`, on the routes of `proxy/examples/flame.yaml`. It holds no credential: the
//! proxy attaches the token.
//!
//! `run` (the default, for a Job): reads its input (numbers, whitespace-separated; `--input`/`INPUT_FILE`, else a
//! built-in sample), then
//!
//! ```text
//! GET  /hub-adapter/kong/datastore/{project_id}          the project's data sources: {"data": [{"name": …}, …]}
//! GET  /kong/{source}/fhir/{query}                       for each source (default query Patient?_summary=count)
//! POST /message-broker/analyses/{analysis_id}/messages   the result, to the other participants
//! PUT  /storage/final/                                   the result (multipart, field "file", as the FLAME SDK)
//! ```
//!
//! printing one line per call with its status; the result is the last line of stdout. Exits 0 only if every
//! call succeeded; the first failure (a non-2xx status or no answer) ends it with exit code 1.
//!
//! `serve` (for a Deployment-shaped analysis): answers `/healthz`, and every other path with a small JSON body
//! naming itself, on 0.0.0.0:8000.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const NAME: &str = "tollgate-example-analysis";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Used when no input file is given: ages, as a data set might hold them.
const SAMPLE_INPUT: &str = "42 37 58 61 45 50 39 44 71 28";
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const BOUNDARY: &str = "tollgate-example-analysis-boundary";

#[derive(Parser)]
#[command(name = NAME, version, about = "An example FLAME analysis that talks only through tollgate-proxy", long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Read the input, fetch the project's data, send the result to the message broker and to storage (default).
    Run(RunArgs),
    /// Answer HTTP requests (a Deployment-shaped analysis).
    Serve {
        #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8000")]
        listen: SocketAddr,
    },
    /// GET a URL (http only) and print `status=NNN` and the body: for probing from inside a pod.
    Get {
        url: String,
        /// Send `Authorization: Bearer TOKEN`.
        #[arg(long, value_name = "TOKEN")]
        bearer: Option<String>,
    },
    /// Print this process's user and group, and whether the root filesystem is writable.
    Whoami,
    /// Open a TCP connection straight to ADDR (host:port), past the proxy, and print `connect=ok` or
    /// `connect=failed`: under tollgate's egress lock this must fail.
    Connect {
        addr: SocketAddr,
        #[arg(long, default_value = "3")]
        timeout_seconds: u64,
    },
    /// Send a DNS query for NAME straight to the first nameserver of /etc/resolv.conf and print
    /// `dns=sent` (with `answer=yes|no`) or `dns=refused`: under tollgate's egress lock the send itself fails.
    Dns { name: String },
    /// Print a file (to show what this container can and cannot read).
    Read { file: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// The proxy's egress listener (the webhook sets this variable).
    #[arg(long, env = "TOLLGATE_EGRESS_URL", default_value = "http://127.0.0.1:15001")]
    egress_url: String,
    #[arg(long, env = "ANALYSIS_ID")]
    analysis_id: Option<String>,
    #[arg(long, env = "PROJECT_ID")]
    project_id: Option<String>,
    /// Numbers, whitespace-separated; without it, a built-in sample.
    #[arg(long, env = "INPUT_FILE", value_name = "FILE")]
    input: Option<PathBuf>,
    /// FHIR query asked of every data source.
    #[arg(long, env = "FHIR_QUERY", default_value = "Patient?_summary=count")]
    fhir_query: String,
    /// Message recipients (node ids).
    #[arg(long = "recipient", env = "RECIPIENTS", value_delimiter = ',')]
    recipients: Vec<String>,
    /// Extra `Name: value` headers on every call (e.g. a credential of the app's own, which the proxy must
    /// never pass on).
    #[arg(long = "header", env = "EXTRA_HEADERS", value_delimiter = ';', value_name = "NAME: VALUE")]
    headers: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => run(args).await,
        Command::Serve { listen } => serve(listen).await,
        Command::Get { url, bearer } => get(&url, bearer.as_deref()).await,
        Command::Whoami => whoami(),
        Command::Connect { addr, timeout_seconds } => connect(addr, Duration::from_secs(timeout_seconds)).await,
        Command::Dns { name } => dns(&name).await,
        Command::Read { file } => {
            std::fs::read_to_string(&file).map(|text| print!("{text}")).map_err(|e| format!("{}: {e}", file.display()))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- run ----

async fn run(args: RunArgs) -> Result<(), String> {
    let analysis_id = id("analysis id (--analysis-id or ANALYSIS_ID)", args.analysis_id)?;
    let project_id = id("project id (--project-id or PROJECT_ID)", args.project_id)?;
    let mut egress = Egress::parse(&args.egress_url)?;
    for header in &args.headers {
        let (name, value) = header.split_once(':').ok_or_else(|| format!("--header {header:?} is not NAME: VALUE"))?;
        egress.headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let input = match &args.input {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?,
        None => SAMPLE_INPUT.to_owned(),
    };
    let numbers = parse_numbers(&input)?;

    let datastores = egress.call(Method::GET, &format!("/hub-adapter/kong/datastore/{project_id}"), None).await?;
    let sources = source_names(&datastores)?;
    let mut source_results = Vec::new();
    for source in &sources {
        let answer = egress.call(Method::GET, &format!("/kong/{source}/fhir/{}", args.fhir_query), None).await?;
        let total = serde_json::from_slice::<Value>(&answer).ok().and_then(|v| v.get("total").cloned());
        source_results.push(json!({"name": source, "total": total}));
    }

    let count = numbers.len();
    let sum: f64 = numbers.iter().sum();
    let result = json!({
        "analysis": NAME,
        "analysis_id": analysis_id,
        "project_id": project_id,
        "input": {"count": count, "sum": sum, "mean": if count == 0 { Value::Null } else { json!(sum / count as f64) }},
        "sources": source_results,
    });

    let message = json!({"recipients": args.recipients, "message": {"category": "result", "result": result}});
    let message_body = Body::json(&message);
    egress.call(Method::POST, &format!("/message-broker/analyses/{analysis_id}/messages"), Some(message_body)).await?;
    egress.call(Method::PUT, "/storage/final/", Some(Body::multipart_file("result.json", &result.to_string()))).await?;

    println!("{result}");
    Ok(())
}

/// An id used in a path: one safe segment.
fn id(what: &str, value: Option<String>) -> Result<String, String> {
    let value = value.filter(|v| !v.is_empty()).ok_or_else(|| format!("no {what}"))?;
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) || value.starts_with('.') {
        return Err(format!("{what} {value:?} must be letters, digits, '-', '_' or '.'"));
    }
    Ok(value)
}

fn parse_numbers(input: &str) -> Result<Vec<f64>, String> {
    input.split_whitespace().map(|word| word.parse::<f64>().map_err(|_| format!("input: {word:?} is not a number"))).collect()
}

/// The hub adapter's answer: `{"data": [{"name": "…", …}, …]}`.
fn source_names(answer: &[u8]) -> Result<Vec<String>, String> {
    let value: Value = serde_json::from_slice(answer).map_err(|e| format!("data sources: not JSON: {e}"))?;
    let data = value.get("data").and_then(Value::as_array).ok_or("data sources: no \"data\" array")?;
    data.iter()
        .map(|source| {
            let name = source.get("name").and_then(Value::as_str).ok_or("data sources: an entry has no \"name\"")?;
            id("data source name", Some(name.to_owned()))
        })
        .collect()
}

struct Body {
    content_type: String,
    bytes: Bytes,
}

impl Body {
    fn json(value: &Value) -> Body {
        Body { content_type: "application/json".into(), bytes: Bytes::from(value.to_string()) }
    }

    fn multipart_file(filename: &str, contents: &str) -> Body {
        let text = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{contents}\r\n--{BOUNDARY}--\r\n"
        );
        Body { content_type: format!("multipart/form-data; boundary={BOUNDARY}"), bytes: Bytes::from(text) }
    }
}

/// The proxy's egress listener: plain HTTP/1.1, one connection per call.
struct Egress {
    host: String,
    port: u16,
    authority: String,
    /// Sent with every call.
    headers: Vec<(String, String)>,
}

impl Egress {
    fn parse(url: &str) -> Result<Egress, String> {
        let uri: Uri = url.parse().map_err(|e| format!("TOLLGATE_EGRESS_URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("TOLLGATE_EGRESS_URL {url:?} must be http://host:port"));
        }
        let authority = uri.authority().ok_or_else(|| format!("TOLLGATE_EGRESS_URL {url:?} has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Egress { host, port: authority.port_u16().unwrap_or(80), authority: authority.to_string(), headers: Vec::new() })
    }

    /// One call; prints `METHOD PATH -> STATUS`. A non-2xx status or no answer is an error.
    async fn call(&self, method: Method, path: &str, body: Option<Body>) -> Result<Bytes, String> {
        let line = format!("{method} {path}");
        match tokio::time::timeout(CALL_TIMEOUT, self.send(method, path, body)).await {
            Ok(Ok((status, answer))) if status.is_success() => {
                println!("{line} -> {status} ({} bytes)", answer.len());
                Ok(answer)
            }
            Ok(Ok((status, answer))) => {
                println!("{line} -> {status}");
                let text = String::from_utf8_lossy(&answer);
                let snippet: String = text.chars().take(300).collect();
                Err(format!("{line} failed with {status}: {snippet}"))
            }
            Ok(Err(e)) => {
                println!("{line} -> no answer");
                Err(format!("{line} failed: {e}"))
            }
            Err(_) => {
                println!("{line} -> timed out");
                Err(format!("{line} failed: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Body>) -> Result<(StatusCode, Bytes), String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to the proxy at {}: {e}", self.authority))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::USER_AGENT, format!("{NAME}/{VERSION}"))
            .header(header::ACCEPT, "application/json");
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let bytes = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, body.content_type);
                body.bytes
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(bytes)).map_err(|e| format!("building the request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let answer = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
        driver.abort();
        Ok((status, answer))
    }
}

// ---- get, whoami ----

async fn get(url: &str, bearer: Option<&str>) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let origin = format!("http://{}", uri.authority().ok_or_else(|| format!("{url:?} has no host"))?);
    let mut client = Egress::parse(&origin)?;
    if let Some(token) = bearer {
        client.headers.push(("authorization".to_owned(), format!("Bearer {token}")));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let (status, body) = tokio::time::timeout(CALL_TIMEOUT, client.send(Method::GET, path, None))
        .await
        .map_err(|_| format!("GET {url}: no answer within {CALL_TIMEOUT:?}"))??;
    println!("status={}", status.as_u16());
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => {
            println!("connect=ok addr={addr}");
            Ok(())
        }
        Ok(Err(e)) => {
            println!("connect=failed addr={addr} error={e}");
            Err(format!("connecting to {addr}: {e}"))
        }
        Err(_) => {
            println!("connect=failed addr={addr} error=timed out after {timeout:?}");
            Err(format!("connecting to {addr}: timed out"))
        }
    }
}

async fn dns(name: &str) -> Result<(), String> {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    let server: std::net::IpAddr = resolv
        .lines()
        .find_map(|l| l.strip_prefix("nameserver"))
        .and_then(|rest| rest.trim().parse().ok())
        .ok_or("/etc/resolv.conf names no nameserver")?;
    // A standard query (id 0x7467, recursion desired) for NAME's A record.
    let mut query = vec![0x74, 0x67, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).ok().filter(|l| (1..64).contains(l)).ok_or_else(|| format!("{name:?} is not a DNS name"))?;
        query.push(len);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("an address");
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| format!("a UDP socket: {e}"))?;
    let to = SocketAddr::new(server, 53);
    if let Err(e) = socket.send_to(&query, to).await {
        println!("dns=refused server={to} error={e}");
        return Err(format!("sending a DNS query to {to}: {e}"));
    }
    let mut buf = [0u8; 512];
    let answered = matches!(tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await, Ok(Ok(_)));
    println!("dns=sent server={to} answer={}", if answered { "yes" } else { "no" });
    Ok(())
}

fn whoami() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|rest| rest.split_whitespace().next()).unwrap_or("?").to_owned()
    };
    let probe = std::path::Path::new("/.tollgate-write-probe");
    let writable = std::fs::write(probe, b"x").is_ok();
    if writable {
        let _ = std::fs::remove_file(probe);
    }
    println!("uid={} gid={} root-writable={writable}", field("Uid:"), field("Gid:"));
    Ok(())
}

// ---- serve ----

async fn serve(listen: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("listening on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("{NAME} {VERSION}: listening on {local}");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(answer);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("{NAME}: stopping");
    Ok(())
}

async fn answer(request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if request.uri().path() == "/healthz" {
        json!({"status": "ok"})
    } else {
        json!({
            "analysis": NAME,
            "version": VERSION,
            "analysis_id": std::env::var("ANALYSIS_ID").ok(),
            "method": request.method().as_str(),
            "path": request.uri().path(),
        })
    };
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a static response is valid");
    Ok(response)
}
