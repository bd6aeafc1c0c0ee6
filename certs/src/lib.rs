//! Certificates for tollgate-webhook. The core is pure: given what exists (if anything) and the wanted
//! names, [`assess`] says whether to keep it, renew the serving certificate, or start over with a new CA,
//! and [`issue`] makes what is missing. The CLI stores the result as files or as Secrets and patches
//! the MutatingWebhookConfiguration's caBundle.

use std::net::IpAddr;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// What the certificates are for.
#[derive(Debug, Clone)]
pub struct Params {
    pub service: String,
    pub namespace: String,
    /// Extra DNS names and IP addresses (e.g. 127.0.0.1 for a webhook registered by URL).
    pub extra_dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ca_validity: Duration,
    pub leaf_validity: Duration,
    /// Renew when less than this is left.
    pub renew_before: Duration,
}

impl Params {
    pub fn new(service: &str, namespace: &str) -> Self {
        Params {
            service: service.to_owned(),
            namespace: namespace.to_owned(),
            extra_dns: Vec::new(),
            ips: Vec::new(),
            ca_validity: Duration::days(3650),
            leaf_validity: Duration::days(365),
            renew_before: Duration::days(30),
        }
    }

    /// The names kube-apiserver may use to reach the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (s, n) = (&self.service, &self.namespace);
        let mut names = vec![s.clone(), format!("{s}.{n}"), format!("{s}.{n}.svc"), format!("{s}.{n}.svc.cluster.local")];
        names.extend(self.extra_dns.iter().cloned());
        names
    }
}

/// PEM texts; the CA key is kept apart from what the webhook mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Keep,
    /// A new serving certificate from the existing CA (the caBundle stays valid).
    RenewLeaf(String),
    /// A new CA and serving certificate.
    NewCa(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A renewal asked for, whatever the certificates' state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renew {
    /// A new serving certificate from the existing CA.
    Leaf,
    /// A new CA and serving certificate; the old CA stays trusted for the hand-over (see [`trust_bundle`]).
    Ca,
}

/// `action` with a forced renewal applied: never less than what [`assess`] found necessary.
pub fn force(action: Action, renew: Option<Renew>) -> Action {
    match (renew, action) {
        (Some(Renew::Ca), Action::Keep | Action::RenewLeaf(_)) => Action::NewCa("renewal forced (--renew=ca)".into()),
        (Some(Renew::Leaf), Action::Keep) => Action::RenewLeaf("renewal forced (--renew=leaf)".into()),
        (_, action) => action,
    }
}

/// How long a replaced CA stays in the caBundle: the webhook serves its old certificate until kubelet has
/// refreshed the Secret volume (about a minute) and the webhook has reloaded it (seconds).
pub const HANDOVER: Duration = Duration::hours(1);

/// The CA certificates the API server should trust, as one PEM text: `ca_cert` first, then each of
/// `earlier` (the previous bundle's certificates and a replaced CA) that is still valid, if `ca_cert` was
/// issued less than [`HANDOVER`] ago. So a new CA is trusted before anything is signed with it, the old one
/// until every webhook serves the new certificate, and nothing longer: a run after the hand-over drops it.
pub fn trust_bundle(ca_cert: &str, earlier: &str, now: OffsetDateTime) -> String {
    let mut bundle = ca_cert.trim_end().to_owned();
    bundle.push('\n');
    let Some(current) = parse_pem(ca_cert) else { return bundle };
    let issued = X509Certificate::from_der(&current).map(|(_, ca)| ca.validity().not_before.to_datetime());
    // `issue` backdates notBefore by five minutes against clock skew.
    if !issued.is_ok_and(|issued| now - issued < HANDOVER + Duration::minutes(5)) {
        return bundle;
    }
    let mut kept = vec![current];
    for pem in pem_blocks(earlier) {
        let Some(der) = parse_pem(pem) else { continue };
        let valid = X509Certificate::from_der(&der).is_ok_and(|(_, cert)| remaining(&cert, now) > Duration::ZERO);
        if valid && !kept.contains(&der) {
            bundle.push_str(pem.trim_end());
            bundle.push('\n');
            kept.push(der);
        }
    }
    bundle
}

/// Each `-----BEGIN CERTIFICATE-----` … `-----END CERTIFICATE-----` block of a PEM text.
fn pem_blocks(text: &str) -> impl Iterator<Item = &str> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find("-----BEGIN CERTIFICATE-----")?;
        let end = start + rest[start..].find(END)? + END.len();
        let block = &rest[start..end];
        rest = &rest[end..];
        Some(block)
    })
}

/// Read-only looks at certificates, for this crate's decisions and for `tollgate check`.
pub mod inspect {
    use x509_parser::prelude::{FromDer, X509Certificate};

    /// The DER of every certificate in a PEM text (other blocks, and what does not parse, left out).
    pub fn certificates(pem: &str) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .filter_map(Result::ok)
            .filter(|p| p.label == "CERTIFICATE")
            .map(|p| p.contents)
            .collect()
    }

    /// When a certificate stops being valid (seconds since the Unix epoch), and its subject.
    pub fn expiry(der: &[u8]) -> Option<(i64, String)> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some((cert.validity().not_after.timestamp(), cert.subject().to_string()))
    }

    /// Whether `ca` issued `leaf` and its signature verifies with `ca`'s key.
    pub fn signed_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
        leaf.issuer() == ca.subject() && leaf.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// Whether one of `cas` (DER) signed `leaf` (DER).
    pub fn signed_by_any(leaf: &[u8], cas: &[Vec<u8>]) -> bool {
        let Ok((_, leaf)) = X509Certificate::from_der(leaf) else { return false };
        cas.iter().any(|ca| X509Certificate::from_der(ca).is_ok_and(|(_, ca)| signed_by(&leaf, &ca)))
    }
}

fn parse_pem(pem: &str) -> Option<Vec<u8>> {
    inspect::certificates(pem).into_iter().next()
}

fn remaining(cert: &X509Certificate<'_>, now: OffsetDateTime) -> Duration {
    cert.validity().not_after.to_datetime() - now
}

/// Decide what to do with `existing` certificates for `params` at `now`.
pub fn assess(existing: Option<&Bundle>, params: &Params, now: OffsetDateTime) -> Action {
    let Some(existing) = existing else { return Action::NewCa("no certificates yet".into()) };
    let Some(ca_der) = parse_pem(&existing.ca_cert) else { return Action::NewCa("the CA certificate does not parse".into()) };
    let Ok((_, ca)) = X509Certificate::from_der(&ca_der) else { return Action::NewCa("the CA certificate does not parse".into()) };
    let ca_key_matches = KeyPair::from_pem(&existing.ca_key).is_ok_and(|key| key.subject_public_key_info() == ca.public_key().raw);
    if !ca_key_matches {
        return Action::NewCa("the CA key does not belong to the CA certificate".into());
    }
    if remaining(&ca, now) < params.renew_before + params.leaf_validity.min(params.renew_before * 2) {
        return Action::NewCa(format!("the CA expires {}", ca.validity().not_after));
    }
    let Some(leaf_der) = parse_pem(&existing.cert) else { return Action::RenewLeaf("the serving certificate does not parse".into()) };
    let Ok((_, leaf)) = X509Certificate::from_der(&leaf_der) else {
        return Action::RenewLeaf("the serving certificate does not parse".into());
    };
    if !inspect::signed_by(&leaf, &ca) {
        return Action::RenewLeaf("the serving certificate is not from this CA".into());
    }
    if !KeyPair::from_pem(&existing.key).is_ok_and(|key| key.subject_public_key_info() == leaf.public_key().raw) {
        return Action::RenewLeaf("the serving key does not belong to the serving certificate".into());
    }
    if remaining(&leaf, now) < params.renew_before {
        return Action::RenewLeaf(format!("the serving certificate expires {}", leaf.validity().not_after));
    }
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    for extension in leaf.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    GeneralName::IPAddress(bytes) => ips.push(bytes.to_vec()),
                    _ => {}
                }
            }
        }
    }
    if let Some(missing) = params.dns_names().into_iter().find(|d| !dns.contains(d)) {
        return Action::RenewLeaf(format!("the serving certificate lacks {missing}"));
    }
    let ip_bytes = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    if let Some(missing) = params.ips.iter().find(|ip| !ips.contains(&ip_bytes(ip))) {
        return Action::RenewLeaf(format!("the serving certificate lacks {missing}"));
    }
    Action::Keep
}

fn ca_params(params: &Params, now: OffsetDateTime) -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, format!("tollgate webhook CA ({}/{})", params.namespace, params.service));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - Duration::minutes(5);
    ca.not_after = now + params.ca_validity;
    ca
}

/// Carry out `action`: a new CA (and leaf), or a new leaf from `existing`'s CA.
pub fn issue(action: &Action, existing: Option<&Bundle>, params: &Params, now: OffsetDateTime) -> Result<Option<Bundle>, CertError> {
    let (ca_cert, ca_key, ca_key_pem) = match (action, existing) {
        (Action::Keep, _) => return Ok(None),
        (Action::RenewLeaf(_), Some(existing)) => {
            let key = KeyPair::from_pem(&existing.ca_key)?;
            (existing.ca_cert.clone(), key, existing.ca_key.clone())
        }
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params(params, now).self_signed(&key)?;
            let pem = key.serialize_pem();
            (cert.pem(), key, pem)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)?;
    let mut leaf = CertificateParams::new(params.dns_names())?;
    leaf.subject_alt_names.extend(params.ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    leaf.distinguished_name.push(DnType::CommonName, format!("{}.{}.svc", params.service, params.namespace));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.not_before = now - Duration::minutes(5);
    leaf.not_after = now + params.leaf_validity;
    let leaf_key = KeyPair::generate()?;
    let cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(Some(Bundle { ca_cert, ca_key: ca_key_pem, cert: cert.pem(), key: leaf_key.serialize_pem() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        let mut p = Params::new("tollgate-webhook", "tollgate");
        p.ips = vec!["127.0.0.1".parse().unwrap()];
        p
    }

    #[test]
    fn first_run_creates_everything_and_a_second_keeps_it() {
        let now = OffsetDateTime::now_utc();
        let action = assess(None, &params(), now);
        assert_eq!(action, Action::NewCa("no certificates yet".into()));
        let bundle = issue(&action, None, &params(), now).unwrap().unwrap();
        assert_eq!(assess(Some(&bundle), &params(), now), Action::Keep);
        assert_eq!(issue(&Action::Keep, Some(&bundle), &params(), now).unwrap(), None);
    }

    #[test]
    fn leaves_are_renewed_near_expiry_and_for_new_names_keeping_the_ca() {
        let now = OffsetDateTime::now_utc();
        let bundle = issue(&Action::NewCa("test".into()), None, &params(), now).unwrap().unwrap();
        let later = now + Duration::days(340);
        let action = assess(Some(&bundle), &params(), later);
        assert!(matches!(&action, Action::RenewLeaf(why) if why.contains("expires")), "{action:?}");
        let renewed = issue(&action, Some(&bundle), &params(), later).unwrap().unwrap();
        assert_eq!(renewed.ca_cert, bundle.ca_cert, "the caBundle stays valid");
        assert_ne!(renewed.cert, bundle.cert);
        assert_eq!(assess(Some(&renewed), &params(), later), Action::Keep);

        let mut more = params();
        more.ips.push("10.0.0.7".parse().unwrap());
        assert!(matches!(assess(Some(&renewed), &more, later), Action::RenewLeaf(why) if why.contains("10.0.0.7")));
        more.extra_dns.push("webhook.example.org".into());
        assert!(matches!(assess(Some(&renewed), &more, later), Action::RenewLeaf(why) if why.contains("webhook.example.org")));
    }

    #[test]
    fn a_ca_near_expiry_or_broken_pieces_start_over() {
        let now = OffsetDateTime::now_utc();
        let bundle = issue(&Action::NewCa("test".into()), None, &params(), now).unwrap().unwrap();
        assert!(matches!(assess(Some(&bundle), &params(), now + Duration::days(3640)), Action::NewCa(_)));
        let other = issue(&Action::NewCa("other".into()), None, &params(), now).unwrap().unwrap();
        let mixed = Bundle { ca_key: other.ca_key.clone(), ..bundle.clone() };
        assert!(matches!(assess(Some(&mixed), &params(), now), Action::NewCa(why) if why.contains("CA key")));
        let foreign_leaf = Bundle { cert: other.cert.clone(), key: other.key.clone(), ..bundle.clone() };
        assert!(matches!(assess(Some(&foreign_leaf), &params(), now), Action::RenewLeaf(why) if why.contains("not from this CA")));
        let wrong_key = Bundle { key: other.key.clone(), ..bundle.clone() };
        assert!(matches!(assess(Some(&wrong_key), &params(), now), Action::RenewLeaf(why) if why.contains("serving key")));
        let garbage = Bundle { ca_cert: "nope".into(), ..bundle };
        assert!(matches!(assess(Some(&garbage), &params(), now), Action::NewCa(_)));
    }

    #[test]
    fn forcing_renews_at_least_what_is_asked() {
        let due = Action::RenewLeaf("due".into());
        assert_eq!(force(Action::Keep, None), Action::Keep);
        assert!(matches!(force(Action::Keep, Some(Renew::Leaf)), Action::RenewLeaf(why) if why.contains("forced")));
        assert_eq!(force(due.clone(), Some(Renew::Leaf)), due);
        assert!(matches!(force(due, Some(Renew::Ca)), Action::NewCa(why) if why.contains("forced")));
        let new = Action::NewCa("no certificates yet".into());
        assert_eq!(force(new.clone(), Some(Renew::Leaf)), new);
    }

    #[test]
    fn a_replaced_ca_stays_trusted_for_the_handover_only() {
        let now = OffsetDateTime::now_utc();
        let old = issue(&Action::NewCa("old".into()), None, &params(), now - Duration::days(400)).unwrap().unwrap();
        let new = issue(&Action::NewCa("new".into()), None, &params(), now).unwrap().unwrap();
        let pems = |bundle: &str| pem_blocks(bundle).map(str::to_owned).collect::<Vec<_>>();

        let handover = trust_bundle(&new.ca_cert, &old.ca_cert, now);
        assert_eq!(pems(&handover), [new.ca_cert.trim_end(), old.ca_cert.trim_end()], "new first, then the old one");
        // Every run within the hand-over keeps the old CA (it reads the bundle it wrote), without repeats.
        let again = trust_bundle(&new.ca_cert, &format!("{handover}{}", new.ca_cert), now + Duration::minutes(30));
        assert_eq!(again, handover);
        // After it, only the current CA is trusted.
        let after = trust_bundle(&new.ca_cert, &handover, now + HANDOVER + Duration::minutes(6));
        assert_eq!(pems(&after), [new.ca_cert.trim_end()]);
        // An expired CA is never carried, and garbage is ignored.
        let expired =
            issue(&Action::NewCa("expired".into()), None, &Params { ca_validity: Duration::days(1), ..params() }, now - Duration::days(2))
                .unwrap()
                .unwrap();
        let mixed = format!("{}junk\n-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", expired.ca_cert);
        assert_eq!(pems(&trust_bundle(&new.ca_cert, &mixed, now)), [new.ca_cert.trim_end()]);
    }

    #[test]
    fn serving_certificates_name_the_service() {
        assert_eq!(
            params().dns_names(),
            [
                "tollgate-webhook",
                "tollgate-webhook.tollgate",
                "tollgate-webhook.tollgate.svc",
                "tollgate-webhook.tollgate.svc.cluster.local"
            ]
        );
    }
}
