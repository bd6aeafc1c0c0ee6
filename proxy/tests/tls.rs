//! https upstreams behind a private CA (tls.extraCaFile) and egress through an HTTP CONNECT forward proxy.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Proxy, Upstream, localhost};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An https upstream whose certificate comes from a private CA; returns (address, CA PEM, paths seen).
async fn private_https_upstream() -> (SocketAddr, String, Arc<Mutex<Vec<String>>>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    recorded.lock().unwrap().push(request.uri().to_string());
                    async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"secure hi")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (addr, ca_cert.pem(), seen)
}

/// A forward proxy on 127.0.0.1 that accepts CONNECT, records the target, and pipes bytes both ways.
async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    connect_proxy_on("127.0.0.1".parse().unwrap()).await
}

async fn connect_proxy_on(ip: std::net::IpAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let recorded = targets.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(byte) = client.read_u8().await else { return };
                    head.push(byte);
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
                let target = line.strip_prefix("CONNECT ").and_then(|rest| rest.split(' ').next()).unwrap_or_default().to_owned();
                recorded.lock().unwrap().push(line);
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, targets)
}

#[tokio::test]
async fn https_upstreams_are_verified_against_system_roots_plus_the_extra_bundle() {
    let (addr, ca_pem, seen) = private_https_upstream().await;
    let routes = format!("routes:\n- {{ name: secure, prefix: /secure, upstream: 'https://{addr}/api' }}\n");

    let untrusting = Proxy::start(&routes, &[]).await;
    let response = untrusting.get("/secure/x").await;
    assert_eq!(response.status, 502, "a private CA is not trusted by default: {response:?}");
    assert!(seen.lock().unwrap().is_empty());

    drop(untrusting);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    let trusting = Proxy::start(&format!("tls: {{ extraCaFile: '{}' }}\n{routes}", ca_path.display()), &[]).await;
    let response = trusting.get("/secure/x?y=1").await;
    assert_eq!(response.status, 200, "{response:?}\n{}", trusting.logs());
    assert_eq!(response.body, "secure hi");
    assert_eq!(seen.lock().unwrap().as_slice(), ["/api/x?y=1"]);
}

#[tokio::test]
async fn a_missing_or_empty_extra_bundle_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    for (file, expected) in [("missing.pem", "No such file"), ("empty.pem", "no PEM certificate found")] {
        std::fs::write(
            &config,
            format!(
                "tls: {{ extraCaFile: '{}' }}\nlisten: {{ egress: '127.0.0.1:{}', admin: '127.0.0.1:{}' }}\n",
                dir.path().join(file).display(),
                common::free_port(),
                common::free_port()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-proxy")).arg("--config").arg(&config).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("tls.extraCaFile") && stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test]
async fn egress_goes_through_the_connect_forward_proxy() {
    let upstream = Upstream::start().await;
    let idp = common::Idp::start().await;
    let (https_addr, ca_pem, https_seen) = private_https_upstream().await;
    let (proxy_addr, targets) = connect_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    let config = format!(
        "forwardProxy: 'http://{proxy_addr}'\ntls: {{ extraCaFile: '{}' }}\nidentity: {{ tokenUrl: 'http://{}/token', clientIdFile: '{{dir}}/client-id', clientSecretFile: '{{dir}}/client-secret' }}\nroutes:\n- {{ name: plain, prefix: /plain, upstream: '{}', auth: token }}\n- {{ name: secure, prefix: /secure, upstream: 'https://{https_addr}' }}\n",
        ca_path.display(),
        idp.addr,
        upstream.url()
    );
    let proxy = Proxy::start(&config, &[]).await;
    assert_eq!(proxy.get("/plain/a").await.status, 200, "{}", proxy.logs());
    let response = proxy.get("/secure/b").await;
    assert_eq!(response.status, 200, "TLS end to end inside the tunnel: {response:?}");
    assert_eq!(upstream.requests()[0].target, "/a");
    assert_eq!(https_seen.lock().unwrap().as_slice(), ["/b"]);
    let targets = targets.lock().unwrap().clone();
    assert!(targets.contains(&format!("CONNECT {} HTTP/1.1", upstream.addr)), "{targets:?}");
    assert!(targets.contains(&format!("CONNECT {https_addr} HTTP/1.1")), "{targets:?}");
    assert!(targets.contains(&format!("CONNECT {} HTTP/1.1", idp.addr)), "the token call goes through the tunnel too: {targets:?}");
    assert_eq!(upstream.requests()[0].header("authorization"), Some("Bearer token-1"));
}

#[tokio::test]
async fn a_forward_proxy_named_by_a_name_resolving_locally_gets_no_credentials() {
    // With a forward proxy, the upstream is resolved by the forward proxy (outside the pod); what the pod
    // resolves is the forward proxy's own name, and a local answer means the app could be listening there
    // and read plain-http requests, bearer and all. (A literal 127.0.0.1 stays allowed: see the test above.)
    let upstream = Upstream::start().await;
    let idp = common::Idp::start().await;
    let (proxy_addr, targets) = connect_proxy_on(localhost().await).await;
    let config = format!(
        "forwardProxy: 'http://localhost:{}'\nidentity: {{ tokenUrl: 'http://{}/token', clientIdFile: '{{dir}}/client-id', clientSecretFile: '{{dir}}/client-secret' }}\nroutes:\n- {{ name: tok, prefix: /tok, upstream: '{url}', auth: token }}\n- {{ name: bearer, prefix: /bearer, upstream: '{url}', auth: bearerFile, bearerFile: '{{dir}}/bearer' }}\n- {{ name: open, prefix: /open, upstream: '{url}' }}\n",
        proxy_addr.port(),
        idp.addr,
        url = upstream.url()
    );
    let proxy = Proxy::start(&config, &[]).await;
    for path in ["/tok/a", "/bearer/b"] {
        let response = proxy.get(path).await;
        assert_eq!(response.status, 502, "{path}: {response:?} {}", proxy.logs());
        let error = response.json();
        assert_eq!(error["decision"], "local-destination");
        let text = error["error"].as_str().unwrap();
        assert!(text.starts_with("forward proxy host \"localhost\" resolved to ") && text.contains("a loopback address"), "{text}");
    }
    // No credential, no check: the open route goes through the tunnel.
    assert_eq!(proxy.get("/open/c").await.status, 200, "{}", proxy.logs());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let targets = targets.lock().unwrap().clone();
    assert_eq!(targets, [format!("CONNECT {} HTTP/1.1", upstream.addr)], "only the open route's tunnel; no token call");
    assert_eq!(idp.calls(), 0, "the client secret went nowhere");
    let seen: Vec<(String, Option<String>)> =
        upstream.requests().iter().map(|r| (r.target.clone(), r.header("authorization").map(str::to_owned))).collect();
    assert_eq!(seen, [("/c".to_owned(), None)]);
}
