//! What is wrong with a cluster's tollgate, from a snapshot of it: no I/O here, so every finding is tested on
//! made-up snapshots, and the shell ([`crate::gather`]) only reads.

use std::collections::BTreeMap;

use tollgate_certs::inspect::{certificates as pem_certificates, expiry, signed_by_any};

/// The webhooks a tollgate configuration has, by name.
pub const WEBHOOKS: [&str; 4] =
    ["harden.pods.tollgate.dev", "warn.pods.tollgate.dev", "connect.pods.tollgate.dev", "identity.workloads.tollgate.dev"];

pub use crate::finding::{Finding, Read, Severity};

#[derive(Debug, Clone, Default)]
pub struct WebhookView {
    pub name: String,
    pub ca_bundle: Option<String>,
    /// `namespace/name` of the Service, or the URL.
    pub target: String,
}

/// What became of a plain pod created with `dryRun: All`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRun {
    /// It came back with tollgate's proxy.
    Hardened,
    /// It came back as it was sent.
    Plain,
    /// Admission refused it (the API server's message).
    Refused(String),
    /// Not tried: whoever runs the check may not create pods there.
    NotAllowed(String),
}

#[derive(Debug, Clone)]
pub struct NamespaceView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The proxy's route table (`config.yaml` of the policy's ConfigMap); `Ok(None)`: no such ConfigMap.
    pub routes: Read<Option<String>>,
    /// The keys of the credentials Secret; `Ok(None)`: no such Secret.
    pub credentials: Read<Option<Vec<String>>>,
    /// NetworkPolicies that select every pod of the namespace and limit its egress.
    pub closing_network_policies: Read<Vec<String>>,
    /// A server-side dry run of a plain pod.
    pub dry_run: DryRun,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Seconds since the Unix epoch.
    pub now: i64,
    /// Warn about certificates that expire within this many seconds.
    pub expiry_warning: i64,
    pub release_namespace: String,
    /// `major.minor` of the API server.
    pub server_version: Read<(u32, u32)>,
    pub config_name: String,
    pub webhooks: Read<Option<Vec<WebhookView>>>,
    /// The policy as the webhook reads it (the ConfigMap); `Ok(None)`: none, the embedded default applies.
    pub policy: Read<Option<String>>,
    /// The serving Secret's `tls.crt`; `Ok(None)`: no such Secret.
    pub serving_certificate: Read<Option<String>>,
    /// Each webhook pod's served certificate's expiry, from its `/metrics`.
    pub served: Read<Vec<(String, Read<i64>)>>,
    /// The namespaces the configuration sends pods from.
    pub namespaces: Read<Vec<NamespaceView>>,
    /// The egress lock's DaemonSet, its pods and the nodes ([`crate::locks`]).
    pub locks: crate::locks::LockView,
}

struct Report {
    findings: Vec<Finding>,
}

impl Report {
    fn add(
        &mut self,
        check: &'static str,
        subject: impl Into<String>,
        severity: Severity,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.findings.push(Finding { check, subject: subject.into(), severity, message: message.into(), hint });
    }

    fn ok(&mut self, check: &'static str, subject: impl Into<String>, message: impl Into<String>) {
        self.add(check, subject, Severity::Ok, message, None);
    }

    fn warn(&mut self, check: &'static str, subject: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) {
        self.add(check, subject, Severity::Warning, message, Some(hint.into()));
    }

    fn error(&mut self, check: &'static str, subject: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) {
        self.add(check, subject, Severity::Error, message, Some(hint.into()));
    }

    /// A read that failed: a warning (the check could not be made), with the reason.
    fn unread(&mut self, check: &'static str, subject: impl Into<String>, what: &str, why: &str) {
        self.warn(check, subject, format!("not checked: reading {what} failed: {why}"), "run tollgate check as a cluster admin");
    }
}

fn days(seconds: i64) -> String {
    format!("{:.0} days", seconds as f64 / 86_400.0)
}

/// Everything found, worst first within each check's order of appearance.
pub fn evaluate(s: &Snapshot) -> Vec<Finding> {
    let mut r = Report { findings: Vec::new() };
    let config = format!("MutatingWebhookConfiguration {}", s.config_name);
    kubernetes_version(&mut r, &s.server_version);
    policy_valid(&mut r, s);
    let webhooks = registered(&mut r, &s.webhooks, &config);
    let secret_expiry = certificates(&mut r, s, webhooks, &config);
    served(&mut r, s, webhooks, &config, secret_expiry);
    let policy =
        s.policy.as_ref().ok().and_then(|p| p.as_deref()).and_then(|t| tollgate_api::policy::Policy::from_yaml(t).ok()).unwrap_or_default();
    match &s.namespaces {
        Ok(namespaces) if namespaces.is_empty() => r.warn(
            "namespaces",
            config.clone(),
            "no namespace is labeled for tollgate: nothing is hardened",
            "kubectl label namespace <analysis-namespace> tollgate.dev/inject=enabled pod-security.kubernetes.io/enforce=restricted",
        ),
        Ok(namespaces) => {
            for ns in namespaces {
                namespace(&mut r, ns, &policy);
            }
        }
        Err(why) => r.unread("namespaces", config.clone(), "the namespaces", why),
    }
    overrides(&mut r, &policy, &s.namespaces);
    r.findings.extend(crate::locks::evaluate(&s.locks, &lock_required(&s.policy)));
    r.findings
}

/// Whether the policy in force requires the egress lock (`proxy.egressLock: required`); none: the embedded
/// default's.
fn lock_required(policy: &Read<Option<String>>) -> Read<bool> {
    let policy = match policy {
        Ok(None) => tollgate_api::policy::Policy::default(),
        Ok(Some(text)) => tollgate_api::policy::Policy::from_yaml(text).map_err(|e| format!("it does not load: {e}"))?,
        Err(why) => return Err(format!("reading it failed: {why}")),
    };
    Ok(policy.proxy.egress_lock == tollgate_api::policy::EgressLock::Required)
}

/// `kubernetes-version`: 1.30 or later.
fn kubernetes_version(r: &mut Report, version: &Read<(u32, u32)>) {
    match version {
        Ok((1, minor)) if *minor >= 30 => r.ok("kubernetes-version", "API server", format!("v1.{minor}")),
        Ok((major, minor)) => r.error(
            "kubernetes-version",
            "API server",
            format!(
                "v{major}.{minor}: tollgate needs 1.30 or later (ValidatingAdmissionPolicy v1, webhook matchConditions, native sidecars)"
            ),
            "upgrade the cluster",
        ),
        Err(why) => r.unread("kubernetes-version", "API server", "its version", why),
    }
}

/// `policy`: the webhook accepts the policy ConfigMap (or there is none).
fn policy_valid(r: &mut Report, s: &Snapshot) {
    let policy_subject = format!("policy ConfigMap in {}", s.release_namespace);
    match &s.policy {
        Ok(None) => r.ok("policy", policy_subject, "none: the webhook runs its embedded default"),
        Ok(Some(text)) => match tollgate_api::policy::Policy::from_yaml(text) {
            Ok(policy) => r.ok("policy", policy_subject, format!("valid ({})", policy.digest())),
            Err(e) => r.error(
                "policy",
                policy_subject,
                format!("the webhook refuses it: {e}"),
                "fix the policy (tollgate-webhook check-policy FILE names each field); the webhook keeps the last valid one",
            ),
        },
        Err(why) => r.unread("policy", policy_subject, "it", why),
    }
}

/// `webhook-registered`: the configuration has every webhook. Its webhooks, none where it could not be read.
fn registered<'s>(r: &mut Report, webhooks: &'s Read<Option<Vec<WebhookView>>>, config: &str) -> &'s [WebhookView] {
    match webhooks {
        Ok(Some(webhooks)) => {
            let missing: Vec<&str> = WEBHOOKS.iter().copied().filter(|w| !webhooks.iter().any(|v| v.name == *w)).collect();
            if missing.is_empty() {
                r.ok("webhook-registered", config, format!("{} webhooks, calling {}", webhooks.len(), webhooks[0].target));
            } else {
                r.error(
                    "webhook-registered",
                    config,
                    format!("lacks {}", missing.join(", ")),
                    "re-apply it: helm upgrade, or kubectl apply -f manifests/40-webhook-configuration.yaml",
                );
            }
            webhooks.as_slice()
        }
        Ok(None) => {
            r.error(
                "webhook-registered",
                config,
                "does not exist: no pod is hardened",
                "install tollgate (helm install, or kubectl apply -f manifests/)",
            );
            &[]
        }
        Err(why) => {
            r.unread("webhook-registered", config, "it", why);
            &[]
        }
    }
}

/// `ca-bundle` and `serving-certificate`: the caBundle must trust the certificate the webhook serves; the
/// serving Secret says which that is. The Secret's certificate's expiry, if it could be read.
fn certificates(r: &mut Report, s: &Snapshot, webhooks: &[WebhookView], config: &str) -> Option<i64> {
    let bundle_certs = ca_bundle(r, webhooks, config);
    let serving = serving_secret(r, s);
    if serving.is_none() && s.serving_certificate.is_err() && !bundle_certs.is_empty() {
        r.ok(
            "ca-bundle",
            config,
            format!(
                "holds {} CA certificate(s); not compared with the serving Secret (unreadable): the admission dry runs show whether the API server trusts the webhook",
                bundle_certs.len()
            ),
        );
    }
    let der = serving?;
    let secret_expiry = serving_expiry(r, s, &der)?;
    if !bundle_certs.is_empty() {
        bundle_trusts(r, config, &der, &bundle_certs);
    }
    Some(secret_expiry)
}

/// The caBundle's CA certificates (the webhooks' first's); an error where there is none, or the webhooks'
/// differ.
fn ca_bundle(r: &mut Report, webhooks: &[WebhookView], config: &str) -> Vec<Vec<u8>> {
    let bundle = webhooks.first().and_then(|w| w.ca_bundle.clone());
    let bundle_certs = bundle.as_deref().map(pem_certificates).unwrap_or_default();
    if !webhooks.is_empty() {
        if bundle_certs.is_empty() {
            r.error(
                "ca-bundle",
                config,
                "has no caBundle: the API server cannot trust the webhook",
                "selfSigned: kubectl create job -n <namespace> --from=cronjob/tollgate-certs-renew renew-now; certManager: check cert-manager's cainjector",
            );
        } else if webhooks.iter().any(|w| w.ca_bundle != bundle) {
            r.error(
                "ca-bundle",
                config,
                "its webhooks have different caBundles",
                "run tollgate-certs secret --webhook-config=... (the renewal Job) to set them all",
            );
        }
    }
    bundle_certs
}

/// The serving Secret's certificate (DER), if there is one and it could be read.
fn serving_secret(r: &mut Report, s: &Snapshot) -> Option<Vec<u8>> {
    let secret_subject = format!("serving Secret in {}", s.release_namespace);
    match &s.serving_certificate {
        Ok(Some(pem)) => pem_certificates(pem).into_iter().next(),
        Ok(None) => {
            r.error(
                "serving-certificate",
                secret_subject,
                "does not exist: the webhook's pods cannot start",
                "selfSigned: helm upgrade recreates it (or the renewal CronJob); existingSecret: create the Secret you named",
            );
            None
        }
        Err(why) => {
            r.unread("serving-certificate", secret_subject, "it", why);
            None
        }
    }
}

/// `serving-certificate`: how long the Secret's certificate is valid. When it expires, if it parses.
fn serving_expiry(r: &mut Report, s: &Snapshot, der: &[u8]) -> Option<i64> {
    let secret_subject = format!("serving Secret in {}", s.release_namespace);
    let Some((not_after, subject)) = expiry(der) else {
        r.error("serving-certificate", secret_subject, "tls.crt does not parse", "renew it (tollgate-certs secret --renew=leaf)");
        return None;
    };
    let left = not_after - s.now;
    if left <= 0 {
        r.error(
            "serving-certificate",
            secret_subject,
            format!("{} has expired: every pod creation in an analysis namespace fails", subject),
            "renew now: kubectl create job -n <namespace> --from=cronjob/tollgate-certs-renew renew-now",
        );
    } else if left < s.expiry_warning {
        r.warn(
            "serving-certificate",
            secret_subject,
            format!("{} expires in {}", subject, days(left)),
            "the renewal should have run: kubectl get cronjob,jobs -n <namespace>, and their logs",
        );
    } else {
        r.ok("serving-certificate", secret_subject, format!("{} valid for {}", subject, days(left)));
    }
    Some(not_after)
}

/// `ca-bundle`: whether the bundle's CA certificates signed the serving certificate.
fn bundle_trusts(r: &mut Report, config: &str, der: &[u8], bundle_certs: &[Vec<u8>]) {
    if signed_by_any(der, bundle_certs) {
        r.ok("ca-bundle", config, format!("trusts the serving certificate ({} CA certificate(s))", bundle_certs.len()));
    } else {
        r.error(
            "ca-bundle",
            config,
            "does not trust the serving certificate: the API server refuses the webhook, and every pod creation in an analysis namespace fails",
            "set it from the Secret's ca.crt: tollgate-certs secret --webhook-config=... (selfSigned), or fix webhook.caBundle (existingSecret)",
        );
    }
}

/// One finding per namespace the policy overrides (`namespaces.<name>`), saying what the override changes for
/// its pods; a warning where it puts the namespace on trial, or where tollgate does not select the namespace
/// (the override then does nothing: a misspelt name, or a namespace not labeled yet).
fn overrides(r: &mut Report, policy: &tollgate_api::policy::Policy, namespaces: &Read<Vec<NamespaceView>>) {
    for name in policy.namespaces.keys() {
        let subject = format!("namespace {name}");
        let changes = policy.namespace_changes(name).unwrap_or_default();
        let what = if changes.is_empty() { "nothing".to_owned() } else { changes.join("; ") };
        let message = format!("the policy overrides for its pods (namespaces.{name}): {what}");
        let selected = namespaces.as_ref().map(|list| list.iter().any(|ns| &ns.name == name));
        if selected == Ok(false) {
            r.warn(
                "namespace-override",
                subject,
                format!("{message}; but tollgate does not select this namespace, so the override does nothing"),
                format!("check the name; or label it: kubectl label namespace {name} tollgate.dev/inject=enabled"),
            );
        } else if policy.for_namespace(name).on_violation == tollgate_api::policy::OnViolation::Warn
            && policy.on_violation != tollgate_api::policy::OnViolation::Warn
        {
            r.warn(
                "namespace-override",
                subject,
                format!("{message}: on trial, a pod whose violations concern it alone is let through unhardened, with warnings"),
                format!(
                    "once tollgate_webhook_reviews_total{{outcome=\"warned\"}} stays flat, enforce: remove namespaces.{name}.onViolation from the policy"
                ),
            );
        } else {
            r.ok("namespace-override", subject, message);
        }
    }
}

/// What each webhook pod serves: it loaded the Secret at some point, and kubelet refreshes the mounted Secret
/// within a minute or two. `secret_expiry`: the Secret's certificate's, if it could be read.
fn served(r: &mut Report, s: &Snapshot, webhooks: &[WebhookView], config: &str, secret_expiry: Option<i64>) {
    if let Some(by_url) = webhooks.iter().find(|w| !w.target.starts_with("Service ")) {
        let message =
            format!("called at {}, not in a pod here: the admission dry runs show whether it is reached and trusted", by_url.target);
        r.ok("webhook-serving", config, message);
        return;
    }
    let pods = match &s.served {
        Ok(pods) if pods.is_empty() => {
            return r.error(
                "webhook-serving",
                s.release_namespace.clone(),
                "no webhook pod is running",
                "kubectl get pods,events -n <namespace>",
            );
        }
        Ok(pods) => pods,
        Err(why) => return r.unread("webhook-serving", s.release_namespace.clone(), "the webhook's pods", why),
    };
    for (pod, expiry) in pods {
        let at = match expiry {
            Ok(at) => *at,
            Err(why) => {
                r.error(
                    "webhook-serving",
                    pod.clone(),
                    format!("its /metrics could not be read: {why}"),
                    "kubectl describe pod and its log",
                );
                continue;
            }
        };
        let left = at - s.now;
        match secret_expiry {
            _ if left <= 0 => r.error(
                "webhook-serving",
                pod.clone(),
                "serves an expired certificate",
                "renew the Secret's certificate; if the Secret's is valid, the pod's log says why it did not reload it",
            ),
            Some(expected) if expected != at => r.warn(
                "webhook-serving",
                pod.clone(),
                "serves another certificate than the Secret's (not reloaded yet: kubelet refreshes the volume within minutes)",
                "if it stays so, its log says why it did not reload",
            ),
            _ if left < s.expiry_warning => r.warn(
                "webhook-serving",
                pod.clone(),
                format!("serves a certificate that expires in {}", days(left)),
                "the renewal should have run: kubectl get cronjob,jobs -n <namespace>, and their logs",
            ),
            Some(_) => r.ok("webhook-serving", pod.clone(), "serves the Secret's certificate"),
            None => r.ok("webhook-serving", pod.clone(), format!("serves a certificate valid for {}", days(left))),
        }
    }
}

/// The namespace's findings: its proxy's routes and credentials, its labels, its NetworkPolicies and what
/// admission does to a plain pod in it.
fn namespace(r: &mut Report, ns: &NamespaceView, policy: &tollgate_api::policy::Policy) {
    let name = format!("namespace {}", ns.name);
    let needs_credentials = routes(r, ns, policy, &name);
    let secret = &policy.proxy.credentials_secret;
    let per_analysis = secret.contains("{analysis_id}");
    credentials(r, ns, secret, per_analysis, needs_credentials, &name);
    labels(r, ns, &name);
    network_policy(r, ns, &name);
    admission(r, ns, per_analysis, name);
}

/// `routes`: every proxy accepts the namespace's route table. Whether its routes obtain tokens (and so need
/// credentials).
fn routes(r: &mut Report, ns: &NamespaceView, policy: &tollgate_api::policy::Policy, name: &str) -> bool {
    let config_map = &policy.proxy.config_map;
    let mut needs_credentials = false;
    match &ns.routes {
        Ok(Some(text)) => {
            let env = tollgate_api::proxy::config::Environment {
                analysis_id: Some("sample-analysis".into()),
                project_id: Some("sample-project".into()),
                ..Default::default()
            };
            match tollgate_api::proxy::config::Config::load(text, &env) {
                Ok(config) => {
                    needs_credentials = config.identity.is_some();
                    r.ok("routes", name, format!("ConfigMap {config_map}: {} routes", config.routes.len()));
                }
                Err(e) => r.error(
                    "routes",
                    name,
                    format!("ConfigMap {config_map}: every proxy refuses it:\n{e}"),
                    "fix it (tollgate-proxy check-config --template FILE names each field); hardened pods fail to start until then",
                ),
            }
        }
        Ok(None) => r.error(
            "routes",
            name,
            format!("no ConfigMap {config_map}: hardened pods cannot start their proxy"),
            "list the namespace in the chart's analysisNamespaces, or apply one like manifests/examples/analysis-namespace.yaml's",
        ),
        Err(why) => r.unread("routes", name, &format!("ConfigMap {config_map}"), why),
    }
    needs_credentials
}

/// `credentials`: the Secret the proxy obtains tokens with, where its routes need one (`secret`: its name;
/// `per_analysis`: one per analysis, not checked here).
fn credentials(r: &mut Report, ns: &NamespaceView, secret: &str, per_analysis: bool, needs_credentials: bool, name: &str) {
    match &ns.credentials {
        _ if per_analysis => {
            r.ok("credentials", name, format!("one Secret per analysis ({secret}), made by whoever creates the analysis: not checked here"))
        }
        Ok(Some(keys)) => {
            let missing: Vec<&str> = ["client-id", "client-secret"].into_iter().filter(|k| !keys.iter().any(|key| key == k)).collect();
            if missing.is_empty() || !needs_credentials {
                r.ok("credentials", name, format!("Secret {secret} has {}", keys.join(", ")));
            } else {
                r.error(
                    "credentials",
                    name,
                    format!("Secret {secret} lacks {}: the proxy cannot obtain tokens", missing.join(", ")),
                    format!(
                        "kubectl create secret generic {secret} -n {} --from-literal=client-id=... --from-literal=client-secret=...",
                        ns.name
                    ),
                );
            }
        }
        Ok(None) if needs_credentials => r.error(
            "credentials",
            name,
            format!("no Secret {secret}: the routes obtain tokens, and hardened pods cannot start their proxy without it"),
            format!("kubectl create secret generic {secret} -n {} --from-literal=client-id=... --from-literal=client-secret=...", ns.name),
        ),
        Ok(None) => r.ok("credentials", name, "no token routes: no credentials needed"),
        Err(why) => r.unread("credentials", name, &format!("Secret {secret}"), why),
    }
}

/// `mode` (a namespace on trial) and `pod-security` (restricted enforced), from the namespace's labels.
fn labels(r: &mut Report, ns: &NamespaceView, name: &str) {
    if ns.labels.get("tollgate.dev/mode").map(String::as_str) == Some("warn") {
        r.warn(
            "mode",
            name,
            "on trial (tollgate.dev/mode=warn): a pod whose violations concern it alone is let through unhardened, with warnings",
            format!("once tollgate_webhook_reviews_total{{outcome=\"warned\"}} stays flat, enforce: kubectl label namespace {} tollgate.dev/mode-", ns.name),
        );
    }
    match ns.labels.get("pod-security.kubernetes.io/enforce").map(String::as_str) {
        Some("restricted") => r.ok("pod-security", name, "enforces restricted"),
        other => r.warn(
            "pod-security",
            name,
            format!("enforces {}: the API server does not hold hardened pods to restricted", other.unwrap_or("nothing")),
            format!("kubectl label namespace {} pod-security.kubernetes.io/enforce=restricted", ns.name),
        ),
    }
}

/// `network-policy`: a NetworkPolicy closes the namespace's egress.
fn network_policy(r: &mut Report, ns: &NamespaceView, name: &str) {
    match &ns.closing_network_policies {
        Ok(names) if !names.is_empty() => r.ok("network-policy", name, format!("closed by {}", names.join(", "))),
        Ok(_) => r.warn(
            "network-policy",
            name,
            "no NetworkPolicy selects every pod and limits egress: a pod's containers can open connections past the proxy",
            "list the namespace in the chart's analysisNamespaces (tollgate-analysis), and see egressLock for a lock the kernel enforces",
        ),
        Err(why) => r.unread("network-policy", name, "its NetworkPolicies", why),
    }
}

/// `admission`: what the server-side dry run of a plain pod came back as.
fn admission(r: &mut Report, ns: &NamespaceView, per_analysis: bool, name: String) {
    match &ns.dry_run {
        DryRun::Hardened => r.ok("admission", name, "a plain pod comes back hardened (server-side dry run)"),
        // Per-analysis credentials need an analysis id, which only trusted creators may give: tollgate refusing a
        // pod without one shows it judges this namespace's pods.
        DryRun::Refused(why)
            if per_analysis && why.contains(&format!("[{}]", tollgate_webhook::harden::Rule::AnalysisIdRequired.as_str())) =>
        {
            r.ok(
                "admission",
                name,
                "a pod without an analysis id is refused by tollgate (server-side dry run): its credentials are per analysis",
            )
        }
        DryRun::Plain => r.error(
            "admission",
            name,
            "a plain pod comes back without tollgate's proxy: the webhook does not see this namespace's pods",
            "check the namespace's label against the configuration's namespaceSelector",
        ),
        DryRun::Refused(why) => r.error(
            "admission",
            name,
            format!("a plain pod is refused: {why}"),
            "the message says which part fails (webhook unreachable, caBundle, policy)",
        ),
        DryRun::NotAllowed(why) => r.unread("admission", name, "a dry run of a pod", why),
    }
}

#[cfg(test)]
mod tests;
