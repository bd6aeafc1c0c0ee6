//! Every denial rule, with its message; one message naming every violation; what opt-out does.

mod common;

use serde_json::{Value, json};
use tollgate_webhook::harden::{Outcome, Requester, Rule, SkipReason, harden, harden_as, harden_in, skipped_status};
use tollgate_webhook::policy::{OnViolation, Policy};

fn base_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "app", "image": "registry.example.org/app:1.0"}],
            "volumes": []
        }
    })
}

fn with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut pod = base_pod();
    edit(&mut pod);
    pod
}

/// Deny under `policy`, and return the one message with its rules.
fn denial(policy: &Policy, pod: &Value) -> (String, Vec<Rule>) {
    let mut working = pod.clone();
    match harden(policy, &mut working).expect("decodes") {
        Outcome::Denied(denial) => {
            assert_eq!(&working, pod, "a denied pod is left untouched");
            (denial.message(), denial.violations.iter().map(|v| v.rule).collect())
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn each_rule_denies_with_a_message_naming_container_and_field() {
    let cases: Vec<(Rule, Value, &str)> = vec![
        (
            Rule::Privileged,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true})),
            r#"container "app": securityContext.privileged is true [privileged]"#,
        ),
        (Rule::HostNamespaces, with(|p| p["spec"]["hostNetwork"] = json!(true)), "pod: spec.hostNetwork is true [host-namespaces]"),
        (Rule::HostNamespaces, with(|p| p["spec"]["hostPID"] = json!(true)), "pod: spec.hostPID is true [host-namespaces]"),
        (Rule::HostNamespaces, with(|p| p["spec"]["hostIPC"] = json!(true)), "pod: spec.hostIPC is true [host-namespaces]"),
        (
            Rule::HostPath,
            with(|p| p["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}])),
            r#"pod: spec.volumes["root"].hostPath is not allowed [host-path]"#,
        ),
        (
            Rule::VolumeTypes,
            with(|p| p["spec"]["volumes"] = json!([{"name": "nfs", "nfs": {"server": "s", "path": "/"}}])),
            r#"pod: spec.volumes["nfs"].nfs is not allowed [volume-types]"#,
        ),
        (
            Rule::HostPorts,
            with(|p| p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 80}])),
            r#"container "app": ports[0].hostPort is set [host-ports]"#,
        ),
        (
            Rule::Capabilities,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"]}})),
            r#"container "app": securityContext.capabilities.add adds NET_ADMIN, SYS_ADMIN [capabilities]"#,
        ),
        (
            Rule::RunAsRoot,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 0})),
            r#"container "app": securityContext.runAsUser is 0 (root) [run-as-root]"#,
        ),
        (
            Rule::RunAsRoot,
            with(|p| p["spec"]["securityContext"] = json!({"runAsUser": 0})),
            "pod: spec.securityContext.runAsUser is 0 (root) [run-as-root]",
        ),
        (
            Rule::RunAsRoot,
            with(|p| p["spec"]["securityContext"] = json!({"runAsNonRoot": false})),
            "pod: spec.securityContext.runAsNonRoot is false [run-as-root]",
        ),
        (
            Rule::RunAsRoot,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"runAsNonRoot": false})),
            r#"container "app": securityContext.runAsNonRoot is false [run-as-root]"#,
        ),
        (
            Rule::PrivilegeEscalation,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"allowPrivilegeEscalation": true})),
            r#"container "app": securityContext.allowPrivilegeEscalation is true [privilege-escalation]"#,
        ),
        (
            Rule::ProcMount,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"procMount": "Unmasked"})),
            r#"container "app": securityContext.procMount is Unmasked [proc-mount]"#,
        ),
        (
            Rule::Seccomp,
            with(|p| p["spec"]["securityContext"] = json!({"seccompProfile": {"type": "Unconfined"}})),
            "pod: spec.securityContext.seccompProfile.type is Unconfined [seccomp]",
        ),
        (
            Rule::Seccomp,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"seccompProfile": {"type": "Unconfined"}})),
            r#"container "app": securityContext.seccompProfile.type is Unconfined [seccomp]"#,
        ),
        (
            Rule::AppArmor,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"appArmorProfile": {"type": "Unconfined"}})),
            r#"container "app": securityContext.appArmorProfile.type is Unconfined [apparmor]"#,
        ),
        (
            Rule::AppArmor,
            with(|p| p["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/app"] = json!("unconfined")),
            r#"container "app": metadata.annotations[container.apparmor.security.beta.kubernetes.io/app] is unconfined [apparmor]"#,
        ),
        (
            Rule::SeLinux,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"seLinuxOptions": {"type": "spc_t"}})),
            r#"container "app": securityContext.seLinuxOptions has type "spc_t" [selinux]"#,
        ),
        (
            Rule::HostProcess,
            with(|p| p["spec"]["securityContext"] = json!({"windowsOptions": {"hostProcess": true}})),
            "pod: spec.securityContext.windowsOptions.hostProcess is true [host-process]",
        ),
        (
            Rule::Sysctls,
            with(|p| {
                p["spec"]["securityContext"] =
                    json!({"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]})
            }),
            "pod: spec.securityContext.sysctls sets unsafe kernel.msgmax [sysctls]",
        ),
        (
            Rule::Sysctls,
            with(|p| p["spec"]["securityContext"] = json!({"sysctls": [{"value": "1"}, {"name": null, "value": "1"}]})),
            "pod: spec.securityContext.sysctls sets unsafe a sysctl without a name, a sysctl without a name [sysctls]",
        ),
        (
            Rule::OperatingSystem,
            with(|p| p["spec"]["os"] = json!({"name": "windows"})),
            "pod: spec.os.name is windows: tollgate hardens Linux pods only (its proxy and egress lock run on Linux nodes) [operating-system]",
        ),
        (
            Rule::CredentialsExposed,
            with(|p| {
                p["spec"]["volumes"] = json!([{"name": "creds", "secret": {"secretName": "tollgate-proxy-credentials"}}]);
                p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "creds", "mountPath": "/creds"}]);
            }),
            r#"container "app": volumeMounts[0] mounts volume "creds", which carries the proxy credentials Secret "tollgate-proxy-credentials" [credentials-exposed]"#,
        ),
        (
            Rule::CredentialsExposed,
            with(|p| p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "tollgate-proxy-credentials", "mountPath": "/creds"}])),
            r#"container "app": volumeMounts[0] mounts volume "tollgate-proxy-credentials""#,
        ),
        (
            Rule::CredentialsExposed,
            with(|p| {
                p["spec"]["containers"][0]["env"] = json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tollgate-proxy-credentials", "key": "client-secret"}}}])
            }),
            r#"container "app": env["TOKEN"] reads the proxy credentials Secret"#,
        ),
        (
            Rule::CredentialsExposed,
            with(|p| p["spec"]["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "tollgate-proxy-credentials"}}])),
            r#"container "app": envFrom[0] reads the proxy credentials Secret"#,
        ),
        (
            Rule::CredentialsExposed,
            with(|p| {
                p["metadata"]["annotations"]["tollgate.dev/credentials-secret"] = json!("tollgate-proxy-credentials-analysis-7");
                p["spec"]["volumes"] =
                    json!([{"name": "all", "projected": {"sources": [{"secret": {"name": "tollgate-proxy-credentials-analysis-7"}}]}}]);
                p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "all", "mountPath": "/all"}]);
            }),
            r#"carries the proxy credentials Secret "tollgate-proxy-credentials-analysis-7" [credentials-exposed]"#,
        ),
        (
            Rule::CredentialsExposed,
            with(|p| {
                // Naming another Secret for the proxy does not unprotect the policy's.
                p["metadata"]["annotations"]["tollgate.dev/credentials-secret"] = json!("tollgate-proxy-credentials-analysis-7");
                p["spec"]["containers"][0]["env"] =
                    json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tollgate-proxy-credentials", "key": "k"}}}]);
            }),
            r#"container "app": env["TOKEN"] reads the proxy credentials Secret "tollgate-proxy-credentials" [credentials-exposed]"#,
        ),
        (
            Rule::SharedProcessNamespace,
            with(|p| p["spec"]["shareProcessNamespace"] = json!(true)),
            "pod: spec.shareProcessNamespace is true [shared-process-namespace]",
        ),
        (
            Rule::ProxyIdentity,
            with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 10001})),
            r#"container "app": securityContext.runAsUser is 10001, the proxy's user [proxy-identity]"#,
        ),
        (
            Rule::ProxyIdentity,
            with(|p| p["spec"]["securityContext"] = json!({"runAsUser": 10001})),
            "pod: spec.securityContext.runAsUser is 10001, the proxy's user [proxy-identity]",
        ),
        (
            Rule::ProbeHost,
            with(|p| {
                p["spec"]["containers"][0]["livenessProbe"] = json!({"httpGet": {"host": "169.254.169.254", "port": 80, "path": "/"}})
            }),
            r#"container "app": livenessProbe.httpGet.host is "169.254.169.254" [probe-host]"#,
        ),
        (
            Rule::ProbeHost,
            with(|p| p["spec"]["containers"][0]["lifecycle"] = json!({"postStart": {"tcpSocket": {"host": "10.0.0.1", "port": 22}}})),
            r#"container "app": lifecycle.postStart.tcpSocket.host is "10.0.0.1" [probe-host]"#,
        ),
        (
            Rule::ResourceNotAllowed,
            with(|p| p["spec"]["resourceClaims"] = json!([{"name": "gpu", "resourceClaimName": "gpu-claim"}])),
            "pod: spec.resourceClaims uses dynamic resource claims, which the policy cannot bound [resource-not-allowed]",
        ),
        (
            Rule::ResourceNotAllowed,
            with(|p| p["spec"]["containers"][0]["resources"] = json!({"claims": [{"name": "gpu"}]})),
            r#"container "app": resources.claims uses dynamic resource claims"#,
        ),
        (
            Rule::PortConflict,
            with(|p| p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 15006}])),
            r#"container "app": ports[0].containerPort 15006 is reserved for tollgate-proxy [port-conflict]"#,
        ),
        (
            Rule::InvalidAnnotation,
            with(|p| p["metadata"]["annotations"]["tollgate.dev/analysis-id"] = json!("../other")),
            r#"pod: metadata.annotations[tollgate.dev/analysis-id] "../other" contains '/'"#,
        ),
        (
            Rule::InvalidAnnotation,
            with(|p| p["metadata"]["annotations"]["tollgate.dev/project-id"] = json!("a%2Fb")),
            r#"metadata.annotations[tollgate.dev/project-id] "a%2Fb" contains '%'"#,
        ),
        (
            Rule::InvalidAnnotation,
            with(|p| p["metadata"]["annotations"]["tollgate.dev/analysis-id"] = json!("..")),
            "must not be a dot segment",
        ),
        (
            Rule::InvalidAnnotation,
            with(|p| p["metadata"]["annotations"]["tollgate.dev/credentials-secret"] = json!("Not_A_Name")),
            r#"metadata.annotations[tollgate.dev/credentials-secret] "Not_A_Name" is not a valid object name"#,
        ),
        (
            Rule::InvalidQuantity,
            with(|p| p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "4GB"}})),
            r#"container "app": resources.limits.memory is invalid: quantity "4GB" has an unknown suffix "GB""#,
        ),
        (
            Rule::InvalidQuantity,
            with(|p| p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "-1"}})),
            r#"container "app": resources.requests.cpu "-1" is negative [invalid-quantity]"#,
        ),
        (
            Rule::ResourceNotAllowed,
            with(|p| p["spec"]["containers"][0]["resources"] = json!({"limits": {"example.com/fpga": "1"}})),
            r#"container "app": resources.limits.example.com/fpga is not permitted by the policy (no entry in resources.maximum) [resource-not-allowed]"#,
        ),
        (
            Rule::ResourcesExceedMaximum,
            with(|p| p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "65Gi"}})),
            r#"container "app": resources.limits.memory 65Gi is above the maximum 64Gi [resources-exceed-maximum]"#,
        ),
        (
            Rule::ResourcesExceedMaximum,
            with(|p| p["spec"]["containers"][0]["resources"] = json!({"limits": {"nvidia.com/gpu": "3"}})),
            r#"resources.limits.nvidia.com/gpu 3 is above the maximum 2"#,
        ),
        (
            Rule::RequestsExceedLimits,
            with(|p| p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1500m"}, "limits": {"cpu": "1"}})),
            r#"container "app": resources.requests.cpu 1500m is above the limit 1 [requests-exceed-limits]"#,
        ),
        (
            Rule::LifetimeExceedsMaximum,
            with(|p| p["spec"]["activeDeadlineSeconds"] = json!(999_999)),
            "pod: spec.activeDeadlineSeconds 999999 is above the maximum 86400 [lifetime-exceeds-maximum]",
        ),
        (
            Rule::NameResolution,
            with(|p| p["spec"]["hostAliases"] = json!([{"ip": "127.0.0.1", "hostnames": ["keycloak.flame.svc"]}])),
            "pod: spec.hostAliases writes the pod's /etc/hosts, where the proxy resolves its upstreams (policy security.allowHostAliases) [name-resolution]",
        ),
        (
            Rule::NameResolution,
            with(|p| p["spec"]["dnsConfig"] = json!({"searches": ["attacker.example"]})),
            "pod: spec.dnsConfig sets nameservers, searches or options the proxy would resolve with",
        ),
        (
            Rule::TollgateOwned,
            with(|p| p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "tollgate-proxy-config", "mountPath": "/cfg"}])),
            r#"container "app": volumeMounts[0] mounts volume "tollgate-proxy-config", which is tollgate-proxy's alone [tollgate-owned]"#,
        ),
        (
            Rule::TooLarge,
            with(|p| p["spec"]["volumes"] = Value::Array((0..257).map(|i| json!({"name": format!("v{i}"), "emptyDir": {}})).collect())),
            "pod: spec.volumes has 257 entries; at most 256 are allowed (policy bounds.volumes) [too-large]",
        ),
        (
            Rule::TooLarge,
            with(|p| {
                p["spec"]["containers"][0]["env"] =
                    Value::Array((0..4097).map(|i| json!({"name": format!("V{i}"), "value": "x"})).collect())
            }),
            r#"container "app": env and envFrom has 4097 entries; at most 4096 are allowed (policy bounds.envPerContainer) [too-large]"#,
        ),
        (
            Rule::InvalidAnnotation,
            with(|p| p["metadata"]["annotations"]["tollgate.dev/credentials-secret"] = json!("database-admin")),
            r#"metadata.annotations[tollgate.dev/credentials-secret] "database-admin" is not a proxy credentials Secret (its name must start with "tollgate-proxy-credentials", policy proxy.credentialsSecretPrefix)"#,
        ),
        (
            Rule::CredentialsExposed,
            // Any Secret of the class, not only the policy's and the pod's own.
            with(|p| p["spec"]["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "tollgate-proxy-credentials-other-analysis"}}])),
            r#"container "app": envFrom[0] reads the proxy credentials Secret "tollgate-proxy-credentials-other-analysis" [credentials-exposed]"#,
        ),
        (
            Rule::ResourcesExceedMaximum,
            with(|p| p["spec"]["resources"] = json!({"limits": {"memory": "1Ti"}})),
            "pod: spec.resources.limits.memory 1Ti is above the maximum 64Gi [resources-exceed-maximum]",
        ),
        (
            // A token of another ServiceAccount, in a volume of any name: issue 22's first finding.
            Rule::ServiceAccountToken,
            with(|p| {
                p["spec"]["serviceAccountName"] = json!("builder");
                p["spec"]["volumes"] = json!([{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]);
                p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "token", "mountPath": "/var/run/token"}]);
            }),
            r#"pod: spec.volumes["token"].projected.sources[0].serviceAccountToken is a token of the pod's ServiceAccount for the Kubernetes API: no container may hold a Kubernetes ServiceAccount token (policy security.allowServiceAccountToken) [service-account-token]"#,
        ),
        (
            // Of any audience, beside other sources.
            Rule::ServiceAccountToken,
            with(|p| {
                p["spec"]["volumes"] = json!([{"name": "mixed", "projected": {"sources": [
                    {"configMap": {"name": "ca"}},
                    {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "vault-token"}}
                ]}}]);
            }),
            r#"pod: spec.volumes["mixed"].projected.sources[1].serviceAccountToken is a token of the pod's ServiceAccount for audience "vault""#,
        ),
        (
            Rule::ServiceAccountToken,
            with(|p| p["spec"]["volumes"] = json!([{"name": "secrets", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": true}}])),
            r#"pod: spec.volumes["secrets"].csi.driver is "secrets-store.csi.k8s.io", which is not in security.allowedCsiDrivers: a CSI driver may be handed the pod's ServiceAccount token (tokenRequests in its CSIDriver, which tollgate cannot see), and no container may hold a Kubernetes ServiceAccount token (policy security.allowServiceAccountToken) [service-account-token]"#,
        ),
        (
            // Its only container is an impostor: replaced, it would leave the proxy (classic mode) or nothing.
            Rule::TollgateOwned,
            with(|p| p["spec"]["containers"][0]["name"] = json!("tollgate-proxy")),
            r#"pod: spec.containers has no container of the pod's own (["tollgate-proxy"]: names of tollgate's containers, which tollgate replaces with its own), leaving none [tollgate-owned]"#,
        ),
    ];
    let policy = Policy::default();
    let mut covered = std::collections::BTreeSet::new();
    for (rule, pod, expected) in cases {
        let (message, rules) = denial(&policy, &pod);
        assert_eq!(rules, vec![rule], "{message}");
        assert!(message.starts_with("tollgate denied this pod (1 violation): "), "{message}");
        assert!(message.contains(expected), "message {message:?} lacks {expected:?}");
        covered.insert(rule);
    }
    // Rules that need a policy setting or a requester.
    let deny_always = Policy::from_yaml("lifetime: { restartAlways: deny }\n").unwrap();
    let (message, rules) = denial(&deny_always, &with(|p| p["spec"]["restartPolicy"] = json!("Always")));
    assert_eq!(rules, vec![Rule::LifetimeUnbounded], "{message}");
    assert!(
        message.contains(
            "pod: spec.restartPolicy is Always: no deadline would bound the pod's lifetime (policy lifetime.restartAlways: deny)"
        ),
        "{message}"
    );
    covered.insert(Rule::LifetimeUnbounded);
    let locked = Policy::from_yaml("proxy: { egressLock: required }\n").unwrap();
    let (message, rules) = denial(&locked, &with(|p| p["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"port": 8080}})));
    assert_eq!(rules, vec![Rule::LockBlocksProbe], "{message}");
    assert!(
        message.contains(r#"container "app": readinessProbe.httpGet.port is 8080: the kubelet cannot reach it under the egress lock (only the proxy's ports 15006 and 15021 admit inbound connections; policy proxy.egressLock); use an exec probe [lock-blocks-probe]"#),
        "{message}"
    );
    covered.insert(Rule::LockBlocksProbe);
    // proxy.egressHostnames: a value tollgate cannot know, and one that makes no valid name.
    let named = Policy::from_yaml("proxy:\n  egressHostnames: ['nginx-{env:DEPLOYMENT_NAME}', 'x.{label:app}']\n").unwrap();
    for (pod, expected) in [
        (
            with(|p| {
                p["spec"]["containers"][0]["env"] =
                    json!([{"name": "DEPLOYMENT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])
            }),
            r#"container "app": env["DEPLOYMENT_NAME"] is set by valueFrom: tollgate cannot know the name policy proxy.egressHostnames[0] ("nginx-{env:DEPLOYMENT_NAME}") renders from it (set it with a literal value) [egress-hostname]"#,
        ),
        (
            with(|p| p["spec"]["containers"][0]["env"] = json!([{"name": "DEPLOYMENT_NAME", "value": "Analysis_1"}])),
            r#"container "app": env["DEPLOYMENT_NAME"] makes "nginx-Analysis_1" of policy proxy.egressHostnames[0] ("nginx-{env:DEPLOYMENT_NAME}"), which is not a DNS-1123 subdomain (lowercase letters, digits and '-' in dot-separated labels, each alphanumeric at both ends, at most 253 characters) [egress-hostname]"#,
        ),
        (
            // kubelet would expand $(VAR) references: not a name tollgate can judge either.
            with(|p| p["spec"]["containers"][0]["env"] = json!([{"name": "DEPLOYMENT_NAME", "value": "$(HOSTNAME)"}])),
            r#"container "app": env["DEPLOYMENT_NAME"] makes "nginx-$(HOSTNAME)" of policy"#,
        ),
        (
            with(|p| p["metadata"]["labels"] = json!({"app": "My_App"})),
            r#"pod: metadata.labels[app] makes "x.My_App" of policy proxy.egressHostnames[1] ("x.{label:app}"), which is not a DNS-1123 subdomain"#,
        ),
    ] {
        let (message, rules) = denial(&named, &pod);
        assert_eq!(rules, vec![Rule::EgressHostname], "{message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    covered.insert(Rule::EgressHostname);
    // proxy.credentialsSecret per analysis: a pod without an analysis id has no Secret.
    let per_analysis = Policy::from_yaml("proxy: { credentialsSecret: 'tollgate-proxy-credentials-{analysis_id}' }\n").unwrap();
    let (message, rules) = denial(&per_analysis, &base_pod());
    assert_eq!(rules, vec![Rule::AnalysisIdRequired], "{message}");
    assert!(
        message.contains(r#"pod: metadata.annotations[tollgate.dev/analysis-id] is missing: the policy gives every analysis its own credentials Secret (proxy.credentialsSecret: "tollgate-proxy-credentials-{analysis_id}"), and a pod without an analysis id has none; a trusted user (identity.trustedUsers, identity.trustedGroups) sets it on the pod or its workload's template [analysis-id-required]"#),
        "{message}"
    );
    covered.insert(Rule::AnalysisIdRequired);
    // An id that makes no Secret name (uppercase is a valid id, not a valid name).
    let (message, rules) = denial(&per_analysis, &with(|p| p["metadata"]["annotations"]["tollgate.dev/analysis-id"] = json!("Analysis-7")));
    assert_eq!(rules, vec![Rule::InvalidAnnotation], "{message}");
    assert!(
        message.contains(r#"pod: metadata.annotations[tollgate.dev/analysis-id] "Analysis-7" would name the pod's credentials Secret "tollgate-proxy-credentials-Analysis-7" (policy proxy.credentialsSecret: "tollgate-proxy-credentials-{analysis_id}"), which is not a valid object name"#),
        "{message}"
    );
    let claim = with(|p| p["metadata"]["annotations"]["tollgate.dev/analysis-id"] = json!("someone-elses-analysis"));
    let groups = vec!["system:authenticated".to_owned()];
    let mallory = Requester { username: "mallory", groups: &groups };
    let mut working = claim.clone();
    let Outcome::Denied(refusal) = harden_as(&policy, &mut working, Some(mallory)).unwrap() else { panic!("an untrusted claim is denied") };
    assert_eq!(working, claim);
    assert_eq!(refusal.violations.iter().map(|v| v.rule).collect::<Vec<_>>(), vec![Rule::UntrustedIdentity]);
    assert!(
        refusal.message().contains(r#"pod: metadata.annotations[tollgate.dev/analysis-id] may only be set by trusted users (none) or members of trusted groups (system:masters) (policy identity.trustedUsers, identity.trustedGroups); "mallory" is neither [untrusted-identity]"#),
        "{}",
        refusal.message()
    );
    covered.insert(Rule::UntrustedIdentity);
    for rule in Rule::ALL {
        assert!(covered.contains(&rule), "rule {rule} has no denial case");
    }
}

#[test]
fn one_message_names_every_violation() {
    let pod = with(|p| {
        p["spec"]["hostNetwork"] = json!(true);
        p["spec"]["containers"] = json!([
            {"name": "a", "image": "x:1", "securityContext": {"privileged": true, "runAsUser": 0}},
            {"name": "b", "image": "x:1", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}, "resources": {"limits": {"cpu": "100"}}},
        ]);
        p["spec"]["initContainers"] = json!([{"name": "i", "image": "x:1", "securityContext": {"allowPrivilegeEscalation": true}}]);
        p["spec"]["ephemeralContainers"] = json!([{"name": "e", "image": "x:1", "securityContext": {"procMount": "Unmasked"}}]);
    });
    let (message, rules) = denial(&Policy::default(), &pod);
    assert!(message.starts_with("tollgate denied this pod (7 violations): "), "{message}");
    for part in [
        "pod: spec.hostNetwork is true",
        r#"container "a": securityContext.privileged is true"#,
        r#"container "a": securityContext.runAsUser is 0"#,
        r#"container "b": securityContext.capabilities.add adds SYS_ADMIN"#,
        r#"container "b": resources.limits.cpu 100 is above the maximum 8"#,
        r#"init container "i": securityContext.allowPrivilegeEscalation is true"#,
        r#"ephemeral container "e": securityContext.procMount is Unmasked"#,
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    assert_eq!(rules.len(), 7);
}

#[test]
fn override_mode_still_refuses_what_cannot_be_fixed() {
    let policy = Policy::from_yaml("onViolation: override\n").unwrap();
    let pod = with(|p| {
        p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        p["spec"]["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "tollgate-proxy-credentials"}}]);
    });
    let (message, rules) = denial(&policy, &pod);
    // Only the unfixable one is reported as the reason; privileged alone would have been rewritten.
    assert!(rules.contains(&Rule::CredentialsExposed), "{message}");
    let mut fixable_only = with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true}));
    assert!(matches!(harden(&policy, &mut fixable_only).unwrap(), Outcome::Hardened(_)));
    assert_eq!(fixable_only["spec"]["containers"][0]["securityContext"]["privileged"], json!(false));
}

#[test]
fn net_bind_service_alone_is_allowed_as_in_restricted() {
    let mut pod = with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"capabilities": {"add": ["NET_BIND_SERVICE"]}}));
    assert!(matches!(harden(&Policy::default(), &mut pod).unwrap(), Outcome::Hardened(_)));
}

#[test]
fn opt_out_only_where_the_policy_allows_it() {
    let opted_out = with(|p| p["metadata"]["annotations"]["tollgate.dev/inject"] = json!("false"));

    let mut pod = opted_out.clone();
    let Outcome::Hardened(hardened) = harden(&Policy::default(), &mut pod).unwrap() else { panic!("must be hardened by default") };
    assert!(hardened.notes.iter().any(|n| n.contains("ignored: the policy does not allow opting out")), "{:?}", hardened.notes);
    assert!(!hardened.patch.is_empty());

    let permissive = Policy::from_yaml("allowOptOut: true\n").unwrap();
    let mut pod = opted_out.clone();
    assert_eq!(harden(&permissive, &mut pod).unwrap(), Outcome::Skipped { reason: SkipReason::OptedOut });
    assert_eq!(pod, opted_out);

    // Anything but "false" is not an opt-out.
    let mut pod = with(|p| p["metadata"]["annotations"]["tollgate.dev/inject"] = json!("no"));
    assert!(matches!(harden(&permissive, &mut pod).unwrap(), Outcome::Hardened(_)));
}

#[test]
fn undecodable_pods_name_the_field() {
    for (pod, expected) in [
        (
            with(|p| p["spec"]["containers"] = json!("not a list")),
            "spec.containers: invalid type: string \"not a list\", expected a sequence",
        ),
        (
            with(|p| p["spec"]["containers"][0]["ports"] = json!([{"containerPort": "eighty"}])),
            "spec.containers[0].ports[0].containerPort: invalid type: string \"eighty\"",
        ),
        (with(|p| p["metadata"]["labels"] = json!({"a": 1})), "metadata.labels.a: invalid type: integer `1`"),
        (json!([1, 2]), "invalid type: sequence, expected Pod"),
        (json!({"kind": "Pod", "apiVersion": "v2"}), "invalid value: string \"v2\", expected v1"),
    ] {
        let mut working = pod.clone();
        let error = harden(&Policy::default(), &mut working).expect_err("must not decode");
        assert!(error.to_string().starts_with("object is not a valid Pod: "), "{error}");
        assert!(error.to_string().contains(expected), "{error} lacks {expected:?}");
        assert_eq!(working, pod);
    }
}

#[test]
fn per_pod_credentials_secret_annotation_is_used() {
    let mut pod =
        with(|p| p["metadata"]["annotations"]["tollgate.dev/credentials-secret"] = json!("tollgate-proxy-credentials-analysis-7"));
    assert!(matches!(harden(&Policy::default(), &mut pod).unwrap(), Outcome::Hardened(_)));
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let creds = volumes.iter().find(|v| v["name"] == "tollgate-proxy-credentials").unwrap();
    assert_eq!(creds["secret"]["secretName"], "tollgate-proxy-credentials-analysis-7");
    // Mounted into the proxy only.
    for container in pod["spec"]["containers"].as_array().unwrap() {
        let mounts = container["volumeMounts"].as_array().cloned().unwrap_or_default();
        assert!(mounts.iter().all(|m| m["name"] != "tollgate-proxy-credentials"), "{container}");
    }
    let proxy = &pod["spec"]["initContainers"][0];
    assert_eq!(proxy["name"], "tollgate-proxy");
    assert!(proxy["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == "tollgate-proxy-credentials"));
}

#[test]
fn identity_is_trusted_from_trusted_users_groups_and_controllers() {
    let policy = Policy::from_yaml("identity: { trustedUsers: [system:serviceaccount:flame:pod-orchestrator] }\n").unwrap();
    let pod = with(|p| p["metadata"]["annotations"]["tollgate.dev/analysis-id"] = json!("a1"));
    let none: Vec<String> = Vec::new();
    let masters = vec!["system:masters".to_owned()];
    for (username, groups) in [
        ("system:serviceaccount:flame:pod-orchestrator", &none),
        ("admin", &masters),
        ("system:serviceaccount:kube-system:job-controller", &none),
    ] {
        let mut working = pod.clone();
        let outcome = harden_as(&policy, &mut working, Some(Requester { username, groups })).unwrap();
        assert!(matches!(outcome, Outcome::Hardened(_)), "{username}: {outcome:?}");
    }
    // Without identity annotations anyone may create a pod.
    let mut plain = base_pod();
    let outcome = harden_as(&policy, &mut plain, Some(Requester { username: "mallory", groups: &none })).unwrap();
    assert!(matches!(outcome, Outcome::Hardened(_)));
}

#[test]
fn name_resolution_is_allowed_only_where_the_policy_says_and_rewritten_under_override() {
    let pod = with(|p| {
        p["spec"]["dnsPolicy"] = json!("None");
        p["spec"]["dnsConfig"] = json!({"nameservers": ["127.0.0.1"]});
        p["spec"]["hostAliases"] = json!([{"ip": "127.0.0.1", "hostnames": ["hub"]}]);
    });
    let (message, rules) = denial(&Policy::default(), &pod);
    assert_eq!(rules, vec![Rule::NameResolution; 3], "{message}");
    assert!(message.contains("pod: spec.dnsPolicy is None: the pod would choose the resolver the proxy uses"), "{message}");

    let mut rewritten = pod.clone();
    let Outcome::Hardened(_) = harden(&Policy::from_yaml("onViolation: override\n").unwrap(), &mut rewritten).unwrap() else { panic!() };
    assert_eq!(rewritten["spec"]["dnsPolicy"], "ClusterFirst");
    assert!(rewritten["spec"].get("dnsConfig").is_none() && rewritten["spec"].get("hostAliases").is_none(), "{rewritten}");

    let mut allowed = pod.clone();
    let policy = Policy::from_yaml("security: { allowHostAliases: true, allowDnsConfig: true }\n").unwrap();
    let Outcome::Hardened(_) = harden(&policy, &mut allowed).unwrap() else { panic!("allowed by the policy") };
    assert_eq!(allowed["spec"]["hostAliases"], pod["spec"]["hostAliases"]);
}

#[test]
fn tollgate_labels_are_tollgates_alone() {
    let mut pod =
        with(|p| p["metadata"]["labels"] = json!({"tollgate.dev/analysis-id": "spoofed", "tollgate.dev/injected": "false", "mine": "yes"}));
    let Outcome::Hardened(hardened) = harden(&Policy::default(), &mut pod).unwrap() else { panic!() };
    assert_eq!(pod["metadata"]["labels"], json!({"tollgate.dev/injected": "true", "mine": "yes"}));
    assert!(
        hardened
            .changes
            .iter()
            .any(|c| c.to_string() == "pod: removed label tollgate.dev/analysis-id: tollgate.dev/ labels are set by tollgate alone")
    );
}

#[test]
fn always_restarting_pods_get_a_warning_by_default() {
    let mut pod = with(|p| p["spec"]["restartPolicy"] = json!("Always"));
    let Outcome::Hardened(hardened) = harden(&Policy::default(), &mut pod).unwrap() else { panic!() };
    assert!(pod["spec"].get("activeDeadlineSeconds").is_none());
    assert!(
        hardened.notes.iter().any(|n| n.contains("restartPolicy Always: no activeDeadlineSeconds bounds its lifetime")),
        "{:?}",
        hardened.notes
    );
}

const LOCK: &str = "tollgate.dev/egress-lock";
const LOCK_VALUE: &str = r#"{"proxyUid":10001,"inboundPorts":[15006,15021]}"#;

fn locked() -> Policy {
    Policy::from_yaml("proxy: { egressLock: required }\n").unwrap()
}

#[test]
fn under_the_egress_lock_probes_and_hooks_the_kubelet_cannot_reach_are_denied_even_under_override() {
    let blocked = |port: &str| {
        format!(
            "is {port}: the kubelet cannot reach it under the egress lock (only the proxy's ports 15006 and 15021 admit inbound connections; policy proxy.egressLock); use"
        )
    };
    let cases: Vec<(&str, &str, Value, String)> = vec![
        (
            "containers",
            "livenessProbe",
            json!({"httpGet": {"path": "/", "port": 8080}}),
            format!("livenessProbe.httpGet.port {} an exec probe", blocked("8080")),
        ),
        (
            "containers",
            "readinessProbe",
            json!({"tcpSocket": {"port": 5432}}),
            format!("readinessProbe.tcpSocket.port {} an exec probe", blocked("5432")),
        ),
        (
            "containers",
            "startupProbe",
            json!({"grpc": {"port": 9090}}),
            format!("startupProbe.grpc.port {} an exec probe", blocked("9090")),
        ),
        (
            "containers",
            "livenessProbe",
            json!({"httpGet": {"port": 15001}}),
            format!("livenessProbe.httpGet.port {} an exec probe", blocked("15001")),
        ),
        (
            "containers",
            "readinessProbe",
            json!({"httpGet": {"port": "http"}}),
            format!("readinessProbe.httpGet.port {} an exec probe", blocked(r#""http" (port 8080)"#)),
        ),
        (
            "containers",
            "startupProbe",
            json!({"tcpSocket": {"port": "metrics"}}),
            format!("startupProbe.tcpSocket.port {} an exec probe", blocked(r#""metrics", which names no port of this container"#)),
        ),
        (
            "initContainers",
            "startupProbe",
            json!({"tcpSocket": {"port": 80}}),
            format!("startupProbe.tcpSocket.port {} an exec probe", blocked("80")),
        ),
        (
            "ephemeralContainers",
            "readinessProbe",
            json!({"grpc": {"port": 50051}}),
            format!("readinessProbe.grpc.port {} an exec probe", blocked("50051")),
        ),
    ];
    let hooks: Vec<(&str, Value, String)> = vec![
        ("postStart", json!({"httpGet": {"port": 8080}}), format!("lifecycle.postStart.httpGet.port {} an exec hook", blocked("8080"))),
        (
            "preStop",
            json!({"tcpSocket": {"port": "http"}}),
            format!("lifecycle.preStop.tcpSocket.port {} an exec hook", blocked(r#""http" (port 8080)"#)),
        ),
    ];
    let container = |list: &str| {
        let name = match list {
            "containers" => "app",
            "initContainers" => "setup",
            _ => "debugger",
        };
        json!({"name": name, "image": "registry.example.org/app:1.0", "ports": [{"name": "http", "containerPort": 8080}]})
    };
    let scope = |list: &str| match list {
        "containers" => r#"container "app": "#,
        "initContainers" => r#"init container "setup": "#,
        _ => r#"ephemeral container "debugger": "#,
    };
    let mut pods = Vec::new();
    for (list, probe, handler, expected) in cases {
        let mut c = container(list);
        c[probe] = handler;
        pods.push((with(|p| p["spec"][list] = json!([c])), format!("{}{expected} [lock-blocks-probe]", scope(list))));
    }
    for (hook, handler, expected) in hooks {
        let mut c = container("containers");
        c["lifecycle"] = json!({hook: handler});
        pods.push((with(|p| p["spec"]["containers"] = json!([c])), format!("{}{expected} [lock-blocks-probe]", scope("containers"))));
    }
    let override_policy = Policy::from_yaml("onViolation: override\nproxy: { egressLock: required }\n").unwrap();
    for (pod, expected) in &pods {
        for policy in [locked(), override_policy.clone()] {
            let (message, rules) = denial(&policy, pod);
            assert_eq!(rules, vec![Rule::LockBlocksProbe], "{message}");
            assert!(message.contains(expected.as_str()), "{message:?} lacks {expected:?}");
        }
        // Without the lock the kubelet reaches every port: nothing to deny.
        let mut working = pod.clone();
        assert!(matches!(harden(&Policy::default(), &mut working).unwrap(), Outcome::Hardened(_)), "{pod}");
    }
    // One message names every probe.
    let every = with(|p| {
        p["spec"]["containers"][0]["livenessProbe"] = json!({"httpGet": {"port": 8080}});
        p["spec"]["containers"][0]["readinessProbe"] = json!({"tcpSocket": {"port": 8081}});
    });
    let (message, rules) = denial(&locked(), &every);
    assert_eq!(rules, vec![Rule::LockBlocksProbe; 2], "{message}");
}

#[test]
fn under_the_egress_lock_exec_and_the_proxys_ports_are_fine() {
    let pod = with(|p| {
        let c = &mut p["spec"]["containers"][0];
        c["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 15021}});
        c["readinessProbe"] = json!({"exec": {"command": ["test", "-f", "/tmp/ready"]}});
        c["startupProbe"] = json!({"tcpSocket": {"port": 15006}});
        c["lifecycle"] = json!({"postStart": {"exec": {"command": ["true"]}}, "preStop": {"httpGet": {"port": 15021}}});
        p["spec"]["initContainers"] = json!([{"name": "setup", "image": "x:1", "startupProbe": {"grpc": {"port": 15006}}}]);
    });
    let mut working = pod.clone();
    let Outcome::Hardened(_) = harden(&locked(), &mut working).unwrap() else { panic!("allowed") };
    assert_eq!(working["spec"]["containers"][0]["livenessProbe"], pod["spec"]["containers"][0]["livenessProbe"]);
}

#[test]
fn the_egress_lock_annotation_is_tollgates_alone() {
    // Required: exactly the contract, whatever the creator wrote.
    for creator in [None, Some(r#"{"proxyUid":10000,"inboundPorts":[8080]}"#), Some(LOCK_VALUE)] {
        let mut pod = with(|p| {
            if let Some(value) = creator {
                p["metadata"]["annotations"][LOCK] = json!(value);
            }
        });
        let Outcome::Hardened(hardened) = harden(&locked(), &mut pod).unwrap() else { panic!() };
        assert_eq!(pod["metadata"]["annotations"][LOCK], LOCK_VALUE);
        let recorded = hardened.changes.iter().any(|c| c.to_string() == format!("pod: recorded annotation {LOCK}={LOCK_VALUE}"));
        assert_eq!(recorded, creator != Some(LOCK_VALUE), "{:?}", hardened.changes);
    }
    // Follows the policy's proxy user and ports.
    let custom = Policy::from_yaml("proxy: { egressLock: required, runAsUser: 4242, ingressPort: 9006, adminPort: 9021 }\n").unwrap();
    let mut pod = base_pod();
    let Outcome::Hardened(_) = harden(&custom, &mut pod).unwrap() else { panic!() };
    assert_eq!(pod["metadata"]["annotations"][LOCK], r#"{"proxyUid":4242,"inboundPorts":[9006,9021]}"#);

    // Off: a creator's annotation is removed, and the user is told; a pod without one gets none.
    let mut pod = with(|p| p["metadata"]["annotations"][LOCK] = json!(LOCK_VALUE));
    let Outcome::Hardened(hardened) = harden(&Policy::default(), &mut pod).unwrap() else { panic!() };
    assert!(pod["metadata"]["annotations"].get(LOCK).is_none(), "{pod}");
    assert!(
        hardened.changes.iter().any(|c| c.to_string()
            == "pod: removed annotation tollgate.dev/egress-lock: the policy does not ask for the egress lock (proxy.egressLock: off)"),
        "{:?}",
        hardened.changes
    );
    let mut plain = base_pod();
    harden(&Policy::default(), &mut plain).unwrap();
    assert!(plain["metadata"]["annotations"].get(LOCK).is_none());

    // Opted out: never locked on the creator's say.
    let permissive = Policy::from_yaml("allowOptOut: true\nproxy: { egressLock: required }\n").unwrap();
    let opted_out = with(|p| {
        p["metadata"]["annotations"]["tollgate.dev/inject"] = json!("false");
        p["metadata"]["annotations"][LOCK] = json!(LOCK_VALUE);
    });
    let mut pod = opted_out.clone();
    assert_eq!(harden(&permissive, &mut pod).unwrap(), Outcome::Skipped { reason: SkipReason::OptedOut });
    let mut recorded = opted_out.clone();
    json_patch::patch(&mut recorded, &skipped_status(&permissive, &opted_out, SkipReason::OptedOut.as_str()).to_json_patch()).unwrap();
    assert!(recorded["metadata"]["annotations"].get(LOCK).is_none(), "{recorded}");
    assert!(recorded["metadata"]["annotations"].get("tollgate.dev/status").is_some());
}

#[test]
fn the_lock_check_leads_the_init_containers_and_its_name_is_tollgates() {
    let own_init = json!([{"name": "setup", "image": "x:1"}]);
    let names = |pod: &Value, list: &str| -> Vec<String> {
        pod["spec"][list].as_array().into_iter().flatten().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
    };
    // Native: lock check, proxy, the pod's own; classic: lock check, the pod's own; proxy first container.
    let mut native = with(|p| p["spec"]["initContainers"] = own_init.clone());
    harden(&locked(), &mut native).unwrap();
    assert_eq!(names(&native, "initContainers"), ["tollgate-lock-check", "tollgate-proxy", "setup"]);
    let classic = Policy::from_yaml("proxy: { mode: classic, egressLock: required }\n").unwrap();
    let mut pod = with(|p| p["spec"]["initContainers"] = own_init.clone());
    harden(&classic, &mut pod).unwrap();
    assert_eq!(names(&pod, "initContainers"), ["tollgate-lock-check", "setup"]);
    assert_eq!(names(&pod, "containers"), ["tollgate-proxy", "app"]);

    // The rendering: the proxy's image, pull policy and resources, as the app's user, nothing else.
    let check = &native["spec"]["initContainers"][0];
    let proxy = &native["spec"]["initContainers"][1];
    for key in ["image", "imagePullPolicy", "resources"] {
        assert_eq!(check[key], proxy[key], "{key}");
    }
    assert_eq!(check["args"], json!(["lock-check"]));
    assert_eq!(
        (check["securityContext"]["runAsUser"].clone(), check["securityContext"]["runAsGroup"].clone()),
        (json!(10000), json!(10000))
    );
    for absent in ["command", "env", "envFrom", "ports", "volumeMounts", "livenessProbe", "readinessProbe", "startupProbe", "restartPolicy"]
    {
        assert!(check.get(absent).is_none(), "{absent}: {check}");
    }

    // A container of the pod's own named like the lock check is replaced, wherever it is; the lock on.
    let impostors = with(|p| {
        p["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "tollgate-lock-check", "image": "evil.example.org/ok:1", "command": ["/bin/true"]}));
        p["spec"]["initContainers"] = json!([{"name": "tollgate-lock-check", "image": "evil.example.org/ok:1"}]);
    });
    let mut pod = impostors.clone();
    let Outcome::Hardened(hardened) = harden(&locked(), &mut pod).unwrap() else { panic!() };
    assert_eq!(names(&pod, "initContainers"), ["tollgate-lock-check", "tollgate-proxy"]);
    assert_eq!(names(&pod, "containers"), ["app"]);
    assert_eq!(pod["spec"]["initContainers"][0], native["spec"]["initContainers"][0]);
    let removed = hardened
        .changes
        .iter()
        .filter(|c| c.action == "removed a container \"tollgate-lock-check\" that was not tollgate's current lock check");
    assert_eq!(removed.count(), 2, "{:?}", hardened.changes);
    // The lock off: removed all the same, and never run.
    let mut pod = impostors.clone();
    let Outcome::Hardened(hardened) = harden(&Policy::default(), &mut pod).unwrap() else { panic!() };
    assert_eq!(names(&pod, "initContainers"), ["tollgate-proxy"]);
    assert_eq!(names(&pod, "containers"), ["app"]);
    assert!(
        hardened
            .changes
            .iter()
            .any(|c| c.action == "removed a container \"tollgate-lock-check\" that the policy does not ask for (proxy.egressLock: off)"),
        "{:?}",
        hardened.changes
    );

    // A locked pod hardened again, and the same pod after the lock is switched off, or on.
    let mut again = native.clone();
    let Outcome::Hardened(second) = harden(&locked(), &mut again).unwrap() else { panic!() };
    assert!(second.patch.is_empty(), "{:?}", second.patch);
    let mut unlocked = native.clone();
    harden(&Policy::default(), &mut unlocked).unwrap();
    assert_eq!(names(&unlocked, "initContainers"), ["tollgate-proxy", "setup"]);
    assert!(unlocked["metadata"]["annotations"].get(LOCK).is_none());
    let mut relocked = unlocked.clone();
    // Its proxy as the locked policy renders it: the sidecar names the policy it was rendered from (one from
    // another policy is replaced: below).
    let digest = relocked["spec"]["initContainers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["name"] == "TOLLGATE_POLICY_DIGEST")
        .expect("the sidecar names its policy");
    digest["value"] = json!(locked().digest());
    let Outcome::Hardened(hardened) = harden(&locked(), &mut relocked).unwrap() else { panic!() };
    // The same pod, but for the list of what each last pass changed (and the seal over it in the status).
    let without_changes = |pod: &Value| {
        let mut pod = pod.clone();
        let annotations = pod["metadata"]["annotations"].as_object_mut().unwrap();
        annotations.remove("tollgate.dev/changes");
        let mut status: Value = serde_json::from_str(annotations["tollgate.dev/status"].as_str().unwrap()).unwrap();
        status.as_object_mut().unwrap().remove("seal");
        annotations["tollgate.dev/status"] = json!(status.to_string());
        pod
    };
    assert_eq!(without_changes(&relocked), without_changes(&native), "{:?}", hardened.changes);
    // The proxy already leads: only the lock check goes in before it.
    assert!(!hardened.changes.iter().any(|c| c.action.contains("removed a container")), "{:?}", hardened.changes);
    // A proxy rendered from another policy (the unlocked one, its digest in its env) is not the current one.
    let mut stale = unlocked.clone();
    let Outcome::Hardened(hardened) = harden(&locked(), &mut stale).unwrap() else { panic!() };
    assert_eq!(without_changes(&stale), without_changes(&native), "{:?}", hardened.changes);
    let replaced = "removed a container \"tollgate-proxy\" that was not tollgate's current sidecar";
    assert!(hardened.changes.iter().any(|c| c.action == replaced), "{:?}", hardened.changes);
}

#[test]
fn warn_mode_lets_a_pod_through_as_it_came_only_for_what_concerns_it_alone() {
    let policy = Policy::default();
    let requester = Requester { username: "alice", groups: &[] };
    // Root and privilege escalation: every violation reported, the pod left exactly as it came (not
    // half-hardened: runAsNonRoot beside runAsUser 0 would not even start).
    let insecure = with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 0, "allowPrivilegeEscalation": true}));
    let mut working = insecure.clone();
    let Outcome::Warned(warned) = harden_in(&policy, OnViolation::Warn, &mut working, Some(requester)).unwrap() else {
        panic!("a pod whose violations concern it alone is let through in warn mode")
    };
    assert_eq!(working, insecure, "left as it came");
    let rules: Vec<Rule> = warned.violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, [Rule::PrivilegeEscalation, Rule::RunAsRoot]);
    // The same pod under the policy's own mode is denied, with the same violations.
    assert_eq!(denial(&policy, &insecure).1, rules);
    // A plain pod is hardened as ever.
    let mut plain = base_pod();
    assert!(
        matches!(harden_in(&policy, OnViolation::Warn, &mut plain, Some(requester)).unwrap(), Outcome::Hardened(h) if !h.patch.is_empty())
    );
    // Denied in warn mode too: what could reach the node (and other analyses' credentials there), what is
    // hostile, and one such violation among warnable ones.
    let privileged = with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true}));
    let host_path = with(|p| p["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/var/lib/kubelet"}}]));
    let claim = with(|p| p["metadata"]["annotations"]["tollgate.dev/analysis-id"] = json!("someone-elses-analysis"));
    let credentials = with(|p| p["spec"]["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "tollgate-proxy-credentials"}}]));
    let huge =
        with(|p| p["spec"]["containers"] = json!((0..100).map(|i| json!({"name": format!("c{i}"), "image": "x:1"})).collect::<Vec<_>>()));
    let mixed = with(|p| p["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 0, "privileged": true}));
    for (what, pod) in [
        ("privileged", privileged),
        ("hostPath", host_path),
        ("identity claim", claim),
        ("credentials", credentials),
        ("too large", huge),
        ("mixed", mixed),
    ] {
        let mut working = pod.clone();
        let outcome = harden_in(&policy, OnViolation::Warn, &mut working, Some(requester)).unwrap();
        assert!(matches!(outcome, Outcome::Denied(_)), "{what}: {outcome:?}");
        assert_eq!(working, pod, "{what}");
    }
    // And `onViolation: warn` is a policy of its own.
    assert_eq!(Policy::from_yaml("onViolation: warn\n").unwrap().on_violation, OnViolation::Warn);
}

/// The safe sysctls follow the Pod Security standard of the API server's version (`serve --kubernetes-version`,
/// asked of the API server at start): `net.ipv4.tcp_rmem` and `tcp_wmem` are safe from 1.32 (issue 25, finding
/// 3), and unsafe before; while the version is unknown, 1.30's list applies. The only test in this file that
/// sets the version (a process-wide setting), and it puts back the unknown one.
#[test]
fn the_safe_sysctls_follow_the_api_servers_version() {
    use tollgate_webhook::harden::rules::{OLDEST_SUPPORTED_MINOR, set_kubernetes_minor};
    let pod = with(
        |p| p["spec"]["securityContext"] = json!({"sysctls": [{"name": "net.ipv4.tcp_rmem", "value": "4096 87380 16777216"}, {"name": "net.ipv4.tcp_keepalive_time", "value": "7200"}]}),
    );
    let hardened = |minor: u32| {
        set_kubernetes_minor(minor);
        let mut working = pod.clone();
        let outcome = harden(&Policy::default(), &mut working).unwrap();
        (outcome, working)
    };
    for minor in [0, OLDEST_SUPPORTED_MINOR, 31] {
        let (outcome, _) = hardened(minor);
        let Outcome::Denied(denial) = outcome else { panic!("1.{minor}: {outcome:?}") };
        assert_eq!(
            denial.message(),
            format!(
                "tollgate denied this pod (1 violation): pod: spec.securityContext.sysctls sets unsafe net.ipv4.tcp_rmem (safe from Kubernetes 1.32; the API server runs 1.{}) [sysctls]",
                minor.max(OLDEST_SUPPORTED_MINOR)
            )
        );
    }
    for minor in [32, 36] {
        let (outcome, working) = hardened(minor);
        assert!(matches!(outcome, Outcome::Hardened(_)), "1.{minor}: {outcome:?}");
        assert_eq!(working["spec"]["securityContext"]["sysctls"], pod["spec"]["securityContext"]["sysctls"], "kept as they are");
    }
    set_kubernetes_minor(0);
}

/// A pod exactly at every bound is admitted, and so is what tollgate made of it when the API server asks the
/// webhook again (reinvocation): tollgate's own containers, volumes, /tmp mount and env do not count against
/// the creator's bounds. Found by fuzzing (fuzz/fuzz_targets/harden.rs, issue 25).
#[test]
fn a_pod_at_its_bounds_stays_admitted_once_hardened() {
    let policy = Policy::from_yaml(
        "proxy: { egressLock: required, placeholderEnv: [{name: KEYCLOAK_TOKEN, kind: jwt}] }\nbounds: { containers: 3, volumes: 3, volumeMountsPerContainer: 3, envPerContainer: 6 }\n",
    )
    .unwrap();
    let container = |name: &str| {
        json!({"name": name, "image": "registry.example.org/app:1.0",
               "volumeMounts": [{"name": "a", "mountPath": "/a"}, {"name": "b", "mountPath": "/b"}, {"name": "c", "mountPath": "/c"}],
               "env": (1..=6).map(|i| json!({"name": format!("V{i}"), "value": "x"})).collect::<Vec<_>>()})
    };
    let mut pod = with(|p| {
        p["spec"]["containers"] = json!([container("one"), container("two")]);
        p["spec"]["initContainers"] = json!([container("setup")]);
        p["spec"]["volumes"] = json!([{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}, {"name": "c", "emptyDir": {}}]);
    });
    let Outcome::Hardened(first) = harden(&policy, &mut pod).unwrap() else { panic!("a pod at its bounds is admitted") };
    assert!(!first.patch.is_empty());
    let containers = ["initContainers", "containers"].iter().map(|k| pod["spec"][*k].as_array().map_or(0, Vec::len)).sum::<usize>();
    assert!(containers > 3, "tollgate added its containers: {containers}");
    assert!(pod["spec"]["volumes"].as_array().unwrap().len() > 3, "tollgate added its volumes");
    match harden(&policy, &mut pod.clone()).unwrap() {
        Outcome::Hardened(second) => assert!(second.patch.is_empty() && second.changes.is_empty(), "{second:?}"),
        other => panic!("the hardened pod, reviewed again: {other:?}"),
    }
    // One more of the creator's own is still one too many.
    let mut over = with(|p| {
        p["spec"]["containers"] = json!([container("one"), container("two"), container("three")]);
        p["spec"]["initContainers"] = json!([container("setup")]);
        p["spec"]["volumes"] = json!([{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}, {"name": "c", "emptyDir": {}}]);
    });
    let Outcome::Denied(denial) = harden(&policy, &mut over).unwrap() else { panic!("four containers over a bound of three") };
    assert!(denial.message().contains("spec.*containers has 4 entries; at most 3"), "{}", denial.message());
}

/// The smallest bounds a policy may set (one container, nothing else of the creator's) admit a pod of one bare
/// container, hardened with tollgate's own containers, volumes, mounts and env, and admit it again on
/// reinvocation; the floors in the policy check (`bounds.containers` only) follow from that.
#[test]
fn the_smallest_bounds_admit_a_bare_pod_hardened() {
    let policy = Policy::from_yaml("bounds: { containers: 1, volumes: 0, volumeMountsPerContainer: 0, envPerContainer: 0 }\n").unwrap();
    let mut pod = with(|p| {
        p["spec"]["containers"] = json!([{"name": "app", "image": "registry.example.org/app:1.0"}]);
    });
    let Outcome::Hardened(first) = harden(&policy, &mut pod).unwrap() else { panic!("a bare pod is admitted") };
    assert!(!first.patch.is_empty());
    let app = pod["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "app").unwrap();
    assert!(!app["env"].as_array().unwrap().is_empty() && !app["volumeMounts"].as_array().unwrap().is_empty(), "{app}");
    match harden(&policy, &mut pod.clone()).unwrap() {
        Outcome::Hardened(second) => assert!(second.patch.is_empty() && second.changes.is_empty(), "{second:?}"),
        other => panic!("the hardened pod, reviewed again: {other:?}"),
    }
}

/// Under override, a volume with a type tollgate does not allow and a ServiceAccount token among its projected
/// sources is replaced by an emptyDir by both fixes, so the hardened pod is hardened already when the API
/// server sends it again. Found by fuzzing (fuzz/fuzz_targets/review.rs, issue 25): the token fix kept the
/// volume's other keys and undid the replacement.
#[test]
fn a_volume_fixed_twice_under_override_ends_as_one_emptydir() {
    let policy = Policy::from_yaml("onViolation: override\n").unwrap();
    let mut pod = with(|p| {
        p["spec"]["volumes"] = json!([{"name": "data", "nfs": {"server": "x", "path": "/"},
            "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "c"}}]}}]);
        p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    });
    let Outcome::Hardened(_) = harden(&policy, &mut pod).unwrap() else { panic!("override hardens") };
    assert_eq!(pod["spec"]["volumes"][0], json!({"name": "data", "emptyDir": {}}), "{}", pod["spec"]["volumes"]);
    let Outcome::Hardened(again) = harden(&policy, &mut pod.clone()).unwrap() else { panic!() };
    assert!(again.patch.is_empty() && again.changes.is_empty(), "{again:?}");
}

/// A volume the ServiceAccount-token fix would keep in part (its other projected sources) and the CSI-driver
/// fix would replace whole: the two fixes disagree, so neither is made, whatever their order, and the pod is
/// denied naming both fields (the API server would refuse a volume of two types anyway).
#[test]
fn fixes_that_disagree_on_one_volume_deny_the_pod_naming_both() {
    let policy = Policy::from_yaml("onViolation: override\n").unwrap();
    let mut pod = with(|p| {
        p["spec"]["volumes"] = json!([{"name": "data", "csi": {"driver": "secrets.example.org"},
            "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "c"}}]}}]);
        p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    });
    let Outcome::Denied(denial) = harden(&policy, &mut pod).unwrap() else { panic!("disagreeing fixes deny") };
    let message = denial.message();
    for field in ["spec.volumes[\"data\"].csi.driver", "spec.volumes[\"data\"].projected.sources[0].serviceAccountToken"] {
        assert!(message.contains(&format!("{field} ")), "{field} not named: {message}");
    }
    assert_eq!(message.matches("tollgate cannot fix it together with").count(), 2, "{message}");
}
