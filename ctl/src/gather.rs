//! Reading a [`Snapshot`] through the API server. Nothing here decides anything; a read that fails (forbidden,
//! not found where that matters, unreachable) is recorded for [`crate::check::evaluate`] to report.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, PostParams};

use crate::check::{DryRun, NamespaceView, Read, Snapshot, WebhookView};
use crate::locks::{self, DaemonSetView, EventView, LockView};
use crate::preflight::{NodeView, PreSnapshot};
use crate::proxies::{Current, PodView};

/// Where tollgate is installed, and what to call its parts.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub webhook_config: String,
    pub policy_config_map: String,
    pub serving_secret: String,
    pub webhook_pod_selector: String,
    pub expiry_warning_days: i64,
}

fn describe(e: kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

async fn get<K>(api: &Api<K>, name: &str) -> Read<Option<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map_err(describe)
}

pub async fn snapshot(client: kube::Client, target: &Target) -> Snapshot {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let server_version = client.apiserver_version().await.map_err(describe).and_then(|info| {
        let number = |text: &str| text.trim_end_matches('+').parse::<u32>().map_err(|_| format!("version {}.{}", info.major, info.minor));
        Ok((number(&info.major)?, number(&info.minor)?))
    });
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = get(&configs, &target.webhook_config).await;
    let webhooks = config.as_ref().map_err(Clone::clone).map(|config| {
        config.as_ref().map(|config| {
            config
                .webhooks
                .iter()
                .flatten()
                .map(|w| WebhookView {
                    name: w.name.clone(),
                    ca_bundle: w.client_config.ca_bundle.as_ref().map(|b| String::from_utf8_lossy(&b.0).into_owned()),
                    target: match (&w.client_config.service, &w.client_config.url) {
                        (Some(service), _) => format!("Service {}/{}", service.namespace, service.name),
                        (None, Some(url)) => url.clone(),
                        (None, None) => "nothing".into(),
                    },
                })
                .collect()
        })
    });
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &target.namespace);
    let policy = get(&config_maps, &target.policy_config_map)
        .await
        .map(|cm| cm.map(|cm| cm.data.unwrap_or_default().get("policy.yaml").cloned().unwrap_or_default()));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let serving_certificate = get(&secrets, &target.serving_secret).await.map(|secret| {
        secret.map(|s| s.data.unwrap_or_default().get("tls.crt").map(|b| String::from_utf8_lossy(&b.0).into_owned()).unwrap_or_default())
    });
    let served = served(&client, target).await;
    let first = config.ok().flatten().and_then(|config| config.webhooks?.into_iter().next());
    let selector = first.as_ref().and_then(|webhook| {
        let labels = webhook.namespace_selector.as_ref()?.match_labels.as_ref()?;
        Some(labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
    });
    // The pods the webhooks select in those namespaces (the FLAME profile: `component: flame-analysis` only).
    let pod_labels: BTreeMap<String, String> = first.and_then(|webhook| webhook.object_selector?.match_labels).unwrap_or_default();
    let namespaces = match selector {
        Some(selector) => namespaces(&client, &selector, target, policy.as_ref().ok().cloned().flatten(), &pod_labels).await,
        None => Ok(Vec::new()),
    };
    let locks = locks(&client, &target.namespace).await;
    Snapshot {
        now,
        expiry_warning: target.expiry_warning_days * 86_400,
        release_namespace: target.namespace.clone(),
        server_version,
        config_name: target.webhook_config.clone(),
        webhooks,
        policy,
        serving_certificate,
        served,
        namespaces,
        locks,
    }
}

/// The label the egress lock's DaemonSet carries, in the chart and in `manifests/optional/cni.yaml`.
pub const LOCK_SELECTOR: &str = tollgate_api::names::CNI_SELECTOR;

/// The egress lock's DaemonSet in `namespace`, its pods, their and its Events, and the nodes, for
/// [`crate::locks::evaluate`]. Without a DaemonSet, nothing else is read.
pub async fn locks(client: &kube::Client, namespace: &str) -> LockView {
    fn not_read<T>() -> Read<Vec<T>> {
        Err("no DaemonSet".to_owned())
    }
    let daemon_set = match lock_daemon_set(client, namespace).await {
        Ok(Some(daemon_set)) => daemon_set,
        Ok(None) => {
            return LockView { namespace: namespace.into(), daemon_set: Ok(None), nodes: not_read(), pods: not_read(), events: not_read() };
        }
        Err(why) => {
            return LockView { namespace: namespace.into(), daemon_set: Err(why), nodes: not_read(), pods: not_read(), events: not_read() };
        }
    };
    let (view, selector) = daemon_set_view(daemon_set);
    let nodes = lock_nodes(client).await;
    let pods = lock_pods(client, namespace, &selector).await;
    let pod_names: Vec<String> = pods.as_ref().map(|p| p.iter().map(|p| p.name.clone()).collect()).unwrap_or_default();
    let events = lock_events(client, namespace, &view.name, &pod_names).await;
    LockView { namespace: namespace.into(), daemon_set: Ok(Some(view)), nodes, pods, events }
}

/// The DaemonSet labelled [`LOCK_SELECTOR`] in `namespace`; of several, the first by name.
async fn lock_daemon_set(client: &kube::Client, namespace: &str) -> Read<Option<DaemonSet>> {
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    daemon_sets.list(&ListParams::default().labels(LOCK_SELECTOR)).await.map_err(describe).map(|list| {
        let mut items = list.items;
        items.sort_by_key(|d| d.metadata.name.clone());
        items.into_iter().next()
    })
}

/// What [`crate::locks`] judges of the DaemonSet, and the label selector of its pods.
fn daemon_set_view(daemon_set: DaemonSet) -> (DaemonSetView, String) {
    let name = daemon_set.metadata.name.clone().unwrap_or_default();
    let spec = daemon_set.spec;
    let selector = spec.selector.match_labels.unwrap_or_default().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let template = spec.template.spec.unwrap_or_default();
    let env = template
        .containers
        .first()
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.name.starts_with("TOLLGATE_CNI_"))
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    let view = DaemonSetView {
        name,
        env,
        node_selector: template.node_selector.unwrap_or_default(),
        tolerations: template.tolerations.unwrap_or_default(),
        priority_class: template.priority_class_name,
    };
    (view, selector)
}

async fn lock_nodes(client: &kube::Client) -> Read<Vec<locks::NodeView>> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.list(&ListParams::default()).await.map_err(describe).map(|list| list.items.into_iter().map(lock_node).collect())
}

/// A node as [`crate::locks`] judges it: its name, labels, provider and taints.
fn lock_node(node: Node) -> locks::NodeView {
    let spec = node.spec.unwrap_or_default();
    locks::NodeView {
        name: node.metadata.name.unwrap_or_default(),
        labels: node.metadata.labels.unwrap_or_default(),
        provider_id: spec.provider_id.unwrap_or_default(),
        taints: spec.taints.unwrap_or_default(),
    }
}

/// The DaemonSet's pods: those its `selector` matches in `namespace`.
async fn lock_pods(client: &kube::Client, namespace: &str, selector: &str) -> Read<Vec<locks::PodView>> {
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods_api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(describe)
        .map(|list| list.items.into_iter().map(lock_pod).collect())
}

/// The Events in `namespace` of the DaemonSet and of its pods.
async fn lock_events(client: &kube::Client, namespace: &str, daemon_set: &str, pods: &[String]) -> Read<Vec<EventView>> {
    let events_api: Api<Event> = Api::namespaced(client.clone(), namespace);
    events_api.list(&ListParams::default()).await.map_err(describe).map(|list| lock_events_of(list.items, daemon_set, pods))
}

/// Of `events`, those of the DaemonSet and of its pods, oldest first: the last one of a reason is the latest.
fn lock_events_of(events: Vec<Event>, daemon_set: &str, pods: &[String]) -> Vec<EventView> {
    let mut events: Vec<_> = events
        .into_iter()
        .filter(|e| match (e.involved_object.kind.as_deref(), e.involved_object.name.as_ref()) {
            (Some("Pod"), Some(pod)) => pods.contains(pod),
            (Some("DaemonSet"), Some(name)) => name == daemon_set,
            _ => false,
        })
        .collect();
    events.sort_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    events
        .into_iter()
        .map(|e| EventView {
            kind: e.involved_object.kind.unwrap_or_default(),
            name: e.involved_object.name.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            message: e.message.unwrap_or_default().trim().to_owned(),
        })
        .collect()
}

/// A lock pod as [`crate::locks`] judges it: its node (bound, or the one the DaemonSet's node affinity names),
/// readiness, and what its installer container says.
fn lock_pod(pod: Pod) -> locks::PodView {
    let spec = pod.spec.unwrap_or_default();
    let intended = || {
        let required = spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?;
        required.node_selector_terms.iter().find_map(|term| {
            term.match_fields.iter().flatten().find(|f| f.key == "metadata.name" && f.operator == "In")?.values.as_ref()?.first().cloned()
        })
    };
    let node = spec.node_name.clone().or_else(intended);
    let status = pod.status.unwrap_or_default();
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let container = status.container_statuses.into_iter().flatten().next().unwrap_or_default();
    let state = container.state.unwrap_or_default();
    let waiting = state.waiting.map(|w| (w.reason.unwrap_or_default(), w.message.unwrap_or_default()));
    let message =
        |t: Option<k8s_openapi::api::core::v1::ContainerStateTerminated>| t.and_then(|t| t.message).filter(|m| !m.trim().is_empty());
    let terminated = message(state.terminated).or_else(|| message(container.last_state.and_then(|s| s.terminated)));
    locks::PodView {
        name: pod.metadata.name.unwrap_or_default(),
        node,
        phase: status.phase.unwrap_or_default(),
        ready,
        waiting,
        terminated,
        restarts: container.restart_count,
    }
}

/// Each running webhook pod's served certificate's expiry, from its `/metrics` through the API server's pod
/// proxy (so this works from outside the cluster too).
async fn served(client: &kube::Client, target: &Target) -> Read<Vec<(String, Read<i64>)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let list = pods.list(&ListParams::default().labels(&target.webhook_pod_selector)).await.map_err(describe)?;
    let mut served = Vec::new();
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
            continue;
        }
        let path = format!("/api/v1/namespaces/{}/pods/https:{name}:8443/proxy/metrics", target.namespace);
        let request = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
        let expiry = client.request_text(request).await.map_err(describe).and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("tollgate_webhook_certificate_expiry_seconds "))
                .and_then(|value| value.trim().parse::<i64>().ok())
                .ok_or_else(|| "no tollgate_webhook_certificate_expiry_seconds".to_owned())
        });
        served.push((format!("pod {name}"), expiry));
    }
    Ok(served)
}

async fn namespaces(
    client: &kube::Client,
    selector: &str,
    target: &Target,
    policy: Option<String>,
    pod_labels: &BTreeMap<String, String>,
) -> Read<Vec<NamespaceView>> {
    let policy = policy.and_then(|text| tollgate_api::policy::Policy::from_yaml(&text).ok()).unwrap_or_default();
    let api: Api<Namespace> = Api::all(client.clone());
    let list = api.list(&ListParams::default().labels(selector)).await.map_err(describe)?;
    let mut views = Vec::new();
    for ns in list.items {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if name == target.namespace {
            continue;
        }
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
        let routes = get(&config_maps, &policy.proxy.config_map)
            .await
            .map(|cm| cm.map(|cm| cm.data.unwrap_or_default().get("config.yaml").cloned().unwrap_or_default()));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &name);
        // A Secret per analysis (`{analysis_id}` in its name) is the analysis creator's: there is none to read here.
        let credentials = if policy.proxy.credentials_secret.contains('{') {
            Ok(None)
        } else {
            get(&secrets, &policy.proxy.credentials_secret)
                .await
                .map(|s| s.map(|s| s.data.unwrap_or_default().into_keys().collect::<Vec<_>>()))
        };
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &name);
        let closing_network_policies = policies.list(&ListParams::default()).await.map_err(describe).map(|list| {
            list.items
                .into_iter()
                .filter(|p| {
                    let spec = p.spec.clone().unwrap_or_default();
                    // Every pod the webhooks select: all of them, or at least those with the selected labels.
                    let everyone = spec.pod_selector.as_ref().is_none_or(|s| {
                        let labels = s.match_labels.clone().unwrap_or_default();
                        (labels.is_empty() || labels == *pod_labels) && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
                    });
                    everyone && spec.policy_types.as_ref().is_some_and(|types| types.iter().any(|t| t == "Egress"))
                })
                .filter_map(|p| p.metadata.name)
                .collect()
        });
        let dry_run = dry_run(client, &name, &policy, pod_labels).await;
        views.push(NamespaceView {
            name,
            labels: ns.metadata.labels.unwrap_or_default(),
            routes,
            credentials,
            closing_network_policies,
            dry_run,
        });
    }
    Ok(views)
}

/// Create a plain pod with `dryRun: All`: the API server runs admission (tollgate's webhook included) and
/// stores nothing.
async fn dry_run(
    client: &kube::Client,
    namespace: &str,
    policy: &tollgate_api::policy::Policy,
    pod_labels: &BTreeMap<String, String>,
) -> DryRun {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "generateName": "tollgate-check-", "labels": pod_labels },
        "spec": { "containers": [{ "name": "app", "image": policy.proxy.image }] }
    }))
    .expect("a literal pod");
    let created = match pods.create(&PostParams { dry_run: true, ..PostParams::default() }, &pod).await {
        Ok(created) => created,
        // Forbidden by RBAC (admission answers 400/500 with the webhook's or policy's message instead).
        Err(kube::Error::Api(status)) if status.code == 403 && status.reason == "Forbidden" && !status.message.contains("admission") => {
            return DryRun::NotAllowed(status.message);
        }
        Err(e) => return DryRun::Refused(describe(e)),
    };
    let spec = created.spec.unwrap_or_default();
    let names = spec.init_containers.iter().flatten().chain(spec.containers.iter()).map(|c| c.name.as_str()).collect::<Vec<_>>();
    if names.contains(&tollgate_api::names::SIDECAR_NAME) { DryRun::Hardened } else { DryRun::Plain }
}

/// The pods of the namespaces tollgate selects (only those its webhooks select there), and what tollgate
/// would inject today, for [`crate::proxies::evaluate`].
pub async fn proxies(client: &kube::Client, target: &Target) -> Read<(Vec<PodView>, Current)> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &target.namespace);
    let policy = match get(&config_maps, &target.policy_config_map).await? {
        Some(cm) => cm.data.unwrap_or_default().get("policy.yaml").cloned().unwrap_or_default(),
        None => return Err(format!("no ConfigMap {}/{}: the policy in force is unknown", target.namespace, target.policy_config_map)),
    };
    let policy = tollgate_api::policy::Policy::from_yaml(&policy).map_err(|e| format!("the policy in force does not load: {e}"))?;
    let current = Current {
        version: tollgate_webhook::harden::VERSION.to_owned(),
        policy: policy.digest().to_owned(),
        image: policy.proxy.image.clone(),
    };
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let webhook = get(&configs, &target.webhook_config)
        .await?
        .and_then(|config| config.webhooks?.into_iter().next())
        .ok_or_else(|| format!("no MutatingWebhookConfiguration {}: nothing is selected", target.webhook_config))?;
    let selector = |s: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
        s.and_then(|s| s.match_labels).unwrap_or_default().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    };
    let (namespaces, pods_selected) = (selector(webhook.namespace_selector), selector(webhook.object_selector));
    let api: Api<Namespace> = Api::all(client.clone());
    let mut views = Vec::new();
    for ns in api.list(&ListParams::default().labels(&namespaces)).await.map_err(describe)?.items {
        let name = ns.metadata.name.unwrap_or_default();
        if name == target.namespace {
            continue;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
        for pod in pods.list(&ListParams::default().labels(&pods_selected)).await.map_err(describe)?.items {
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let meta = pod.metadata;
            let owner =
                meta.owner_references.unwrap_or_default().into_iter().find(|o| o.controller == Some(true)).map(|o| (o.kind, o.name));
            let spec = pod.spec.unwrap_or_default();
            let proxy_image = spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .find(|c| c.name == tollgate_api::names::SIDECAR_NAME)
                .and_then(|c| c.image.clone());
            views.push(PodView {
                namespace: name.clone(),
                name: meta.name.unwrap_or_default(),
                status: meta.annotations.unwrap_or_default().remove(tollgate_api::names::ANNOTATION_STATUS),
                owner,
                template_hash: meta.labels.unwrap_or_default().remove("pod-template-hash"),
                proxy_image,
            });
        }
    }
    Ok((views, current))
}

/// What [`crate::preflight::evaluate`] needs, read before tollgate is installed: the namespaces picked by
/// `selector` (labels, as `kubectl -l` takes them) and their pods.
pub async fn pre_snapshot(client: &kube::Client, selector: &str) -> PreSnapshot {
    let server_version = client.apiserver_version().await.map_err(describe).and_then(|info| {
        let number = |text: &str| text.trim_end_matches('+').parse::<u32>().map_err(|_| format!("version {}.{}", info.major, info.minor));
        Ok((number(&info.major)?, number(&info.minor)?))
    });
    let admission_resources = client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
        .map(|list| list.resources.into_iter().map(|r| r.name).collect())
        .map_err(describe);
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let nodes = nodes.list(&ListParams::default()).await.map_err(describe).map(|list| {
        list.items
            .into_iter()
            .map(|node| {
                let info = node.status.and_then(|s| s.node_info).unwrap_or_default();
                NodeView {
                    name: node.metadata.name.unwrap_or_default(),
                    os: info.operating_system,
                    kubelet: info.kubelet_version,
                    runtime: info.container_runtime_version,
                    labels: node.metadata.labels.unwrap_or_default(),
                    provider_id: node.spec.and_then(|s| s.provider_id).unwrap_or_default(),
                }
            })
            .collect()
    });
    let namespaces = async {
        let api: Api<Namespace> = Api::all(client.clone());
        let mut picked = Vec::new();
        for ns in api.list(&ListParams::default().labels(selector)).await.map_err(describe)?.items {
            let name = ns.metadata.name.unwrap_or_default();
            let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
            let list = pods.list(&ListParams::default()).await.map_err(describe)?;
            let values = list.items.into_iter().filter_map(|pod| serde_json::to_value(pod).ok()).map(|mut v| {
                v["apiVersion"] = "v1".into();
                v["kind"] = "Pod".into();
                v
            });
            picked.push((name, values.collect()));
        }
        Ok(picked)
    }
    .await;
    PreSnapshot { server_version, admission_resources, nodes, namespaces }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn event(kind: &str, name: &str, reason: &str, at: Option<i64>) -> Event {
        Event {
            involved_object: ObjectReference { kind: Some(kind.into()), name: Some(name.into()), ..ObjectReference::default() },
            reason: Some(reason.into()),
            message: Some(format!(" {reason} \n")),
            last_timestamp: at.map(|s| Time(Timestamp::from_second(s).unwrap())),
            ..Event::default()
        }
    }

    #[test]
    fn the_lock_events_are_the_daemon_sets_and_its_pods_oldest_first() {
        let events = vec![
            event("Pod", "cni-a", "late", Some(30)),
            event("Pod", "other", "not ours", Some(10)),
            event("DaemonSet", "tollgate-cni", "early", Some(20)),
            event("DaemonSet", "other", "not ours", Some(5)),
            event("Node", "cni-a", "not a pod", Some(5)),
            event("Pod", "cni-b", "undated", None),
        ];
        let got: Vec<(String, String, String, String)> = lock_events_of(events, "tollgate-cni", &["cni-a".into(), "cni-b".into()])
            .into_iter()
            .map(|e| (e.kind, e.name, e.reason, e.message))
            .collect();
        let want = [("Pod", "cni-b", "undated"), ("DaemonSet", "tollgate-cni", "early"), ("Pod", "cni-a", "late")]
            .map(|(k, n, r)| (k.to_owned(), n.to_owned(), r.to_owned(), r.to_owned()));
        assert_eq!(got, want);
    }

    #[test]
    fn the_daemon_set_view_keeps_the_installers_literal_tollgate_variables() {
        use k8s_openapi::api::apps::v1::DaemonSetSpec;
        use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
        let var = |name: &str, value: Option<&str>| EnvVar { name: name.into(), value: value.map(Into::into), ..EnvVar::default() };
        let installer = Container {
            env: Some(vec![var("TOLLGATE_CNI_PLATFORM", Some("k3s")), var("TOLLGATE_CNI_BIN_DIR", None), var("HOME", Some("/"))]),
            ..Container::default()
        };
        let daemon_set = DaemonSet {
            metadata: ObjectMeta { name: Some("tollgate-cni".into()), ..ObjectMeta::default() },
            spec: DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![
                            installer,
                            Container { env: Some(vec![var("TOLLGATE_CNI_X", Some("y"))]), ..Container::default() },
                        ],
                        priority_class_name: Some("system-node-critical".into()),
                        ..PodSpec::default()
                    }),
                    ..PodTemplateSpec::default()
                },
                ..DaemonSetSpec::default()
            },
            ..DaemonSet::default()
        };
        let (view, selector) = daemon_set_view(daemon_set);
        assert_eq!(selector, "a=1,b=2");
        assert_eq!(view.name, "tollgate-cni");
        assert_eq!(view.env, BTreeMap::from([("TOLLGATE_CNI_PLATFORM".to_owned(), "k3s".to_owned())]));
        assert_eq!(view.priority_class.as_deref(), Some("system-node-critical"));
    }
}
