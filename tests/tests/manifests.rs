//! `manifests/` are written by hand and checked against the chart (ARCHITECTURE.md, "Decisions"): the chart
//! rendered as `helm template tollgate charts/tollgate -n tollgate -f manifests/compare/chart-values.yaml` (the
//! values the plain install chooses where the chart leaves the choice to the admin, each with its reason)
//! holds every object `kubectl apply -f manifests/` creates, and they are equal but for
//!
//! - `metadata.labels` and `metadata.annotations`, the object's and its pod template's (Helm's release labels,
//!   hook annotations, Argo CD's sync waves, the chart's `checksum/policy`);
//! - the webhooks' `clientConfig` (the chart's may name a URL or a given caBundle);
//! - `tollgate-policy`'s `policy.yaml`, compared as the policy the webhook runs: each merged over the embedded
//!   default (`api/default-policy.yaml`), as the webhook merges it, so the manifests' comments and the defaults
//!   they spell out for the admin to edit are theirs.
//!
//! Objects only one side has are listed below, each with its reason; the chart's hooks (`helm.sh/hook`: the
//! test pod, the uninstall and validation Jobs, the pre-install certificate Job and their RBAC) are Helm's.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// In manifests/ but not in the chart's rendering.
const MANIFESTS_ONLY: &[(&str, &str, &str)] = &[
    (
        "Namespace",
        "tollgate",
        "`helm install -n tollgate --create-namespace` makes it; the plain install makes it, Pod Security restricted",
    ),
    (
        "NetworkPolicy",
        "tollgate-certs",
        "the plain certificate flow's egress (the Job and CronJob only); the chart's tollgate-api-clients also lets out `helm test`'s pod",
    ),
];

/// In the chart's rendering (not a hook) but not in manifests/.
const CHART_ONLY: &[(&str, &str, &str)] = &[(
    "NetworkPolicy",
    "tollgate-api-clients",
    "tollgate-certs' and `helm test`'s egress; manifests/ have no test pod and name it tollgate-certs (same rules, checked below)",
)];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

type Objects = BTreeMap<(String, String), Value>;

fn objects(stream: &str, from: &str) -> Objects {
    let mut objects = Objects::new();
    for document in serde_yaml_ng::Deserializer::from_str(stream) {
        let value = Value::deserialize(document).unwrap();
        if value.is_null() {
            continue;
        }
        let key = (value["kind"].as_str().unwrap().to_string(), value["metadata"]["name"].as_str().unwrap().to_string());
        assert!(objects.insert(key.clone(), value).is_none(), "{from}: two objects {key:?}");
    }
    objects
}

/// What `kubectl apply -f manifests/` applies: the directory's YAML files, not its subdirectories.
fn plain() -> Objects {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("manifests"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let stream = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<Vec<_>>().join("\n---\n");
    objects(&stream, "manifests/")
}

fn chart() -> Objects {
    let root = workspace();
    let out = Command::new(tollgate_e2e::bin_dir().join("helm"))
        .args(["template", "tollgate"])
        .arg(root.join("charts/tollgate"))
        .args(["-n", "tollgate", "-f"])
        .arg(root.join("manifests/compare/chart-values.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    objects(&String::from_utf8_lossy(&out.stdout), "the chart")
}

fn is_hook(object: &Value) -> bool {
    object["metadata"]["annotations"].get("helm.sh/hook").is_some()
}

/// Without labels and annotations in any `metadata`, without the webhooks' clientConfig.
fn comparable(mut object: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
                    metadata.remove("labels");
                    metadata.remove("annotations");
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut object);
    if let Some(webhooks) = object["webhooks"].as_array_mut() {
        for webhook in webhooks {
            webhook.as_object_mut().unwrap().remove("clientConfig");
        }
    }
    if object["kind"] == "ConfigMap" && object["metadata"]["name"] == "tollgate-policy" {
        let text = object["data"]["policy.yaml"].as_str().expect("tollgate-policy has policy.yaml").to_string();
        object["data"]["policy.yaml"] = effective_policy(&text);
    }
    object
}

/// The policy file as the webhook runs it: loaded by tollgate-api (merged over the embedded default, the maps
/// it replaces whole replaced, validated), as its canonical JSON.
fn effective_policy(text: &str) -> Value {
    let policy = tollgate_api::policy::Policy::from_yaml(text).unwrap_or_else(|e| panic!("a shipped policy does not load:\n{e}"));
    serde_json::to_value(&policy).expect("a policy serializes")
}

fn difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .find_map(|k| difference(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}")))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (x, y))| difference(x, y, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: manifests/ {a}, the chart {b}")),
    }
}

#[test]
fn every_plain_manifest_is_the_charts_rendering_but_for_the_listed_differences() {
    let (plain, chart) = (plain(), chart());
    let key = |(kind, name, _): &(&str, &str, &str)| (kind.to_string(), name.to_string());
    let manifests_only: Vec<_> = MANIFESTS_ONLY.iter().map(key).collect();
    let chart_only: Vec<_> = CHART_ONLY.iter().map(key).collect();
    let mut failures = Vec::new();
    for (id, object) in &plain {
        match chart.get(id) {
            None if manifests_only.contains(id) => {}
            None => failures.push(format!("{id:?} is in manifests/ but not in the chart's rendering")),
            Some(_) if manifests_only.contains(id) => failures.push(format!("{id:?} is listed as manifests/' own but the chart has it")),
            Some(rendered) => {
                if let Some(why) = difference(&comparable(object.clone()), &comparable(rendered.clone()), "") {
                    failures.push(format!("{id:?} differs at {why}"));
                }
            }
        }
    }
    for (id, object) in &chart {
        if plain.contains_key(id) {
            continue;
        }
        match (is_hook(object), chart_only.contains(id)) {
            (true, false) | (false, true) => {}
            (true, true) => failures.push(format!("{id:?} is listed as the chart's own but is a hook (hooks need no listing)")),
            (false, false) => failures.push(format!("{id:?} is in the chart's rendering but not in manifests/")),
        }
    }
    for id in manifests_only.iter().filter(|id| !plain.contains_key(*id)).chain(chart_only.iter().filter(|id| !chart.contains_key(*id))) {
        failures.push(format!("{id:?} is listed but no longer rendered: drop it from the list"));
    }
    assert!(failures.is_empty(), "manifests/ and the chart differ:\n  {}", failures.join("\n  "));
    // The NetworkPolicy each side names differently lets the same traffic out.
    let (ours, theirs) = (
        &plain[&("NetworkPolicy".into(), "tollgate-certs".into())]["spec"],
        &chart[&("NetworkPolicy".into(), "tollgate-api-clients".into())]["spec"],
    );
    for field in ["policyTypes", "ingress", "egress"] {
        assert_eq!(ours[field], theirs[field], "NetworkPolicy tollgate-certs vs tollgate-api-clients: {field}");
    }
    assert_eq!(ours["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "tollgate-certs");
    assert!(theirs["podSelector"]["matchExpressions"][0]["values"].as_array().unwrap().contains(&"tollgate-certs".into()));
}
