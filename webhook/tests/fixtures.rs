//! Table-driven fixtures: each `tests/fixtures/<name>/` holds `input.yaml` (a pod), optionally
//! `policy.yaml`, and the checked-in `expected.yaml` (the hardened pod) and `changes.txt`.
//! Every hardened output must pass the independent Pod Security "restricted" checker, the patch must
//! turn the input into exactly the output, and hardening the output again must change nothing.

mod common;

use std::fs;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tollgate_webhook::harden::{Outcome, harden};
use tollgate_webhook::policy::Policy;

fn policy_for(dir: &Path) -> Policy {
    match fs::read_to_string(dir.join("policy.yaml")) {
        Ok(text) => Policy::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
        Err(_) => Policy::default(),
    }
}

fn check_fixture(name: &str) {
    let dir = common::fixtures_dir().join(name);
    let policy = policy_for(&dir);
    let input = common::yaml(&fs::read_to_string(dir.join("input.yaml")).unwrap());

    let mut pod = input.clone();
    let Outcome::Hardened(hardened) = harden(&policy, &mut pod).expect("decodes") else { panic!("{name}: not hardened") };
    let changes: String = hardened.changes.iter().map(|c| format!("{c}\n")).collect();

    let expected_path = dir.join("expected.yaml");
    let changes_path = dir.join("changes.txt");
    if common::blessing() {
        fs::write(&expected_path, serde_yaml_ng::to_string(&pod).unwrap()).unwrap();
        fs::write(&changes_path, &changes).unwrap();
    }
    let expected = common::yaml(
        &fs::read_to_string(&expected_path).unwrap_or_else(|_| panic!("{name}: no expected.yaml (TOLLGATE_BLESS=1 writes it)")),
    );
    assert!(pod == expected, "{name}: hardened pod differs from expected.yaml:\n{}", serde_yaml_ng::to_string(&pod).unwrap());
    assert_eq!(changes, fs::read_to_string(&changes_path).unwrap(), "{name}: change list differs from changes.txt");

    // The patch, applied by json-patch itself, turns the input into the output.
    let mut replayed = input.clone();
    json_patch::patch(&mut replayed, &hardened.patch.to_json_patch()).unwrap_or_else(|e| panic!("{name}: patch does not apply: {e}"));
    assert_eq!(replayed, pod, "{name}: patch and output disagree");

    // Restricted, judged independently.
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let violations = common::pss::restricted_violations(&typed);
    assert!(violations.is_empty(), "{name}: not restricted: {violations:#?}");

    // Idempotent: hardening the output changes nothing.
    let mut again = pod.clone();
    let Outcome::Hardened(second) = harden(&policy, &mut again).unwrap() else { panic!("{name}: second pass not hardened") };
    assert!(second.patch.is_empty(), "{name}: second pass patched: {:?}", second.patch);
    assert!(second.changes.is_empty(), "{name}: second pass changed: {:?}", second.changes);
    assert_eq!(again, pod);
}

macro_rules! fixtures {
    ($($test:ident => $dir:literal),* $(,)?) => {
        $( #[test] fn $test() { check_fixture($dir); } )*

        #[test]
        fn every_fixture_directory_has_a_test() {
            let known = [$($dir),*];
            for entry in fs::read_dir(common::fixtures_dir()).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                assert!(known.contains(&name.as_str()), "fixture {name} has no test");
            }
        }
    };
}

fixtures! {
    plain_pod => "plain-pod",
    partial_security_context => "partial-security-context",
    job_pod => "job-pod",
    init_and_ephemeral => "init-and-ephemeral",
    gpu_pod => "gpu-pod",
    other_injector => "other-injector",
    huge_pod => "huge-pod",
    override_mode => "override-mode",
    clamp_mode => "clamp-mode",
    classic_mode => "classic-mode",
    reinvocation => "reinvocation",
    impostor_sidecar => "impostor-sidecar",
    unknown_fields => "unknown-fields",
    service_account_token => "service-account-token",
    egress_lock => "egress-lock",
    egress_lock_classic => "egress-lock-classic",
    flame_analysis => "flame-analysis",
}

#[test]
fn every_fixture_input_fails_restricted_before_hardening() {
    // Otherwise a fixture would prove nothing about the hardening.
    for entry in fs::read_dir(common::fixtures_dir()).unwrap() {
        let dir = entry.unwrap().path();
        let input = common::yaml(&fs::read_to_string(dir.join("input.yaml")).unwrap());
        let typed: Pod = serde_json::from_value(input).unwrap();
        assert!(!common::pss::restricted_violations(&typed).is_empty(), "{} is already restricted", dir.display());
    }
}

#[test]
fn the_pss_checker_catches_what_it_should() {
    let hardened = common::yaml(&fs::read_to_string(common::fixtures_dir().join("plain-pod/expected.yaml")).unwrap());
    let breakages: [(&str, Value); 8] = [
        ("/spec/hostNetwork", Value::Bool(true)),
        ("/spec/securityContext/runAsNonRoot", Value::Bool(false)),
        ("/spec/securityContext/seccompProfile", serde_json::json!({"type": "Unconfined"})),
        ("/spec/containers/0/securityContext/allowPrivilegeEscalation", Value::Bool(true)),
        ("/spec/containers/0/securityContext/capabilities", serde_json::json!({"drop": ["ALL"], "add": ["SYS_ADMIN"]})),
        ("/spec/containers/0/securityContext/privileged", Value::Bool(true)),
        ("/spec/initContainers/0/securityContext/runAsUser", Value::from(0)),
        ("/spec/volumes/0", serde_json::json!({"name": "tollgate-tmp", "hostPath": {"path": "/"}})),
    ];
    for (pointer, value) in breakages {
        let mut broken = hardened.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match broken.pointer_mut(parent).unwrap() {
            Value::Object(map) => {
                map.insert(key.to_owned(), value);
            }
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
            _ => unreachable!(),
        }
        let typed: Pod = serde_json::from_value(broken).unwrap();
        assert!(!common::pss::restricted_violations(&typed).is_empty(), "checker missed {pointer}");
    }
}
