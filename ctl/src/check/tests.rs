use super::*;

use time::{Duration, OffsetDateTime};
use tollgate_certs::{Action, Bundle, Params, issue};

const FLAME_ROUTES: &str = include_str!("../../../proxy/examples/flame.yaml");

fn bundle(now: OffsetDateTime, leaf_days: i64) -> Bundle {
    let params = Params { leaf_validity: Duration::days(leaf_days), ..Params::new("tollgate-webhook", "tollgate") };
    issue(&Action::NewCa("test".into()), None, &params, now).unwrap().unwrap()
}

fn expiry_of(bundle: &Bundle) -> i64 {
    expiry(&pem_certificates(&bundle.cert)[0]).unwrap().0
}

fn healthy(now: OffsetDateTime, certs: &Bundle) -> Snapshot {
    let webhooks = WEBHOOKS
        .iter()
        .map(|name| WebhookView {
            name: (*name).into(),
            ca_bundle: Some(certs.ca_cert.clone()),
            target: "Service tollgate/tollgate-webhook".into(),
        })
        .collect();
    Snapshot {
        now: now.unix_timestamp(),
        expiry_warning: 14 * 86_400,
        release_namespace: "tollgate".into(),
        server_version: Ok((1, 36)),
        config_name: "tollgate".into(),
        webhooks: Ok(Some(webhooks)),
        policy: Ok(Some("onViolation: deny\n".into())),
        serving_certificate: Ok(Some(certs.cert.clone())),
        served: Ok(vec![("pod a".into(), Ok(expiry_of(certs))), ("pod b".into(), Ok(expiry_of(certs)))]),
        namespaces: Ok(vec![NamespaceView {
            name: "analyses".into(),
            labels: BTreeMap::from([("pod-security.kubernetes.io/enforce".into(), "restricted".into())]),
            routes: Ok(Some(FLAME_ROUTES.into())),
            credentials: Ok(Some(vec!["client-id".into(), "client-secret".into()])),
            closing_network_policies: Ok(vec!["tollgate-analysis".into()]),
            dry_run: DryRun::Hardened,
        }]),
        locks: crate::locks::LockView {
            namespace: "tollgate".into(),
            daemon_set: Ok(None),
            nodes: Err("no DaemonSet".into()),
            pods: Err("no DaemonSet".into()),
            events: Err("no DaemonSet".into()),
        },
    }
}

fn problems(findings: &[Finding]) -> Vec<(&'static str, Severity, &str)> {
    findings.iter().filter(|f| f.severity != Severity::Ok).map(|f| (f.check, f.severity, f.message.as_str())).collect()
}

#[test]
fn a_healthy_install_is_reported_healthy_check_by_check() {
    let now = OffsetDateTime::now_utc();
    let findings = evaluate(&healthy(now, &bundle(now, 365)));
    assert_eq!(problems(&findings), []);
    let checks: Vec<&str> = findings.iter().map(|f| f.check).collect();
    for check in [
        "kubernetes-version",
        "policy",
        "webhook-registered",
        "serving-certificate",
        "ca-bundle",
        "webhook-serving",
        "routes",
        "credentials",
        "pod-security",
        "network-policy",
        "admission",
        "egress-lock",
    ] {
        assert!(checks.contains(&check), "{check} was not reported: {checks:?}");
    }
}

#[test]
fn a_wrong_ca_bundle_is_an_error_with_a_hint() {
    let now = OffsetDateTime::now_utc();
    let mut s = healthy(now, &bundle(now, 365));
    let other = bundle(now, 365);
    for w in s.webhooks.as_mut().unwrap().as_mut().unwrap() {
        w.ca_bundle = Some(other.ca_cert.clone());
    }
    let findings = evaluate(&s);
    assert_eq!(
        problems(&findings),
        [("ca-bundle", Severity::Error, findings.iter().find(|f| f.severity == Severity::Error).unwrap().message.as_str())]
    );
    let finding = findings.iter().find(|f| f.severity == Severity::Error).unwrap();
    assert!(finding.message.starts_with("does not trust the serving certificate"), "{finding:?}");
    assert!(finding.hint.as_deref().unwrap().contains("tollgate-certs secret"), "{finding:?}");
    // No caBundle at all, and webhooks that disagree.
    s.webhooks.as_mut().unwrap().as_mut().unwrap()[1].ca_bundle = None;
    assert!(problems(&evaluate(&s)).contains(&("ca-bundle", Severity::Error, "its webhooks have different caBundles")));
}

#[test]
fn missing_pieces_are_errors_naming_them() {
    let now = OffsetDateTime::now_utc();
    let certs = bundle(now, 365);
    let mut s = healthy(now, &certs);
    s.serving_certificate = Ok(None);
    assert_eq!(problems(&evaluate(&s)), [("serving-certificate", Severity::Error, "does not exist: the webhook's pods cannot start")]);

    let mut s = healthy(now, &certs);
    let ns = &mut s.namespaces.as_mut().unwrap()[0];
    ns.routes = Ok(None);
    ns.credentials = Ok(None);
    // Without a route table nothing says credentials are needed: only the route table is missing.
    assert_eq!(
        problems(&evaluate(&s)),
        [("routes", Severity::Error, "no ConfigMap tollgate-proxy-routes: hardened pods cannot start their proxy")]
    );

    // With token routes, the credentials Secret is needed, and its keys.
    let mut s = healthy(now, &certs);
    s.namespaces.as_mut().unwrap()[0].credentials = Ok(Some(vec!["client-id".into()]));
    assert_eq!(
        problems(&evaluate(&s)),
        [("credentials", Severity::Error, "Secret tollgate-proxy-credentials lacks client-secret: the proxy cannot obtain tokens")]
    );
    s.namespaces.as_mut().unwrap()[0].credentials = Ok(None);
    assert_eq!(problems(&evaluate(&s))[0].0, "credentials");

    let mut s = healthy(now, &certs);
    s.webhooks = Ok(None);
    assert_eq!(problems(&evaluate(&s)), [("webhook-registered", Severity::Error, "does not exist: no pod is hardened")]);
}

#[test]
fn certificates_near_or_past_expiry_and_pods_that_did_not_reload() {
    let now = OffsetDateTime::now_utc();
    let soon = bundle(now, 5);
    let found = evaluate(&healthy(now, &soon));
    let warning = found.iter().find(|f| f.severity == Severity::Warning).unwrap();
    assert_eq!((warning.check, warning.message.ends_with("expires in 5 days")), ("serving-certificate", true), "{warning:?}");

    let expired = bundle(now - Duration::days(10), 5);
    let found = evaluate(&healthy(now, &expired));
    assert!(problems(&found).iter().any(|(check, severity, message)| *check == "serving-certificate"
        && *severity == Severity::Error
        && message.ends_with("has expired: every pod creation in an analysis namespace fails")));
    assert!(problems(&found).contains(&("webhook-serving", Severity::Error, "serves an expired certificate")));

    let certs = bundle(now, 365);
    let mut s = healthy(now, &certs);
    s.served = Ok(vec![("pod a".into(), Ok(expiry_of(&certs))), ("pod b".into(), Ok(expiry_of(&certs) - 86_400))]);
    let findings = evaluate(&s);
    let found = problems(&findings);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].0, found[0].1), ("webhook-serving", Severity::Warning));
    s.served = Ok(Vec::new());
    assert_eq!(problems(&evaluate(&s)), [("webhook-serving", Severity::Error, "no webhook pod is running")]);
}

#[test]
fn namespaces_cluster_and_reads_that_failed() {
    let now = OffsetDateTime::now_utc();
    let certs = bundle(now, 365);
    let mut s = healthy(now, &certs);
    s.server_version = Ok((1, 28));
    let ns = &mut s.namespaces.as_mut().unwrap()[0];
    ns.labels.clear();
    ns.closing_network_policies = Ok(Vec::new());
    ns.dry_run = DryRun::Refused("Internal error occurred: failed calling webhook \"harden.pods.tollgate.dev\": x509".into());
    ns.credentials = Err("secrets is forbidden (403)".into());
    let findings = evaluate(&s);
    let found = problems(&findings);
    let checks: Vec<(&str, Severity)> = found.iter().map(|(c, s, _)| (*c, *s)).collect();
    assert_eq!(
        checks,
        [
            ("kubernetes-version", Severity::Error),
            ("credentials", Severity::Warning),
            ("pod-security", Severity::Warning),
            ("network-policy", Severity::Warning),
            ("admission", Severity::Error),
        ]
    );
    assert!(found[1].2.starts_with("not checked: reading Secret tollgate-proxy-credentials failed: secrets is forbidden"), "{found:?}");
    assert!(found[4].2.contains("failed calling webhook"), "{found:?}");

    let mut s = healthy(now, &certs);
    s.namespaces = Ok(Vec::new());
    assert_eq!(problems(&evaluate(&s)), [("namespaces", Severity::Warning, "no namespace is labeled for tollgate: nothing is hardened")]);
    s.namespaces
        .as_mut()
        .unwrap()
        .push(NamespaceView { routes: Ok(Some("routes: [{ name: x }]\n".into())), ..healthy(now, &certs).namespaces.unwrap().remove(0) });
    let findings = evaluate(&s);
    let found = problems(&findings);
    assert_eq!(found[0].0, "routes");
    assert!(found[0].2.starts_with("ConfigMap tollgate-proxy-routes: every proxy refuses it:"), "{found:?}");
}

#[test]
fn with_less_rights_it_checks_what_it_can_and_says_what_it_could_not() {
    // As `helm test` runs it: no Secrets, and pods may be created only in the namespaces the chart lists.
    let now = OffsetDateTime::now_utc();
    let certs = bundle(now, 365);
    let mut s = healthy(now, &certs);
    s.serving_certificate = Err("secrets \"tollgate-webhook-tls\" is forbidden (403)".into());
    let ns = &mut s.namespaces.as_mut().unwrap()[0];
    ns.credentials = Err("secrets \"tollgate-proxy-credentials\" is forbidden (403)".into());
    ns.dry_run = DryRun::NotAllowed("pods is forbidden".into());
    let findings = evaluate(&s);
    let found: Vec<(&str, Severity)> = problems(&findings).iter().map(|(c, s, _)| (*c, *s)).collect();
    assert_eq!(found, [("serving-certificate", Severity::Warning), ("credentials", Severity::Warning), ("admission", Severity::Warning)]);
    // The caBundle is there; whether it trusts the webhook, the dry runs show.
    assert!(findings.iter().any(|f| f.check == "ca-bundle" && f.severity == Severity::Ok && f.message.contains("not compared")));
    // What each pod serves is still checked, from its own metrics.
    let served: Vec<&str> = findings.iter().filter(|f| f.check == "webhook-serving").map(|f| f.message.as_str()).collect();
    assert_eq!(served, ["serves a certificate valid for 365 days"; 2]);
    s.served = Ok(vec![("pod a".into(), Ok(now.unix_timestamp() + 3 * 86_400))]);
    assert!(problems(&evaluate(&s)).contains(&("webhook-serving", Severity::Warning, "serves a certificate that expires in 3 days")));
}

#[test]
fn a_namespace_on_trial_is_a_warning_with_the_way_to_enforce() {
    let now = OffsetDateTime::now_utc();
    let mut s = healthy(now, &bundle(now, 365));
    s.namespaces.as_mut().unwrap()[0].labels.insert("tollgate.dev/mode".into(), "warn".into());
    let findings = evaluate(&s);
    let trial: Vec<&Finding> = findings.iter().filter(|f| f.severity != Severity::Ok).collect();
    assert_eq!(trial.len(), 1, "{trial:?}");
    assert_eq!((trial[0].check, trial[0].severity), ("mode", Severity::Warning));
    assert!(trial[0].hint.as_deref().unwrap().ends_with("kubectl label namespace analyses tollgate.dev/mode-"), "{trial:?}");
}

#[test]
fn per_analysis_credentials_are_not_looked_for_and_a_pod_without_an_analysis_id_refused_is_healthy() {
    let now = OffsetDateTime::now_utc();
    let mut s = healthy(now, &bundle(now, 365));
    // The FLAME profile: one Secret per analysis, named from its id.
    s.policy = Ok(Some("proxy:\n  credentialsSecret: tollgate-proxy-credentials-{analysis_id}\n".into()));
    let ns = &mut s.namespaces.as_mut().unwrap()[0];
    ns.credentials = Ok(None);
    ns.dry_run = DryRun::Refused(
        "admission webhook \"harden.pods.tollgate.dev\" denied the request: tollgate denied this pod (1 violation): pod: metadata.annotations[tollgate.dev/analysis-id] is missing: the policy gives every analysis its own credentials Secret [analysis-id-required]".into(),
    );
    let findings = evaluate(&s);
    assert_eq!(problems(&findings), [], "{findings:?}");
    // Any other refusal is still an error.
    s.namespaces.as_mut().unwrap()[0].dry_run =
        DryRun::Refused("failed calling webhook: x509: certificate signed by unknown authority".into());
    assert_eq!(problems(&evaluate(&s)).iter().map(|p| p.0).collect::<Vec<_>>(), ["admission"]);
}

#[test]
fn each_namespace_override_is_reported_with_what_it_changes() {
    let now = OffsetDateTime::now_utc();
    let mut s = healthy(now, &bundle(now, 365));
    s.policy = Ok(Some(
        "namespaces:\n  analyses:\n    resources: { maximum: { cpu: 32, memory: 64Gi, ephemeral-storage: 50Gi, nvidia.com/gpu: 8 } }\n    lifetime: { activeDeadlineSeconds: 604800 }\n  trial:\n    onViolation: warn\n".into(),
    ));
    let mut trial = s.namespaces.as_ref().unwrap()[0].clone();
    trial.name = "trial".into();
    s.namespaces.as_mut().unwrap().push(trial);
    let findings = evaluate(&s);
    let of = |subject: &str| {
        findings
            .iter()
            .find(|f| f.check == "namespace-override" && f.subject == subject)
            .unwrap_or_else(|| panic!("{subject}: {findings:#?}"))
    };
    let gpu = of("namespace analyses");
    assert_eq!(gpu.severity, Severity::Ok);
    assert_eq!(
        gpu.message,
        "the policy overrides for its pods (namespaces.analyses): lifetime.activeDeadlineSeconds: 86400 → 604800; resources.maximum.cpu: 8 → 32; resources.maximum.nvidia.com/gpu: 2 → 8"
    );
    let trial = of("namespace trial");
    assert_eq!(trial.severity, Severity::Warning);
    assert!(
        trial.message.starts_with("the policy overrides for its pods (namespaces.trial): onViolation: deny → warn: on trial"),
        "{trial:?}"
    );
    assert!(trial.hint.as_deref().unwrap().ends_with("remove namespaces.trial.onViolation from the policy"), "{trial:?}");
    assert_eq!(findings.iter().filter(|f| f.check == "namespace-override").count(), 2);

    // An override of a namespace tollgate does not select does nothing: a warning.
    s.namespaces.as_mut().unwrap().pop();
    let findings = evaluate(&s);
    let unselected = findings.iter().find(|f| f.subject == "namespace trial").unwrap();
    assert_eq!(unselected.severity, Severity::Warning);
    assert!(unselected.message.ends_with("but tollgate does not select this namespace, so the override does nothing"), "{unselected:?}");
    assert_eq!(unselected.hint.as_deref(), Some("check the name; or label it: kubectl label namespace trial tollgate.dev/inject=enabled"));
    // The namespaces unread: still reported, as far as the policy says.
    s.namespaces = Err("forbidden".into());
    let findings = evaluate(&s);
    assert_eq!(
        findings.iter().find(|f| f.subject == "namespace analyses" && f.check == "namespace-override").unwrap().severity,
        Severity::Ok
    );
    // No overrides, no such findings; an invalid policy is reported as such, its overrides not.
    s.policy = Ok(Some("namespaces:\n  analyses:\n    proxy: { egressLock: off }\n".into()));
    let findings = evaluate(&s);
    assert!(findings.iter().all(|f| f.check != "namespace-override"));
    let policy = findings.iter().find(|f| f.check == "policy").unwrap();
    assert!(policy.message.contains("namespaces.analyses.proxy: cannot be set per namespace"), "{policy:?}");
}

fn report() -> Report {
    Report { findings: Vec::new() }
}

fn only(r: &Report) -> (&'static str, Severity, &str) {
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    let f = &r.findings[0];
    (f.check, f.severity, f.message.as_str())
}

#[test]
fn each_piece_of_the_cluster_check_on_its_own() {
    let mut r = report();
    kubernetes_version(&mut r, &Ok((1, 30)));
    assert_eq!(only(&r), ("kubernetes-version", Severity::Ok, "v1.30"));

    let mut r = report();
    assert!(registered(&mut r, &Err("forbidden".into()), "c").is_empty());
    assert_eq!(only(&r), ("webhook-registered", Severity::Warning, "not checked: reading it failed: forbidden"));
    let one = Ok(Some(vec![WebhookView { name: WEBHOOKS[0].into(), ca_bundle: None, target: "Service t/w".into() }]));
    let mut r = report();
    assert_eq!(registered(&mut r, &one, "c").len(), 1);
    assert_eq!(only(&r).1, Severity::Error);
    assert!(only(&r).2.starts_with("lacks warn.pods.tollgate.dev, "), "{:?}", r.findings);

    // The caBundle, the Secret's certificate and whether the one trusts the other.
    let now = OffsetDateTime::now_utc();
    let certs = bundle(now, 365);
    let s = healthy(now, &certs);
    let mut r = report();
    let cas = ca_bundle(&mut r, s.webhooks.as_ref().unwrap().as_ref().unwrap(), "c");
    assert_eq!((cas.len(), r.findings.len()), (1, 0));
    let der = serving_secret(&mut r, &s).unwrap();
    assert_eq!(serving_expiry(&mut r, &s, &der), Some(expiry_of(&certs)));
    assert!(only(&r).2.ends_with("valid for 365 days"), "{:?}", r.findings);
    let mut r = report();
    bundle_trusts(&mut r, "c", &der, &cas);
    assert_eq!(only(&r), ("ca-bundle", Severity::Ok, "trusts the serving certificate (1 CA certificate(s))"));
    let mut r = report();
    assert_eq!(serving_expiry(&mut r, &s, b"not a certificate"), None);
    assert_eq!(only(&r), ("serving-certificate", Severity::Error, "tls.crt does not parse"));
    // Everything about the certificates, as evaluate sees it: the Secret's expiry for what the pods serve.
    let mut r = report();
    assert_eq!(certificates(&mut r, &s, s.webhooks.as_ref().unwrap().as_ref().unwrap(), "c"), Some(expiry_of(&certs)));
    assert_eq!(r.findings.iter().map(|f| f.check).collect::<Vec<_>>(), ["serving-certificate", "ca-bundle"]);
}

#[test]
fn each_piece_of_a_namespace_check_on_its_own() {
    let now = OffsetDateTime::now_utc();
    let ns = healthy(now, &bundle(now, 365)).namespaces.unwrap().remove(0);
    let policy = tollgate_api::policy::Policy::default();
    let mut r = report();
    assert!(routes(&mut r, &ns, &policy, "namespace analyses"), "the FLAME routes obtain tokens");
    assert_eq!(only(&r).0, "routes");
    let mut r = report();
    credentials(&mut r, &NamespaceView { credentials: Ok(None), ..ns.clone() }, "s", false, true, "n");
    assert_eq!(only(&r).2, "no Secret s: the routes obtain tokens, and hardened pods cannot start their proxy without it");
    let mut r = report();
    credentials(&mut r, &NamespaceView { credentials: Ok(None), ..ns.clone() }, "s", false, false, "n");
    assert_eq!(only(&r), ("credentials", Severity::Ok, "no token routes: no credentials needed"));
    let mut r = report();
    labels(&mut r, &ns, "n");
    assert_eq!(only(&r), ("pod-security", Severity::Ok, "enforces restricted"));
    let mut r = report();
    network_policy(&mut r, &NamespaceView { closing_network_policies: Err("forbidden".into()), ..ns.clone() }, "n");
    assert_eq!(only(&r), ("network-policy", Severity::Warning, "not checked: reading its NetworkPolicies failed: forbidden"));
    let refused = NamespaceView { dry_run: DryRun::Refused("denied [analysis-id-required]".into()), ..ns.clone() };
    let mut r = report();
    admission(&mut r, &refused, true, "n".into());
    assert_eq!(only(&r).1, Severity::Ok);
    let mut r = report();
    admission(&mut r, &refused, false, "n".into());
    assert_eq!(only(&r), ("admission", Severity::Error, "a plain pod is refused: denied [analysis-id-required]"));
}

#[test]
fn the_egress_lock_follows_the_policy_in_force() {
    let now = OffsetDateTime::now_utc();
    let certs = bundle(now, 365);
    let lock = |policy: Read<Option<String>>| {
        let s = Snapshot { policy, ..healthy(now, &certs) };
        evaluate(&s).into_iter().filter(|f| f.check == "egress-lock").map(|f| f.severity).collect::<Vec<_>>()
    };
    assert_eq!(lock(Ok(None)), [Severity::Ok], "the embedded default does not require it");
    assert_eq!(lock(Ok(Some("onViolation: deny\n".into()))), [Severity::Ok]);
    assert_eq!(lock(Ok(Some("proxy: { egressLock: required }\n".into()))), [Severity::Error], "required, no DaemonSet");
    assert_eq!(lock(Ok(Some("proxy: { egressLock: maybe }\n".into()))), [Severity::Warning], "a policy that does not load");
    assert_eq!(lock(Err("forbidden".into())), [Severity::Warning]);
}
