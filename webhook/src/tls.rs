//! Serving TLS with a certificate that can be swapped while connections come and go.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The current certificate and key; each handshake takes whatever is current when it starts, so a swap
/// never affects a connection in progress.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Self {
        CertStore { current: ArcSwap::from_pointee(key) }
    }

    pub fn swap(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Parse a PEM certificate chain and PEM private key, and check that they belong together (a Secret
/// update can briefly show a new certificate with the old key).
pub fn load_certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| format!("certificate file: {e}"))?;
    if chain.is_empty() {
        return Err("certificate file: no PEM certificate found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key file: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| format!("certificate and key: {e}"))
}

/// When the serving certificate (the chain's first) stops being valid, in seconds since the Unix epoch; for the
/// expiry metric. `None` for a certificate x509-parser cannot read (rustls accepted it, so it is served anyway).
pub fn not_after(key: &CertifiedKey) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(key.end_entity_cert().ok()?).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// `tollgate_webhook_certificate_expiry_seconds`. A timestamp, as cert-manager's
/// certmanager_certificate_expiration_timestamp_seconds: an alert compares it with time(), and a renewal shows as
/// a step up.
#[derive(Clone, Default)]
pub struct CertificateExpiry(Gauge);

impl CertificateExpiry {
    pub fn register(registry: &mut Registry) -> CertificateExpiry {
        let expiry = Gauge::default();
        registry.register(
            "certificate_expiry_seconds",
            "When the serving certificate expires, in seconds since the Unix epoch (0: unreadable)",
            expiry.clone(),
        );
        CertificateExpiry(expiry)
    }

    /// The serving certificate now in use expires at `unix_seconds` (`None`: its expiry could not be read).
    pub fn observe(&self, unix_seconds: Option<i64>) {
        self.0.set(unix_seconds.unwrap_or(0));
    }
}

/// A rustls server config offering h2 and http/1.1 (kube-apiserver negotiates h2).
pub fn server_config(store: Arc<CertStore>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
