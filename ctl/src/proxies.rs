//! `tollgate check --proxy`: the pods whose proxy is not what tollgate would inject today, and the pods in a
//! selected namespace tollgate never saw. Like `linkerd check --proxy`: after `helm upgrade` changes the policy
//! or the proxy image, running pods keep what they were admitted with, and nothing else says so. Pure: the
//! shell ([`crate::gather`]) reads the pods.

use serde::Deserialize;

use crate::finding::{Finding, Severity};

/// What tollgate would do with a pod today.
#[derive(Debug, Clone)]
pub struct Current {
    /// The release's version (the webhook's and this command's).
    pub version: String,
    /// The digest of the policy in force (`tollgate.dev/status` records the one a pod was admitted under).
    pub policy: String,
    /// The proxy image the policy injects.
    pub image: String,
}

/// A pod in a namespace tollgate selects, as far as this check needs it.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    /// `tollgate.dev/status`, as tollgate wrote it at admission; `None`: tollgate never saw the pod.
    pub status: Option<String>,
    /// The pod's controller (`ownerReferences` with `controller: true`): kind and name.
    pub owner: Option<(String, String)>,
    /// The pod's `pod-template-hash` label (a ReplicaSet's pod): the Deployment's name is the ReplicaSet's less it.
    pub template_hash: Option<String>,
    /// The image of its `tollgate-proxy` container, if it has one.
    pub proxy_image: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    version: String,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    skipped: Option<String>,
}

/// One finding per pod that needs attention, and one summary line.
pub fn evaluate(pods: &[PodView], current: &Current) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut up_to_date = 0;
    for pod in pods {
        let subject = format!("pod {}/{}", pod.namespace, pod.name);
        let fix = fix(pod);
        let status = pod.status.as_deref().map(serde_json::from_str::<Status>);
        let reasons: Vec<String> = match status {
            None => {
                findings.push(Finding {
                    check: "proxy",
                    subject,
                    severity: Severity::Error,
                    message: "tollgate never saw this pod (created while tollgate was not installed, or before its namespace was selected): it runs without the proxy".into(),
                    hint: Some(fix),
                });
                continue;
            }
            Some(Err(e)) => vec![format!("its tollgate.dev/status is not tollgate's ({e})")],
            Some(Ok(Status { skipped: Some(why), .. })) => {
                findings.push(Finding {
                    check: "proxy",
                    subject,
                    severity: Severity::Warning,
                    message: format!("admitted without the proxy ({why})"),
                    hint: Some(format!("intended? if not: {fix}")),
                });
                continue;
            }
            Some(Ok(status)) => {
                let mut reasons = Vec::new();
                if status.image != current.image || pod.proxy_image.as_deref().is_some_and(|i| i != current.image) {
                    let running = pod.proxy_image.as_deref().unwrap_or(&status.image);
                    reasons.push(format!("its proxy is {running}, the policy injects {}", current.image));
                }
                if status.policy != current.policy {
                    reasons.push(format!(
                        "it was hardened under policy {}, the policy in force is {}",
                        short(&status.policy),
                        short(&current.policy)
                    ));
                }
                if status.version != current.version {
                    reasons.push(format!("it was hardened by tollgate {}, this release is {}", status.version, current.version));
                }
                reasons
            }
        };
        if reasons.is_empty() {
            up_to_date += 1;
            continue;
        }
        findings.push(Finding { check: "proxy", subject, severity: Severity::Warning, message: reasons.join("; "), hint: Some(fix) });
    }
    let stale = findings.len();
    let severity = if findings.iter().any(|f| f.severity == Severity::Error) {
        Severity::Error
    } else if stale > 0 {
        Severity::Warning
    } else {
        Severity::Ok
    };
    findings.push(Finding {
        check: "proxies",
        subject: "selected namespaces".into(),
        severity,
        message: format!("{up_to_date} of {} pods run the proxy tollgate injects today", pods.len()),
        hint: (stale > 0).then(|| "recreate each pod listed above (its hint says how); its controller gets the current proxy".into()),
    });
    findings
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// The command that recreates the pod through whatever made it.
fn fix(pod: &PodView) -> String {
    let ns = &pod.namespace;
    match &pod.owner {
        Some((kind, name)) if kind == "ReplicaSet" => {
            let deployment = pod.template_hash.as_deref().and_then(|hash| name.strip_suffix(&format!("-{hash}")));
            match deployment {
                Some(deployment) => format!("kubectl rollout restart deployment/{deployment} -n {ns}"),
                None => format!("kubectl delete pod {} -n {ns} (its ReplicaSet {name} makes a new one)", pod.name),
            }
        }
        Some((kind, name)) if kind == "StatefulSet" || kind == "DaemonSet" => {
            format!("kubectl rollout restart {}/{name} -n {ns}", kind.to_ascii_lowercase())
        }
        Some((kind, name)) => format!("kubectl delete pod {} -n {ns} (its {kind} {name} makes a new one)", pod.name),
        None => format!("kubectl delete pod {} -n {ns}, then create it again", pod.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> Current {
        Current { version: "0.2.0".into(), policy: "sha256:aaaa".into(), image: "ghcr.io/privateaim/tollgate-proxy:0.2.0".into() }
    }

    fn status(version: &str, policy: &str, image: &str) -> Option<String> {
        Some(format!(r#"{{"version":"{version}","policy":"{policy}","proxy":"native","image":"{image}","containers":["app"]}}"#))
    }

    #[test]
    fn stale_unseen_and_skipped_pods_are_listed_with_the_command_that_fixes_each() {
        let image = "ghcr.io/privateaim/tollgate-proxy:0.2.0";
        let pods = vec![
            PodView { namespace: "a".into(), name: "fresh".into(), status: status("0.2.0", "sha256:aaaa", image), ..Default::default() },
            PodView {
                namespace: "a".into(),
                name: "analysis-1-0-5d8f7c9b4-x2x9q".into(),
                status: status("0.1.0", "sha256:bbbb", "ghcr.io/privateaim/tollgate-proxy:0.1.0"),
                owner: Some(("ReplicaSet".into(), "analysis-1-0-5d8f7c9b4".into())),
                template_hash: Some("5d8f7c9b4".into()),
                proxy_image: Some("ghcr.io/privateaim/tollgate-proxy:0.1.0".into()),
            },
            PodView {
                namespace: "a".into(),
                name: "job-xyz".into(),
                status: None,
                owner: Some(("Job".into(), "job".into())),
                ..Default::default()
            },
            PodView {
                namespace: "b".into(),
                name: "trial".into(),
                status: Some(r#"{"version":"0.2.0","policy":"sha256:aaaa","skipped":"warned"}"#.into()),
                ..Default::default()
            },
        ];
        let findings = evaluate(&pods, &current());
        let by_subject = |s: &str| findings.iter().find(|f| f.subject == s).unwrap_or_else(|| panic!("no finding for {s}: {findings:?}"));
        assert!(findings.iter().all(|f| f.subject != "pod a/fresh"), "an up-to-date pod is not listed");
        let stale = by_subject("pod a/analysis-1-0-5d8f7c9b4-x2x9q");
        assert_eq!(stale.severity, Severity::Warning);
        for part in ["its proxy is ghcr.io/privateaim/tollgate-proxy:0.1.0", "policy bbbb", "tollgate 0.1.0"] {
            assert!(stale.message.contains(part), "{part}: {}", stale.message);
        }
        assert_eq!(stale.hint.as_deref(), Some("kubectl rollout restart deployment/analysis-1-0 -n a"));
        let unseen = by_subject("pod a/job-xyz");
        assert_eq!(unseen.severity, Severity::Error);
        assert!(unseen.message.contains("never saw") && unseen.hint.as_deref().unwrap().contains("its Job job makes a new one"));
        assert_eq!(by_subject("pod b/trial").severity, Severity::Warning);
        let summary = by_subject("selected namespaces");
        assert_eq!((summary.severity, summary.message.as_str()), (Severity::Error, "1 of 4 pods run the proxy tollgate injects today"));
        let all_fresh = evaluate(&pods[..1], &current());
        assert_eq!(all_fresh.len(), 1);
        assert_eq!(all_fresh[0].severity, Severity::Ok);
    }
}
