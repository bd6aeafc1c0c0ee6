//! The hardening policy: what a hardened pod gets, loaded from YAML and validated up front.
//!
//! The embedded default (`default-policy.yaml`, documented in full there) applies with no file. A policy
//! file is merged over it: sections merge field by field, while resource lists (`requests`, `limits`,
//! `maximum`) replace the default list as a whole. Every error names its field.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::quantity::Quantity;

/// The embedded default policy, with its documentation.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../default-policy.yaml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub on_violation: OnViolation,
    pub allow_opt_out: bool,
    pub max_warnings: usize,
    pub security: SecurityPolicy,
    pub proxy: ProxyPolicy,
    pub resources: ResourcePolicy,
    pub lifetime: LifetimePolicy,
    pub identity: IdentityPolicy,
    pub bounds: Bounds,
    /// Per-namespace overrides by the cluster's admins, keyed by namespace name: what a namespace's pods get
    /// instead of the policy's (see [`NamespaceOverride`] for what may be overridden, and why nothing else).
    // Left out of the policy's canonical JSON when empty: the digest of a policy without them is unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = {"pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}))]
    pub namespaces: BTreeMap<String, NamespaceOverride>,
    /// `sha256:` and the first hex digits of the policy's canonical JSON (namespaces included); recorded in the
    /// status annotation. A namespace's effective policy carries the same digest: it is the policy's.
    #[serde(skip)]
    digest: String,
    /// Each overridden namespace's effective policy (this one with the namespace's override merged over it),
    /// made once at load; not part of the policy's value.
    #[serde(skip)]
    effective: Effective,
    /// What a user of the policy derives from it once and keeps with it (the webhook: its containers as
    /// this policy renders them); not part of the policy's value. See [`Policy::derived`].
    #[serde(skip)]
    derived: Derived,
}

/// A value made from the policy on first use and kept with it, of a type this crate does not know (so that
/// the contracts do not depend on their users). Equal to any other: it is not part of the policy's value,
/// only derived from it.
#[derive(Clone, Default)]
struct Derived(std::sync::OnceLock<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() { "Derived(made)" } else { "Derived(not yet)" })
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The effective policies of the overridden namespaces. Equal to any other: derived from the policy's value
/// (its `namespaces`), not part of it.
#[derive(Debug, Clone, Default)]
struct Effective(std::sync::Arc<BTreeMap<String, Policy>>);

impl PartialEq for Effective {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnViolation {
    /// Reject the pod with one message naming every offending container and field.
    Deny,
    /// Rewrite the offending fields to their secure values and list each rewrite as a warning.
    Override,
    /// Let a pod that would be denied through as it came (not hardened), with a warning per violation, and
    /// count it: for trying tollgate out on a namespace. Only for violations that concern the pod alone (a
    /// root user, privilege escalation, resources and lifetime above the maximum, ...: `Rule::warnable`);
    /// what breaks host isolation, or is hostile, is denied all the same.
    Warn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnExceed {
    Deny,
    Clamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProxyMode {
    Native,
    Classic,
}

/// Whether hardened pods must run with their network namespace locked by the tollgate-cni plugin, so that
/// only the proxy's user can open connections that leave the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EgressLock {
    Off,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityPolicy {
    pub run_as_user: i64,
    pub run_as_group: i64,
    pub fs_group: i64,
    pub read_only_root_filesystem: bool,
    pub tmp_size_limit: QuantityValue,
    /// Whether a container may hold a Kubernetes ServiceAccount token. false: `automountServiceAccountToken`
    /// is forced to false, the API server's token volume (`kube-api-access-*`) is removed, a volume of the pod's
    /// own with a `serviceAccountToken` source (any name, any audience) is denied, and so is an inline CSI
    /// volume whose driver is not in `allowedCsiDrivers`.
    pub allow_service_account_token: bool,
    /// CSI drivers that inline `csi` volumes may use while `allowServiceAccountToken` is false: drivers the
    /// admin knows are not handed the pod's ServiceAccount token (no `tokenRequests` in their CSIDriver), or
    /// put nothing of it where a container can read it. tollgate cannot see a CSIDriver.
    // Left out of the policy's canonical JSON when empty: the digest of a policy without them is unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_csi_drivers: Vec<String>,
    pub allow_service_links: bool,
    /// Whether pods may set `spec.hostAliases` (entries in the pod's /etc/hosts, which the proxy reads too).
    pub allow_host_aliases: bool,
    /// Whether pods may choose their resolver: `dnsPolicy: None` or a `dnsConfig`.
    pub allow_dns_config: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyPolicy {
    pub mode: ProxyMode,
    pub image: String,
    pub image_pull_policy: PullPolicy,
    /// The proxy's egress listener on 127.0.0.1, the app's way out. Below 1024 (FLAME: 80) the pod gets the
    /// sysctl `net.ipv4.ip_unprivileged_port_start` set to it, so that the proxy binds it without root.
    pub egress_port: u16,
    pub ingress_port: u16,
    pub admin_port: u16,
    pub run_as_user: i64,
    pub run_as_group: i64,
    pub config_map: String,
    /// The Secret with the proxy's credentials (keys `client-id`, `client-secret`, `kong-apikey`), mounted
    /// into the proxy only. `{analysis_id}` in it is the pod's `tollgate.dev/analysis-id` (a Secret per
    /// analysis, e.g. `tollgate-proxy-credentials-{analysis_id}`; a pod without one is then denied).
    pub credentials_secret: String,
    /// Every Secret whose name starts with this is a proxy credentials Secret: no other container may
    /// read it, and `tollgate.dev/credentials-secret` may only name such a Secret.
    pub credentials_secret_prefix: String,
    pub startup_failure_threshold: u32,
    pub resources: ResourceRequirements,
    /// `required`: every hardened pod carries `tollgate.dev/egress-lock` and the lock-check init container.
    pub egress_lock: EgressLock,
    /// Names that mean the proxy's egress listener inside the pod, as templates: `{env:NAME}` is the literal
    /// `value` of env NAME in the pod's app containers (each distinct value), `{label:KEY}` a pod label.
    /// Rendered into one `spec.hostAliases` entry of tollgate's own (`127.0.0.1`) and the proxy's
    /// `TOLLGATE_EGRESS_HOSTNAMES`, e.g. `nginx-{env:DEPLOYMENT_NAME}` for FLAME.
    // Left out of the policy's canonical JSON when empty: the digest of a policy without them is unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_hostnames: Vec<String>,
    /// Env vars every container but tollgate's gets as tollgate's placeholder (replacing a value or
    /// valueFrom, or added): the app never holds the credential they would carry, and still starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placeholder_env: Vec<PlaceholderEnv>,
}

/// One env var that containers get as a placeholder instead of a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceholderEnv {
    /// The env var, e.g. `KEYCLOAK_TOKEN`.
    pub name: String,
    pub kind: PlaceholderKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PlaceholderKind {
    /// An unsigned JWT-shaped value (`alg: none`) whose `exp` is 2100-01-01, and that says it is a
    /// placeholder: code that reads a token's lifetime sees one that never runs out.
    Jwt,
    /// `tollgate-placeholder`.
    Opaque,
}

/// The placeholder in `proxy.credentialsSecret` that stands for the pod's analysis id.
pub const ANALYSIS_ID_PLACEHOLDER: &str = "{analysis_id}";

/// One piece of a `proxy.egressHostnames` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostnamePart {
    Literal(String),
    /// `{env:NAME}`
    Env(String),
    /// `{label:KEY}`
    Label(String),
}

/// A `proxy.egressHostnames` template in pieces, or why it is not one.
pub fn parse_hostname_template(template: &str) -> Result<Vec<HostnamePart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(HostnamePart::Literal(rest.to_owned()));
                break;
            }
            Some(at) if rest[at..].starts_with('}') => return Err(format!("{template:?} has a '}}' that closes no placeholder")),
            Some(at) => {
                if at > 0 {
                    parts.push(HostnamePart::Literal(rest[..at].to_owned()));
                }
                let Some(len) = rest[at..].find('}') else { return Err(format!("{template:?} has a '{{' that is never closed")) };
                let inner = &rest[at + 1..at + len];
                let part = match inner.split_once(':') {
                    Some(("env", name)) => {
                        check_env_name(name).map_err(|why| format!("{{{inner}}}: {why}"))?;
                        HostnamePart::Env(name.to_owned())
                    }
                    Some(("label", key)) => {
                        check_label_key(key).map_err(|why| format!("{{{inner}}}: {why}"))?;
                        if key.starts_with(crate::names::OWNED_PREFIX) {
                            return Err(format!(
                                "{{{inner}}}: {} labels are written by tollgate while it hardens the pod, not read",
                                crate::names::OWNED_PREFIX
                            ));
                        }
                        HostnamePart::Label(key.to_owned())
                    }
                    _ => return Err(format!("{{{inner}}} is not a placeholder (known: {{env:NAME}}, {{label:KEY}})")),
                };
                parts.push(part);
                rest = &rest[at + len + 1..];
            }
        }
    }
    Ok(parts)
}

/// An env var name as Kubernetes validates it (C identifier rules, plus `-` and `.`).
pub fn check_env_name(name: &str) -> Result<(), String> {
    let ok_first = name.starts_with(|c: char| c.is_ascii_alphabetic() || matches!(c, '_' | '-' | '.'));
    let ok_rest = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok_first || !ok_rest {
        return Err(format!("{name:?} is not an env var name (letters, digits, '_', '-' and '.', not starting with a digit)"));
    }
    Ok(())
}

/// A label key: an optional DNS subdomain prefix and `/`, and a name of at most 63 characters.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok || prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
        return Err(format!("{key:?} is not a label key"));
    }
    Ok(())
}

/// A DNS-1123 subdomain exactly as Kubernetes checks one (`ValidateDNS1123Subdomain`, e.g. of a
/// `hostAliases` hostname): at most 253 characters, dot-separated labels of lowercase letters, digits and
/// `-`, each alphanumeric at both ends.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub limits: ResourceList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourcePolicy {
    pub defaults: ResourceRequirements,
    pub maximum: ResourceList,
    pub on_exceed: OnExceed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifetimePolicy {
    pub active_deadline_seconds: i64,
    /// What happens to pods with `restartPolicy: Always` (Deployments), which no deadline bounds.
    pub restart_always: RestartAlways,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RestartAlways {
    /// Allowed, with a warning that only whoever deletes the pod (or its owner) ends it.
    Warn,
    Deny,
}

/// Who may say which analysis a pod belongs to (`tollgate.dev/analysis-id`, `project-id`,
/// `credentials-secret`): those annotations choose the proxy's credentials and routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityPolicy {
    /// Users (the AdmissionRequest's `userInfo.username`) who may set them, e.g.
    /// `system:serviceaccount:flame:pod-orchestrator`.
    pub trusted_users: Vec<String>,
    /// Groups whose members may set them.
    pub trusted_groups: Vec<String>,
    /// Controllers that create pods from workload templates; the templates were checked when their
    /// workload was created or changed, by a trusted user.
    pub controllers: Vec<String>,
}

impl IdentityPolicy {
    pub fn trusts(&self, user: &str, groups: &[String]) -> bool {
        self.trusted_users.iter().any(|u| u == user) || groups.iter().any(|g| self.trusted_groups.contains(g))
    }

    pub fn is_controller(&self, user: &str) -> bool {
        self.controllers.iter().any(|c| c == user)
    }
}

/// What the cluster's admins may decide per namespace, in the policy's `namespaces.<name>`: merged over the
/// policy like a policy file over the default (sections field by field, resource lists whole). Only what
/// concerns the namespace's own pods: their resources, their lifetime, what happens to a violation (`warn`
/// still denies whatever breaks host isolation), and a writable root filesystem. Nothing that guards the host
/// or the proxy's credentials (ServiceAccount tokens, CSI drivers, service links, host aliases, DNS, the
/// proxy, identity, opt-out, the pod ids, the size bounds) can be set per namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceOverride {
    /// What happens to a violation in this namespace (`warn`: a namespace on trial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_violation: Option<OnViolation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<LifetimeOverride>,
}

/// The security settings a namespace may change: those of its app containers' own filesystems.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityOverride {
    /// false: app containers keep a writable root filesystem (tollgate's own containers never do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_size_limit: Option<QuantityValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<RequirementsOverride>,
    /// Replaces the policy's maximum whole (a resource left out is unbounded if it is cpu, memory or
    /// ephemeral-storage, denied otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<ResourceList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exceed: Option<OnExceed>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequirementsOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceList>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifetimeOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_always: Option<RestartAlways>,
}

/// What a namespace may override, as dotted paths of the policy; what it may not, with the reason each
/// error gives.
pub const OVERRIDABLE: &[&str] = &[
    "onViolation",
    "resources.defaults.requests",
    "resources.defaults.limits",
    "resources.maximum",
    "resources.onExceed",
    "lifetime.activeDeadlineSeconds",
    "lifetime.restartAlways",
    "security.readOnlyRootFilesystem",
    "security.tmpSizeLimit",
];

const NOT_OVERRIDABLE: &[(&str, &str)] = &[
    ("allowOptOut", "a pod opted out is not hardened at all, host isolation included"),
    ("maxWarnings", "it is the same for every namespace"),
    (
        "proxy",
        "the proxy (its image, ports, credentials, egress lock) is the same in every namespace, and tollgate check --proxy holds every pod to it",
    ),
    ("identity", "who may choose a pod's analysis, and with it the proxy's credentials, is decided for the whole cluster"),
    ("bounds", "they keep every review small, for every namespace alike"),
    ("namespaces", "overrides do not nest"),
    (
        "security.runAsUser",
        "a pod that needs another user sets it itself (tollgate keeps it); the policy's must stay apart from the proxy's user",
    ),
    (
        "security.runAsGroup",
        "a pod that needs another group sets it itself (tollgate keeps it); the policy's must stay apart from the proxy's",
    ),
    ("security.fsGroup", "a pod that needs another fsGroup sets it itself (tollgate keeps it)"),
    (
        "security.allowServiceAccountToken",
        "an app container holding a ServiceAccount token reaches the API server past the proxy, and may read the proxy's credentials",
    ),
    ("security.allowedCsiDrivers", "a CSI driver may be handed the pod's ServiceAccount token"),
    ("security.allowServiceLinks", "the Services' environment variables would reach tollgate's proxy container too"),
    ("security.allowHostAliases", "they decide what the proxy's upstreams and token endpoint resolve to"),
    ("security.allowDnsConfig", "it decides what the proxy's upstreams and token endpoint resolve to"),
];

/// A namespace name: a DNS-1123 label, as Kubernetes requires of one.
fn check_namespace_name(name: &str) -> Result<(), String> {
    if name.len() > 63 || name.contains('.') || !is_dns1123_subdomain(name) {
        return Err(format!("{name:?} is not a namespace name (lowercase letters, digits and '-', at most 63, alphanumeric at both ends)"));
    }
    Ok(())
}

/// Whether the override (as JSON) sets `field` of the policy (a dotted path; resource names may hold dots) or
/// a list that holds it.
fn overrides_field(overlay: &Value, field: &str) -> bool {
    fn walk(value: &Value, rest: &str, path: &str) -> bool {
        let Value::Object(map) = value else { return true };
        if REPLACED_WHOLE.contains(&path) {
            return true;
        }
        map.iter().any(|(key, child)| {
            let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            match rest.strip_prefix(key.as_str()) {
                Some("") => true,
                Some(tail) => tail.strip_prefix('.').is_some_and(|tail| walk(child, tail, &child_path)),
                None => false,
            }
        })
    }
    walk(overlay, field, "")
}

/// What differs between `base` and `effective` (canonical JSON), as `field: old → new` lines.
fn differences(base: &Value, effective: &Value, path: &str, out: &mut Vec<String>) {
    match (base, effective) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                differences(a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), &child, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => {
            let shown = |v: &Value| match v {
                Value::Null => "unset".to_owned(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            out.push(format!("{path}: {} → {}", shown(a), shown(b)));
        }
    }
}

/// Upper bounds on the size of a pod, so that no review is slow by construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bounds {
    /// Containers of all kinds (init, app, ephemeral) together.
    pub containers: usize,
    pub volumes: usize,
    pub volume_mounts_per_container: usize,
    /// `env` and `envFrom` entries of one container together.
    pub env_per_container: usize,
}

pub type ResourceList = BTreeMap<String, QuantityValue>;

/// A quantity as written (kept for output) together with its exact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityValue {
    pub text: String,
    pub value: Quantity,
}

impl Serialize for QuantityValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for QuantityValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // YAML writes `cpu: 2` as a number; Kubernetes accepts both.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
            Float(f64),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text,
            Raw::Int(n) => n.to_string(),
            Raw::Float(f) => f.to_string(),
        };
        let value = text.parse::<Quantity>().map_err(serde::de::Error::custom)?;
        // Written the way kube-apiserver stores it, so a reinvoked webhook sees its own values again.
        Ok(QuantityValue { text: value.canonical(crate::quantity::Format::of(&text)), value })
    }
}

impl JsonSchema for QuantityValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Kubernetes quantity, e.g. 500m, 2, 512Mi or 1Gi",
            "type": ["string", "number"],
            "pattern": r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
        })
    }
}

/// The JSON Schema of a policy file (and of the Helm chart's `policy` value): a policy file is merged over the
/// embedded default, so every field may be left out, and none but the policy's may be given. What a schema
/// cannot say (e.g. a maximum below a default) [`Policy::from_yaml`] checks, naming the field.
pub fn overlay_schema() -> Value {
    let schema = schemars::generate::SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<Policy>();
    let mut schema = schema.to_value();
    fn optional(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("required");
                map.values_mut().for_each(optional);
            }
            Value::Array(items) => items.iter_mut().for_each(optional),
            _ => {}
        }
    }
    optional(&mut schema);
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
        map.remove("title");
    }
    schema
}

// A policy's problems are named by their fields, like the route table's: one type for both.
pub use crate::errors::{FieldError as PolicyError, FieldErrors as PolicyErrors};

fn error(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError { field: field.into(), message: message.into() }
}

/// Resource lists are replaced whole by a policy file, never merged key by key.
const REPLACED_WHOLE: &[&str] = &[
    "resources.defaults.requests",
    "resources.defaults.limits",
    "resources.maximum",
    "proxy.resources.requests",
    "proxy.resources.limits",
];

fn merge(base: &mut Value, overlay: Value, path: &str) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) if !REPLACED_WHOLE.contains(&path) => {
            for (key, value) in overlay {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value, &child),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from_yaml("").expect("the embedded default policy is valid (checked by tests)")
    }
}

impl Policy {
    /// Parse a policy file (merged over the embedded default) and validate it.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyErrors> {
        let mut merged: Value =
            serde_yaml_ng::from_str(DEFAULT_POLICY_YAML).map_err(|e| PolicyErrors(vec![error("<embedded default>", e.to_string())]))?;
        if !text.trim().is_empty() {
            let overlay: Value = serde_yaml_ng::from_str(text).map_err(|e| PolicyErrors(vec![error("<file>", e.to_string())]))?;
            match overlay {
                Value::Object(_) => merge(&mut merged, overlay, ""),
                Value::Null => {}
                other => return Err(PolicyErrors(vec![error("<file>", format!("expected a mapping, found {}", kind_of(&other)))])),
            }
        }
        // The namespaces' overrides apart: each is merged over the policy without them.
        let namespaces = match &mut merged {
            Value::Object(map) => map.shift_remove("namespaces").unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let mut policy: Policy = crate::strict::deserialize(&merged).map_err(|e| {
            let field = e.path().to_string();
            PolicyErrors(vec![error(if field == "." { "<file>".into() } else { field }, e.into_inner().to_string())])
        })?;
        let mut errors = policy.validate().err().map_or_else(Vec::new, |e| e.0);
        let base_valid = errors.is_empty();
        let (overrides, namespace_errors) = parse_namespaces(namespaces);
        errors.extend(namespace_errors);
        let mut effective = BTreeMap::new();
        if base_valid {
            for (name, overlay) in &overrides {
                match effective_policy(&merged, name, overlay) {
                    Ok(policy) => {
                        effective.insert(name.clone(), policy);
                    }
                    Err(namespace_errors) => errors.extend(namespace_errors),
                }
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        policy.namespaces = overrides;
        policy.digest = policy.compute_digest();
        for namespace in effective.values_mut() {
            namespace.digest = policy.digest.clone();
        }
        policy.effective = Effective(std::sync::Arc::new(effective));
        Ok(policy)
    }

    /// `sha256:` and the first hex digits of the policy's canonical JSON, `namespaces` included: every hardened
    /// pod records it in `tollgate.dev/status`, whatever its namespace, so that a pod admitted under another
    /// policy, or another override of its namespace, shows as stale (`tollgate check --proxy`).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The policy for pods in `namespace`: its override (`namespaces.<namespace>`) merged over this policy,
    /// made at load; this policy itself for a namespace without one. Only the namespace's name (of the
    /// admission request) chooses: nothing on the Namespace object, whose labels and annotations others may
    /// be allowed to set.
    pub fn for_namespace(&self, namespace: &str) -> &Policy {
        self.effective.0.get(namespace).unwrap_or(self)
    }

    /// The value `make` derives from this policy, made on first use and kept with the policy (it depends on
    /// the policy alone): e.g. the webhook's containers as the policy renders them, once per load instead of
    /// once per pod. A policy keeps one derived value; asked for another type, it answers `None` and the
    /// caller makes its own.
    pub fn derived<T: std::any::Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.derived.0.get_or_init(|| std::sync::Arc::new(make())).downcast_ref()
    }

    /// What `namespace`'s override changes, as `field: policy's → namespace's` lines (e.g.
    /// `resources.maximum.cpu: 8 → 32`, `unset` where one side has no value); `None` without an override.
    pub fn namespace_changes(&self, namespace: &str) -> Option<Vec<String>> {
        let effective = self.effective.0.get(namespace)?;
        let mut base = serde_json::to_value(self).expect("policy serializes");
        if let Value::Object(map) = &mut base {
            map.shift_remove("namespaces");
        }
        let mut changes = Vec::new();
        differences(&base, &serde_json::to_value(effective).expect("policy serializes"), "", &mut changes);
        Some(changes)
    }

    fn compute_digest(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("policy serializes");
        let digest = Sha256::digest(&canonical);
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// Whether `proxy.credentialsSecret` names each pod's Secret by its analysis (`{analysis_id}`).
    pub fn credentials_secret_per_analysis(&self) -> bool {
        self.proxy.credentials_secret.contains(ANALYSIS_ID_PLACEHOLDER)
    }

    /// The policy's credentials Secret for a pod of analysis `analysis` (`proxy.credentialsSecret` with its
    /// `{analysis_id}` filled in); `None` when the policy needs an analysis id and there is none.
    pub fn credentials_secret_for(&self, analysis: Option<&str>) -> Option<String> {
        let template = &self.proxy.credentials_secret;
        match analysis {
            _ if !self.credentials_secret_per_analysis() => Some(template.clone()),
            Some(id) => Some(template.replace(ANALYSIS_ID_PLACEHOLDER, id)),
            None => None,
        }
    }

    fn validate(&self) -> Result<(), PolicyErrors> {
        let mut errors = Vec::new();
        if self.max_warnings == 0 {
            errors.push(error("maxWarnings", "must be at least 1"));
        }
        check_security(&mut errors, &self.security);
        check_proxy(&mut errors, &self.proxy, &self.security);
        check_resources(&mut errors, &self.resources);
        if self.lifetime.active_deadline_seconds < 1 {
            errors.push(error("lifetime.activeDeadlineSeconds", "must be at least 1"));
        }
        check_name_lists(&mut errors, self);
        check_bounds(&mut errors, &self.bounds);
        if errors.is_empty() { Ok(()) } else { Err(PolicyErrors(errors)) }
    }
}

/// `security`: the pod's user, group and fsGroup, the size of its `/tmp`.
fn check_security(errors: &mut Vec<PolicyError>, s: &SecurityPolicy) {
    for (field, id) in [("security.runAsUser", s.run_as_user), ("security.runAsGroup", s.run_as_group), ("security.fsGroup", s.fs_group)] {
        check_id(errors, field, id);
    }
    if s.tmp_size_limit.value <= Quantity::ZERO {
        errors.push(error("security.tmpSizeLimit", "must be greater than zero"));
    }
}

/// `proxy`: its image, ports, user, ConfigMap, credentials Secret, egress, environment, startup and resources.
fn check_proxy(errors: &mut Vec<PolicyError>, p: &ProxyPolicy, s: &SecurityPolicy) {
    if let Err(why) = check_image_pinned(&p.image) {
        errors.push(error("proxy.image", why));
    }
    check_proxy_ports(errors, p);
    check_id(errors, "proxy.runAsUser", p.run_as_user);
    check_id(errors, "proxy.runAsGroup", p.run_as_group);
    if p.run_as_user == s.run_as_user {
        errors.push(error(
            "proxy.runAsUser",
            format!("must differ from security.runAsUser ({}): the proxy runs as its own user", s.run_as_user),
        ));
    }
    if let Err(why) = check_object_name(&p.config_map) {
        errors.push(error("proxy.configMap", why));
    }
    check_credentials_secret(errors, p);
    check_egress_hostnames(errors, p);
    check_placeholder_env(errors, p);
    if p.startup_failure_threshold == 0 {
        errors.push(error("proxy.startupFailureThreshold", "must be at least 1"));
    }
    check_requirements(errors, "proxy.resources", &p.resources);
}

/// The proxy's ports: each one set, no two the same (the later one is said to be taken).
fn check_proxy_ports(errors: &mut Vec<PolicyError>, p: &ProxyPolicy) {
    let ports = [("proxy.egressPort", p.egress_port), ("proxy.ingressPort", p.ingress_port), ("proxy.adminPort", p.admin_port)];
    for (i, (field, port)) in ports.iter().enumerate() {
        if *port == 0 {
            errors.push(error(*field, "must be a port between 1 and 65535"));
        }
        if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
            errors.push(error(*field, format!("port {port} is already used by {other}")));
        }
    }
}

/// `proxy.credentialsSecret`: an object name, `{analysis_id}` its only placeholder, under
/// `proxy.credentialsSecretPrefix` (itself an object name).
fn check_credentials_secret(errors: &mut Vec<PolicyError>, p: &ProxyPolicy) {
    // `{analysis_id}` stands for an id of at least one character: the name is checked with one in its place.
    let secret_example = p.credentials_secret.replace(ANALYSIS_ID_PLACEHOLDER, "a");
    if secret_example.contains(['{', '}']) {
        errors.push(error(
            "proxy.credentialsSecret",
            format!("{:?} has a placeholder other than {ANALYSIS_ID_PLACEHOLDER}", p.credentials_secret),
        ));
    } else if let Err(why) = check_object_name(&secret_example) {
        let why = if secret_example == p.credentials_secret {
            why
        } else {
            format!(
                "{:?} is not a valid object name with an analysis id in place of {ANALYSIS_ID_PLACEHOLDER} (lowercase letters, digits, '-' and '.', at most 253, alphanumeric at both ends)",
                p.credentials_secret
            )
        };
        errors.push(error("proxy.credentialsSecret", why));
    }
    if let Err(why) = check_object_name(&p.credentials_secret_prefix) {
        errors.push(error("proxy.credentialsSecretPrefix", why));
    } else if !p.credentials_secret.starts_with(&p.credentials_secret_prefix) {
        errors.push(error(
            "proxy.credentialsSecret",
            format!("{:?} does not start with proxy.credentialsSecretPrefix ({:?})", p.credentials_secret, p.credentials_secret_prefix),
        ));
    }
}

/// `resources`: the defaults and the maximum well-formed, no default above its maximum.
fn check_resources(errors: &mut Vec<PolicyError>, r: &ResourcePolicy) {
    check_requirements(errors, "resources.defaults", &r.defaults);
    check_resource_names(errors, "resources.maximum", &r.maximum);
    for (kind, list) in [("requests", &r.defaults.requests), ("limits", &r.defaults.limits)] {
        for (name, value) in list {
            if let Some(max) = r.maximum.get(name).filter(|max| value.value > max.value) {
                errors.push(error(
                    format!("resources.defaults.{kind}.{name}"),
                    format!("{} is above resources.maximum.{name} ({})", value.text, max.text),
                ));
            }
        }
    }
}

/// The lists of names (users, groups, controllers, CSI drivers): the first blank or padded one in each.
fn check_name_lists(errors: &mut Vec<PolicyError>, policy: &Policy) {
    for (field, list) in [
        ("identity.trustedUsers", &policy.identity.trusted_users),
        ("identity.trustedGroups", &policy.identity.trusted_groups),
        ("identity.controllers", &policy.identity.controllers),
        ("security.allowedCsiDrivers", &policy.security.allowed_csi_drivers),
    ] {
        if let Some(index) = list.iter().position(|name| name.trim().is_empty() || name.trim() != name) {
            errors.push(error(format!("{field}[{index}]"), "must be a non-empty name without surrounding spaces"));
        }
    }
}

/// `bounds`: what the creator's pod may hold. tollgate's own containers, volumes, mounts and env are not counted
/// (a hardened pod, reinvoked, stays within the bounds it was admitted under), so only `containers` has a
/// floor: every pod has a container.
fn check_bounds(errors: &mut Vec<PolicyError>, b: &Bounds) {
    if b.containers < 1 {
        errors.push(error("bounds.containers", "must be at least 1 (every pod has a container; 0 would deny every pod)"));
    }
}

/// The policy's `namespaces`, each override checked on its own: its name, what it may set, its types.
fn parse_namespaces(raw: Value) -> (BTreeMap<String, NamespaceOverride>, Vec<PolicyError>) {
    let mut overrides = BTreeMap::new();
    let mut errors = Vec::new();
    let map = match raw {
        Value::Null => return (overrides, errors),
        Value::Object(map) => map,
        other => {
            let found = kind_of(&other);
            errors.push(error("namespaces", format!("expected a mapping of namespace names to overrides, found {found}")));
            return (overrides, errors);
        }
    };
    let only = "a namespace may override only onViolation, resources, lifetime, security.readOnlyRootFilesystem and security.tmpSizeLimit";
    for (name, mut value) in map {
        let prefix = format!("namespaces.{name}");
        if let Err(why) = check_namespace_name(&name) {
            errors.push(error(prefix.clone(), why));
        }
        let Value::Object(fields) = &mut value else {
            let found = kind_of(&value);
            errors.push(error(prefix, format!("expected a mapping of what the namespace overrides, found {found}")));
            continue;
        };
        // What the policy has but a namespace may not change: said so, not "unknown field".
        let mut refused = false;
        for (field, why) in NOT_OVERRIDABLE {
            let (section, key) = match field.split_once('.') {
                Some((section, key)) => (Some(section), key),
                None => (None, *field),
            };
            let holder = match section {
                None => Some(&mut *fields),
                Some(section) => fields.get_mut(section).and_then(Value::as_object_mut),
            };
            if holder.and_then(|holder| holder.shift_remove(key)).is_some() {
                errors.push(error(format!("{prefix}.{field}"), format!("cannot be set per namespace: {why}; {only}")));
                refused = true;
            }
        }
        match crate::strict::deserialize::<NamespaceOverride>(&value) {
            Ok(overlay) if !refused => {
                overrides.insert(name, overlay);
            }
            Ok(_) => {}
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { prefix } else { format!("{prefix}.{path}") };
                errors.push(error(field, e.into_inner().to_string()));
            }
        }
    }
    (overrides, errors)
}

/// `base` (the policy's merged JSON, without `namespaces`) with the override of `name` merged over it, checked
/// like a policy; errors named under `namespaces.<name>`, saying so where the field is the policy's, inherited.
fn effective_policy(base: &Value, name: &str, overlay: &NamespaceOverride) -> Result<Policy, Vec<PolicyError>> {
    let prefix = format!("namespaces.{name}");
    let overlay = serde_json::to_value(overlay).expect("an override serializes");
    let mut merged = base.clone();
    merge(&mut merged, overlay.clone(), "");
    let policy: Policy =
        crate::strict::deserialize(&merged).map_err(|e| vec![error(format!("{prefix}.{}", e.path()), e.into_inner().to_string())])?;
    policy.validate().map_err(|errors| {
        errors
            .0
            .into_iter()
            .map(|e| {
                if overrides_field(&overlay, &e.field) {
                    return error(format!("{prefix}.{}", e.field), e.message);
                }
                // A maximum the namespace sets below a default it inherits: said at the maximum, which it wrote.
                let lowered = e.field.strip_prefix("resources.defaults.").and_then(|rest| rest.split_once('.')).and_then(|(kind, name)| {
                    let defaults = if kind == "requests" { &policy.resources.defaults.requests } else { &policy.resources.defaults.limits };
                    let (default, max) = (defaults.get(name)?, policy.resources.maximum.get(name)?);
                    (default.value > max.value && overrides_field(&overlay, "resources.maximum")).then(|| {
                        error(
                            format!("{prefix}.resources.maximum.{name}"),
                            format!(
                                "{} is below resources.defaults.{kind}.{name} ({}), which the namespace inherits from the policy: raise it, or override resources.defaults.{kind} too",
                                max.text, default.text
                            ),
                        )
                    })
                });
                lowered.unwrap_or_else(|| {
                    let message = format!("{} (the namespace inherits {} from the policy: override it too)", e.message, e.field);
                    error(format!("{prefix}.{}", e.field), message)
                })
            })
            .collect::<Vec<_>>()
    })?;
    Ok(policy)
}

/// At most this many names reach tollgate's `hostAliases` entry (every template, every value together).
pub const MAX_EGRESS_HOSTNAMES: usize = 32;

fn check_egress_hostnames(errors: &mut Vec<PolicyError>, p: &ProxyPolicy) {
    if p.egress_hostnames.len() > MAX_EGRESS_HOSTNAMES {
        errors.push(error("proxy.egressHostnames", format!("has {} entries; at most {MAX_EGRESS_HOSTNAMES}", p.egress_hostnames.len())));
    }
    for (index, template) in p.egress_hostnames.iter().enumerate() {
        let field = format!("proxy.egressHostnames[{index}]");
        let parts = match parse_hostname_template(template) {
            Ok(parts) => parts,
            Err(why) => {
                errors.push(error(field, why));
                continue;
            }
        };
        // A placeholder's value is at least one character: with `a` in every place the name must be valid,
        // or no value could make it so.
        let example: String = parts
            .iter()
            .map(|part| match part {
                HostnamePart::Literal(text) => text.as_str(),
                HostnamePart::Env(_) | HostnamePart::Label(_) => "a",
            })
            .collect();
        if !is_dns1123_subdomain(&example) {
            errors.push(error(
                field.clone(),
                format!("{template:?} cannot render a DNS-1123 subdomain (lowercase letters, digits and '-' in dot-separated labels, each alphanumeric at both ends, at most 253 characters)"),
            ));
        }
        for part in &parts {
            if let HostnamePart::Env(name) = part
                && let Some(placeholder) = p.placeholder_env.iter().find(|e| &e.name == name)
            {
                errors.push(error(
                    field.clone(),
                    format!("{{env:{name}}} reads an env var that proxy.placeholderEnv replaces (kind {:?})", placeholder.kind),
                ));
            }
        }
    }
}

fn check_placeholder_env(errors: &mut Vec<PolicyError>, p: &ProxyPolicy) {
    for (index, entry) in p.placeholder_env.iter().enumerate() {
        let field = format!("proxy.placeholderEnv[{index}].name");
        if let Err(why) = check_env_name(&entry.name) {
            errors.push(error(field, why));
        } else if entry.name == crate::names::ENV_EGRESS_URL {
            errors.push(error(field, format!("{:?} is tollgate's own: app containers get the proxy's address there", entry.name)));
        } else if p.placeholder_env[..index].iter().any(|e| e.name == entry.name) {
            errors.push(error(field, format!("{:?} is listed twice", entry.name)));
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn check_id(errors: &mut Vec<PolicyError>, field: &str, id: i64) {
    if !(1..=i64::from(i32::MAX)).contains(&id) {
        errors.push(error(field, format!("{id} is not a non-root id (1..={})", i32::MAX)));
    }
}

fn check_requirements(errors: &mut Vec<PolicyError>, field: &str, req: &ResourceRequirements) {
    check_resource_names(errors, &format!("{field}.requests"), &req.requests);
    check_resource_names(errors, &format!("{field}.limits"), &req.limits);
    for (name, request) in &req.requests {
        if let Some(limit) = req.limits.get(name).filter(|limit| request.value > limit.value) {
            errors.push(error(format!("{field}.requests.{name}"), format!("{} is above the limit {}", request.text, limit.text)));
        }
    }
}

fn check_resource_names(errors: &mut Vec<PolicyError>, field: &str, list: &ResourceList) {
    for (name, value) in list {
        if !is_resource_name(name) {
            errors.push(error(
                format!("{field}.{name}"),
                "not a resource name (cpu, memory, ephemeral-storage, hugepages-<size> or <domain>/<name>)",
            ));
        }
        if value.value.is_negative() {
            errors.push(error(format!("{field}.{name}"), format!("{} is negative", value.text)));
        }
    }
}

fn is_resource_name(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage")
        || name.strip_prefix("hugepages-").is_some_and(|size| size.parse::<Quantity>().is_ok())
        || name.split_once('/').is_some_and(|(domain, local)| {
            check_object_name(domain).is_ok()
                && !local.is_empty()
                && local.len() <= 63
                && local.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

/// A DNS-1123 subdomain, as Kubernetes requires of ConfigMap and Secret names.
pub fn check_object_name(name: &str) -> Result<(), String> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 253 || !ok_chars || !ok_ends {
        return Err(format!(
            "{name:?} is not a valid object name (lowercase letters, digits, '-' and '.', at most 253, alphanumeric at both ends)"
        ));
    }
    Ok(())
}

/// Images must be pinned: a digest, or a tag other than `latest`.
fn check_image_pinned(image: &str) -> Result<(), String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{image:?} is not an image reference"));
    }
    if image.contains("@sha256:") {
        return Ok(());
    }
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.split_once(':') {
        Some((_, "latest")) => Err(format!("{image:?} uses the tag latest; pin a version or digest")),
        Some((_, tag)) if !tag.is_empty() => Ok(()),
        _ => Err(format!("{image:?} has no tag; pin a version or digest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> Vec<String> {
        Policy::from_yaml(yaml).expect_err("policy must be rejected").0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn embedded_default_is_valid_and_complete() {
        let policy = Policy::default();
        assert_eq!(policy.on_violation, OnViolation::Deny);
        assert!(!policy.allow_opt_out);
        assert_eq!(policy.security.run_as_user, 10000);
        assert_eq!(policy.proxy.mode, ProxyMode::Native);
        assert_eq!(policy.proxy.egress_lock, EgressLock::Off);
        assert_eq!(policy.resources.maximum["nvidia.com/gpu"].text, "2");
        assert!(policy.digest().starts_with("sha256:") && policy.digest().len() == 19);
    }

    #[test]
    fn a_section_is_a_mapping_never_a_sequence_read_by_position() {
        for (text, field) in [
            ("lifetime: [3600, deny]\n", "lifetime"),
            ("security: [false]\n", "security"),
            ("namespaces:\n  trial:\n    lifetime: [3600]\n", "namespaces.trial.lifetime"),
        ] {
            let errors = Policy::from_yaml(text).unwrap_err();
            assert!(
                errors.0.iter().any(|e| e.field == field && e.message.starts_with("invalid type: sequence, expected struct")),
                "{text}: {errors:?}"
            );
        }
    }

    #[test]
    fn bounds_count_only_the_creators_part_so_only_containers_has_a_floor() {
        let errors = Policy::from_yaml("bounds: { containers: 0 }\n").unwrap_err();
        assert_eq!(errors.0.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["bounds.containers"]);
        let policy = Policy::from_yaml("bounds: { containers: 1, volumes: 0, volumeMountsPerContainer: 0, envPerContainer: 0 }\n").unwrap();
        assert_eq!(policy.bounds.env_per_container, 0);
    }

    #[test]
    fn a_file_changes_only_what_it_names() {
        let policy = Policy::from_yaml("onViolation: override\nproxy:\n  mode: classic\n").unwrap();
        let default = Policy::default();
        assert_eq!(policy.on_violation, OnViolation::Override);
        assert_eq!(policy.proxy.mode, ProxyMode::Classic);
        assert_eq!(policy.proxy.image, default.proxy.image);
        assert_eq!(policy.resources, default.resources);
        assert_ne!(policy.digest(), default.digest());
    }

    #[test]
    fn resource_lists_replace_the_default_whole() {
        let policy = Policy::from_yaml("resources:\n  maximum: { cpu: 4 }\n").unwrap();
        assert_eq!(policy.resources.maximum.keys().collect::<Vec<_>>(), ["cpu"]);
        assert_eq!(policy.resources.maximum["cpu"].value, "4".parse().unwrap());
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(errors_of("proxy:\n  egresPort: 1\n").len(), 1);
        assert!(
            errors_of("proxy:\n  egresPort: 1\n")[0].starts_with("proxy.egresPort: unknown field `egresPort`"),
            "{:?}",
            errors_of("proxy:\n  egresPort: 1\n")
        );
        assert!(errors_of("proxy:\n  egressPort: nope\n")[0].starts_with("proxy.egressPort: invalid type"));
        assert!(errors_of("onViolation: ignore\n")[0].starts_with("onViolation: unknown variant `ignore`"));
        assert!(
            errors_of("proxy: { egressLock: on }\n")[0].starts_with("proxy.egressLock: unknown variant `on`, expected `off` or `required`")
        );
        assert_eq!(Policy::from_yaml("proxy: { egressLock: required }\n").unwrap().proxy.egress_lock, EgressLock::Required);
        assert!(
            errors_of("resources:\n  maximum: { memory: 4GB }\n")[0]
                .starts_with("resources.maximum.memory: quantity \"4GB\" has an unknown suffix")
        );
        assert!(errors_of("- a\n")[0].starts_with("<file>: expected a mapping"));
        assert!(errors_of("proxy: [\n")[0].starts_with("<file>: "));
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let errors = errors_of(
            "maxWarnings: 0\nsecurity: { runAsUser: 0 }\nproxy:\n  image: tollgate-proxy:latest\n  ingressPort: 15001\n  configMap: Bad_Name\n  runAsUser: 10000\nresources:\n  defaults:\n    requests: { cpu: '3' }\n    limits: { cpu: '2' }\n  maximum: { cpu: 1, 'not a name': 1 }\nlifetime: { activeDeadlineSeconds: 0 }\n",
        );
        let expected_prefixes = [
            "maxWarnings: must be at least 1",
            "security.runAsUser: 0 is not a non-root id",
            "proxy.image: \"tollgate-proxy:latest\" uses the tag latest",
            "proxy.ingressPort: port 15001 is already used by proxy.egressPort",
            "proxy.configMap: \"Bad_Name\" is not a valid object name",
            "resources.defaults.requests.cpu: 3 is above the limit 2",
            "resources.maximum.not a name: not a resource name",
            "resources.defaults.requests.cpu: 3 is above resources.maximum.cpu (1)",
            "resources.defaults.limits.cpu: 2 is above resources.maximum.cpu (1)",
            "lifetime.activeDeadlineSeconds: must be at least 1",
        ];
        for prefix in expected_prefixes {
            assert!(errors.iter().any(|e| e.starts_with(prefix)), "missing {prefix:?} in {errors:#?}");
        }
        // runAsUser 0 also makes the proxy's UID clash check irrelevant; the proxy clash is separate:
        assert!(errors_of("proxy: { runAsUser: 10000 }\n")[0].starts_with("proxy.runAsUser: must differ from security.runAsUser"));
    }

    const GPU: &str = "namespaces:\n  gpu-analyses:\n    resources:\n      maximum: { cpu: 32, memory: 256Gi, nvidia.com/gpu: 8 }\n      onExceed: clamp\n    lifetime: { activeDeadlineSeconds: 604800, restartAlways: deny }\n  trial:\n    onViolation: warn\n    security: { readOnlyRootFilesystem: false, tmpSizeLimit: 2048Mi }\n";

    #[test]
    fn a_namespace_override_is_merged_over_the_policy_once_at_load() {
        let policy =
            Policy::from_yaml(&format!("onViolation: override\nresources:\n  defaults:\n    limits: {{ cpu: 1 }}\n{GPU}")).unwrap();
        let gpu = policy.for_namespace("gpu-analyses");
        // What it names, replaced (the maximum as a whole); the rest is the policy's, defaults included.
        assert_eq!(gpu.resources.maximum.keys().collect::<Vec<_>>(), ["cpu", "memory", "nvidia.com/gpu"]);
        assert_eq!(gpu.resources.maximum["cpu"].text, "32");
        assert_eq!(gpu.resources.on_exceed, OnExceed::Clamp);
        assert_eq!(gpu.resources.defaults, policy.resources.defaults);
        assert_eq!(gpu.resources.defaults.limits["cpu"].text, "1");
        assert_eq!((gpu.lifetime.active_deadline_seconds, gpu.lifetime.restart_always), (604800, RestartAlways::Deny));
        assert_eq!(gpu.on_violation, OnViolation::Override);
        assert_eq!((&gpu.proxy, &gpu.security, &gpu.identity), (&policy.proxy, &policy.security, &policy.identity));
        let trial = policy.for_namespace("trial");
        assert_eq!(trial.on_violation, OnViolation::Warn);
        assert!(!trial.security.read_only_root_filesystem);
        assert_eq!(trial.security.tmp_size_limit.text, "2Gi", "canonical, as in the policy");
        assert_eq!(trial.resources, policy.resources);
        // Any other namespace, and an empty name (a cluster-scoped request), get the policy itself.
        assert!(std::ptr::eq(policy.for_namespace("analyses"), &policy));
        assert!(std::ptr::eq(policy.for_namespace(""), &policy));
        // Made once: the same effective policy each time, with no namespaces of its own.
        assert!(std::ptr::eq(policy.for_namespace("trial"), trial));
        assert!(trial.namespaces.is_empty() && policy.namespaces.len() == 2);
    }

    #[test]
    fn the_digest_covers_the_overrides_and_every_namespace_records_it() {
        let without = Policy::from_yaml("").unwrap();
        let empty = Policy::from_yaml("namespaces: {}\n").unwrap();
        assert_eq!(without.digest(), empty.digest(), "no overrides: the digest of before");
        let policy = Policy::from_yaml(GPU).unwrap();
        assert_ne!(policy.digest(), without.digest());
        let changed = Policy::from_yaml(&GPU.replace("cpu: 32", "cpu: 16")).unwrap();
        assert_ne!(changed.digest(), policy.digest(), "a change to one namespace's override is a new policy");
        for namespace in ["gpu-analyses", "trial", "analyses"] {
            assert_eq!(policy.for_namespace(namespace).digest(), policy.digest(), "{namespace}");
        }
        // Written differently, the same policy: the same digest.
        let same = Policy::from_yaml(&GPU.replace("2048Mi", "2Gi").replace("cpu: 32", "cpu: '32'")).unwrap();
        assert_eq!(same.digest(), policy.digest());
    }

    #[test]
    fn what_an_override_changes_is_listed_field_by_field() {
        let policy = Policy::from_yaml(GPU).unwrap();
        assert_eq!(
            policy.namespace_changes("gpu-analyses").unwrap(),
            [
                "lifetime.activeDeadlineSeconds: 86400 → 604800",
                "lifetime.restartAlways: warn → deny",
                "resources.maximum.cpu: 8 → 32",
                "resources.maximum.ephemeral-storage: 50Gi → unset",
                "resources.maximum.memory: 64Gi → 256Gi",
                "resources.maximum.nvidia.com/gpu: 2 → 8",
                "resources.onExceed: deny → clamp",
            ]
        );
        assert_eq!(
            policy.namespace_changes("trial").unwrap(),
            ["onViolation: deny → warn", "security.readOnlyRootFilesystem: true → false", "security.tmpSizeLimit: 1Gi → 2Gi"]
        );
        assert_eq!(policy.namespace_changes("analyses"), None);
        assert_eq!(Policy::from_yaml("namespaces: { quiet: {} }\n").unwrap().namespace_changes("quiet").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn namespace_overrides_are_validated_like_the_policy_naming_the_field() {
        for (yaml, expected) in [
            (
                "namespaces:\n  gpu-analyses:\n    resources:\n      maximum: { cpu: lots }\n",
                r#"namespaces.gpu-analyses.resources.maximum.cpu: quantity "lots" has no digits"#,
            ),
            (
                "namespaces:\n  gpu-analyses:\n    resources:\n      maximum: { cpu: -1 }\n",
                "namespaces.gpu-analyses.resources.maximum.cpu: -1 is negative",
            ),
            (
                "namespaces:\n  gpu-analyses:\n    resources:\n      maximum: { 'not a name': 1 }\n",
                "namespaces.gpu-analyses.resources.maximum.not a name: not a resource name",
            ),
            (
                "namespaces:\n  gpu-analyses:\n    resources:\n      maximum: { cpu: 100m }\n",
                "namespaces.gpu-analyses.resources.maximum.cpu: 100m is below resources.defaults.requests.cpu (250m), which the namespace inherits from the policy: raise it, or override resources.defaults.requests too",
            ),
            (
                "namespaces:\n  gpu-analyses:\n    resources:\n      defaults: { requests: { cpu: 3 } }\n",
                "namespaces.gpu-analyses.resources.defaults.requests.cpu: 3 is above the limit 2",
            ),
            (
                "namespaces:\n  gpu-analyses:\n    resources:\n      defaults: { limits: { memory: 256Mi } }\n",
                "namespaces.gpu-analyses.resources.defaults.requests.memory: 512Mi is above the limit 256Mi (the namespace inherits resources.defaults.requests.memory from the policy: override it too)",
            ),
            (
                "namespaces:\n  slow:\n    lifetime: { activeDeadlineSeconds: 0 }\n",
                "namespaces.slow.lifetime.activeDeadlineSeconds: must be at least 1",
            ),
            ("namespaces:\n  trial:\n    onViolation: ignore\n", "namespaces.trial.onViolation: unknown variant `ignore`"),
            (
                "namespaces:\n  trial:\n    security: { tmpSizeLimit: 0 }\n",
                "namespaces.trial.security.tmpSizeLimit: must be greater than zero",
            ),
            (
                "namespaces:\n  trial:\n    resourcez: {}\n",
                "namespaces.trial.resourcez: unknown field `resourcez`, expected one of `onViolation`, `security`, `resources`, `lifetime`",
            ),
            ("namespaces:\n  GPU_analyses:\n    onViolation: warn\n", r#"namespaces.GPU_analyses: "GPU_analyses" is not a namespace name"#),
            ("namespaces:\n  a.b:\n    onViolation: warn\n", r#"namespaces.a.b: "a.b" is not a namespace name"#),
            ("namespaces:\n  trial:\n", "namespaces.trial: expected a mapping of what the namespace overrides, found nothing"),
            ("namespaces: [trial]\n", "namespaces: expected a mapping of namespace names to overrides, found a list"),
        ] {
            let errors = errors_of(yaml);
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{yaml}: {errors:#?}");
        }
        // Every namespace's problems at once, beside the policy's own.
        let errors =
            errors_of("maxWarnings: 0\nnamespaces:\n  a:\n    onViolation: ignore\n  b:\n    lifetime: { activeDeadlineSeconds: 0 }\n");
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with("maxWarnings: ") && errors[1].starts_with("namespaces.a.onViolation: "), "{errors:#?}");
        let errors = errors_of("namespaces:\n  a:\n    onViolation: ignore\n  b:\n    lifetime: { activeDeadlineSeconds: 0 }\n");
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn nothing_that_guards_the_host_or_the_proxys_credentials_can_be_overridden() {
        for field in [
            "allowOptOut: true",
            "maxWarnings: 5",
            "proxy: { image: 'attacker.example/proxy:1' }",
            "proxy: { egressLock: off }",
            "identity: { trustedUsers: [mallory] }",
            "bounds: { containers: 1000 }",
            "namespaces: { other: {} }",
            "security: { runAsUser: 10001 }",
            "security: { runAsGroup: 10001 }",
            "security: { fsGroup: 10001 }",
            "security: { allowServiceAccountToken: true }",
            "security: { allowedCsiDrivers: [secrets-store.csi.k8s.io] }",
            "security: { allowServiceLinks: true }",
            "security: { allowHostAliases: true }",
            "security: { allowDnsConfig: true }",
        ] {
            let yaml = format!("namespaces:\n  trial:\n    {field}\n");
            let errors = errors_of(&yaml);
            let (section, rest) = field.split_once(": ").unwrap();
            let name = match rest.strip_prefix("{ ") {
                Some(inner) if section != "proxy" && section != "identity" && section != "bounds" && section != "namespaces" => {
                    format!("{section}.{}", inner.split_once(':').unwrap().0)
                }
                _ => section.to_owned(),
            };
            let expected = format!("namespaces.trial.{name}: cannot be set per namespace: ");
            assert!(errors.len() == 1 && errors[0].starts_with(&expected), "{field}: {errors:#?}");
            assert!(errors[0].ends_with("a namespace may override only onViolation, resources, lifetime, security.readOnlyRootFilesystem and security.tmpSizeLimit"), "{errors:?}");
        }
        // Beside what may be overridden, it still refuses the whole override.
        let errors = errors_of(
            "namespaces:\n  trial:\n    onViolation: warn\n    security: { readOnlyRootFilesystem: false, allowHostAliases: true }\n",
        );
        assert_eq!(errors.len(), 1, "{errors:#?}");
        // Each field the policy has is either overridable or refused with its reason: none falls through to
        // `unknown field`, and none is both.
        let policy = serde_json::to_value(Policy::default()).unwrap();
        for (section, value) in policy.as_object().unwrap() {
            let fields: Vec<String> = match value {
                Value::Object(inner) if section == "security" => inner.keys().map(|k| format!("{section}.{k}")).collect(),
                _ => vec![section.clone()],
            };
            for field in fields {
                let overridable = OVERRIDABLE.iter().any(|o| *o == field || o.starts_with(&format!("{field}.")));
                let refused = NOT_OVERRIDABLE.iter().any(|(f, _)| *f == field);
                assert!(overridable != refused, "{field}: overridable {overridable}, refused {refused}");
            }
        }
    }

    #[test]
    fn the_schema_offers_the_overrides_and_nothing_else() {
        let schema = overlay_schema();
        let namespace = &schema["properties"]["namespaces"]["additionalProperties"];
        let keys: Vec<&String> = namespace["properties"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["onViolation", "security", "resources", "lifetime"]);
        assert_eq!(namespace["additionalProperties"], false);
        assert_eq!(schema["properties"]["namespaces"]["propertyNames"]["maxLength"], 63);
        let security: Vec<&String> = namespace["properties"]["security"]["properties"].as_object().unwrap().keys().collect();
        assert_eq!(security, ["readOnlyRootFilesystem", "tmpSizeLimit"]);
    }

    #[test]
    fn quantities_are_kept_in_canonical_form() {
        let policy =
            Policy::from_yaml("security: { tmpSizeLimit: 1024Mi }\nproxy:\n  resources:\n    limits: { cpu: 0.5, memory: 128Mi }\n")
                .unwrap();
        assert_eq!(policy.security.tmp_size_limit.text, "1Gi");
        assert_eq!(policy.proxy.resources.limits["cpu"].text, "500m");
        assert_eq!(policy.proxy.resources.limits["memory"].text, "128Mi");
    }

    #[test]
    fn egress_hostnames_are_templates_checked_up_front() {
        let policy =
            Policy::from_yaml("proxy:\n  egressHostnames: ['nginx-{env:DEPLOYMENT_NAME}', '{label:app}.local', 'sidecar']\n").unwrap();
        assert_eq!(policy.proxy.egress_hostnames.len(), 3);
        assert_eq!(
            parse_hostname_template("nginx-{env:DEPLOYMENT_NAME}.{label:example.org/app}").unwrap(),
            [
                HostnamePart::Literal("nginx-".into()),
                HostnamePart::Env("DEPLOYMENT_NAME".into()),
                HostnamePart::Literal(".".into()),
                HostnamePart::Label("example.org/app".into()),
            ]
        );
        for (template, expected) in [
            ("nginx-{env:DEP", r#"proxy.egressHostnames[0]: "nginx-{env:DEP" has a '{' that is never closed"#),
            ("nginx}", r#"proxy.egressHostnames[0]: "nginx}" has a '}' that closes no placeholder"#),
            ("nginx-{analysis_id}", "proxy.egressHostnames[0]: {analysis_id} is not a placeholder (known: {env:NAME}, {label:KEY})"),
            ("nginx-{env:1X}", r#"proxy.egressHostnames[0]: {env:1X}: "1X" is not an env var name"#),
            ("nginx-{label:a/b/}", r#"proxy.egressHostnames[0]: {label:a/b/}: "a/b/" is not a label key"#),
            (
                "x-{label:tollgate.dev/analysis-id}",
                "proxy.egressHostnames[0]: {label:tollgate.dev/analysis-id}: tollgate.dev/ labels are written by tollgate",
            ),
            ("Nginx-{env:X}", r#"proxy.egressHostnames[0]: "Nginx-{env:X}" cannot render a DNS-1123 subdomain"#),
            ("-{env:X}", r#"proxy.egressHostnames[0]: "-{env:X}" cannot render a DNS-1123 subdomain"#),
            ("{env:X}..local", r#"proxy.egressHostnames[0]: "{env:X}..local" cannot render a DNS-1123 subdomain"#),
        ] {
            let errors = errors_of(&format!("proxy:\n  egressHostnames: ['{template}']\n"));
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{template}: {errors:#?}");
        }
        // A name the placeholders replace cannot also be read.
        let errors =
            errors_of("proxy:\n  egressHostnames: ['x-{env:KEYCLOAK_TOKEN}']\n  placeholderEnv: [{name: KEYCLOAK_TOKEN, kind: jwt}]\n");
        assert!(
            errors[0].starts_with("proxy.egressHostnames[0]: {env:KEYCLOAK_TOKEN} reads an env var that proxy.placeholderEnv replaces"),
            "{errors:?}"
        );
        let many: Vec<String> = (0..=MAX_EGRESS_HOSTNAMES).map(|i| format!("'n{i}'")).collect();
        let errors = errors_of(&format!("proxy:\n  egressHostnames: [{}]\n", many.join(", ")));
        assert!(errors[0].starts_with("proxy.egressHostnames: has 33 entries; at most 32"), "{errors:?}");
    }

    #[test]
    fn placeholder_env_names_are_checked() {
        let policy =
            Policy::from_yaml("proxy:\n  placeholderEnv: [{name: KEYCLOAK_TOKEN, kind: jwt}, {name: DATA_SOURCE_TOKEN, kind: opaque}]\n")
                .unwrap();
        assert_eq!(
            policy.proxy.placeholder_env,
            [
                PlaceholderEnv { name: "KEYCLOAK_TOKEN".into(), kind: PlaceholderKind::Jwt },
                PlaceholderEnv { name: "DATA_SOURCE_TOKEN".into(), kind: PlaceholderKind::Opaque },
            ]
        );
        for (list, expected) in [
            ("[{name: '1A', kind: jwt}]", r#"proxy.placeholderEnv[0].name: "1A" is not an env var name"#),
            ("[{name: A, kind: jwt}, {name: A, kind: opaque}]", r#"proxy.placeholderEnv[1].name: "A" is listed twice"#),
            ("[{name: TOLLGATE_EGRESS_URL, kind: opaque}]", r#"proxy.placeholderEnv[0].name: "TOLLGATE_EGRESS_URL" is tollgate's own"#),
            ("[{name: A, kind: secret}]", "proxy.placeholderEnv[0].kind: unknown variant `secret`, expected `jwt` or `opaque`"),
            ("[{name: A}]", "proxy.placeholderEnv[0]: missing field `kind`"),
        ] {
            let errors = errors_of(&format!("proxy:\n  placeholderEnv: {list}\n"));
            assert!(errors[0].starts_with(expected), "{list}: {errors:#?}");
        }
    }

    #[test]
    fn the_credentials_secret_may_be_per_analysis() {
        let policy = Policy::from_yaml("proxy: { credentialsSecret: 'tollgate-proxy-credentials-{analysis_id}' }\n").unwrap();
        assert!(policy.credentials_secret_per_analysis());
        assert_eq!(policy.credentials_secret_for(Some("a1")).as_deref(), Some("tollgate-proxy-credentials-a1"));
        assert_eq!(policy.credentials_secret_for(None), None);
        let default = Policy::default();
        assert!(!default.credentials_secret_per_analysis());
        assert_eq!(default.credentials_secret_for(None).as_deref(), Some("tollgate-proxy-credentials"));
        assert_eq!(default.credentials_secret_for(Some("a1")).as_deref(), Some("tollgate-proxy-credentials"));
        for (secret, expected) in [
            (
                "tollgate-proxy-credentials-{project_id}",
                r#"proxy.credentialsSecret: "tollgate-proxy-credentials-{project_id}" has a placeholder other than {analysis_id}"#,
            ),
            (
                "tollgate-proxy-credentials_{analysis_id}",
                r#"proxy.credentialsSecret: "tollgate-proxy-credentials_{analysis_id}" is not a valid object name with an analysis id in place of {analysis_id}"#,
            ),
            // The prefix still holds: every Secret the template can name is a credentials Secret.
            (
                "analysis-{analysis_id}-credentials",
                r#"proxy.credentialsSecret: "analysis-{analysis_id}-credentials" does not start with proxy.credentialsSecretPrefix ("tollgate-proxy-credentials")"#,
            ),
        ] {
            let errors = errors_of(&format!("proxy: {{ credentialsSecret: '{secret}' }}\n"));
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{secret}: {errors:#?}");
        }
    }

    #[test]
    fn dns1123_subdomains_as_kubernetes_checks_them() {
        for good in ["a", "nginx-analysis-1-0", "a.b-c.d", "0", &"a".repeat(63), &["a"; 127].join(".")] {
            assert!(is_dns1123_subdomain(good), "{good}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a", "a.", "a.-b", "nginx-$(X)", &["a"; 128].join(".")] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn images_must_be_pinned() {
        assert!(check_image_pinned("ghcr.io/x/proxy:0.1.0").is_ok());
        assert!(check_image_pinned("localhost:5000/proxy:1").is_ok());
        assert!(check_image_pinned("proxy@sha256:abcd").is_ok());
        assert!(check_image_pinned("localhost:5000/proxy").is_err());
        assert!(check_image_pinned("proxy").is_err());
        assert!(check_image_pinned("proxy:latest").is_err());
        assert!(check_image_pinned("pro xy:1").is_err());
    }
}
