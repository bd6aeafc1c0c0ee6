//! What tollgate refuses, and how a refusal reads.

use std::fmt;

/// A rule a pod can break. Its name labels the `denials` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Privileged,
    HostNamespaces,
    HostPath,
    HostPorts,
    Capabilities,
    RunAsRoot,
    PrivilegeEscalation,
    ProcMount,
    Seccomp,
    AppArmor,
    SeLinux,
    HostProcess,
    Sysctls,
    VolumeTypes,
    CredentialsExposed,
    SharedProcessNamespace,
    ProxyIdentity,
    ProbeHost,
    LockBlocksProbe,
    PortConflict,
    InvalidAnnotation,
    InvalidQuantity,
    ResourceNotAllowed,
    ResourcesExceedMaximum,
    RequestsExceedLimits,
    LifetimeExceedsMaximum,
    LifetimeUnbounded,
    NameResolution,
    UntrustedIdentity,
    TollgateOwned,
    TooLarge,
    EgressHostname,
    AnalysisIdRequired,
    OperatingSystem,
    ServiceAccountToken,
}

impl Rule {
    /// What `onViolation: warn` lets through (with a warning): what Pod Security "restricted" and tollgate add
    /// to "baseline" and concerns the pod alone. Everything else is denied in every mode: what breaks host
    /// isolation (privileged, host namespaces, ports and paths, unconfined profiles, added capabilities,
    /// volumes the node mounts) could reach the node and other analyses' credentials, and the rest is
    /// hostile or invalid.
    pub fn warnable(self) -> bool {
        matches!(
            self,
            Rule::RunAsRoot
                | Rule::PrivilegeEscalation
                | Rule::SharedProcessNamespace
                | Rule::NameResolution
                | Rule::ResourcesExceedMaximum
                | Rule::LifetimeExceedsMaximum
        )
    }

    pub const ALL: [Rule; 35] = [
        Rule::Privileged,
        Rule::HostNamespaces,
        Rule::HostPath,
        Rule::HostPorts,
        Rule::Capabilities,
        Rule::RunAsRoot,
        Rule::PrivilegeEscalation,
        Rule::ProcMount,
        Rule::Seccomp,
        Rule::AppArmor,
        Rule::SeLinux,
        Rule::HostProcess,
        Rule::Sysctls,
        Rule::VolumeTypes,
        Rule::CredentialsExposed,
        Rule::SharedProcessNamespace,
        Rule::ProxyIdentity,
        Rule::ProbeHost,
        Rule::LockBlocksProbe,
        Rule::PortConflict,
        Rule::InvalidAnnotation,
        Rule::InvalidQuantity,
        Rule::ResourceNotAllowed,
        Rule::ResourcesExceedMaximum,
        Rule::RequestsExceedLimits,
        Rule::LifetimeExceedsMaximum,
        Rule::LifetimeUnbounded,
        Rule::NameResolution,
        Rule::UntrustedIdentity,
        Rule::TollgateOwned,
        Rule::TooLarge,
        Rule::EgressHostname,
        Rule::AnalysisIdRequired,
        Rule::OperatingSystem,
        Rule::ServiceAccountToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Privileged => "privileged",
            Rule::HostNamespaces => "host-namespaces",
            Rule::HostPath => "host-path",
            Rule::HostPorts => "host-ports",
            Rule::Capabilities => "capabilities",
            Rule::RunAsRoot => "run-as-root",
            Rule::PrivilegeEscalation => "privilege-escalation",
            Rule::ProcMount => "proc-mount",
            Rule::Seccomp => "seccomp",
            Rule::AppArmor => "apparmor",
            Rule::SeLinux => "selinux",
            Rule::HostProcess => "host-process",
            Rule::Sysctls => "sysctls",
            Rule::VolumeTypes => "volume-types",
            Rule::CredentialsExposed => "credentials-exposed",
            Rule::SharedProcessNamespace => "shared-process-namespace",
            Rule::ProxyIdentity => "proxy-identity",
            Rule::ProbeHost => "probe-host",
            Rule::LockBlocksProbe => "lock-blocks-probe",
            Rule::PortConflict => "port-conflict",
            Rule::InvalidAnnotation => "invalid-annotation",
            Rule::InvalidQuantity => "invalid-quantity",
            Rule::ResourceNotAllowed => "resource-not-allowed",
            Rule::ResourcesExceedMaximum => "resources-exceed-maximum",
            Rule::RequestsExceedLimits => "requests-exceed-limits",
            Rule::LifetimeExceedsMaximum => "lifetime-exceeds-maximum",
            Rule::LifetimeUnbounded => "lifetime-unbounded",
            Rule::NameResolution => "name-resolution",
            Rule::UntrustedIdentity => "untrusted-identity",
            Rule::TollgateOwned => "tollgate-owned",
            Rule::TooLarge => "too-large",
            Rule::EgressHostname => "egress-hostname",
            Rule::AnalysisIdRequired => "analysis-id-required",
            Rule::ServiceAccountToken => "service-account-token",
            Rule::OperatingSystem => "operating-system",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One offending field: `container "app": securityContext.privileged is true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    /// `pod`, `container "app"`, `init container "setup"`, `ephemeral container "debug"`.
    pub scope: String,
    /// The field, relative to the scope: `securityContext.privileged`, `spec.hostNetwork`.
    pub field: String,
    /// What is wrong with it: `is true`.
    pub problem: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {} [{}]", self.scope, self.field, self.problem, self.rule)
    }
}

/// A pod that tollgate refuses: every violation found, not only the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub violations: Vec<Violation>,
}

impl Denial {
    /// The one message kubectl prints.
    pub fn message(&self) -> String {
        self.message_for("this pod")
    }

    /// The message for a request about something else: `this update`, `this Job`, ...
    pub fn message_for(&self, what: &str) -> String {
        let count = self.violations.len();
        let mut message = format!("tollgate denied {what} ({count} violation{}): ", if count == 1 { "" } else { "s" });
        let parts: Vec<String> = self.violations.iter().map(ToString::to_string).collect();
        message.push_str(&parts.join("; "));
        message
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// Sysctls that Pod Security "baseline" (and so "restricted") allows, each with the Kubernetes minor version
/// from which the standard allows it (k8s.io/pod-security-admission, policy/check_sysctls.go): 1.0, 1.27
/// (`ip_local_reserved_ports`), 1.29 (the TCP keepalive and FIN timeouts), 1.32 (`tcp_rmem`, `tcp_wmem`). Which
/// of them tollgate passes on follows the API server's version ([`set_kubernetes_minor`]): a sysctl safe only
/// from a later version is one the API server's Pod Security refuses, and so is removed or denied like any
/// other unsafe one.
pub const SAFE_SYSCTLS: &[(&str, u32)] = &[
    ("kernel.shm_rmid_forced", 0),
    ("net.ipv4.ip_local_port_range", 0),
    ("net.ipv4.ip_unprivileged_port_start", 0),
    ("net.ipv4.tcp_syncookies", 0),
    ("net.ipv4.ping_group_range", 0),
    ("net.ipv4.ip_local_reserved_ports", 27),
    ("net.ipv4.tcp_keepalive_time", 29),
    ("net.ipv4.tcp_fin_timeout", 29),
    ("net.ipv4.tcp_keepalive_intvl", 29),
    ("net.ipv4.tcp_keepalive_probes", 29),
    ("net.ipv4.tcp_rmem", 32),
    ("net.ipv4.tcp_wmem", 32),
];

/// The oldest Kubernetes minor version tollgate supports (1.30): the safe sysctls of its standard are what
/// tollgate allows while the API server's version is unknown.
pub const OLDEST_SUPPORTED_MINOR: u32 = 30;

/// The API server's minor version, 0 while unknown.
static KUBERNETES_MINOR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Tell the rules which Kubernetes minor version the API server runs (`serve --kubernetes-version`, found at
/// start by default): the safe sysctls follow its Pod Security standard. Until it is told, or told a
/// version older than tollgate supports, the oldest supported version's list applies.
pub fn set_kubernetes_minor(minor: u32) {
    KUBERNETES_MINOR.store(minor, std::sync::atomic::Ordering::Relaxed);
}

/// The Kubernetes minor version the rules follow: the API server's, or [`OLDEST_SUPPORTED_MINOR`].
pub fn kubernetes_minor() -> u32 {
    KUBERNETES_MINOR.load(std::sync::atomic::Ordering::Relaxed).max(OLDEST_SUPPORTED_MINOR)
}

/// Whether Pod Security allows the sysctl `name` at [`kubernetes_minor`].
pub fn is_safe_sysctl(name: &str) -> bool {
    let minor = kubernetes_minor();
    SAFE_SYSCTLS.iter().any(|(safe, since)| *safe == name && *since <= minor)
}

/// Volume types Pod Security "restricted" allows.
pub const ALLOWED_VOLUME_TYPES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// SELinux types Pod Security "baseline" allows (besides none).
pub const ALLOWED_SELINUX_TYPES: &[&str] = &["container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
