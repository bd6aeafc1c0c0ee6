//! The pod as every stage sees it: raw JSON (fields this build of k8s-openapi does not know survive untouched),
//! checked first by a typed decode; its containers other than tollgate's; the ids its annotations give it.

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;
use tollgate_api::names::TOLLGATE_CONTAINERS;

use super::DecodeError;
use crate::patch::Path;
use crate::path;
use crate::policy::Policy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Init,
    App,
    Ephemeral,
}

impl Kind {
    pub(super) const ALL: [Kind; 3] = [Kind::Init, Kind::App, Kind::Ephemeral];

    pub(super) fn field(self) -> &'static str {
        match self {
            Kind::Init => "initContainers",
            Kind::App => "containers",
            Kind::Ephemeral => "ephemeralContainers",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::Init => "init container",
            Kind::App => "container",
            Kind::Ephemeral => "ephemeral container",
        }
    }
}

/// A container of the pod other than tollgate's own (the sidecar and the lock check).
#[derive(Clone, Debug)]
pub(crate) struct ContainerRef {
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) path: Path,
    pub(super) scope: String,
}

/// The pod's containers, in document order: init, app, ephemeral; tollgate's own left out (but an ephemeral
/// container named like one of them, which is not tollgate's).
pub(super) fn containers(doc: &Value) -> Vec<ContainerRef> {
    let mut found = Vec::new();
    for kind in Kind::ALL {
        let Some(Value::Array(items)) = crate::patch::get(doc, &path!["spec", kind.field()]) else { continue };
        for (index, container) in items.iter().enumerate() {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            if kind != Kind::Ephemeral && TOLLGATE_CONTAINERS.contains(&name.as_str()) {
                continue;
            }
            let scope = format!("{} {name:?}", kind.label());
            found.push(ContainerRef { kind, name, path: path!["spec", kind.field(), index], scope });
        }
    }
    found
}

/// The typed decode that rejects objects that are not pods; the error names the field.
pub(super) fn decode(pod: &Value) -> Result<Pod, DecodeError> {
    // Tracking the path costs on every field; only a failing decode needs it, so that one runs again with it.
    if let Ok(typed) = Pod::deserialize(pod) {
        return Ok(typed);
    }
    serde_path_to_error::deserialize(pod).map_err(|e| {
        let path = e.path().to_string();
        DecodeError(if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) })
    })
}

/// The ids from the pod's annotations that reach the proxy and the labels.
pub(crate) struct PodIds {
    pub(super) analysis: Option<String>,
    pub(super) project: Option<String>,
    pub(super) credentials_secret: String,
    /// Secrets no container but the proxy may touch: every name with this prefix (the policy's
    /// Secret and any the pod may name have it).
    pub(super) secret_prefix: String,
    /// The names `proxy.egressHostnames` renders for the pod (its `hostAliases` entry, the proxy's env).
    pub(super) egress_hostnames: Vec<String>,
}

impl PodIds {
    /// A pod that names no analysis, project or Secret of its own.
    pub(super) fn none(policy: &Policy) -> Self {
        PodIds {
            analysis: None,
            project: None,
            credentials_secret: policy.proxy.credentials_secret.clone(),
            secret_prefix: policy.proxy.credentials_secret_prefix.clone(),
            egress_hostnames: Vec::new(),
        }
    }

    pub(super) fn is_protected(&self, secret: &str) -> bool {
        secret.starts_with(&self.secret_prefix) || secret == self.credentials_secret
    }
}
