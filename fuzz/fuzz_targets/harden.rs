//! The webhook's pure core, [`tollgate_webhook::harden::harden_as`], on pod-shaped input.
//!
//! Input: bytes starting with `{` are a pod as JSON (the corpus holds the fixtures' input pods, which the
//! fuzzer mutates byte by byte); anything else drives a structure-aware generator (the `arbitrary`
//! crate's `Unstructured`) that builds a pod from the fields tollgate looks at: containers, init and
//! ephemeral containers (named like tollgate's own too), security contexts at both levels, ports,
//! env and envFrom, mounts, resources (text, integer and float quantities, extended resources, claims),
//! probes and lifecycle hooks, volumes of every type (hostPath, secret, projected with a service account
//! token, nfs, ...), tollgate.dev/ annotations and labels, host namespaces, hostAliases, dnsPolicy,
//! dnsConfig, sysctls, pod-level resources, deadlines and fields Kubernetes does not have (yet).
//!
//! Each pod is hardened under the default policy, under a variant (`onViolation: override`,
//! `onExceed: clamp`, `proxy.egressLock: required`) and under a permissive classic-mode one (opt-out,
//! hostAliases and dnsConfig allowed, writable root, service account token kept), and under FLAME's
//! (`proxy.egressHostnames` from env and labels, egress port 80, `proxy.placeholderEnv`, a credentials
//! Secret per analysis), as a fuzzer-chosen
//! requester (none, untrusted, trusted). Properties: never panics; the outcome is a denial (naming at
//! least one violation, the pod untouched) or a patch (a skip only where the policy allows opting out;
//! a decode error only for JSON input); the patch turns the input into the output; the output passes
//! the project's own independent Pod Security "restricted" checker (`webhook/tests/common/pss.rs`,
//! included as is) unless kube-apiserver's validation refuses the pod anyway (an enum field of a
//! security context outside its values; a volume without a name, for which idempotency is not asked either); it has exactly one proxy, and the lock check exactly when the policy asks for the
//! egress lock; every container but tollgate's has each placeholder once; tollgate's hostAliases entry
//! leads and names what the proxy's TOLLGATE_EGRESS_HOSTNAMES names; and hardening the output again yields
//! an empty patch and no changes.

#![no_main]

#[path = "../../webhook/tests/common/pss.rs"]
mod pss;

use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tollgate_webhook::harden::egress::placeholder;
use tollgate_webhook::harden::{Outcome, Requester, harden_as};
use tollgate_webhook::policy::{EgressLock, Policy};

fn policies() -> &'static [Policy; 4] {
    static POLICIES: OnceLock<[Policy; 4]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        [
            Policy::default(),
            Policy::from_yaml("onViolation: override\nresources: { onExceed: clamp }\nproxy: { egressLock: required }\n").unwrap(),
            Policy::from_yaml(
                "onViolation: override\nallowOptOut: true\nproxy: { mode: classic }\nsecurity: { readOnlyRootFilesystem: false, \
                 allowHostAliases: true, allowDnsConfig: true, allowServiceAccountToken: true, allowServiceLinks: true }\n",
            )
            .unwrap(),
            // FLAME's: names for the sidecar from env and labels, a port below 1024, placeholders, a Secret per
            // analysis.
            Policy::from_yaml(
                "onViolation: override\nproxy:\n  egressPort: 80\n  egressHostnames: ['nginx-{env:DEPLOYMENT_NAME}', '{label:app}.local']\n  \
                 placeholderEnv: [{name: KEYCLOAK_TOKEN, kind: jwt}, {name: DATA_SOURCE_TOKEN, kind: opaque}]\n  \
                 credentialsSecret: tollgate-proxy-credentials-{analysis_id}\n",
            )
            .unwrap(),
        ]
    })
}

type R<T> = arbitrary::Result<T>;

/// A value from `options`, or (rarely) any string the fuzzer makes up.
fn text(u: &mut Unstructured, options: &[&str]) -> R<Value> {
    if u.ratio(1, 12)? { Ok(json!(String::arbitrary(u)?)) } else { Ok(json!(*u.choose(options)?)) }
}

fn int(u: &mut Unstructured, options: &[i64]) -> R<Value> {
    Ok(json!(*u.choose(options)?))
}

fn maybe(u: &mut Unstructured, percent: u8) -> R<bool> {
    Ok(u.int_in_range(0..=99u8)? < percent)
}

/// Sets `key` to what `f` makes, with the given chance.
fn field(
    u: &mut Unstructured,
    object: &mut Map<String, Value>,
    key: &str,
    percent: u8,
    f: impl FnOnce(&mut Unstructured) -> R<Value>,
) -> R<()> {
    if maybe(u, percent)? {
        let value = f(u)?;
        object.insert(key.to_owned(), value);
    }
    Ok(())
}

fn list(u: &mut Unstructured, max: usize, mut f: impl FnMut(&mut Unstructured) -> R<Value>) -> R<Value> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect::<R<Vec<_>>>().map(Value::Array)
}

const PROFILE_TYPES: &[&str] = &["Unconfined", "RuntimeDefault", "Localhost", "unconfined"];
const USERS: &[i64] = &[0, 1000, 10000, 10001, 65534, -1];

fn profile(u: &mut Unstructured) -> R<Value> {
    let kind = text(u, PROFILE_TYPES)?;
    let mut p = json!({"type": kind});
    if maybe(u, 30)? {
        p["localhostProfile"] = json!("profiles/p.json");
    }
    Ok(p)
}

fn security_context(u: &mut Unstructured, pod_level: bool) -> R<Value> {
    if maybe(u, 5)? {
        return Ok(Value::Null);
    }
    let mut sc = Map::new();
    field(u, &mut sc, "runAsUser", 30, |u| int(u, USERS))?;
    field(u, &mut sc, "runAsGroup", 20, |u| int(u, &[0, 3000, 10001]))?;
    field(u, &mut sc, "runAsNonRoot", 30, |u| Ok(json!(bool::arbitrary(u)?)))?;
    field(u, &mut sc, "seccompProfile", 30, profile)?;
    field(u, &mut sc, "appArmorProfile", 15, profile)?;
    field(u, &mut sc, "seLinuxOptions", 15, |u| {
        let mut se = Map::new();
        field(u, &mut se, "type", 70, |u| text(u, &["spc_t", "container_t", "container_init_t", ""]))?;
        field(u, &mut se, "user", 20, |u| text(u, &["root", "", "system_u"]))?;
        field(u, &mut se, "role", 20, |u| text(u, &["sysadm_r", ""]))?;
        field(u, &mut se, "level", 20, |u| text(u, &["s0:c123,c456"]))?;
        Ok(Value::Object(se))
    })?;
    field(u, &mut sc, "windowsOptions", 10, |u| Ok(json!({"hostProcess": bool::arbitrary(u)?})))?;
    if pod_level {
        field(u, &mut sc, "fsGroup", 20, |u| int(u, &[0, 2000, 10000]))?;
        field(u, &mut sc, "supplementalGroups", 10, |u| list(u, 2, |u| int(u, &[0, 4000])))?;
        field(u, &mut sc, "sysctls", 15, |u| {
            list(u, 2, |u| {
                let name =
                    text(u, &["kernel.msgmax", "net.ipv4.tcp_syncookies", "net.ipv4.ip_local_port_range", "kernel.shm_rmid_forced"])?;
                Ok(json!({"name": name, "value": "1"}))
            })
        })?;
    } else {
        field(u, &mut sc, "privileged", 25, |u| Ok(json!(bool::arbitrary(u)?)))?;
        field(u, &mut sc, "allowPrivilegeEscalation", 30, |u| Ok(json!(bool::arbitrary(u)?)))?;
        field(u, &mut sc, "readOnlyRootFilesystem", 20, |u| Ok(json!(bool::arbitrary(u)?)))?;
        field(u, &mut sc, "procMount", 10, |u| text(u, &["Unmasked", "Default"]))?;
        field(u, &mut sc, "capabilities", 40, |u| {
            if maybe(u, 10)? {
                return Ok(Value::Null);
            }
            let mut caps = Map::new();
            let names = ["SYS_ADMIN", "NET_BIND_SERVICE", "NET_RAW", "ALL", "all", "SYS_PTRACE"];
            field(u, &mut caps, "add", 40, |u| list(u, 2, |u| text(u, &names)))?;
            field(u, &mut caps, "drop", 60, |u| if maybe(u, 10)? { Ok(Value::Null) } else { list(u, 2, |u| text(u, &names)) })?;
            Ok(Value::Object(caps))
        })?;
    }
    Ok(Value::Object(sc))
}

const QUANTITIES: &[&str] =
    &["100m", "1", "2", "0.5", ".5", "1Gi", "1.5Gi", "100Gi", "4GB", "-1", "1e3", "9", "512Mi", "129M", "0", "1e-3", "8", "64Gi", "64.5Gi"];

fn quantity(u: &mut Unstructured) -> R<Value> {
    match u.int_in_range(0..=9)? {
        0 => Ok(json!(u.int_in_range(-2i64..=100_000)?)),
        1 => Ok(json!(*u.choose(&[0.5f64, 2.0, 1e3, 1e12, -0.25])?)),
        _ => text(u, QUANTITIES),
    }
}

fn resources(u: &mut Unstructured) -> R<Value> {
    let mut r = Map::new();
    for kind in ["requests", "limits"] {
        field(u, &mut r, kind, 60, |u| {
            let mut map = Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let name = *u.choose(&["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu", "example.com/fpga", "hugepages-2Mi"])?;
                let value = quantity(u)?;
                map.insert(name.to_owned(), value);
            }
            Ok(Value::Object(map))
        })?;
    }
    field(u, &mut r, "claims", 5, |u| list(u, 1, |_| Ok(json!({"name": "gpu"}))))?;
    Ok(Value::Object(r))
}

fn port(u: &mut Unstructured) -> R<Value> {
    if maybe(u, 30)? { text(u, &["http", "tg-admin", "tg-ingress", "metrics"]) } else { int(u, &[80, 8080, 15001, 15006, 15021, 22]) }
}

fn action(u: &mut Unstructured, probe: bool) -> R<Value> {
    let mut a = Map::new();
    match u.int_in_range(0..=4)? {
        0 => {
            let mut get = json!({"port": port(u)?, "path": "/healthz"});
            if maybe(u, 30)? {
                get["host"] = text(u, &["", "10.0.0.1", "localhost"])?;
            }
            a.insert("httpGet".into(), get);
        }
        1 => {
            let mut tcp = json!({"port": port(u)?});
            if maybe(u, 30)? {
                tcp["host"] = text(u, &["", "10.0.0.1"])?;
            }
            a.insert("tcpSocket".into(), tcp);
        }
        2 if probe => {
            a.insert("grpc".into(), json!({"port": *u.choose(&[8080, 15006, 15021])?}));
        }
        3 if !probe => {
            a.insert("sleep".into(), json!({"seconds": 5}));
        }
        _ => {
            a.insert("exec".into(), json!({"command": ["true"]}));
        }
    }
    if probe {
        field(u, &mut a, "periodSeconds", 20, |u| int(u, &[1, 10]))?;
    }
    Ok(Value::Object(a))
}

const VOLUME_NAMES: &[&str] =
    &["data", "creds", "tollgate-tmp", "tollgate-proxy-credentials", "tollgate-proxy-config", "kube-api-access-x1y2z", "host", "scratch"];
const SECRETS: &[&str] = &["tollgate-proxy-credentials", "tollgate-proxy-credentials-a1", "tollgate-proxy-credentials-other", "other"];
const CONTAINER_NAMES: &[&str] = &["app", "worker", "tollgate-proxy", "tollgate-lock-check", "debugger", ""];

fn container(u: &mut Unstructured, kind: usize) -> R<Value> {
    let mut c = Map::new();
    c.insert("name".into(), text(u, CONTAINER_NAMES)?);
    field(u, &mut c, "image", 90, |u| text(u, &["registry.example.org/app:1", "ghcr.io/privateaim/tollgate-proxy:0.1.0", "busybox"]))?;
    field(u, &mut c, "securityContext", 70, |u| security_context(u, false))?;
    field(u, &mut c, "env", 40, |u| {
        list(u, 4, |u| {
            Ok(match u.int_in_range(0..=8)? {
                0 => json!({"name": "A", "value": "1"}),
                1 => json!({"name": "TOLLGATE_EGRESS_URL", "value": "http://evil"}),
                2 => json!({"name": "T", "valueFrom": {"secretKeyRef": {"name": text(u, SECRETS)?, "key": "k"}}}),
                3 => json!({"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}),
                4 => json!({"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
                5 => json!({"name": "DEPLOYMENT_NAME", "value": text(u, &["analysis-a1-0", "analysis-b2-0", "Bad_Name", "$(X)", ""])?}),
                6 => json!({"name": "DEPLOYMENT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
                7 => json!({"name": text(u, &["KEYCLOAK_TOKEN", "DATA_SOURCE_TOKEN"])?, "value": "real-token"}),
                _ => json!({"name": String::arbitrary(u)?}),
            })
        })
    })?;
    field(u, &mut c, "envFrom", 15, |u| {
        list(u, 2, |u| {
            Ok(if bool::arbitrary(u)? {
                json!({"secretRef": {"name": text(u, SECRETS)?}})
            } else {
                json!({"configMapRef": {"name": "cm"}})
            })
        })
    })?;
    field(u, &mut c, "volumeMounts", 40, |u| {
        list(u, 3, |u| {
            let mut m = json!({"name": text(u, VOLUME_NAMES)?, "mountPath": text(u, &["/data", "/tmp", "/tmp/", "/x", "/var/run/secrets/tollgate"])?});
            if maybe(u, 20)? {
                m["readOnly"] = json!(bool::arbitrary(u)?);
            }
            Ok(m)
        })
    })?;
    field(u, &mut c, "ports", 30, |u| {
        list(u, 2, |u| {
            let mut p = json!({"containerPort": int(u, &[8080, 15001, 15006, 15021, 80, 1])?});
            if maybe(u, 40)? {
                p["hostPort"] = int(u, &[0, 80, 8080])?;
            }
            if maybe(u, 30)? {
                p["name"] = text(u, &["http", "tg-admin", "metrics"])?;
            }
            Ok(p)
        })
    })?;
    if kind != 2 || maybe(u, 10)? {
        field(u, &mut c, "resources", 50, resources)?;
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        field(u, &mut c, probe, 10, |u| action(u, true))?;
    }
    field(u, &mut c, "lifecycle", 10, |u| {
        let mut l = Map::new();
        field(u, &mut l, "postStart", 50, |u| action(u, false))?;
        field(u, &mut l, "preStop", 50, |u| action(u, false))?;
        Ok(Value::Object(l))
    })?;
    if kind == 0 {
        // An init container with restartPolicy Always is a native sidecar.
        field(u, &mut c, "restartPolicy", 15, |u| text(u, &["Always"]))?;
    }
    if kind == 2 {
        field(u, &mut c, "targetContainerName", 40, |u| text(u, &["tollgate-proxy", "app", "tollgate-lock-check"]))?;
    }
    field(u, &mut c, "command", 10, |_| Ok(json!(["sh", "-c", "sleep 1"])))?;
    field(u, &mut c, "futureContainerField", 3, |_| Ok(json!({"x": [1, "y"]})))?;
    Ok(Value::Object(c))
}

fn volume(u: &mut Unstructured) -> R<Value> {
    let name = text(u, VOLUME_NAMES)?;
    let source = match u.int_in_range(0..=12)? {
        0 => ("emptyDir", if bool::arbitrary(u)? { json!({}) } else { json!({"sizeLimit": quantity(u)?}) }),
        1 => ("hostPath", json!({"path": text(u, &["/", "/var/run/docker.sock", "/data"])?})),
        2 => ("secret", json!({"secretName": text(u, SECRETS)?})),
        3 => ("projected", {
            let sources = list(u, 3, |u| {
                Ok(match u.int_in_range(0..=3)? {
                    0 => json!({"secret": {"name": text(u, SECRETS)?}}),
                    1 => json!({"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}),
                    2 => json!({"configMap": {"name": "kube-root-ca.crt"}}),
                    _ => json!({"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}),
                })
            })?;
            json!({"sources": sources})
        }),
        4 => ("configMap", json!({"name": text(u, &["cm", "tollgate-proxy-routes"])?})),
        5 => ("nfs", json!({"server": "nfs.example", "path": "/"})),
        6 => ("persistentVolumeClaim", json!({"claimName": "pvc"})),
        7 => ("csi", json!({"driver": "csi.example"})),
        8 => ("ephemeral", json!({"volumeClaimTemplate": {"spec": {}}})),
        9 => ("downwardAPI", json!({})),
        10 => ("gitRepo", json!({"repository": "https://example.org/r.git"})),
        11 => ("image", json!({"reference": "registry.example.org/data:1"})),
        _ => return Ok(json!({"name": name})),
    };
    let mut v = json!({"name": name});
    v[source.0] = source.1;
    Ok(v)
}

const ANNOTATIONS: &[(&str, &[&str])] = &[
    (
        "tollgate.dev/analysis-id",
        &["a1", "urn:osa:localhost:dep:abc123", "../up", "", "a/b", "%2e%2e", "3f2c1b9e-1d7a-4c8e-9b1a-2e4f6a8c0d1e"],
    ),
    ("tollgate.dev/project-id", &["p", "a b", "p1"]),
    ("tollgate.dev/inject", &["false", "true"]),
    (
        "tollgate.dev/credentials-secret",
        &["tollgate-proxy-credentials-a1", "Bad_Name", "someone-elses-secret", "tollgate-proxy-credentials"],
    ),
    ("tollgate.dev/status", &["forged", "{}"]),
    ("tollgate.dev/egress-lock", &[r#"{"proxyUid":10000,"inboundPorts":[8080]}"#, r#"{"proxyUid":10001,"inboundPorts":[15006,15021]}"#]),
    ("tollgate.dev/other", &["x"]),
    ("container.apparmor.security.beta.kubernetes.io/app", &["unconfined", "runtime/default", "localhost/p"]),
    ("container.apparmor.security.beta.kubernetes.io/tollgate-proxy", &["unconfined"]),
    ("seccomp.security.alpha.kubernetes.io/pod", &["unconfined"]),
];

fn pod(u: &mut Unstructured) -> R<Value> {
    let mut metadata = Map::new();
    metadata.insert("name".into(), text(u, &["analysis", "hub", "tollgate-proxy"])?);
    metadata.insert("namespace".into(), json!("flame-analyses"));
    let mut annotations = Map::new();
    for (key, values) in ANNOTATIONS {
        if maybe(u, 12)? {
            annotations.insert((*key).to_owned(), text(u, values)?);
        }
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    field(u, &mut metadata, "labels", 20, |u| {
        let mut labels = Map::new();
        for (key, value) in [
            ("tollgate.dev/injected", "false"),
            ("tollgate.dev/analysis-id", "spoofed"),
            ("tollgate.dev/x", "y"),
            ("app", "a"),
            ("app", "Bad_App"),
        ] {
            if bool::arbitrary(u)? {
                labels.insert(key.to_owned(), json!(value));
            }
        }
        Ok(Value::Object(labels))
    })?;

    let mut spec = Map::new();
    let n = u.int_in_range(1..=3)?;
    spec.insert("containers".into(), (0..n).map(|_| container(u, 1)).collect::<R<Vec<_>>>().map(Value::Array)?);
    field(u, &mut spec, "initContainers", 35, |u| list(u, 2, |u| container(u, 0)))?;
    field(u, &mut spec, "ephemeralContainers", 20, |u| list(u, 2, |u| container(u, 2)))?;
    field(u, &mut spec, "securityContext", 60, |u| security_context(u, true))?;
    for key in ["hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "automountServiceAccountToken", "enableServiceLinks"] {
        field(u, &mut spec, key, 8, |u| Ok(json!(bool::arbitrary(u)?)))?;
    }
    field(u, &mut spec, "restartPolicy", 70, |u| text(u, &["Always", "Never", "OnFailure"]))?;
    field(u, &mut spec, "activeDeadlineSeconds", 20, |u| int(u, &[60, 86400, 86401, 10_000_000, 0, -1, i64::MAX]))?;
    field(u, &mut spec, "volumes", 50, |u| list(u, 4, volume))?;
    field(u, &mut spec, "hostAliases", 8, |u| {
        Ok(match u.int_in_range(0..=2)? {
            0 => json!([{"ip": "10.0.0.1", "hostnames": ["hub", "keycloak.flame.svc"]}]),
            // What tollgate writes for DEPLOYMENT_NAME analysis-a1-0 (a reinvocation), alone or with the pod's own.
            1 => json!([{"ip": "127.0.0.1", "hostnames": ["nginx-analysis-a1-0"]}]),
            _ => json!([{"ip": "10.0.0.1", "hostnames": ["hub"]}, {"ip": "127.0.0.1", "hostnames": ["nginx-analysis-a1-0"]}]),
        })
    })?;
    field(u, &mut spec, "dnsPolicy", 15, |u| text(u, &["ClusterFirst", "None", "Default", "ClusterFirstWithHostNet"]))?;
    field(u, &mut spec, "dnsConfig", 8, |_| {
        Ok(json!({"nameservers": ["10.0.0.53"], "searches": ["evil.example"], "options": [{"name": "ndots", "value": "1"}]}))
    })?;
    field(u, &mut spec, "resources", 10, resources)?;
    field(u, &mut spec, "resourceClaims", 4, |_| Ok(json!([{"name": "gpu", "resourceClaimName": "gpu-claim"}])))?;
    field(u, &mut spec, "serviceAccountName", 30, |_| Ok(json!("default")))?;
    field(u, &mut spec, "futurePodField", 3, |_| Ok(json!({"enabled": true})))?;

    // Now and then, more than the bounds allow.
    if maybe(u, 3)? {
        let copies = u.int_in_range(1..=70)?;
        let list = spec.get_mut("containers").and_then(Value::as_array_mut).expect("containers");
        let last = list.last().cloned().expect("one container");
        list.extend((0..copies).map(|i| {
            let mut c = last.clone();
            c["name"] = json!(format!("copy{i}"));
            c
        }));
    }
    Ok(json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}))
}

/// Why kube-apiserver's own validation (which runs after the mutating webhooks) refuses `pod` whatever
/// tollgate does: an enum field of a security context outside its values (a profile without a type
/// included), an AppArmor annotation that is no profile, or a volume without a name. Such a pod is never stored, so "restricted" is not asked of tollgate's output;
/// everything else is. (tollgate denies `Unconfined` and lets other values through to that validation;
/// the independent checker accepts only the values restricted allows.)
fn refused_by_api_validation(pod: &Value) -> Option<String> {
    let spec = &pod["spec"];
    let contexts = std::iter::once(&spec["securityContext"]).chain(
        ["initContainers", "containers", "ephemeralContainers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().into_iter().flatten())
            .map(|c| &c["securityContext"]),
    );
    for sc in contexts {
        for profile in ["seccompProfile", "appArmorProfile"] {
            // A profile without a type (a misspelt `type` key) is refused too: `type: Required value`.
            if let Some(p) = sc.get(profile).filter(|p| !p.is_null())
                && !matches!(p.get("type").and_then(Value::as_str), Some("RuntimeDefault" | "Localhost" | "Unconfined"))
            {
                return Some(format!("{profile} {p}"));
            }
        }
        if let Some(mount) = sc.get("procMount")
            && !matches!(mount.as_str(), Some("Default" | "Unmasked"))
        {
            return Some(format!("procMount {mount}"));
        }
    }
    if nameless_volume(pod) {
        return Some("a volume without a name".into());
    }
    for (key, value) in pod["metadata"]["annotations"].as_object().into_iter().flatten() {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && !value.as_str().is_some_and(|v| v == "runtime/default" || v == "unconfined" || v.starts_with("localhost/"))
        {
            return Some(format!("annotation {key}={value}"));
        }
    }
    None
}

/// A volume without a name, or two volumes of one name: the API server's validation refuses the pod
/// (`spec.volumes[1].name: Required value`, `Duplicate value`), so it is never stored, and idempotency is not
/// asked of tollgate's output (nor "restricted", for a volume without a name). (A mutated fixture reaches this
/// with a misspelt `name` key, its mount still naming the volume: tollgate replaces the volume by an emptyDir of
/// no name, and a second pass changes the pod again; with two volumes of one name, a second pass judges the
/// other one. Reported to the webhook's owner: like a sysctl without a name, such volumes could be denied.)
fn volumes_refused_by_api_validation(pod: &Value) -> Option<String> {
    let mut names = std::collections::BTreeSet::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        match volume.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => {
                if !names.insert(name) {
                    return Some(format!("two volumes named {name:?}"));
                }
            }
            _ => return Some(format!("a volume without a name: {volume}")),
        }
    }
    None
}

fn nameless_volume(pod: &Value) -> bool {
    pod["spec"]["volumes"].as_array().into_iter().flatten().any(|v| v.get("name").and_then(Value::as_str).is_none_or(str::is_empty))
}

fn check(policy: &Policy, allows_skip: bool, input: &Value, requester: Option<Requester>, from_json: bool) {
    let mut pod = input.clone();
    let hardened = match harden_as(policy, &mut pod, requester) {
        Err(e) => {
            assert!(from_json, "a generated pod does not decode: {e}\n{input}");
            assert_eq!(&pod, input, "a decode error changed the pod");
            return;
        }
        Ok(Outcome::Denied(denial)) => {
            assert!(!denial.violations.is_empty(), "a denial without a violation\n{input}");
            assert_eq!(&pod, input, "a denial changed the pod");
            return;
        }
        Ok(Outcome::Skipped { .. }) => {
            assert!(allows_skip, "skipped though the policy allows no opt-out\n{input}");
            assert_eq!(&pod, input, "a skip changed the pod");
            return;
        }
        Ok(Outcome::Warned(denial)) => {
            assert!(denial.violations.iter().all(|v| v.rule.warnable()), "warned for a rule warn never lets through\n{input}");
            assert_eq!(&pod, input, "a warned pod changed");
            return;
        }
        Ok(Outcome::Hardened(hardened)) => hardened,
    };
    let mut replayed = input.clone();
    json_patch::patch(&mut replayed, &hardened.patch.to_json_patch()).unwrap_or_else(|e| panic!("the patch does not apply: {e}\n{input}"));
    assert_eq!(replayed, pod, "the patch and the output differ\n{input}");

    let typed: Pod = serde_json::from_value(pod.clone()).unwrap_or_else(|e| panic!("the output is no Pod: {e}\n{input}"));
    let violations = if refused_by_api_validation(input).is_some() { Vec::new() } else { pss::restricted_violations(&typed) };
    assert!(violations.is_empty(), "the output is not restricted: {violations:?}\ninput: {input}\noutput: {pod}");

    let spec = &pod["spec"];
    let named = |name: &str| {
        ["initContainers", "containers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().into_iter().flatten())
            .filter(|c| c["name"] == name)
            .count()
    };
    assert_eq!(named("tollgate-proxy"), 1, "not exactly one proxy\n{input}\n{pod}");
    let locked = policy.proxy.egress_lock == EgressLock::Required;
    assert_eq!(named("tollgate-lock-check"), usize::from(locked), "lock checks\n{input}\n{pod}");
    // The placeholders once in every container but tollgate's; tollgate's hostAliases entry first, the same
    // names as the proxy's TOLLGATE_EGRESS_HOSTNAMES.
    let others = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .filter(|c| c["name"] != "tollgate-proxy" && c["name"] != "tollgate-lock-check");
    for c in others {
        for entry in &policy.proxy.placeholder_env {
            let found: Vec<&Value> = c["env"].as_array().into_iter().flatten().filter(|e| e["name"] == entry.name.as_str()).collect();
            assert_eq!(found, [&json!({"name": entry.name, "value": placeholder(entry.kind)})], "placeholder\n{input}\n{pod}");
        }
    }
    let proxy = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .find(|c| c["name"] == "tollgate-proxy")
        .expect("one proxy");
    let names = proxy["env"].as_array().into_iter().flatten().find(|e| e["name"] == "TOLLGATE_EGRESS_HOSTNAMES");
    if let Some(names) = names.and_then(|e| e["value"].as_str()) {
        let names: Vec<&str> = names.split(',').collect();
        assert_eq!(spec["hostAliases"][0], json!({"ip": "127.0.0.1", "hostnames": names}), "host alias\n{input}\n{pod}");
    }

    if volumes_refused_by_api_validation(input).is_some() {
        return;
    }
    let mut again = pod.clone();
    match harden_as(policy, &mut again, requester) {
        Ok(Outcome::Hardened(second)) => {
            assert!(second.patch.is_empty(), "not idempotent: {:?}\ninput: {input}\noutput: {pod}", second.patch);
            assert!(second.changes.is_empty(), "not idempotent: {:?}\ninput: {input}", second.changes);
            assert_eq!(again, pod);
        }
        other => panic!("hardening the output gave {other:?}\ninput: {input}\noutput: {pod}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (input, from_json) = if selector == b'{' {
        match serde_json::from_slice::<Value>(data) {
            Ok(pod) => (pod, true),
            Err(_) => return,
        }
    } else {
        match pod(&mut Unstructured::new(rest)) {
            Ok(pod) => (pod, false),
            Err(_) => return,
        }
    };
    let masters = ["system:masters".to_owned()];
    let choice = if from_json { data.len() } else { usize::from(selector) };
    let requester = match choice % 3 {
        0 => None,
        1 => Some(Requester { username: "alice", groups: &[] }),
        _ => Some(Requester { username: "system:serviceaccount:flame:pod-orchestrator", groups: &masters }),
    };
    // Kubernetes defaults a volume without a source to an emptyDir before admission: a pod never reaches a
    // webhook with one.
    let mut input = input;
    for volume in input.pointer_mut("/spec/volumes").and_then(Value::as_array_mut).into_iter().flatten() {
        if volume.as_object().is_some_and(|v| v.keys().all(|k| k == "name")) {
            volume["emptyDir"] = json!({});
        }
    }
    for (i, policy) in policies().iter().enumerate() {
        check(policy, i == 2, &input, requester, from_json);
    }
});
