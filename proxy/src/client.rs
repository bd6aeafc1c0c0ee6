//! A small HTTP client for the proxy's own calls (token endpoint, JWKS): one request per connection,
//! http or https (system roots plus an optional extra CA bundle), bounded by a timeout. A call that
//! carries a credential ([`HttpClient::send_credentials`]) connects only to an address the
//! [`LocalGuard`] accepts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::local::LocalGuard;
use crate::resolve::lookup;
use crate::routes::Upstream;
use crate::tunnel::ConnectTunnel;

const MAX_RESPONSE: usize = 1 << 20;

#[derive(Clone)]
pub struct HttpClient {
    tls: TlsConnector,
    /// An HTTP CONNECT forward proxy, if egress must go through one.
    forward_proxy: Option<Upstream>,
}

pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

impl HttpClient {
    /// Trust the system roots and, if given, the CAs in `extra_ca_pem`.
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<HttpClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = extra_ca_pem {
            let extra: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| format!("extra CA bundle: {e}"))?;
            if extra.is_empty() {
                return Err("extra CA bundle: no PEM certificate found".into());
            }
            for cert in extra {
                roots.add(cert).map_err(|e| format!("extra CA bundle: {e}"))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(HttpClient { tls: TlsConnector::from(Arc::new(config)), forward_proxy: None })
    }

    /// Send everything through this HTTP CONNECT forward proxy.
    pub fn via(mut self, forward_proxy: Option<Upstream>) -> Self {
        self.forward_proxy = forward_proxy;
        self
    }

    /// Send one request to `url` + `path_and_query`; the whole exchange is bounded by `timeout`.
    /// For calls that carry no credential (JWKS).
    pub async fn send(&self, url: &Upstream, request: Request<Full<Bytes>>, timeout: Duration) -> Result<Response, String> {
        tokio::time::timeout(timeout, self.send_unbounded(url, request, None))
            .await
            .map_err(|_| format!("no answer from {} within {timeout:?}", url.authority()))?
    }

    /// Like [`HttpClient::send`], for the token call, which carries the client secret: the host
    /// connected to — the forward proxy's if there is one, else the URL's — is resolved once, and the
    /// address is refused before any connection if `guard` says it is local and not named literally.
    pub async fn send_credentials(
        &self,
        url: &Upstream,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        guard: &LocalGuard,
    ) -> Result<Response, String> {
        tokio::time::timeout(timeout, self.send_unbounded(url, request, Some(guard)))
            .await
            .map_err(|_| format!("no answer from {} within {timeout:?}", url.authority()))?
    }

    async fn send_unbounded(
        &self,
        url: &Upstream,
        mut request: Request<Full<Bytes>>,
        guard: Option<&LocalGuard>,
    ) -> Result<Response, String> {
        let tcp = match (&self.forward_proxy, guard) {
            (Some(proxy), None) => ConnectTunnel { proxy: proxy.address(), target: url.address() }
                .open()
                .await
                .map_err(|e| format!("tunnel to {}: {e}", url.address()))?,
            // The forward proxy resolves the target itself, outside the pod: only its own address is checked.
            (Some(proxy), Some(guard)) => {
                let proxy_addr = lookup(&proxy.host, proxy.port).await?;
                guard.check("token", "forward proxy host", &proxy.host, proxy_addr.ip())?;
                ConnectTunnel { proxy: proxy_addr.to_string(), target: url.address() }
                    .open()
                    .await
                    .map_err(|e| format!("tunnel to {}: {e}", url.address()))?
            }
            (None, None) => TcpStream::connect(url.address()).await.map_err(|e| format!("connecting to {}: {e}", url.address()))?,
            (None, Some(guard)) => {
                let addr = lookup(&url.host, url.port).await?;
                guard.check("token", "token endpoint host", &url.host, addr.ip())?;
                TcpStream::connect(addr).await.map_err(|e| format!("connecting to {} ({addr}): {e}", url.address()))?
            }
        };
        let _ = tcp.set_nodelay(true);
        request.headers_mut().insert(hyper::header::HOST, url.authority().parse().map_err(|_| "invalid host".to_string())?);
        let response = if url.tls {
            let name = ServerName::try_from(url.host.clone()).map_err(|e| format!("{}: {e}", url.host))?;
            let stream = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS to {}: {e}", url.address()))?;
            exchange(TokioIo::new(stream), request).await?
        } else {
            exchange(TokioIo::new(tcp), request).await?
        };
        Ok(response)
    }
}

async fn exchange<I>(io: I, request: Request<Full<Bytes>>) -> Result<Response, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body =
        Limited::new(response.into_body(), MAX_RESPONSE).collect().await.map_err(|e| format!("reading the response: {e}"))?.to_bytes();
    Ok(Response { status, body })
}
