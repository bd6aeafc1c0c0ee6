#![allow(dead_code)] // shared by the tests and the benchmarks; each uses a part
//! Real TLS for the tests: a CA and serving certificates (rcgen), and an h1/h2 client
//! (hyper over tokio-rustls) that trusts only that CA.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "tollgate test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa { der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// A serving certificate for 127.0.0.1 and localhost; `name` ends up in the CN so tests can tell
    /// certificates apart.
    pub fn leaf(&self, name: &str) -> Leaf {
        self.leaf_until(name, 4096, 1)
    }

    /// A serving certificate like [`TestCa::leaf`] that expires at midnight UTC starting the given day of
    /// January of `year`.
    pub fn leaf_until(&self, name: &str, year: i32, january_day: u8) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_after = rcgen::date_time_ymd(year, 1, january_day);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

pub async fn tls_connect(connector: &TlsConnector, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // As Go's net/http (kube-apiserver) does; without it Nagle delays small request bodies by ~40 ms.
    tcp.set_nodelay(true)?;
    connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await
}

/// The certificate the server presented on this connection.
pub fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("server sent a certificate")[0].clone().into_owned()
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn read_reply(response: Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply { status, content_type, body })
}

pub fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let body = body.into();
    let mut builder = Request::builder().method(method).uri(format!("https://127.0.0.1{path}"));
    if method == "POST" {
        builder = builder.header("content-type", "application/json").header("accept", "application/json");
    }
    builder.body(Full::new(body)).unwrap()
}

/// One HTTP/1.1 or HTTP/2 connection (by ALPN), for as many requests as the test likes.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    pub async fn connect(connector: &TlsConnector, addr: SocketAddr) -> std::io::Result<(Client, CertificateDer<'static>)> {
        let stream = tls_connect(connector, addr).await?;
        let cert = peer_cert(&stream);
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        let client = if h2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Client::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Client::H1(sender)
        };
        Ok((client, cert))
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Client::H2(_))
    }

    /// Whether the server has ended the connection (for HTTP/2: sent GOAWAY and closed).
    pub fn is_closed(&self) -> bool {
        match self {
            Client::H1(sender) => sender.is_closed(),
            Client::H2(sender) => sender.is_closed(),
        }
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let response = match self {
            Client::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Client::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        read_reply(response).await
    }
}
