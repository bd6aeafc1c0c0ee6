//! A release an admin can trust, the parts that need no cluster. Every binary tollgate ships has an SBOM
//! (`tollgate-images sbom`, the one `tollgate-images build` puts in each image and beside it): CycloneDX that names
//! exactly the crates cargo resolves for the release's build of that binary — compared with `cargo tree -e normal`
//! read here on its own — each pinned by the checksum Cargo.lock records, and no fewer than the crates whose
//! sources the built binary itself names. The workspace build (`cargo build --workspace`, what scripts/cluster.sh
//! builds its images from) resolves those binaries' crates alike, so the node's images carry true SBOMs too. The
//! chart pins its images by digest (`image.digests`), and refuses a digest that is not one.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use tollgate_e2e::images::{self, IMAGES, RELEASE_BUILD};
use tollgate_e2e::workspace_bin;

type Crate = (String, String);

fn cargo() -> Command {
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(images::repo_root());
    command
}

/// `cargo tree -e normal --locked --offline ARGS -p PACKAGES…`, its stdout.
fn cargo_tree(args: &[&str], packages: &[&str]) -> String {
    let mut command = cargo();
    command.args(["tree", "-e", "normal", "--locked", "--offline"]).args(args);
    for package in packages {
        command.args(["-p", package]);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "cargo tree {args:?} {packages:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// "name vX.Y.Z (…)" as a crate.
fn krate(package: &str) -> Crate {
    let mut words = package.split_whitespace();
    let name = words.next().unwrap().to_owned();
    let version = words.next().unwrap().strip_prefix('v').unwrap().to_owned();
    (name, version)
}

/// The crates of `root`'s tree when `packages` are built together: `root`'s section of a --no-dedupe tree.
fn tree_of(root: &str, packages: &[&str]) -> BTreeSet<Crate> {
    let text = cargo_tree(&["--no-dedupe", "--prefix", "depth", "-f", "{p}"], packages);
    let mut out = BTreeSet::new();
    let mut current = String::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let digits = line.find(|c: char| !c.is_ascii_digit()).unwrap();
        let krate = krate(&line[digits..]);
        if &line[..digits] == "0" {
            current = krate.0.clone();
        }
        if current == root {
            out.insert(krate);
        }
    }
    assert!(!out.is_empty(), "{root} not in the tree of {packages:?}");
    out
}

/// `cargo tree -e normal -p PACKAGE`, the crates it names.
fn tree_alone(package: &str) -> BTreeSet<Crate> {
    cargo_tree(&["--prefix", "none", "-f", "{p}"], &[package]).lines().filter(|l| !l.is_empty()).map(krate).collect()
}

/// Cargo.lock's crates and the checksum of each registry crate.
fn lockfile() -> BTreeMap<Crate, Option<String>> {
    let text = std::fs::read_to_string(images::repo_root().join("Cargo.lock")).unwrap();
    let mut out = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let mut fields = BTreeMap::new();
        for line in block.lines() {
            if let Some((key, value)) = line.split_once(" = \"") {
                fields.insert(key.trim().to_owned(), value.trim_end_matches('"').to_owned());
            }
        }
        out.insert((fields["name"].clone(), fields["version"].clone()), fields.get("checksum").cloned());
    }
    out
}

/// The registry crates whose sources a built binary names (file paths of panics and debug info, kept under
/// …/index.crates.io-<hash>/<name>-<version>/): crates it certainly links.
fn named_in_binary(binary: &[u8], lock: &BTreeMap<Crate, Option<String>>) -> BTreeSet<Crate> {
    let marker = b"index.crates.io-";
    let mut found = BTreeSet::new();
    let mut at = 0;
    while let Some(offset) = binary[at..].iter().position(|&b| b == b'i') {
        at += offset + 1;
        if !binary[at - 1..].starts_with(marker) {
            continue;
        }
        let start = at - 1 + marker.len() + 17; // the 16 hex digits of the registry's hash and a "/"
        let Some(dir) = binary.get(start..).map(|rest| {
            let end = rest.iter().position(|&b| !(b.is_ascii_alphanumeric() || b"-_.+".contains(&b))).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        }) else {
            continue;
        };
        // name-version, split where the lockfile knows the pair (names hold dashes; so do some versions).
        for (i, _) in dir.match_indices('-').collect::<Vec<_>>().into_iter().rev() {
            let pair = (dir[..i].to_owned(), dir[i + 1..].to_owned());
            if lock.contains_key(&pair) {
                found.insert(pair);
                break;
            }
        }
    }
    found
}

/// `binary` of `package` built by itself (`cargo build -p`), as the release builds tollgate-cni; kept between runs
/// in a target directory of its own.
fn built_alone(package: &str, binary: &str) -> std::path::PathBuf {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("built-alone-{package}"));
    let out = cargo()
        .args(["build", "--locked", "--offline", "-q", "-p", package, "--bin", binary, "--target-dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo build -p {package}: {}", String::from_utf8_lossy(&out.stderr));
    target.join("debug").join(binary)
}

fn sbom_of(image: &images::Image) -> Value {
    let dir = tempfile::Builder::new().prefix("sbom-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out =
        Command::new(workspace_bin("tollgate-images")).args(["sbom", "--release-dir"]).arg(dir.path()).arg(image.name).output().unwrap();
    assert!(out.status.success(), "tollgate-images sbom {}: {}", image.name, String::from_utf8_lossy(&out.stderr));
    let path = dir.path().join(format!("{}.cdx.json", image.binary));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), path.display().to_string());
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_shipped_binary_has_an_sbom_naming_the_crates_it_links() {
    let lock = lockfile();
    for image in &IMAGES {
        let package = images::package_of(image).unwrap();
        let sbom = sbom_of(image);
        let what = format!("the SBOM of {} ({package})", image.binary);
        assert_eq!((&sbom["bomFormat"], &sbom["specVersion"], &sbom["version"]), (&"CycloneDX".into(), &"1.5".into(), &1.into()), "{what}");
        let root = &sbom["metadata"]["component"];
        assert_eq!((&root["type"], &root["name"]), (&"application".into(), &image.binary.into()), "{what}");
        assert_eq!(root["licenses"][0]["expression"], "Apache-2.0", "{what}");
        let properties: BTreeMap<&str, &str> =
            root["properties"].as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap(), p["value"].as_str().unwrap())).collect();
        assert_eq!((properties["tollgate:cargo:package"], properties["tollgate:image"]), (package, image.reference), "{what}");

        // Exactly the crates of the release's build of the binary: tollgate-cni by itself, the others together.
        let mut named: BTreeSet<Crate> = BTreeSet::from([(package.to_owned(), root["version"].as_str().unwrap().to_owned())]);
        let components = sbom["components"].as_array().unwrap();
        for c in components {
            let krate = (c["name"].as_str().unwrap().to_owned(), c["version"].as_str().unwrap().to_owned());
            assert!(named.insert(krate.clone()), "{what} names {krate:?} twice");
            let checksum = lock.get(&krate).unwrap_or_else(|| panic!("{what}: {krate:?} is not in Cargo.lock"));
            match checksum {
                Some(sum) => {
                    assert_eq!(c["purl"], format!("pkg:cargo/{}@{}", krate.0, krate.1), "{what}");
                    assert_eq!(c["hashes"], serde_json::json!([{"alg": "SHA-256", "content": sum}]), "{what}: {krate:?}");
                }
                None => assert!(krate.0.starts_with("tollgate-") && c.get("purl").is_none(), "{what}: {krate:?} is a workspace crate"),
            }
            assert!(c["licenses"][0]["expression"].as_str().is_some_and(|l| !l.is_empty()), "{what}: {krate:?} has no licence");
        }
        let expected = if RELEASE_BUILD.contains(&package) {
            let together = tree_of(package, &RELEASE_BUILD);
            let alone = tree_alone(package);
            assert!(alone.is_subset(&together), "{package}: built with others it links no less than alone");
            together
        } else {
            assert_eq!(package, "tollgate-cni");
            tree_alone(package)
        };
        let missing: Vec<_> = expected.difference(&named).collect();
        let extra: Vec<_> = named.difference(&expected).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{what} against cargo tree -e normal: missing {missing:?}, not linked {extra:?}");

        // The dependency graph: one entry per crate, each edge between crates named, every crate reached.
        let refs: BTreeMap<&str, Vec<&str>> = sbom["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["ref"].as_str().unwrap(), d["dependsOn"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect()))
            .collect();
        assert_eq!(refs.len(), named.len(), "{what}: one dependencies entry per crate");
        let mut reached = BTreeSet::from([root["bom-ref"].as_str().unwrap()]);
        let mut todo = vec![root["bom-ref"].as_str().unwrap()];
        while let Some(next) = todo.pop() {
            for on in &refs[next] {
                assert!(refs.contains_key(on), "{what}: {next} depends on {on}, which it does not name");
                if reached.insert(on) {
                    todo.push(on);
                }
            }
        }
        assert_eq!(reached.len(), named.len(), "{what}: every crate is reached from the binary");

        // And the binary itself, built as the release builds it, links nothing the SBOM leaves out: the
        // workspace's build for the joint build's binaries (they resolve alike: the next test), tollgate-cni by
        // itself (the workspace's build of it links more: other members' features).
        let binary = if RELEASE_BUILD.contains(&package) { workspace_bin(image.binary) } else { built_alone(package, image.binary) };
        let binary = std::fs::read(binary).unwrap();
        let evidence = named_in_binary(&binary, &lock);
        let unnamed: Vec<_> = evidence.difference(&named).collect();
        assert!(unnamed.is_empty(), "{} links {unnamed:?}, which {what} does not name", image.binary);
        println!("{}: {} crates, {} of them named in the binary itself", image.binary, named.len(), evidence.len());
    }
}

/// docker/rootfs.sh, which both the Dockerfile and the harness assemble images with, refuses to make an image tollgate
/// ships without its binary's SBOM, and puts it at /usr/share/doc/tollgate/sbom.cdx.json.
#[test]
fn no_image_without_its_sbom() {
    let tmp = tempfile::Builder::new().prefix("rootfs-sbom-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(workspace_bin("tollgate-pause"), bin.join("tollgate-pause")).unwrap();
    let rootfs = |out: &str| {
        Command::new("bash")
            .arg(images::repo_root().join("docker/rootfs.sh"))
            .arg("pause")
            .arg(&bin)
            .arg(tmp.path().join(out))
            .output()
            .unwrap()
    };
    let refused = rootfs("without");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("tollgate-pause.cdx.json is missing"), "{stderr}");
    let out = Command::new(workspace_bin("tollgate-images")).args(["sbom", "--release-dir"]).arg(&bin).arg("pause").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made = rootfs("with");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let inside = tmp.path().join("with").join(images::SBOM_IN_IMAGE.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), std::fs::read(bin.join("tollgate-pause.cdx.json")).unwrap());
}

/// scripts/cluster.sh builds the node's images from `cargo build --release --workspace`: the binaries of the
/// release's joint build resolve there as in that build, so the SBOMs in those images are true as well.
#[test]
fn the_workspace_build_resolves_the_release_binaries_alike() {
    let out = cargo().args(["metadata", "--format-version", "1", "--no-deps", "--locked", "--offline"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&str> = metadata["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for package in RELEASE_BUILD {
        assert_eq!(tree_of(package, &members), tree_of(package, &RELEASE_BUILD), "{package} in the workspace build");
    }
}

/// The SBOM is made again for each build and is the same each time (no serial number, the time of
/// SOURCE_DATE_EPOCH), so equal binaries still give equal images.
#[test]
fn sboms_are_reproducible() {
    let pause = images::image("pause").unwrap();
    assert_eq!(sbom_of(pause), sbom_of(pause));
    assert!(sbom_of(pause).get("serialNumber").is_none());
    assert_eq!(sbom_of(pause)["metadata"]["timestamp"], "1970-01-01T00:00:00Z");
}

fn helm_template(sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut command = Command::new(tollgate_e2e::bin_dir().join("helm"));
    command.args(["template", "tollgate"]).arg(images::repo_root().join("charts/tollgate")).args(["-n", "tollgate"]);
    for set in sets {
        command.args(["--set", set]);
    }
    let out = command.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

/// Every container image of the rendered objects (pods, pod templates, jobs of cron jobs) and the policy's proxy
/// image, by the object that holds it.
fn images_in(objects: &[Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for object in objects {
        let name = format!("{}/{}", object["kind"].as_str().unwrap(), object["metadata"]["name"].as_str().unwrap());
        for spec in [&object["spec"]["template"]["spec"], &object["spec"]["jobTemplate"]["spec"]["template"]["spec"], &object["spec"]] {
            for key in ["initContainers", "containers"] {
                for container in spec[key].as_array().into_iter().flatten() {
                    out.insert(format!("{name} {}", container["name"].as_str().unwrap()), container["image"].as_str().unwrap().to_owned());
                }
            }
        }
        if object["kind"] == "ConfigMap" {
            for (key, text) in object["data"].as_object().into_iter().flatten() {
                let policy: Value = serde_yaml_ng::from_str(text.as_str().unwrap_or_default()).unwrap_or_default();
                if let Some(image) = policy["proxy"]["image"].as_str() {
                    out.insert(format!("{name} {key} proxy.image"), image.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn the_chart_pins_its_images_by_digest() {
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let names = [("webhook", 'a'), ("certs", 'b'), ("cni", 'c'), ("proxy", 'd'), ("ctl", 'e')];
    let reference = |name: &str| images::image(name).unwrap().reference;
    let mut sets: Vec<String> = names.iter().map(|(n, c)| format!("image.digests.{n}={}", digest(*c))).collect();
    sets.push("egressLock.enabled=true".into());
    let as_str: Vec<&str> = sets.iter().map(String::as_str).collect();
    let pinned = images_in(&helm_template(&as_str).unwrap());
    let want = |name: &str| names.iter().find(|(n, _)| *n == name).map(|(n, c)| format!("{}@{}", reference(n), digest(*c))).unwrap();
    let image_of = |object: &str| pinned.iter().find(|(k, _)| k.starts_with(object)).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(image_of("Deployment/tollgate-webhook webhook"), want("webhook"), "{pinned:#?}");
    assert_eq!(image_of("DaemonSet/tollgate-cni"), want("cni"), "{pinned:#?}");
    assert_eq!(image_of("ConfigMap/tollgate-policy policy.yaml proxy.image"), want("proxy"), "{pinned:#?}");
    assert_eq!(image_of("Pod/tollgate-test "), want("ctl"), "{pinned:#?}");
    assert_eq!(image_of("CronJob/tollgate-certs-renew"), want("certs"), "{pinned:#?}");
    for (holder, image) in &pinned {
        assert!(names.iter().any(|(n, _)| *image == want(n)), "{holder}: {image} is not one of tollgate's images, pinned");
    }

    // With a mirror, the mirror's repository at the same digest.
    let mirrored =
        images_in(&helm_template(&["image.registry=mirror.example.org/tg", &format!("image.digests.webhook={}", digest('a'))]).unwrap());
    assert_eq!(
        mirrored["Deployment/tollgate-webhook webhook"],
        format!("mirror.example.org/tg/privateaim/tollgate-webhook:0.1.0@{}", digest('a'))
    );
    // A reference already pinned keeps its digest if it is the same, and is refused if it is another.
    let same = images_in(
        &helm_template(&[&format!("image.webhook=r.example.org/w@{}", digest('a')), &format!("image.digests.webhook={}", digest('a'))])
            .unwrap(),
    );
    assert_eq!(same["Deployment/tollgate-webhook webhook"], format!("r.example.org/w@{}", digest('a')));
    let err =
        helm_template(&[&format!("image.webhook=r.example.org/w@{}", digest('a')), &format!("image.digests.webhook={}", digest('b'))])
            .unwrap_err();
    assert!(err.contains("image.webhook") && err.contains("another digest than image.digests.webhook"), "{err}");
    // Unpinned by default; the schema refuses what is not a digest of one of the images.
    let unpinned = images_in(&helm_template(&[]).unwrap());
    assert!(unpinned.values().all(|i| !i.contains('@')), "{unpinned:#?}");
    for bad in [
        "image.digests.webhook=sha256:abc".to_owned(),
        "image.digests.webhook=latest".into(),
        format!("image.digests.webhok={}", digest('a')),
    ] {
        let err = helm_template(&[&bad]).unwrap_err();
        assert!(err.contains("image/digests"), "{bad}: {err}");
    }
}
