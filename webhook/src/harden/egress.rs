//! What lets an app that knows its sidecar only by name, on a port below 1024, and that expects credentials
//! in its env, run behind the proxy unchanged (FLAME's SDK: `http://nginx-<DEPLOYMENT_NAME>`, port 80,
//! `KEYCLOAK_TOKEN`): the names of `proxy.egressHostnames` in a `hostAliases` entry of tollgate's own, the
//! sysctl that lets the proxy bind a low port, and the placeholders of `proxy.placeholderEnv`.

use std::sync::LazyLock;

use base64::Engine;
use serde_json::{Value, json};

use super::edit::{Editor, compact};
use super::findings::Findings;
use super::pod::ContainerRef;
use super::{Rule, TOLLGATE_CONTAINERS};
use crate::patch::{Seg, get, join};
use crate::path;
use crate::policy::{HostnamePart, MAX_EGRESS_HOSTNAMES, PlaceholderKind, Policy, is_dns1123_subdomain, parse_hostname_template};

/// Where tollgate's names point: the proxy's egress listener is on loopback.
pub const EGRESS_ADDRESS: &str = "127.0.0.1";
/// The pod sysctl that lets a non-root process bind ports from its value up.
pub const UNPRIVILEGED_PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";
/// The `opaque` placeholder.
pub const OPAQUE_PLACEHOLDER: &str = "tollgate-placeholder";
/// The `exp` of the `jwt` placeholder: 2100-01-01T00:00:00Z.
pub const JWT_PLACEHOLDER_EXP: u64 = 4_102_444_800;

/// The `jwt` placeholder: `<header>.<payload>.` in base64url without padding, header
/// `{"alg":"none","typ":"JWT"}`, an empty signature. The texts are chosen so that neither part's base64 has a
/// `-` or `_` (standard decoders, e.g. Python's `base64.b64decode`, which FLAME's SDK uses, drop those and
/// would read garbage) and the payload's has no padding at all (a multiple of 3 bytes).
static JWT_PLACEHOLDER: LazyLock<String> = LazyLock::new(|| {
    let header = r#"{"alg":"none","typ":"JWT"}"#;
    let payload =
        format!(r#"{{"exp":{JWT_PLACEHOLDER_EXP},"tollgate":"tollgate placeholder, not a credential: the proxy holds the real token"}}"#);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}.", b64.encode(header), b64.encode(payload))
});

/// The value a `proxy.placeholderEnv` entry of this kind gets: the same for every pod.
pub fn placeholder(kind: PlaceholderKind) -> &'static str {
    match kind {
        PlaceholderKind::Jwt => JWT_PLACEHOLDER.as_str(),
        PlaceholderKind::Opaque => OPAQUE_PLACEHOLDER,
    }
}

fn kind_name(kind: PlaceholderKind) -> &'static str {
    match kind {
        PlaceholderKind::Jwt => "jwt",
        PlaceholderKind::Opaque => "opaque",
    }
}

/// A `proxy.placeholderEnv` variable and what every container but tollgate's gets for it.
#[derive(Debug, Clone)]
pub(super) struct Placeholder {
    name: String,
    value: &'static str,
    /// The kind's name, for the change.
    kind: &'static str,
}

/// The policy's placeholders (`proxy.placeholderEnv`), in its order.
pub(super) fn placeholders(policy: &Policy) -> Vec<Placeholder> {
    policy
        .proxy
        .placeholder_env
        .iter()
        .map(|e| Placeholder { name: e.name.clone(), value: placeholder(e.kind), kind: kind_name(e.kind) })
        .collect()
}

/// Where a placeholder's value came from: scope and field, for a denial.
type Source = (String, String);

/// The names `proxy.egressHostnames` renders for this pod, in the policy's order, each once. A value set
/// by `valueFrom`, a name that is not a DNS-1123 subdomain, or too many names are violations naming the
/// field; a template whose env var or label the pod lacks renders nothing, with a note.
pub(super) fn hostnames(policy: &Policy, doc: &Value, f: &mut Findings, notes: &mut Vec<String>) -> Vec<String> {
    let templates = &policy.proxy.egress_hostnames;
    if templates.is_empty() {
        return Vec::new();
    }
    let pod = PodValues { apps: app_containers(doc), labels: get(doc, &path!["metadata", "labels"]).and_then(Value::as_object) };
    let mut names: Vec<String> = Vec::new();
    let mut blamed: Vec<Source> = Vec::new();
    let mut too_many = false;
    for (index, template) in templates.iter().enumerate() {
        // Checked when the policy was loaded.
        let Ok(parts) = parse_hostname_template(template) else { continue };
        let field = format!("proxy.egressHostnames[{index}] ({template:?})");
        let Some(rendered) = render_template(&parts, &pod, &field, f, notes, &mut too_many) else { continue };
        for (name, sources) in rendered {
            if !is_dns1123_subdomain(&name) {
                blame(&name, &field, sources, &mut blamed, f);
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if too_many || names.len() > MAX_EGRESS_HOSTNAMES {
        f.refused(
            Rule::EgressHostname,
            "pod",
            "spec.hostAliases",
            format!("would get more than {MAX_EGRESS_HOSTNAMES} names from policy proxy.egressHostnames (one per distinct value of each placeholder)"),
        );
    }
    names
}

/// What a template's placeholders read: the app containers (scope, container) and the pod's labels.
struct PodValues<'d> {
    apps: Vec<(String, &'d Value)>,
    labels: Option<&'d serde_json::Map<String, Value>>,
}

/// The pod's containers but tollgate's own, each with its scope.
fn app_containers(doc: &Value) -> Vec<(String, &Value)> {
    match get(doc, &path!["spec", "containers"]) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|c| {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                (!TOLLGATE_CONTAINERS.contains(&name)).then(|| (format!("container {name:?}"), c))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Every rendering of one template (`field` names it), with the sources of its values: one per combination of
/// the placeholders' values, stopping past [`MAX_EGRESS_HOSTNAMES`] (`too_many`). None, with a note, when a
/// placeholder has no value in this pod.
fn render_template(
    parts: &[HostnamePart],
    pod: &PodValues,
    field: &str,
    f: &mut Findings,
    notes: &mut Vec<String>,
    too_many: &mut bool,
) -> Option<Vec<(String, Vec<Source>)>> {
    let mut partial: Vec<(String, Vec<Source>)> = vec![(String::new(), Vec::new())];
    for part in parts {
        let choices: Vec<(String, Vec<Source>)> = match part {
            HostnamePart::Literal(text) => vec![(text.clone(), Vec::new())],
            HostnamePart::Env(var) => {
                let (values, set_by_value_from) = env_values(&pod.apps, var, field, f);
                if values.is_empty() {
                    if !set_by_value_from {
                        notes.push(format!("policy {field} renders no name: no app container sets env {var}"));
                    }
                    return None;
                }
                values
            }
            HostnamePart::Label(key) => match pod.labels.and_then(|l| l.get(key)).and_then(Value::as_str) {
                Some(value) => vec![(value.to_owned(), vec![("pod".to_owned(), format!("metadata.labels[{key}]"))])],
                None => {
                    notes.push(format!("policy {field} renders no name: the pod has no label {key}"));
                    return None;
                }
            },
        };
        let mut next = Vec::with_capacity(partial.len() * choices.len());
        'product: for (text, sources) in &partial {
            for (value, from) in &choices {
                if next.len() > MAX_EGRESS_HOSTNAMES {
                    *too_many = true;
                    break 'product;
                }
                let mut sources = sources.clone();
                sources.extend(from.iter().cloned());
                next.push((format!("{text}{value}"), sources));
            }
        }
        partial = next;
    }
    Some(partial)
}

/// `name`, not a DNS-1123 subdomain: refused once per field that gave it a value (`blamed`: those refused already).
fn blame(name: &str, field: &str, sources: Vec<Source>, blamed: &mut Vec<Source>, f: &mut Findings) {
    for (scope, source) in sources {
        if blamed.contains(&(scope.clone(), source.clone())) {
            continue;
        }
        let problem = format!(
            "makes {name:?} of policy {field}, which is not a DNS-1123 subdomain (lowercase letters, digits and '-' in dot-separated labels, each alphanumeric at both ends, at most 253 characters)"
        );
        f.refused(Rule::EgressHostname, &scope, source.clone(), problem);
        blamed.push((scope, source));
    }
}

/// The distinct literal values of env `var` in the app containers, with the containers that set each, and
/// whether one sets it by `valueFrom` (refused: tollgate cannot know the value; the others are still
/// rendered, so that one denial names every field).
fn env_values(apps: &[(String, &Value)], var: &str, field: &str, f: &mut Findings) -> (Vec<(String, Vec<Source>)>, bool) {
    let mut values: Vec<(String, Vec<Source>)> = Vec::new();
    let mut set_by_value_from = false;
    for (scope, container) in apps {
        let Some(Value::Array(env)) = container.get("env") else { continue };
        // The last definition of a name wins in the container.
        let Some(entry) = env.iter().rev().find(|e| e.get("name").and_then(Value::as_str) == Some(var)) else { continue };
        let source = (scope.clone(), format!("env[{var:?}]"));
        if entry.get("valueFrom").is_some_and(|v| !v.is_null()) {
            let problem =
                format!("is set by valueFrom: tollgate cannot know the name policy {field} renders from it (set it with a literal value)");
            f.refused(Rule::EgressHostname, scope, source.1, problem);
            set_by_value_from = true;
            continue;
        }
        let value = entry.get("value").and_then(Value::as_str).unwrap_or("").to_owned();
        match values.iter_mut().find(|(v, _)| *v == value) {
            Some((_, sources)) => sources.push(source),
            None => values.push((value, vec![source])),
        }
    }
    (values, set_by_value_from)
}

/// tollgate's `hostAliases` entry for these names, if any.
pub(super) fn host_alias(names: &[String]) -> Option<Value> {
    (!names.is_empty()).then(|| json!({"ip": EGRESS_ADDRESS, "hostnames": names}))
}

/// tollgate's entry first in `spec.hostAliases` (the first line that names a host wins in `/etc/hosts`),
/// once; whatever else is there stays after it (only when the policy allows a pod its own entries: the
/// read phase refused them, or removed them under `override`, otherwise).
pub(super) fn write_host_alias(own: Option<&Value>, e: &mut Editor) {
    let Some(own) = own else { return };
    let path = path!["spec", "hostAliases"];
    let current: Vec<Value> = e.builder.get(&path).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut wanted = vec![own.clone()];
    wanted.extend(current.iter().filter(|entry| *entry != own).cloned());
    if current != wanted {
        e.builder.set(&path, Value::Array(wanted));
        e.change(
            "pod",
            format!(
                "set spec.hostAliases[0]={} (policy proxy.egressHostnames: these names reach the proxy's egress listener)",
                compact(own)
            ),
        );
    }
}

/// The lowest of the proxy's ports when it is below 1024: the proxy runs as an ordinary user and binds it
/// only when the pod's `net.ipv4.ip_unprivileged_port_start` is at most that port.
pub fn unprivileged_port_start(policy: &Policy) -> Option<u16> {
    let proxy = &policy.proxy;
    [proxy.egress_port, proxy.ingress_port, proxy.admin_port].into_iter().filter(|port| *port < 1024).min()
}

/// `net.ipv4.ip_unprivileged_port_start=<port>` among the pod's sysctls (a safe sysctl, which Pod Security
/// restricted allows), whatever the pod set for it. `port`: [`unprivileged_port_start`].
pub(super) fn write_sysctl(port: Option<u16>, e: &mut Editor) {
    let Some(port) = port else { return };
    let path = path!["spec", "securityContext", "sysctls"];
    let wanted = json!({"name": UNPRIVILEGED_PORT_START, "value": port.to_string()});
    let current: Vec<Value> = e.builder.get(&path).and_then(Value::as_array).cloned().unwrap_or_default();
    let ours = |s: &Value| s.get("name").and_then(Value::as_str) == Some(UNPRIVILEGED_PORT_START);
    let mut placed = false;
    let mut sysctls = Vec::with_capacity(current.len() + 1);
    for sysctl in &current {
        if !ours(sysctl) {
            sysctls.push(sysctl.clone());
        } else if !placed {
            sysctls.push(wanted.clone());
            placed = true;
        }
    }
    if !placed {
        sysctls.push(wanted.clone());
    }
    if sysctls == current {
        return;
    }
    let was: Vec<String> = current.iter().filter(|s| ours(s)).map(|s| compact(s.get("value").unwrap_or(&Value::Null))).collect();
    let was = if was.is_empty() { String::new() } else { format!(" (was: {})", was.join(", ")) };
    e.builder.set(&path, Value::Array(sysctls));
    e.change(
        "pod",
        format!(
            "set sysctl {UNPRIVILEGED_PORT_START}={port}{was}: the proxy binds port {port} as an ordinary user (policy proxy.egressPort)"
        ),
    );
}

/// Every placeholder variable ([`placeholders`]) of container `c` set to its placeholder: the last definition
/// (the one that counts) replaced, earlier ones removed (no credential stays in the pod), or one added. The
/// value replaced is never shown.
pub(super) fn write_placeholders(placeholders: &[Placeholder], c: &ContainerRef, e: &mut Editor) {
    let env_path = join(&c.path, [Seg::from("env")]);
    for entry in placeholders {
        let wanted = json!({"name": entry.name, "value": entry.value});
        let found: Vec<(usize, bool)> = match e.builder.get(&env_path) {
            Some(Value::Array(env)) => env
                .iter()
                .enumerate()
                .filter(|(_, var)| var.get("name").and_then(Value::as_str) == Some(entry.name.as_str()))
                .map(|(index, var)| (index, var.get("valueFrom").is_some_and(|v| !v.is_null())))
                .collect(),
            _ => Vec::new(),
        };
        let kind = entry.kind;
        let Some(&(last, from)) = found.last() else {
            e.builder.append(&env_path, wanted);
            e.change(&c.scope, format!("set env {} to tollgate's {kind} placeholder (policy proxy.placeholderEnv)", entry.name));
            continue;
        };
        let mut replaced = false;
        if e.builder.set(&join(&env_path, [Seg::Index(last)]), wanted) {
            replaced = true;
        }
        for (index, _) in found[..found.len() - 1].iter().rev() {
            e.builder.remove(&join(&env_path, [Seg::Index(*index)]));
            replaced = true;
        }
        if replaced {
            let what = if from { "valueFrom" } else { "value" };
            let more = if found.len() > 1 { format!(" and {} earlier definitions", found.len() - 1) } else { String::new() };
            e.change(
                &c.scope,
                format!(
                    "replaced env {}'s {what}{more} with tollgate's {kind} placeholder (policy proxy.placeholderEnv: the proxy holds the real credentials)",
                    entry.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Python's `base64.b64decode` does by default (`validate=False`), which FLAME's SDK calls on a
    /// token's payload after padding it to a multiple of 4: characters outside the standard alphabet are
    /// discarded, then the rest is decoded.
    fn python_b64decode(text: &str) -> Vec<u8> {
        let mut kept: String = text.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')).collect();
        // Padding beyond a full quantum is ignored by Python; the standard engine wants it exact.
        while kept.ends_with('=') && kept.trim_end_matches('=').len().is_multiple_of(4) {
            kept.pop();
        }
        base64::engine::general_purpose::STANDARD.decode(kept.as_bytes()).expect("python would decode it")
    }

    /// The SDK's `extract_remaining_time_from_token`: the second part, padded to a multiple of 4.
    fn sdk_payload(token: &str) -> serde_json::Value {
        let mut part = token.split('.').nth(1).unwrap().to_owned();
        let missing = part.len() % 4;
        if missing != 0 {
            part.push_str(&"=".repeat(4 - missing));
        }
        serde_json::from_slice(&python_b64decode(&part)).expect("the payload is JSON")
    }

    #[test]
    fn the_jwt_placeholder_reads_as_a_token_that_never_runs_out() {
        let token = placeholder(PlaceholderKind::Jwt);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        assert_eq!(parts[2], "", "unsigned: an empty signature");
        for part in &parts[..2] {
            assert!(!part.contains(['-', '_', '+', '/', '=']), "{part}: base64url without padding, in the alphabet both base64s share");
        }
        // No padding needed at all: the payload is a whole number of 3-byte groups.
        assert_eq!(parts[1].len() % 4, 0, "{}", parts[1]);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value = serde_json::from_slice(&url.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "none", "typ": "JWT"}));
        let payload: serde_json::Value = serde_json::from_slice(&url.decode(parts[1]).unwrap()).unwrap();
        // Read the way the SDK reads it: the same claims.
        assert_eq!(sdk_payload(token), payload);
        assert_eq!(payload["exp"], json!(4_102_444_800u64));
        assert!(payload["tollgate"].as_str().unwrap().contains("placeholder"), "{payload}");
        // Also with padding added where none was missing (Python ignores it).
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&python_b64decode(&format!("{}==", parts[1]))).unwrap(), payload);
        // Deterministic, and the text the documentation shows.
        assert_eq!(token, placeholder(PlaceholderKind::Jwt));
        assert_eq!(
            token,
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjQxMDI0NDQ4MDAsInRvbGxnYXRlIjoidG9sbGdhdGUgcGxhY2Vob2xkZXIsIG5vdCBhIGNyZWRlbnRpYWw6IHRoZSBwcm94eSBob2xkcyB0aGUgcmVhbCB0b2tlbiJ9."
        );
        assert_eq!(placeholder(PlaceholderKind::Opaque), "tollgate-placeholder");
    }

    #[test]
    fn the_python_style_decoder_drops_what_python_drops() {
        // As Python 3 answers them. The reason for the rule: a '-' or '_' is dropped, and the rest read shifted.
        assert_eq!(python_b64decode("YWJj"), b"abc");
        assert_eq!(python_b64decode("YW-Jj"), b"abc");
        assert_eq!(python_b64decode("YW_Jj"), b"abc");
        assert_eq!(python_b64decode("YWJj===="), b"abc");
    }

    #[test]
    fn the_sysctl_covers_the_lowest_low_port() {
        let flame = Policy::from_yaml("proxy: { egressPort: 80 }\n").unwrap();
        assert_eq!(unprivileged_port_start(&flame), Some(80));
        assert_eq!(unprivileged_port_start(&Policy::default()), None);
        let both = Policy::from_yaml("proxy: { egressPort: 80, ingressPort: 443 }\n").unwrap();
        assert_eq!(unprivileged_port_start(&both), Some(80));
    }
}
