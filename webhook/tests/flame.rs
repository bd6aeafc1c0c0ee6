//! What lets an app built for a sidecar it knows by name run behind the proxy unchanged — FLAME's analysis
//! SDK is the case, the features are the policy's: `proxy.egressHostnames` (tollgate's own `hostAliases`
//! entry and `TOLLGATE_EGRESS_HOSTNAMES`), the unprivileged-port sysctl for a proxy port below 1024,
//! `proxy.placeholderEnv`, and a credentials Secret per analysis (`{analysis_id}`).

mod common;

use serde_json::{Value, json};
use tollgate_webhook::harden::egress::placeholder;
use tollgate_webhook::harden::update::{EPHEMERAL_CONTAINERS, update};
use tollgate_webhook::harden::{Hardened, Outcome, Rule, harden};
use tollgate_webhook::policy::{PlaceholderKind, Policy};

const FLAME: &str = "proxy:
  egressPort: 80
  egressHostnames: ['nginx-{env:DEPLOYMENT_NAME}']
  placeholderEnv: [{name: KEYCLOAK_TOKEN, kind: jwt}, {name: DATA_SOURCE_TOKEN, kind: opaque}]
  credentialsSecret: tollgate-proxy-credentials-{analysis_id}
";

fn flame() -> Policy {
    Policy::from_yaml(FLAME).unwrap()
}

fn policy(extra: &str) -> Policy {
    Policy::from_yaml(&format!("{FLAME}{extra}")).unwrap()
}

fn analysis_env() -> Value {
    json!([
        {"name": "DATA_SOURCE_TOKEN", "value": "kong-key-of-the-analysis"},
        {"name": "KEYCLOAK_TOKEN", "value": "eyJhbGciOiJSUzI1NiJ9.real.token"},
        {"name": "ANALYSIS_ID", "value": "a1"},
        {"name": "DEPLOYMENT_NAME", "value": "analysis-a1-0"},
    ])
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "analysis-a1-0-x", "labels": {"app": "analysis-a1-0"}, "annotations": {"tollgate.dev/analysis-id": "a1"}},
        "spec": {
            "containers": [{"name": "analysis", "image": "registry.example.org/analysis:1", "env": analysis_env()}]
        }
    })
}

fn with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut pod = pod();
    edit(&mut pod);
    pod
}

/// Hardened under `policy`: the pod, what changed (as lines), the notes; checked against its patch, Pod
/// Security restricted, and a second pass that changes nothing.
fn hardened(policy: &Policy, input: &Value) -> (Value, Vec<String>, Vec<String>) {
    let mut pod = input.clone();
    let Outcome::Hardened(Hardened { patch, changes, notes }) = harden(policy, &mut pod).unwrap() else { panic!("not hardened: {input}") };
    let mut replayed = input.clone();
    json_patch::patch(&mut replayed, &patch.to_json_patch()).unwrap();
    assert_eq!(replayed, pod);
    let typed = serde_json::from_value(pod.clone()).unwrap();
    assert_eq!(common::pss::restricted_violations(&typed), Vec::<String>::new());
    let mut again = pod.clone();
    let Outcome::Hardened(second) = harden(policy, &mut again).unwrap() else { panic!("second pass not hardened") };
    assert!(second.patch.is_empty() && second.changes.is_empty(), "not idempotent: {:?}", second.changes);
    (pod, changes.iter().map(ToString::to_string).collect(), notes)
}

fn denied(policy: &Policy, input: &Value) -> (String, Vec<Rule>) {
    let mut pod = input.clone();
    match harden(policy, &mut pod).unwrap() {
        Outcome::Denied(denial) => {
            assert_eq!(&pod, input);
            (denial.message(), denial.violations.iter().map(|v| v.rule).collect())
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn proxy_env<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    let proxy = pod["spec"]["initContainers"].as_array()?.iter().find(|c| c["name"] == "tollgate-proxy")?;
    proxy["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

fn env_of<'a>(container: &'a Value, name: &str) -> Vec<&'a Value> {
    container["env"].as_array().into_iter().flatten().filter(|e| e["name"] == name).collect()
}

#[test]
fn the_sidecars_name_is_tollgates_own_host_alias_and_the_proxys_authority() {
    let (pod, changes, _) = hardened(&flame(), &pod());
    assert_eq!(pod["spec"]["hostAliases"], json!([{"ip": "127.0.0.1", "hostnames": ["nginx-analysis-a1-0"]}]));
    assert_eq!(proxy_env(&pod, "TOLLGATE_EGRESS_HOSTNAMES"), Some("nginx-analysis-a1-0"));
    assert_eq!(proxy_env(&pod, "TOLLGATE_EGRESS_LISTEN"), Some("127.0.0.1:80"));
    assert!(
        changes.contains(&r#"pod: set spec.hostAliases[0]={"ip":"127.0.0.1","hostnames":["nginx-analysis-a1-0"]} (policy proxy.egressHostnames: these names reach the proxy's egress listener)"#.to_owned()),
        "{changes:#?}"
    );

    // Every distinct value of every app container (init containers are not the app), in order, once; and labels.
    let policy = Policy::from_yaml("proxy:\n  egressHostnames: ['nginx-{env:DEPLOYMENT_NAME}', '{label:app}.local', 'fixed']\n").unwrap();
    let many = with(|p| {
        let containers = p["spec"]["containers"].as_array_mut().unwrap();
        containers.push(json!({"name": "second", "image": "x:1", "env": [{"name": "DEPLOYMENT_NAME", "value": "other"}]}));
        containers.push(json!({"name": "third", "image": "x:1", "env": [
            {"name": "DEPLOYMENT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "DEPLOYMENT_NAME", "value": "analysis-a1-0"},
        ]}));
        p["spec"]["initContainers"] =
            json!([{"name": "setup", "image": "x:1", "env": [{"name": "DEPLOYMENT_NAME", "value": "init-only"}]}]);
    });
    let (pod, _, notes) = hardened(&policy, &many);
    let notes: Vec<&String> = notes.iter().filter(|n| n.contains("egressHostnames")).collect();
    let names = json!(["nginx-analysis-a1-0", "nginx-other", "analysis-a1-0.local", "fixed"]);
    assert_eq!(pod["spec"]["hostAliases"], json!([{"ip": "127.0.0.1", "hostnames": names}]));
    assert_eq!(proxy_env(&pod, "TOLLGATE_EGRESS_HOSTNAMES"), Some("nginx-analysis-a1-0,nginx-other,analysis-a1-0.local,fixed"));
    assert!(notes.is_empty(), "{notes:?}");

    // What the pod lacks renders nothing, and says so; with nothing rendered, no entry and no env.
    let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "x:1"}]}});
    let dynamic = Policy::from_yaml("proxy:\n  egressHostnames: ['nginx-{env:DEPLOYMENT_NAME}', '{label:app}.local']\n").unwrap();
    let (pod, _, notes) = hardened(&dynamic, &bare);
    let notes: Vec<&String> = notes.iter().filter(|n| n.contains("egressHostnames")).collect();
    assert_eq!(
        notes,
        [
            r#"policy proxy.egressHostnames[0] ("nginx-{env:DEPLOYMENT_NAME}") renders no name: no app container sets env DEPLOYMENT_NAME"#,
            r#"policy proxy.egressHostnames[1] ("{label:app}.local") renders no name: the pod has no label app"#,
        ]
    );
    assert!(pod["spec"].get("hostAliases").is_none(), "{pod}");
    assert_eq!(proxy_env(&pod, "TOLLGATE_EGRESS_HOSTNAMES"), None);

    // The default policy renders nothing at all.
    let (pod, _, _) = hardened(&Policy::default(), &self::pod());
    assert!(pod["spec"].get("hostAliases").is_none());
    assert_eq!(proxy_env(&pod, "TOLLGATE_EGRESS_HOSTNAMES"), None);
}

#[test]
fn the_pods_own_host_aliases_stay_refused_and_tollgates_is_recognised() {
    let own = json!({"ip": "127.0.0.1", "hostnames": ["nginx-analysis-a1-0"]});
    // The creator's entry (here: an upstream pointed at the app) is refused as ever, beside tollgate's.
    let attack = with(|p| p["spec"]["hostAliases"] = json!([{"ip": "127.0.0.1", "hostnames": ["flame-keycloak"]}]));
    let (message, rules) = denied(&flame(), &attack);
    assert_eq!(rules, [Rule::NameResolution], "{message}");
    assert!(message.contains("pod: spec.hostAliases writes the pod's /etc/hosts"), "{message}");
    // Even when it comes after a copy of tollgate's entry.
    let (_, rules) = denied(&flame(), &with(|p| p["spec"]["hostAliases"] = json!([own, {"ip": "10.0.0.9", "hostnames": ["x"]}])));
    assert_eq!(rules, [Rule::NameResolution]);
    // A copy of tollgate's entry for another pod's name is the creator's, too.
    let stale = with(|p| p["spec"]["hostAliases"] = json!([{"ip": "127.0.0.1", "hostnames": ["nginx-analysis-b2-0"]}]));
    assert_eq!(denied(&flame(), &stale).1, [Rule::NameResolution]);
    // Exactly tollgate's entry (what a reinvocation finds) is tollgate's: left as it is.
    let (pod, changes, _) = hardened(&flame(), &with(|p| p["spec"]["hostAliases"] = json!([own])));
    assert_eq!(pod["spec"]["hostAliases"], json!([own]));
    assert!(!changes.iter().any(|c| c.contains("hostAliases")), "{changes:#?}");

    // override: the creator's entries go, tollgate's comes in.
    let (pod, changes, _) = hardened(&policy("onViolation: override\n"), &attack);
    assert_eq!(pod["spec"]["hostAliases"], json!([own]));
    assert!(changes.iter().any(|c| c.starts_with("pod: removed spec.hostAliases (was: spec.hostAliases writes")), "{changes:#?}");
    // Allowed by the policy: tollgate's entry first (the first line naming a host wins), the pod's after it.
    let allowed = policy("security: { allowHostAliases: true }\n");
    let theirs = json!({"ip": "10.0.0.9", "hostnames": ["nginx-analysis-a1-0", "db"]});
    let (pod, _, _) = hardened(&allowed, &with(|p| p["spec"]["hostAliases"] = json!([theirs])));
    assert_eq!(pod["spec"]["hostAliases"], json!([own, theirs]));
    // A copy of tollgate's entry that is not first is moved there, once.
    let (pod, _, _) = hardened(&allowed, &with(|p| p["spec"]["hostAliases"] = json!([theirs, own, own])));
    assert_eq!(pod["spec"]["hostAliases"], json!([own, theirs]));
}

#[test]
fn one_denial_names_every_name_tollgate_cannot_render() {
    let pod = with(|p| {
        let containers = p["spec"]["containers"].as_array_mut().unwrap();
        containers[0]["env"][3]["value"] = json!("Analysis-A1");
        containers.push(json!({"name": "b", "image": "x:1", "env": [{"name": "DEPLOYMENT_NAME", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]}));
        containers.push(json!({"name": "c", "image": "x:1", "env": [{"name": "DEPLOYMENT_NAME", "value": "Analysis-A1"}]}));
    });
    let (message, rules) = denied(&flame(), &pod);
    assert_eq!(rules, [Rule::EgressHostname; 3], "{message}");
    for part in [
        r#"container "analysis": env["DEPLOYMENT_NAME"] makes "nginx-Analysis-A1""#,
        r#"container "b": env["DEPLOYMENT_NAME"] is set by valueFrom"#,
        r#"container "c": env["DEPLOYMENT_NAME"] makes "nginx-Analysis-A1""#,
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    // Too many names: the product of two placeholders' values.
    let product = Policy::from_yaml("proxy:\n  egressHostnames: ['{env:A}-{env:B}']\n").unwrap();
    let wide = with(|p| {
        p["spec"]["containers"] = json!((0..8)
            .map(|i| json!({"name": format!("c{i}"), "image": "x:1", "env": [{"name": "A", "value": format!("a{i}")}, {"name": "B", "value": format!("b{i}")}]}))
            .collect::<Vec<_>>());
    });
    let (message, rules) = denied(&product, &wide);
    assert_eq!(rules, [Rule::EgressHostname], "{message}");
    assert!(message.contains("pod: spec.hostAliases would get more than 32 names from policy proxy.egressHostnames"), "{message}");
}

#[test]
fn a_proxy_port_below_1024_gets_the_unprivileged_port_sysctl() {
    const SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
    let (pod, changes, _) = hardened(&flame(), &pod());
    assert_eq!(pod["spec"]["securityContext"]["sysctls"], json!([{"name": SYSCTL, "value": "80"}]));
    assert!(
        changes.contains(&format!("pod: set sysctl {SYSCTL}=80: the proxy binds port 80 as an ordinary user (policy proxy.egressPort)")),
        "{changes:#?}"
    );
    // The pod's own value for it is replaced (others kept in place; duplicates go), and the change says so.
    let own = with(|p| {
        p["spec"]["securityContext"] = json!({"sysctls": [
            {"name": SYSCTL, "value": "1024"},
            {"name": "net.ipv4.tcp_syncookies", "value": "1"},
            {"name": SYSCTL, "value": "0"},
        ]})
    });
    let (pod, changes, _) = hardened(&flame(), &own);
    assert_eq!(
        pod["spec"]["securityContext"]["sysctls"],
        json!([{"name": SYSCTL, "value": "80"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}])
    );
    assert!(
        changes.contains(&format!(
            "pod: set sysctl {SYSCTL}=80 (was: 1024, 0): the proxy binds port 80 as an ordinary user (policy proxy.egressPort)"
        )),
        "{changes:#?}"
    );
    // Already right: nothing to say.
    let (_, changes, _) =
        hardened(&flame(), &with(|p| p["spec"]["securityContext"] = json!({"sysctls": [{"name": SYSCTL, "value": "80"}]})));
    assert!(!changes.iter().any(|c| c.contains(SYSCTL)), "{changes:#?}");
    // An unsafe sysctl beside it is still denied, and removed under override with ours kept.
    let unsafe_too = with(|p| p["spec"]["securityContext"] = json!({"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}));
    assert_eq!(denied(&flame(), &unsafe_too).1, [Rule::Sysctls]);
    let (pod, _, _) = hardened(&policy("onViolation: override\n"), &unsafe_too);
    assert_eq!(pod["spec"]["securityContext"]["sysctls"], json!([{"name": SYSCTL, "value": "80"}]));
    // The default ports are all above 1023: the pod's sysctls are its own business.
    let (pod, _, _) = hardened(&Policy::default(), &own);
    assert_eq!(pod["spec"]["securityContext"]["sysctls"], own["spec"]["securityContext"]["sysctls"]);
}

#[test]
fn placeholders_replace_the_credentials_in_every_container_but_tollgates() {
    let jwt = placeholder(PlaceholderKind::Jwt);
    let input = with(|p| {
        let env = p["spec"]["containers"][0]["env"].as_array_mut().unwrap();
        // An earlier definition too (the last one counts): it must not stay in the pod either.
        env.insert(0, json!({"name": "KEYCLOAK_TOKEN", "value": "an-older-real-token"}));
        p["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "helper", "image": "x:1", "env": [
            {"name": "DATA_SOURCE_TOKEN", "valueFrom": {"secretKeyRef": {"name": "kong-keys", "key": "analysis"}}},
        ]}));
        p["spec"]["initContainers"] = json!([{"name": "setup", "image": "x:1"}]);
    });
    let (pod, changes, _) = hardened(&flame(), &input);
    let analysis = &pod["spec"]["containers"][0];
    assert_eq!(env_of(analysis, "KEYCLOAK_TOKEN"), [&json!({"name": "KEYCLOAK_TOKEN", "value": jwt})]);
    assert_eq!(env_of(analysis, "DATA_SOURCE_TOKEN"), [&json!({"name": "DATA_SOURCE_TOKEN", "value": "tollgate-placeholder"})]);
    // In place: the app's env keeps its order.
    let names: Vec<&str> = analysis["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["DATA_SOURCE_TOKEN", "KEYCLOAK_TOKEN", "ANALYSIS_ID", "DEPLOYMENT_NAME", "TOLLGATE_EGRESS_URL"]);
    let helper = &pod["spec"]["containers"][1];
    assert_eq!(env_of(helper, "DATA_SOURCE_TOKEN"), [&json!({"name": "DATA_SOURCE_TOKEN", "value": "tollgate-placeholder"})]);
    assert_eq!(env_of(helper, "KEYCLOAK_TOKEN"), [&json!({"name": "KEYCLOAK_TOKEN", "value": jwt})]);
    let setup = &pod["spec"]["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "setup").unwrap();
    assert_eq!(env_of(setup, "KEYCLOAK_TOKEN").len(), 1);
    // Never in tollgate's own containers.
    assert_eq!(proxy_env(&pod, "KEYCLOAK_TOKEN"), None);
    // No real value anywhere in the pod, nor in what was said about it.
    let text = pod.to_string();
    for secret in ["real.token", "an-older-real-token", "kong-key-of-the-analysis", "kong-keys"] {
        assert!(!text.contains(secret), "{secret} left in the pod");
        assert!(!changes.iter().any(|c| c.contains(secret)), "{secret} in a change");
    }
    for expected in [
        r#"container "analysis": replaced env KEYCLOAK_TOKEN's value and 1 earlier definitions with tollgate's jwt placeholder (policy proxy.placeholderEnv: the proxy holds the real credentials)"#,
        r#"container "analysis": replaced env DATA_SOURCE_TOKEN's value with tollgate's opaque placeholder (policy proxy.placeholderEnv: the proxy holds the real credentials)"#,
        r#"container "helper": replaced env DATA_SOURCE_TOKEN's valueFrom with tollgate's opaque placeholder (policy proxy.placeholderEnv: the proxy holds the real credentials)"#,
        r#"container "helper": set env KEYCLOAK_TOKEN to tollgate's jwt placeholder (policy proxy.placeholderEnv)"#,
        r#"init container "setup": set env KEYCLOAK_TOKEN to tollgate's jwt placeholder (policy proxy.placeholderEnv)"#,
    ] {
        assert!(changes.iter().any(|c| c == expected), "{expected:?} not in {changes:#?}");
    }
    // An ephemeral container added later (kubectl debug) gets them too.
    let debug = {
        let mut p = pod.clone();
        p["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox:1.36",
            "env": [{"name": "KEYCLOAK_TOKEN", "value": "pasted-real-token"}]}]);
        p
    };
    let mut working = debug.clone();
    let Outcome::Hardened(h) = update(&flame(), &pod, &mut working, EPHEMERAL_CONTAINERS).unwrap() else { panic!("allowed") };
    assert!(!h.patch.is_empty());
    let debugger = &working["spec"]["ephemeralContainers"][0];
    assert_eq!(env_of(debugger, "KEYCLOAK_TOKEN"), [&json!({"name": "KEYCLOAK_TOKEN", "value": jwt})]);
    assert_eq!(env_of(debugger, "DATA_SOURCE_TOKEN").len(), 1);
}

#[test]
fn each_analysis_has_its_own_credentials_secret() {
    let secret_of = |pod: &Value| -> String {
        let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "tollgate-proxy-credentials").unwrap();
        volume["secret"]["secretName"].as_str().unwrap().to_owned()
    };
    let (pod, _, _) = hardened(&flame(), &pod());
    assert_eq!(secret_of(&pod), "tollgate-proxy-credentials-a1");
    let (pod, _, _) = hardened(&flame(), &with(|p| p["metadata"]["annotations"]["tollgate.dev/analysis-id"] = json!("b2")));
    assert_eq!(secret_of(&pod), "tollgate-proxy-credentials-b2");
    // The pod's own choice (a trusted user's) still wins, and needs no analysis id.
    let named = with(|p| {
        p["metadata"]["annotations"] = json!({"tollgate.dev/credentials-secret": "tollgate-proxy-credentials-shared-test"});
    });
    let (pod, _, _) = hardened(&flame(), &named);
    assert_eq!(secret_of(&pod), "tollgate-proxy-credentials-shared-test");
    // Without an analysis id: denied, saying why.
    let (message, rules) = denied(&flame(), &with(|p| p["metadata"]["annotations"] = json!({})));
    assert_eq!(rules, [Rule::AnalysisIdRequired], "{message}");
    // An invalid id is refused once, as invalid, not also as missing.
    let (message, rules) = denied(&flame(), &with(|p| p["metadata"]["annotations"]["tollgate.dev/analysis-id"] = json!("../b2")));
    assert_eq!(rules, [Rule::InvalidAnnotation], "{message}");
    // Another analysis' Secret is still a credentials Secret: no app may read it.
    let (message, rules) = denied(
        &flame(),
        &with(|p| p["spec"]["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "tollgate-proxy-credentials-b2"}}])),
    );
    assert_eq!(rules, [Rule::CredentialsExposed], "{message}");
}

#[test]
fn updates_leave_tollgates_host_alias_and_sysctl_alone() {
    let (admitted, _, _) = hardened(&flame(), &pod());
    // Labels and annotations of the pod's own, and a debug container: allowed, nothing said about hostAliases.
    let mut relabelled = admitted.clone();
    relabelled["metadata"]["labels"]["app"] = json!("renamed");
    relabelled["metadata"]["annotations"]["note"] = json!("x");
    let mut working = relabelled.clone();
    let Outcome::Hardened(h) = update(&flame(), &admitted, &mut working, "").unwrap() else { panic!("allowed") };
    assert!(h.patch.is_empty(), "{:?}", h.changes);
    let mut debug = admitted.clone();
    debug["spec"]["ephemeralContainers"] = json!([{"name": "d", "image": "busybox:1.36"}]);
    let mut working = debug.clone();
    let Outcome::Hardened(h) = update(&flame(), &admitted, &mut working, EPHEMERAL_CONTAINERS).unwrap() else { panic!("allowed") };
    assert!(!h.changes.iter().any(|c| c.to_string().contains("hostAliases") || c.to_string().contains("sysctl")), "{:?}", h.changes);
    assert_eq!(working["spec"]["hostAliases"], admitted["spec"]["hostAliases"]);
}

/// The FLAME fixture's policy is the chart's FLAME profile (`values-flame.yaml`'s `policy`, with the egress
/// lock its `egressLock.enabled` adds): the golden pod is what that profile makes of the orchestrator's pod.
#[test]
fn the_flame_fixture_is_hardened_with_the_charts_flame_policy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let values: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("charts/tollgate/values-flame.yaml")).unwrap()).unwrap();
    let mut chart = values["policy"].clone();
    chart["proxy"]["egressLock"] = json!("required");
    let chart = Policy::from_yaml(&serde_yaml_ng::to_string(&chart).unwrap()).unwrap();
    let fixture = common::fixtures_dir().join("flame-analysis/policy.yaml");
    let fixture = Policy::from_yaml(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    assert_eq!(fixture, chart);
    assert_eq!(fixture.digest(), chart.digest());
}
