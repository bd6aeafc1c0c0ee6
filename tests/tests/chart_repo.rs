//! The chart as an admin gets it, from a Helm repository. The images tollgate ships are built (`tollgate-images
//! build`, from this workspace's binaries) and their digests listed for mirroring (`tollgate-images list --out`);
//! `scripts/release.sh chart` packages the chart pinned to those digests (`helm package`) and writes the
//! repository's index (`helm repo index`); the directory is served over HTTP on loopback, and helm, with homes
//! of its own, adds it as a repository (`helm repo add`), finds the chart in it (`helm search repo`) and installs
//! it from there (`helm install tollgate/tollgate --version …`) into a real API server. What got installed is
//! the packaged chart's release, every image of it is pinned to the digest of the image built, the policy it
//! installed makes the webhook inject the pinned proxy, and helm fetched exactly the index and the package.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_e2e::images;
use tollgate_e2e::{ControlPlane, Webhook, namespace, workspace_bin};

/// The images the chart references, by their `image.<name>` value.
const CHART_IMAGES: [&str; 5] = ["webhook", "certs", "cni", "proxy", "ctl"];

fn repo_root() -> PathBuf {
    images::repo_root()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A static file server for `root` on 127.0.0.1: GET only, no directory listings, nothing outside `root`; every
/// request's path is recorded.
fn serve(root: PathBuf) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                continue;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
            }
            let mut words = request_line.split_whitespace();
            let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or("").to_owned();
            log.lock().unwrap().push(format!("{method} {path}"));
            let file = path.trim_start_matches('/');
            let found = (method == "GET" && !file.is_empty() && !file.split('/').any(|s| s == ".." || s.is_empty()))
                .then(|| std::fs::read(root.join(file)).ok())
                .flatten();
            let (status, body) = match found {
                Some(body) => ("200 OK", body),
                None => ("404 Not Found", b"not found\n".to_vec()),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        }
    });
    (url, requests)
}

/// helm with homes of its own under `home` (no repository or cache of the machine's), against `kubeconfig` if given.
fn helm(home: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(tollgate_e2e::bin_dir().join("helm"));
    command
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if let Some(kubeconfig) = kubeconfig {
        command.arg(format!("--kubeconfig={}", kubeconfig.display()));
    }
    command.output().unwrap()
}

/// `bin` from the workspace's build, without its debug info (the images test does the same: same code, same
/// libraries, a smaller layer to write).
fn stripped_into(bin: &str, dir: &Path) {
    let target = dir.join(bin);
    let stripped = Command::new("strip").arg("--strip-debug").arg("-o").arg(&target).arg(workspace_bin(bin)).status();
    if !matches!(stripped, Ok(s) if s.success()) {
        std::fs::copy(workspace_bin(bin), &target).unwrap();
    }
}

/// The digest of the one manifest an OCI image-layout archive's index.json names, read from the archive itself.
fn archive_digest(archive: &Path) -> String {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("index.json") {
            let mut index = String::new();
            entry.read_to_string(&mut index).unwrap();
            let index: Value = serde_json::from_str(&index).unwrap();
            return index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        }
    }
    panic!("{}: no index.json", archive.display())
}

fn documents(stream: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(stream).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

/// Every `image:` value in a stream of objects (containers, init containers, the policy's proxy image).
fn image_lines(stream: &str) -> Vec<String> {
    stream
        .lines()
        .filter_map(|line| line.trim().trim_start_matches("- ").strip_prefix("image: "))
        .map(|image| image.trim().trim_matches('"').to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_from_its_repository_over_http_pinned_to_the_images_built() {
    let tmp = tempfile::Builder::new().prefix("chart-repo-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (bins, built, dist, home) = (tmp.path().join("bin"), tmp.path().join("images"), tmp.path().join("charts"), tmp.path().join("helm"));
    std::fs::create_dir_all(&bins).unwrap();

    // The chart's images, built as the release builds them, and their digests as listed for mirroring.
    let mut build = Command::new(workspace_bin("tollgate-images"));
    build.arg("build").arg("--release-dir").arg(&bins).arg("--out").arg(&built);
    for name in CHART_IMAGES {
        stripped_into(images::image(name).unwrap().binary, &bins);
        build.arg(name);
    }
    let out = build.output().unwrap();
    assert!(out.status.success(), "tollgate-images build: {}", text(&out));
    let out = Command::new(workspace_bin("tollgate-images")).arg("list").arg("--out").arg(&built).args(CHART_IMAGES).output().unwrap();
    assert!(out.status.success(), "tollgate-images list --out: {}", text(&out));
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut digests = BTreeMap::new();
    for line in listing.lines() {
        let [name, reference, digest] = line.split('\t').collect::<Vec<_>>()[..] else { panic!("not name, reference, digest: {line:?}") };
        let image = images::image(name).unwrap();
        assert_eq!(reference, image.reference, "{line}");
        assert_eq!(digest, archive_digest(&built.join(format!("{name}.tar"))), "the digest of the archive built: {line}");
        digests.insert(name.to_owned(), digest.to_owned());
    }
    let mut chart_images = CHART_IMAGES.to_vec();
    chart_images.sort();
    assert_eq!(digests.keys().map(String::as_str).collect::<Vec<_>>(), chart_images, "one line per image built: {listing}");
    let digests_file = tmp.path().join("digests.txt");
    std::fs::write(&digests_file, &listing).unwrap();

    // The package and the index, as the release makes them.
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/release.sh"))
        .arg("chart")
        .arg(&dist)
        .arg("--digests")
        .arg(&digests_file)
        .env("TOLLGATE_BIN_DIR", tollgate_e2e::bin_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/release.sh chart: {}", text(&out));
    let version = env!("CARGO_PKG_VERSION");
    let package = format!("tollgate-{version}.tgz");
    let mut files: Vec<String> = std::fs::read_dir(&dist).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["index.yaml".to_owned(), package.clone()]);
    let index: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(dist.join("index.yaml")).unwrap()).unwrap();
    let entries = index["entries"]["tollgate"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!((&entries[0]["version"], &entries[0]["appVersion"]), (&Value::from(version), &Value::from(version)));
    assert_eq!(entries[0]["urls"], serde_json::json!([package]), "relative: the directory can be served from anywhere");
    assert_eq!(entries[0]["digest"], sha256_hex(&std::fs::read(dist.join(&package)).unwrap()), "the index names the package's digest");

    // Served over HTTP, added and searched as a user would.
    let (url, requests) = serve(dist.clone());
    let out = helm(&home, None, &["repo", "add", "tollgate", &url]);
    assert!(out.status.success(), "helm repo add: {}", text(&out));
    let out = helm(&home, None, &["search", "repo", "tollgate/tollgate", "--versions", "-o", "json"]);
    assert!(out.status.success(), "helm search repo: {}", text(&out));
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!((&found[0]["name"], &found[0]["version"]), (&Value::from("tollgate/tollgate"), &Value::from(version)));
    let out = helm(&home, None, &["show", "values", "tollgate/tollgate", "--version", version]);
    assert!(out.status.success(), "helm show values: {}", text(&out));
    let values: Value = serde_yaml_ng::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    for (name, digest) in &digests {
        assert_eq!(values["image"]["digests"][name], digest.as_str(), "the packaged chart's default digest of {name}");
    }

    // Installed from the repository into a real API server (the webhook a local process, as the e2e tests run it).
    let plane = ControlPlane::start();
    let webhook = Webhook::start_unregistered(&plane);
    namespace(&plane, "analyses", true);
    assert!(plane.kubectl(&["create", "namespace", "tollgate"]).status.success());
    let local = webhook.chart_values(&plane);
    let kubeconfig = Some(plane.kubeconfig.as_path());
    let mut install = vec!["install", "tollgate", "tollgate/tollgate", "--version", version, "-n", "tollgate"];
    install.extend(local.iter().map(String::as_str));
    install.extend([
        "--set",
        "analysisNamespaces[0].name=analyses",
        // No node here runs the validation hook's Job (the node suite does).
        "--set",
        "validation.enabled=false",
        "--set",
        "egressLock.enabled=true",
    ]);
    let out = helm(&home, kubeconfig, &install);
    assert!(out.status.success(), "helm install from the repository: {}", text(&out));
    let requested = requests.lock().unwrap().clone();
    let expected = ["GET /index.yaml".to_owned(), format!("GET /{package}")];
    assert!(requested.iter().all(|r| expected.contains(r)), "helm asked for no more than the index and the package: {requested:?}");
    assert!(expected.iter().all(|e| requested.contains(e)), "helm fetched the index and the package: {requested:?}");

    // What got installed: the repository's chart, every image pinned to what was built.
    let out = helm(&home, kubeconfig, &["list", "-n", "tollgate", "-o", "json"]);
    let releases: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(releases[0]["chart"], format!("tollgate-{version}"), "{releases}");
    assert_eq!(releases[0]["status"], "deployed", "{releases}");
    let pinned = |name: &str| format!("{}@{}", images::image(name).unwrap().reference, digests[name]);
    let jsonpath = |kind: &str, name: &str, path: &str| {
        let out = plane.kubectl(&["get", kind, name, "-n", "tollgate", "-o", &format!("jsonpath={path}")]);
        assert!(out.status.success(), "{kind} {name}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(jsonpath("deployment", "tollgate-webhook", "{.spec.template.spec.containers[0].image}"), pinned("webhook"));
    assert_eq!(jsonpath("daemonset", "tollgate-cni", "{.spec.template.spec.containers[0].image}"), pinned("cni"));
    let manifest = helm(&home, kubeconfig, &["get", "all", "tollgate", "-n", "tollgate"]);
    assert!(manifest.status.success(), "{}", text(&manifest));
    let manifest = String::from_utf8(manifest.stdout).unwrap();
    let mut seen = image_lines(&manifest);
    seen.sort();
    seen.dedup();
    let mut wanted: Vec<String> = CHART_IMAGES.iter().map(|n| pinned(n)).collect();
    wanted.sort();
    assert_eq!(seen, wanted, "every image of the release and its hooks (helm get all), each pinned by digest");

    // The installed policy injects the pinned proxy: the webhook's own offline hardening with that policy.
    let policy = jsonpath("configmap", "tollgate-policy", "{.data.policy\\.yaml}");
    let policy_file = tmp.path().join("policy.yaml");
    std::fs::write(&policy_file, &policy).unwrap();
    let pod = tmp.path().join("pod.yaml");
    std::fs::write(&pod, "apiVersion: v1\nkind: Pod\nmetadata: { name: p, namespace: analyses }\nspec:\n  containers: [{ name: app, image: 'registry.example.org/app:1.0' }]\n").unwrap();
    let out = Command::new(workspace_bin("tollgate-webhook"))
        .args(["inject", "-f"])
        .arg(&pod)
        .arg("--policy")
        .arg(&policy_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "tollgate-webhook inject with the installed policy: {}", text(&out));
    let hardened = documents(&String::from_utf8(out.stdout).unwrap());
    let containers: Vec<&Value> =
        ["initContainers", "containers"].iter().flat_map(|k| hardened[0]["spec"][k].as_array().into_iter().flatten()).collect();
    let proxy = containers.iter().find(|c| c["name"] == "tollgate-proxy").unwrap_or_else(|| panic!("no proxy in {containers:?}"));
    assert_eq!(proxy["image"], pinned("proxy"));
}
