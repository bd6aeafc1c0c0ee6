//! An independent Pod Security Standards "restricted" checker, written from the Kubernetes page
//! <https://kubernetes.io/docs/concepts/security/pod-security-standards/> (baseline + restricted
//! controls), not from the webhook's code. It works on the typed Pod, the webhook on raw JSON.

use k8s_openapi::api::core::v1::{Pod, SecurityContext};

const SAFE_SYSCTLS: &[&str] = &[
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
    // Since Kubernetes 1.32.
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];
const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// Every "restricted" violation of `pod`, as readable strings; empty means the pod passes.
pub fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut v = Vec::new();
    let Some(spec) = &pod.spec else { return vec!["no spec".into()] };
    let psc = spec.security_context.clone().unwrap_or_default();

    // Baseline: host namespaces.
    for (name, value) in [("hostNetwork", spec.host_network), ("hostPID", spec.host_pid), ("hostIPC", spec.host_ipc)] {
        if value == Some(true) {
            v.push(format!("spec.{name} must be unset or false"));
        }
    }
    // Baseline: HostProcess, SELinux, seccomp, AppArmor, sysctls (pod level).
    if psc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        v.push("pod windowsOptions.hostProcess".into());
    }
    if let Some(se) = &psc.se_linux_options
        && (!SELINUX_TYPES.contains(&se.type_.as_deref().unwrap_or(""))
            || se.user.as_deref().is_some_and(|s| !s.is_empty())
            || se.role.as_deref().is_some_and(|s| !s.is_empty()))
    {
        v.push("pod seLinuxOptions".into());
    }
    if let Some(profile) = &psc.app_armor_profile
        && !matches!(profile.type_.as_str(), "RuntimeDefault" | "Localhost")
    {
        v.push(format!("pod appArmorProfile.type {}", profile.type_));
    }
    for sysctl in psc.sysctls.iter().flatten() {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            v.push(format!("sysctl {}", sysctl.name));
        }
    }
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && !(value == "runtime/default" || value.starts_with("localhost/"))
        {
            v.push(format!("annotation {key}={value}"));
        }
    }
    // Baseline: hostPath; restricted: volume types.
    for volume in spec.volumes.iter().flatten() {
        let allowed = volume.config_map.is_some()
            || volume.csi.is_some()
            || volume.downward_api.is_some()
            || volume.empty_dir.is_some()
            || volume.ephemeral.is_some()
            || volume.persistent_volume_claim.is_some()
            || volume.projected.is_some()
            || volume.secret.is_some();
        if !allowed {
            v.push(format!("volume {} has a restricted type", volume.name));
        }
    }
    // Restricted: pod-level seccomp and non-root.
    let pod_seccomp_ok = psc.seccomp_profile.as_ref().is_some_and(|p| matches!(p.type_.as_str(), "RuntimeDefault" | "Localhost"));
    if psc.seccomp_profile.as_ref().is_some_and(|p| p.type_ == "Unconfined") {
        v.push("pod seccompProfile Unconfined".into());
    }
    let pod_non_root = psc.run_as_non_root == Some(true);
    if psc.run_as_user == Some(0) {
        v.push("pod runAsUser 0".into());
    }

    let containers = spec.containers.iter().map(|c| {
        (
            c.name.clone(),
            c.security_context.clone(),
            c.ports.clone().unwrap_or_default().iter().filter_map(|p| p.host_port).collect::<Vec<_>>(),
        )
    });
    let inits = spec.init_containers.iter().flatten().map(|c| {
        (c.name.clone(), c.security_context.clone(), c.ports.clone().unwrap_or_default().iter().filter_map(|p| p.host_port).collect())
    });
    let ephemerals = spec.ephemeral_containers.iter().flatten().map(|c| {
        (c.name.clone(), c.security_context.clone(), c.ports.clone().unwrap_or_default().iter().filter_map(|p| p.host_port).collect())
    });
    for (name, sc, host_ports) in containers.chain(inits).chain(ephemerals) {
        let sc: SecurityContext = sc.unwrap_or_default();
        let c = |what: &str| format!("container {name}: {what}");
        if host_ports.iter().any(|p| *p != 0) {
            v.push(c("hostPort"));
        }
        if sc.privileged == Some(true) {
            v.push(c("privileged"));
        }
        if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
            v.push(c("hostProcess"));
        }
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            v.push(c("procMount"));
        }
        if let Some(se) = &sc.se_linux_options
            && (!SELINUX_TYPES.contains(&se.type_.as_deref().unwrap_or(""))
                || se.user.as_deref().is_some_and(|s| !s.is_empty())
                || se.role.as_deref().is_some_and(|s| !s.is_empty()))
        {
            v.push(c("seLinuxOptions"));
        }
        if let Some(profile) = &sc.app_armor_profile
            && !matches!(profile.type_.as_str(), "RuntimeDefault" | "Localhost")
        {
            v.push(c("appArmorProfile"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        for cap in caps.add.iter().flatten() {
            // Restricted allows adding NET_BIND_SERVICE only (baseline's wider list does not apply).
            if cap != "NET_BIND_SERVICE" {
                v.push(c(&format!("capabilities.add {cap}")));
            }
        }
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            v.push(c("capabilities.drop must include ALL"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(c("allowPrivilegeEscalation must be false"));
        }
        match sc.run_as_non_root {
            Some(false) => v.push(c("runAsNonRoot false")),
            None if !pod_non_root => v.push(c("runAsNonRoot not set here or at pod level")),
            _ => {}
        }
        if sc.run_as_user == Some(0) {
            v.push(c("runAsUser 0"));
        }
        match sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
            Some("RuntimeDefault" | "Localhost") => {}
            Some(other) => v.push(c(&format!("seccompProfile {other}"))),
            None if !pod_seccomp_ok => v.push(c("seccompProfile not set here or at pod level")),
            None => {}
        }
    }
    v
}
