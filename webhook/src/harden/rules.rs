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

    pub const ALL: [Rule; 33] = [
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

/// Sysctls that Pod Security "baseline" (and so "restricted") allows.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Volume types Pod Security "restricted" allows.
pub const ALLOWED_VOLUME_TYPES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// SELinux types Pod Security "baseline" allows (besides none).
pub const ALLOWED_SELINUX_TYPES: &[&str] = &["container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
