//! The floor for tollgate-webhook (bench/webhook.sh): what any admission webhook on this stack does at
//! least, and nothing more. HTTPS with rustls (ring, h2 and http/1.1 by ALPN, the certificate and key read
//! from PEM files), hyper's auto builder set up exactly as tollgate-webhook's server sets it up, on a
//! multi-threaded tokio runtime with its default thread count (one per core); `POST /mutate` reads the
//! body (bounded, as the webhook does), decodes the AdmissionReview with kube's types, and answers
//! `allowed: true` with the request's uid. No policy, no hardening, no patch, no log line.
//!
//! With `--patch FILE` (a JSONPatch), every answer carries that patch: what the API server spends applying
//! a mutation of that size, with none of the work of computing it (bench/admission.sh gives it tollgate's
//! patch for its pod).
//!
//! ```text
//! floor-webhook --listen 127.0.0.1:18443 --tls-cert tls.crt --tls-key tls.key [--patch FILE]
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// As the webhook: kube-apiserver's own limit, and the same timeouts.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    listen: SocketAddr,
    cert: String,
    key: String,
    patch: Option<String>,
}

/// `--patch`: the JSONPatch every answer carries, if any, serialised once.
static PATCH: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();

fn args() -> Result<Args, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 18443));
    let (mut cert, mut key, mut patch) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--tls-cert" => cert = Some(value()?),
            "--tls-key" => key = Some(value()?),
            "--patch" => patch = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args { listen, cert: cert.ok_or("--tls-cert FILE is required")?, key: key.ok_or("--tls-key FILE is required")?, patch })
}

/// tollgate-webhook's TLS setup (webhook/src/tls.rs): ring, the safe default versions, h2 then http/1.1.
fn tls(cert: &str, key: &str) -> Result<TlsAcceptor, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("{cert}: {e}"))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("{key}: {e}"))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>().map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("{key}: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Decode the AdmissionReview and allow, echoing the uid.
fn allow(body: &[u8]) -> Result<Vec<u8>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| "no request".to_owned())?;
    let mut response = AdmissionResponse::from(&request);
    if let Some(patch) = PATCH.get().and_then(Option::as_ref) {
        // An empty patch sets the patch type; the bytes are the ones serialised at start.
        response = response.with_patch(json_patch::Patch(Vec::new())).map_err(|e| e.to_string())?;
        response.patch = Some(patch.clone());
    }
    serde_json::to_vec(&response.into_review()).map_err(|e| e.to_string())
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST || request.uri().path() != "/mutate" {
        return Ok(respond(StatusCode::NOT_FOUND, "{}"));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Ok(respond(StatusCode::BAD_REQUEST, format!("{{\"error\":{:?}}}", e.to_string()))),
    };
    Ok(match allow(&body) {
        Ok(answer) => respond(StatusCode::OK, answer),
        Err(e) => respond(StatusCode::BAD_REQUEST, format!("{{\"error\":{e:?}}}")),
    })
}

fn main() {
    let args = args().unwrap_or_else(|e| {
        eprintln!("floor-webhook: {e}");
        std::process::exit(2);
    });
    let tls = tls(&args.cert, &args.key).unwrap_or_else(|e| {
        eprintln!("floor-webhook: {e}");
        std::process::exit(1);
    });
    let patch = args.patch.as_ref().map(|file| {
        let text = std::fs::read(file).unwrap_or_else(|e| {
            eprintln!("floor-webhook: --patch {file}: {e}");
            std::process::exit(1);
        });
        let patch = serde_json::from_slice::<json_patch::Patch>(&text).unwrap_or_else(|e| {
            eprintln!("floor-webhook: --patch {file}: not a JSONPatch: {e}");
            std::process::exit(1);
        });
        serde_json::to_vec(&patch).expect("a JSONPatch serialises")
    });
    PATCH.set(patch).expect("set once");
    // As `tollgate-webhook serve`: a multi-threaded runtime, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the runtime starts");
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.unwrap_or_else(|e| {
            eprintln!("floor-webhook: --listen {}: {e}", args.listen);
            std::process::exit(1);
        });
        eprintln!("floor-webhook: serving on {}", args.listen);
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await else { return };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder = if h2 { builder.http2_only() } else { builder.http1_only() };
                builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10));
                let _ = builder.serve_connection(TokioIo::new(stream), service_fn(handle)).await;
            });
        }
    });
}
