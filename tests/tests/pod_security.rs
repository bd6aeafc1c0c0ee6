//! Kubernetes' own Pod Security fixtures as a peer suite: the pods the Kubernetes project wrote to test Pod
//! Security admission (module `k8s.io/pod-security-admission`, `test/testdata/<level>/v1.<minor>/{pass,fail}`),
//! every level and every version tollgate supports (1.30 up to the API server's), created with kubectl on the
//! real kube-apiserver the e2e harness starts, with tollgate's webhook registered and Pod Security
//! "restricted" enforced at that version (`pod-security.kubernetes.io/enforce-version`).
//!
//! Every pod that violates restricted is denied by tollgate or stored hardened and restricted (the API
//! server's own Pod Security admitted it, and the independent checker `webhook/tests/common/pss.rs` agrees);
//! every pod that meets restricted is stored, or refused by tollgate for a reason the README lists as tollgate
//! being stricter than the standard on purpose (the list under "Kubernetes' Pod Security fixtures", which
//! this test reads). Nothing is refused by the API server itself (validation, or Pod Security after tollgate).
//! Under the default policy (`onViolation: deny`) and under `onViolation: override`, which stores hardened
//! what it can fix.
//!
//! The fixtures come from the Go module cache: the module version is the API server's staging version
//! (kube-apiserver v1.36.3 → k8s.io/pod-security-admission v0.36.3), which building kube-apiserver
//! (tests/control-plane/provision.sh) downloaded; `go mod download` fetches it where it is missing.

#[path = "../../webhook/tests/common/pss.rs"]
mod pss;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use tollgate_e2e::{ControlPlane, Webhook};

/// The oldest Kubernetes minor version tollgate supports.
const OLDEST: u32 = 30;

/// The API server's version: (minor, `v1.36.3`).
fn server_version(plane: &ControlPlane) -> (u32, String) {
    let out = plane.kubectl(&["version", "-o", "json"]);
    assert!(out.status.success(), "kubectl version: {}", String::from_utf8_lossy(&out.stderr));
    let version: Value = serde_json::from_slice(&out.stdout).unwrap();
    let git = version["serverVersion"]["gitVersion"].as_str().expect("serverVersion.gitVersion").to_owned();
    let minor: String = version["serverVersion"]["minor"].as_str().unwrap().chars().take_while(char::is_ascii_digit).collect();
    (minor.parse().unwrap(), git)
}

/// `test/testdata` of k8s.io/pod-security-admission at the API server's staging version, from the Go module
/// cache (`TOLLGATE_PSA_TESTDATA` names another directory).
fn testdata(git_version: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_PSA_TESTDATA") {
        return PathBuf::from(dir);
    }
    // v1.36.3 -> v0.36.3 (a pre-release or build suffix stays).
    let staging = format!("v0.{}", git_version.strip_prefix("v1.").expect("a 1.x version"));
    let module = format!("k8s.io/pod-security-admission@{staging}");
    let out = Command::new("go")
        .args(["mod", "download", "-json", &module])
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("go mod download {module} (Go is what provision.sh builds kube-apiserver with): {e}"));
    assert!(
        out.status.success(),
        "go mod download {module}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = PathBuf::from(info["Dir"].as_str().expect("the module's Dir")).join("test/testdata");
    assert!(dir.join("restricted").is_dir(), "{} has no restricted fixtures", dir.display());
    dir
}

/// The fixture directory for `level` at `minor`: the newest `v1.N` with N <= minor (a version that changed no
/// check has no directory of its own: its fixtures are the previous version's).
fn fixture_dir(testdata: &Path, level: &str, minor: u32) -> (u32, PathBuf) {
    (0..=minor)
        .rev()
        .map(|n| (n, testdata.join(level).join(format!("v1.{n}"))))
        .find(|(_, dir)| dir.is_dir())
        .unwrap_or_else(|| panic!("no {level} fixtures up to 1.{minor} in {}", testdata.display()))
}

/// The reasons the README lists for refusing, on purpose, a pod Pod Security allows: the rule names of the list
/// after the line that says so.
fn on_purpose_reasons() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find("stricter than Pod Security on purpose").expect("the README's list of refusals on purpose");
    let mut reasons = BTreeSet::new();
    for line in readme[start..].lines().skip(1).skip_while(|l| l.trim().is_empty()) {
        let Some(rest) = line.strip_prefix("- `") else { break };
        reasons.insert(rest.split('`').next().unwrap().to_owned());
    }
    assert!(!reasons.is_empty(), "the README lists no reason");
    reasons
}

/// The rules a tollgate denial names (`... [operating-system]; ... [sysctls]`).
fn rules_of(message: &str) -> BTreeSet<String> {
    message
        .split('[')
        .skip(1)
        .filter_map(|part| part.split_once(']').map(|(rule, _)| rule))
        .filter(|rule| !rule.is_empty() && rule.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(str::to_owned)
        .collect()
}

struct Fixture {
    /// `restricted/v1.35/pass/base_windows.yaml`
    source: String,
    level: &'static str,
    /// `pass` or `fail` (the fixture meets its level, or violates it).
    outcome: &'static str,
    compliant: bool,
    /// The pod's name here (the fixtures' own names have underscores, which no object name may have).
    name: String,
    file: PathBuf,
}

/// Every fixture of every level for Pod Security at 1.`minor`, written renamed into `dir`.
fn fixtures(testdata: &Path, minor: u32, dir: &Path) -> Vec<Fixture> {
    std::fs::create_dir_all(dir).unwrap();
    let mut all = Vec::new();
    for level in ["restricted", "baseline"] {
        let (version, level_dir) = fixture_dir(testdata, level, minor);
        for outcome in ["pass", "fail"] {
            let mut files: Vec<PathBuf> = std::fs::read_dir(level_dir.join(outcome)).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for path in files {
                let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
                let name = format!("{}-{}-{}", &level[..1], outcome, stem.replace('_', "-"));
                let mut pod: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                assert_eq!(pod["kind"], "Pod", "{}", path.display());
                pod["metadata"]["name"] = json!(name);
                let file = dir.join(format!("{name}.json"));
                std::fs::write(&file, pod.to_string()).unwrap();
                all.push(Fixture {
                    source: format!("{level}/v1.{version}/{outcome}/{stem}.yaml"),
                    level,
                    outcome,
                    compliant: level == "restricted" && outcome == "pass",
                    name,
                    file,
                });
            }
        }
    }
    all
}

/// A namespace where tollgate injects and Pod Security "restricted" is enforced at 1.`minor`.
fn namespace(plane: &ControlPlane, name: &str, minor: u32) {
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {
            "tollgate.dev/inject": "enabled",
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": format!("v1.{minor}"),
        }}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}},
    ]});
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string());
    assert!(out.status.success(), "namespace {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Wait until the webhook answers for `namespace` (a dry run of a plain pod is hardened).
fn wait_for_webhook(plane: &ControlPlane, namespace: &str) {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "registry.example.org/app:1"}]}});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = plane.kubectl_stdin(&["create", "--dry-run=server", "-o", "json", "-f", "-"], &pod.to_string());
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("tollgate-proxy") {
            return;
        }
        assert!(Instant::now() < deadline, "the webhook does not answer: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl create -f` every fixture at once; kubectl goes on past each refusal and names its file.
fn create_all(plane: &ControlPlane, namespace: &str, fixtures: &[Fixture]) -> BTreeMap<String, String> {
    let mut args = vec!["create".to_owned(), "-n".to_owned(), namespace.to_owned()];
    for fixture in fixtures {
        args.push("-f".into());
        args.push(fixture.file.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = plane.kubectl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut refusals = BTreeMap::new();
    for line in stderr.lines() {
        if let Some(fixture) = fixtures.iter().find(|f| line.contains(&format!("\"{}\"", f.file.display()))) {
            refusals.insert(fixture.name.clone(), line.to_owned());
        }
    }
    refusals
}

#[derive(Default)]
struct Tally {
    stored: usize,
    denied: usize,
}

/// Run every fixture for every supported version under the webhook that is registered; `tag` names the
/// namespaces. Returns the failures.
async fn run_all(plane: &ControlPlane, testdata: &Path, server_minor: u32, tag: &str, work: &Path) -> Vec<String> {
    let reasons = on_purpose_reasons();
    let mut failures = Vec::new();
    for minor in OLDEST..=server_minor {
        let ns = format!("psa-{tag}-1-{minor}");
        namespace(plane, &ns, minor);
        wait_for_webhook(plane, &ns);
        let fixtures = fixtures(testdata, minor, &work.join(&ns));
        let refusals = create_all(plane, &ns, &fixtures);
        let pods: Api<Pod> = Api::namespaced(plane.client().await, &ns);
        let stored: BTreeMap<String, Pod> =
            pods.list(&ListParams::default()).await.unwrap().items.into_iter().map(|p| (p.metadata.name.clone().unwrap(), p)).collect();
        let mut tally: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
        for fixture in &fixtures {
            let what = format!("1.{minor} {tag} {} ({})", fixture.source, fixture.name);
            let entry = tally.entry((fixture.level, fixture.outcome)).or_default();
            match (stored.get(&fixture.name), refusals.get(&fixture.name)) {
                (Some(pod), None) => {
                    entry.stored += 1;
                    let injected = pod.metadata.labels.as_ref().and_then(|l| l.get("tollgate.dev/injected")).map(String::as_str);
                    if injected != Some("true") {
                        failures.push(format!("{what}: stored without tollgate's hardening (tollgate.dev/injected {injected:?})"));
                    }
                    let violations = pss::restricted_violations(pod);
                    if !violations.is_empty() {
                        failures.push(format!("{what}: stored, but not restricted to the independent checker: {violations:?}"));
                    }
                }
                (None, Some(refusal)) if refusal.contains("tollgate denied") => {
                    entry.denied += 1;
                    if fixture.compliant {
                        let rules = rules_of(refusal);
                        let unlisted: Vec<&String> = rules.iter().filter(|r| !reasons.contains(*r)).collect();
                        if rules.is_empty() || !unlisted.is_empty() {
                            failures.push(format!(
                                "{what}: meets restricted but tollgate refused it for {unlisted:?}, which the README does not list as on purpose ({reasons:?}): {refusal}"
                            ));
                        }
                    }
                }
                (None, Some(refusal)) => failures.push(format!("{what}: refused, not by tollgate: {refusal}")),
                (None, None) => failures.push(format!("{what}: neither stored nor refused")),
                (Some(_), Some(refusal)) => failures.push(format!("{what}: stored and refused: {refusal}")),
            }
        }
        let summary: Vec<String> =
            tally.iter().map(|((level, outcome), t)| format!("{level} {outcome}: {} stored, {} denied", t.stored, t.denied)).collect();
        eprintln!("pod_security: 1.{minor} {tag}: {} fixtures; {}", fixtures.len(), summary.join("; "));
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_pod_security_fixtures_are_denied_or_stored_restricted_at_every_supported_version() {
    let plane = ControlPlane::start();
    let (server_minor, git_version) = server_version(&plane);
    assert!(server_minor >= OLDEST, "the API server runs 1.{server_minor}, older than tollgate supports");
    let testdata = testdata(&git_version);
    let work = tempfile::tempdir().unwrap();

    // The API server's own answer to a sysctl without a name (the harden fuzz target's finding 1): refused, in a
    // namespace tollgate does not manage, so tollgate's removing or denying it changes no pod that could be stored.
    tollgate_e2e::namespace(&plane, "unmanaged", false);
    let nameless = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nameless-sysctl", "namespace": "unmanaged"},
        "spec": {"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}, {"nmae": "kernel.msgmax", "value": "65536"}]},
                 "containers": [{"name": "app", "image": "registry.example.org/app:1"}]}});
    // kubectl asks for strict decoding: the misspelt key alone is refused; without it, the missing name is.
    let out = plane.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &nameless.to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(r#"unknown field "spec.securityContext.sysctls[1].nmae""#), "{stderr}");
    let out = plane.kubectl_stdin(&["create", "--dry-run=server", "--validate=false", "-f", "-"], &nameless.to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("spec.securityContext.sysctls[1].name: Required value"), "{stderr}");
    // What the harden and review fuzz targets take as refused by the API server's validation whatever tollgate
    // does (fuzz/fuzz_targets/harden.rs, refused_by_api_validation): a profile without a type, a volume without
    // a name, two volumes of one name.
    for (spec, says) in [
        (json!({"securityContext": {"seccompProfile": {"Type": "Localhost"}}}), "spec.securityContext.seccompProfile.type: Required value"),
        (
            json!({"securityContext": {"appArmorProfile": {"typi": "Unconfined"}}}),
            "spec.securityContext.appArmorProfile.type: Required value",
        ),
        (json!({"volumes": [{"nmae": "x", "emptyDir": {}}]}), "spec.volumes[0].name: Required value"),
        (json!({"volumes": [{"name": "x", "emptyDir": {}}, {"name": "x", "emptyDir": {}}]}), "spec.volumes[1].name: Duplicate value"),
    ] {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "refused", "namespace": "unmanaged"},
            "spec": {"containers": [{"name": "app", "image": "registry.example.org/app:1"}]}});
        for (key, value) in spec.as_object().unwrap() {
            pod["spec"][key] = value.clone();
        }
        let out = plane.kubectl_stdin(&["create", "--dry-run=server", "--validate=false", "-f", "-"], &pod.to_string());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{spec}: {stderr}");
    }

    let mut failures = Vec::new();
    {
        let webhook = Webhook::start(&plane);
        assert!(webhook.process.logs().contains(&format!("\"kubernetes\":\"1.{server_minor}\"")), "{}", webhook.process.logs());
        failures.extend(run_all(&plane, &testdata, server_minor, "deny", work.path()).await);

        // The findings on the newest version: tcp_rmem/tcp_wmem stored as they are; a Windows pod denied for its
        // operating system, not stored with Linux-only fields the API server refuses.
        let ns = format!("psa-deny-1-{server_minor}");
        let pods: Api<Pod> = Api::namespaced(plane.client().await, &ns);
        let sysctls = pods.get("r-pass-sysctls1").await.expect("sysctls1 stored").spec.unwrap().security_context.unwrap().sysctls.unwrap();
        let names: Vec<&str> = sysctls.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"net.ipv4.tcp_rmem") && names.contains(&"net.ipv4.tcp_wmem"), "{names:?}");
        assert!(pods.get_opt("r-pass-base-windows").await.unwrap().is_none(), "a Windows pod is not stored");
    }
    {
        let webhook = Webhook::start_with_policy(&plane, "onViolation: override\n");
        let _ = &webhook;
        failures.extend(run_all(&plane, &testdata, server_minor, "override", work.path()).await);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
