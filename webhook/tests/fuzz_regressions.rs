//! Inputs the fuzz targets (fuzz/, scripts/fuzz.sh) found, as regression tests. Each input is also in
//! fuzz/corpus/<target>/.

use tollgate_webhook::policy::Policy;
use tollgate_webhook::quantity::{Format, Quantity};

/// fuzz target `quantity` (corpus: 1E): `E` alone is the exa suffix (DecimalSI), not an exponent, so its
/// canonical form stays `1E` as kube-apiserver keeps it (it was `1e18`, which did not read back as itself).
#[test]
fn exa_without_an_exponent_is_decimal_si() {
    assert_eq!(Format::of("1E"), Format::DecimalSI);
    assert_eq!(Format::of("1E3"), Format::DecimalExponent);
    assert_eq!(Format::of("1e-3"), Format::DecimalExponent);
    for (written, canonical) in [("1E", "1E"), ("1.5E", "1500P"), ("2E", "2E")] {
        let value: Quantity = written.parse().unwrap();
        let text = value.canonical(Format::of(written));
        assert_eq!(text, canonical, "{written}");
        assert_eq!(text.parse::<Quantity>().unwrap().canonical(Format::of(&text)), text, "{written}: reads back as itself");
    }
    let policy = Policy::from_yaml("resources: { maximum: { cpu: '8', memory: 1E, ephemeral-storage: 50Gi } }\n").unwrap();
    assert_eq!(policy.resources.maximum["memory"].text, "1E");
}

/// fuzz target `harden` (corpus: regression-nameless-sysctl): a pod-level sysctl without a name (its `name`
/// key misspelt) beside a safe one was passed on, since only named unsafe sysctls were looked at. An entry
/// tollgate cannot judge is unsafe: denied, or removed under `onViolation: override` (the API server refuses
/// such a pod too: `spec.securityContext.sysctls[1].name: Required value`, which the e2e test
/// `pod_security` checks on a real one).
#[test]
fn a_sysctl_without_a_name_is_never_passed_on() {
    use serde_json::{Value, json};
    use tollgate_webhook::harden::{Outcome, Rule, harden};
    let input: Value = serde_json::from_str(include_str!("../../fuzz/corpus/harden/regression-nameless-sysctl")).unwrap();
    let mut pod = input.clone();
    let Outcome::Denied(denial) = harden(&Policy::default(), &mut pod).unwrap() else { panic!("denied") };
    assert!(denial.violations.iter().any(|v| v.rule == Rule::Sysctls && v.problem.contains("a sysctl without a name")), "{denial}");

    let override_policy = Policy::from_yaml("onViolation: override\n").unwrap();
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "x:1"}],
                 "securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}, {"nae": "kernel.msgmax", "value": "1"}]}}
    });
    let Outcome::Hardened(_) = harden(&override_policy, &mut pod).unwrap() else { panic!("hardened") };
    assert_eq!(pod["spec"]["securityContext"]["sysctls"], json!([{"name": "kernel.shm_rmid_forced", "value": "1"}]));
}
