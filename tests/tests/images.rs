//! The images, built without a registry or an engine (`tollgate_e2e::images`), and what runs in them; no control
//! plane needed. Each image is built from the debug binaries `cargo build --workspace` made (their debug info
//! stripped to keep the test fast: the same code and the same libraries), then read back: index → manifest →
//! config → layer, every digest and size checked; the layer holds the binary, its libraries, the CA bundle,
//! passwd and group, the binary's SBOM, and no other executable; the config is the Dockerfile stage's. As root,
//! the layer is unpacked and the binary run in it with chroot as the image's non-root user — proof that the image
//! is complete.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_e2e::images::{self, IMAGES, PAUSE_REFERENCE, StageConfig};
use tollgate_e2e::workspace_bin;
use tollgate_testkit::wait_until;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// `bin` copied into `dir` without its debug info (a plain copy where `strip` is missing).
fn stripped_into(bin: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let source = workspace_bin(bin);
    let target = dir.join(bin);
    let stripped = Command::new("strip").arg("--strip-debug").arg("-o").arg(&target).arg(&source).status();
    if !matches!(stripped, Ok(s) if s.success()) {
        eprintln!("strip unavailable or failed; using {} as it is", source.display());
        std::fs::copy(&source, &target).unwrap();
    }
}

/// Waits for `child` at most `limit`, killing it after.
fn wait_for(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn output_within(mut command: Command, limit: Duration) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).unwrap();
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).unwrap();
        buf
    });
    let status = wait_for(&mut child, limit);
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The blob a descriptor names, its digest and size checked.
fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, descriptor: &Value, media_type: &str) -> &'a [u8] {
    assert_eq!(descriptor["mediaType"], media_type, "{descriptor}");
    let digest = descriptor["digest"].as_str().unwrap();
    let bytes =
        files.get(&format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap())).unwrap_or_else(|| panic!("no blob for {digest}"));
    assert_eq!(descriptor["size"].as_u64().unwrap(), bytes.len() as u64, "size of {digest}");
    assert_eq!(sha256(bytes), digest, "digest of the blob named {digest}");
    bytes
}

/// The libraries ldd names for `binary`, as absolute paths (the loader included).
fn ldd_paths(binary: &Path) -> BTreeSet<String> {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    assert!(out.status.success(), "ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(path.to_string()),
                [path, ..] if path.starts_with('/') => Some(path.to_string()),
                _ => None,
            }
        })
        .collect()
}

struct Expected {
    name: &'static str,
    cmd: Option<&'static [&'static str]>,
    ports: &'static [&'static str],
    user: u32,
}

/// What the Dockerfile says today, written out independently of its parser.
const EXPECTED: [Expected; 7] = [
    Expected { name: "webhook", cmd: Some(&["serve"]), ports: &["8443/tcp"], user: 65532 },
    Expected { name: "proxy", cmd: None, ports: &["15001/tcp", "15006/tcp", "15021/tcp"], user: 65532 },
    Expected { name: "certs", cmd: None, ports: &[], user: 65532 },
    // The DaemonSet writes the node's root-owned CNI directories: root, without capabilities.
    Expected { name: "cni", cmd: Some(&["install"]), ports: &[], user: 0 },
    Expected { name: "pause", cmd: None, ports: &[], user: 65532 },
    Expected { name: "example-analysis", cmd: Some(&["run"]), ports: &["8000/tcp"], user: 65532 },
    // The admin's command, for `helm test` (tollgate check).
    Expected { name: "ctl", cmd: Some(&["check"]), ports: &[], user: 65532 },
];

fn check_image(name: &str) {
    let started = Instant::now();
    let image = images::image(name).unwrap();
    let expected = EXPECTED.iter().find(|e| e.name == name).unwrap();
    let tmp = temp_dir(&format!("image-{name}-"));
    let bins = tmp.path().join("bin");
    stripped_into(image.binary, &bins);
    let built = images::build(image, &bins, &tmp.path().join("out")).unwrap();
    let built_in = started.elapsed();

    // The archive: exactly the OCI image layout, read back by an independent reader.
    let mut files = BTreeMap::new();
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&built.archive).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_str().unwrap().to_owned();
        names.push(path.clone());
        if entry.header().entry_type().is_file() {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(path, bytes);
        }
    }
    let blob_name = |digest: &str| format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap());
    assert_eq!(
        names,
        [
            "oci-layout".to_owned(),
            "index.json".into(),
            "blobs/".into(),
            "blobs/sha256/".into(),
            blob_name(&built.config_digest),
            blob_name(&built.manifest_digest),
            blob_name(&built.layer_digest),
        ]
    );
    assert_eq!(serde_json::from_slice::<Value>(&files["oci-layout"]).unwrap(), json!({"imageLayoutVersion": "1.0.0"}));

    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], images::MEDIA_INDEX);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let descriptor = &manifests[0];
    assert_eq!(descriptor["annotations"]["io.containerd.image.name"], image.reference);
    assert_eq!(descriptor["annotations"]["org.opencontainers.image.ref.name"], env!("CARGO_PKG_VERSION"));
    assert_eq!(descriptor["platform"], json!({"architecture": "amd64", "os": "linux"}));
    let manifest: Value = serde_json::from_slice(blob(&files, descriptor, images::MEDIA_MANIFEST)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], images::MEDIA_MANIFEST);
    let config: Value = serde_json::from_slice(blob(&files, &manifest["config"], images::MEDIA_CONFIG)).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = blob(&files, &layers[0], images::MEDIA_LAYER);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"], json!({"type": "layers", "diff_ids": [layers[0]["digest"]]}), "uncompressed: diff_id = digest");

    // The config: the Dockerfile stage's, and what the Dockerfile says today.
    let dockerfile = std::fs::read_to_string(images::repo_root().join("docker/Dockerfile")).unwrap();
    let stage = images::stage_config(&dockerfile, name).unwrap();
    let entrypoint = format!("/usr/local/bin/{}", image.binary);
    assert_eq!(
        stage,
        StageConfig {
            user: Some(format!("{0}:{0}", expected.user)),
            entrypoint: Some(vec![entrypoint.clone()]),
            cmd: expected.cmd.map(|c| c.iter().map(|s| s.to_string()).collect()),
            exposed_ports: expected.ports.iter().map(|s| s.to_string()).collect(),
            working_dir: "/".into(),
        }
    );
    let c = &config["config"];
    assert_eq!(c["User"], format!("{0}:{0}", expected.user));
    assert_eq!(c["Entrypoint"], json!([entrypoint]));
    assert_eq!(c["Cmd"], expected.cmd.map_or(Value::Null, |cmd| json!(cmd)));
    let ports: Vec<&str> = c["ExposedPorts"].as_object().map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
    assert_eq!(ports, expected.ports);
    assert_eq!(c["Env"], json!([images::DEFAULT_PATH]));
    assert_eq!(c["WorkingDir"], "/");

    // The layer: the binary, its libraries, CA bundle, passwd, group, nsswitch.conf — and nothing else.
    let mut regular = BTreeMap::new();
    let mut layer_files = BTreeMap::new();
    let mut entries = tar::Archive::new(layer);
    for entry in entries.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = format!("/{}", entry.path().unwrap().to_str().unwrap().trim_end_matches('/'));
        assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0), "{path} is root's");
        let mode = header.mode().unwrap();
        match header.entry_type() {
            tar::EntryType::Directory => assert_eq!(mode, 0o755, "{path}"),
            tar::EntryType::Regular => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                regular.insert(path.clone(), mode);
                layer_files.insert(path, bytes);
            }
            other => panic!("{path}: {other:?} in the layer"),
        }
    }
    let libraries = ldd_paths(&workspace_bin(image.binary));
    let loader = "/lib64/ld-linux-x86-64.so.2".to_owned();
    assert!(libraries.contains(&loader) && libraries.iter().any(|l| l.ends_with("/libc.so.6")), "{libraries:?}");
    let mut wanted: BTreeSet<String> = libraries.clone();
    wanted.extend([entrypoint.clone(), "/etc/passwd".into(), "/etc/group".into(), "/etc/nsswitch.conf".into()]);
    wanted.insert("/etc/ssl/certs/ca-certificates.crt".into());
    wanted.insert(images::SBOM_IN_IMAGE.into());
    assert_eq!(regular.keys().cloned().collect::<BTreeSet<_>>(), wanted, "the layer's files");
    let executables: BTreeSet<&str> = regular.iter().filter(|(_, mode)| *mode & 0o111 != 0).map(|(p, _)| p.as_str()).collect();
    assert_eq!(executables, BTreeSet::from([entrypoint.as_str(), loader.as_str()]), "no executable but the binary and the loader");
    assert_eq!(regular[&entrypoint], 0o755);
    for library in libraries.iter().filter(|l| **l != loader) {
        assert_eq!(regular[library], 0o644, "{library}");
        assert_eq!(layer_files[library], std::fs::read(library).unwrap(), "{library} is the build machine's");
    }
    assert_eq!(layer_files["/etc/ssl/certs/ca-certificates.crt"], std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap());
    // The binary's SBOM, the same beside the archive (tests/tests/release.rs reads what it names).
    let sbom = built.sbom.as_ref().expect("every shipped image has an SBOM");
    assert_eq!(layer_files[images::SBOM_IN_IMAGE], std::fs::read(sbom).unwrap(), "the SBOM in the image is the one beside it");
    assert!(!layer_files.contains_key("/bin/sh") && !regular.keys().any(|p| p.starts_with("/bin/") || p.starts_with("/usr/bin/")));
    let passwd = String::from_utf8(layer_files["/etc/passwd"].clone()).unwrap();
    let users: Vec<(&str, &str)> = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).map(|f| (f[0], f[2])).collect();
    let mut want_users = vec![("root", "0"), ("nonroot", "65532")];
    if name == "proxy" {
        want_users.push(("tollgate-proxy", "10001"));
    }
    assert_eq!(users, want_users, "{passwd}");
    let group = String::from_utf8(layer_files["/etc/group"].clone()).unwrap();
    assert_eq!(group.lines().count(), want_users.len(), "{group}");

    // Run it: the layer unpacked by GNU tar, the binary started with chroot as the image's user.
    if !is_root() {
        println!("{name}: not root, so the binary is not run inside the unpacked layer (chroot needs root)");
        return;
    }
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let mut untar = Command::new("tar").args(["-x", "-p", "--same-owner", "-C"]).arg(&rootfs).stdin(Stdio::piped()).spawn().unwrap();
    untar.stdin.take().unwrap().write_all(layer).unwrap();
    assert!(untar.wait().unwrap().success());
    let mut users_to_run = vec![expected.user];
    if name == "proxy" {
        users_to_run.push(10001); // how the webhook runs it
    }
    for uid in users_to_run {
        let out = output_within(chrooted(&rootfs, uid, &entrypoint, &["--version"]), Duration::from_secs(20));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(image.binary) && stdout.contains(env!("CARGO_PKG_VERSION")),
            "{name} as {uid} in its own root filesystem: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("{name}: built in {built_in:?}, checked and run in {:?} ({} files)", started.elapsed(), regular.len());
}

/// `program` in `root` (chroot), as `uid`:`uid` with no supplementary groups and only the image's PATH.
fn chrooted(root: &Path, uid: u32, program: &str, args: &[&str]) -> Command {
    let root = CString::new(root.to_str().unwrap()).unwrap();
    let mut command = Command::new(program);
    command.args(args).env_clear().env("PATH", images::DEFAULT_PATH.trim_start_matches("PATH=")).current_dir("/");
    // SAFETY: only async-signal-safe system calls between fork and exec, on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(uid))?;
            check(libc::setuid(uid))
        });
    }
    command
}

#[test]
fn image_webhook() {
    check_image("webhook");
}

#[test]
fn image_proxy() {
    check_image("proxy");
}

#[test]
fn image_certs() {
    check_image("certs");
}

#[test]
fn image_cni() {
    check_image("cni");
}

#[test]
fn image_pause() {
    check_image("pause");
}

#[test]
fn image_example_analysis() {
    check_image("example-analysis");
}

#[test]
fn image_ctl() {
    check_image("ctl");
}

#[test]
fn images_are_named_as_the_manifests_and_the_sandbox_expect() {
    let references: Vec<&str> = IMAGES.iter().map(|i| i.reference).collect();
    assert_eq!(
        references,
        [
            "ghcr.io/privateaim/tollgate-webhook:0.1.0",
            "ghcr.io/privateaim/tollgate-proxy:0.1.0",
            "ghcr.io/privateaim/tollgate-certs:0.1.0",
            "ghcr.io/privateaim/tollgate-cni:0.1.0",
            "localhost/tollgate/pause:0.1.0",
            "localhost/tollgate/example-analysis:0.1.0",
            "ghcr.io/privateaim/tollgate:0.1.0",
        ]
    );
    assert_eq!(PAUSE_REFERENCE, "localhost/tollgate/pause:0.1.0");
    let manifests = images::repo_root().join("manifests");
    let mut shipped = String::new();
    let optional = manifests.join("optional");
    for entry in std::fs::read_dir(&manifests).unwrap().chain(std::fs::read_dir(&optional).unwrap()) {
        let path = entry.unwrap().path();
        if path.is_file() {
            shipped += &std::fs::read_to_string(path).unwrap();
        }
    }
    for image in &IMAGES[..4] {
        assert!(shipped.contains(&format!("image: {}", image.reference)), "manifests/ should use {}", image.reference);
    }
}

#[test]
fn archives_are_reproducible() {
    let tmp = temp_dir("image-repro-");
    let bins = tmp.path().join("bin");
    stripped_into("tollgate-pause", &bins);
    let pause = images::image("pause").unwrap();
    let first = images::build(pause, &bins, &tmp.path().join("a")).unwrap();
    let second = images::build(pause, &bins, &tmp.path().join("b")).unwrap();
    assert_eq!(first.manifest_digest, second.manifest_digest);
    assert_eq!(std::fs::read(&first.archive).unwrap(), std::fs::read(&second.archive).unwrap());
    // Building again into the same directory replaces the archive and leaves nothing else behind.
    images::build(pause, &bins, &tmp.path().join("a")).unwrap();
    assert_eq!(std::fs::read(first.sbom.unwrap()).unwrap(), std::fs::read(second.sbom.unwrap()).unwrap());
    let mut left: Vec<_> = std::fs::read_dir(tmp.path().join("a")).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["pause.cdx.json", "pause.tar"]);
}

#[test]
fn the_dockerfile_reading_takes_final_stages_and_refuses_the_unknown() {
    let dockerfile = std::fs::read_to_string(images::repo_root().join("docker/Dockerfile")).unwrap();
    for image in &IMAGES {
        images::stage_config(&dockerfile, image.name).unwrap();
    }
    let err = images::stage_config(&dockerfile, "build").unwrap_err();
    assert!(err.contains("FROM scratch AS build"), "{err}");
    assert!(images::stage_config(&dockerfile, "nope").unwrap_err().contains("no stage named \"nope\""));

    let stage = |body: &str| {
        format!("FROM rust AS build\nRUN make \\\n  all\n\n# final\nfrom scratch as x\nCOPY --from=rootfs /rootfs/x/ /\n{body}")
    };
    let parsed = images::stage_config(
        &stage(
            "USER 1:2\nEXPOSE 80 53/udp\nWORKDIR /work\nENTRYPOINT [\"/a\", \\\n  \"b c\"]\n# note\nCMD [\"d\"]\nFROM scratch AS y\nRUN x",
        ),
        "x",
    )
    .unwrap();
    assert_eq!(
        parsed,
        StageConfig {
            user: Some("1:2".into()),
            entrypoint: Some(vec!["/a".into(), "b c".into()]),
            cmd: Some(vec!["d".into()]),
            exposed_ports: vec!["80/tcp".into(), "53/udp".into()],
            working_dir: "/work".into(),
        }
    );
    for (body, complaint) in [
        ("RUN true", "RUN is not one the harness reproduces"),
        ("ENV A=b", "ENV is not one"),
        ("ENTRYPOINT /a b", "exec form"),
        ("CMD [\"a\", 1]", "exec form"),
        ("USER a b", "USER takes one word"),
        ("EXPOSE http", "EXPOSE \"http\""),
        ("WORKDIR $HOME", "WORKDIR must be"),
        ("COPY --from=rootfs /rootfs/x/ /", "exactly one"),
    ] {
        let err = images::stage_config(&stage(body), "x").unwrap_err();
        assert!(err.contains(complaint), "{body}: {err}");
    }
    let err = images::stage_config("FROM scratch AS x\nCOPY --from=rootfs /rootfs/y/ /\n", "x").unwrap_err();
    assert!(err.contains("the only COPY allowed is `COPY --from=rootfs /rootfs/x/ /`"), "{err}");
    let err = images::stage_config("FROM alpine AS x\nCOPY --from=rootfs /rootfs/x/ /\n", "x").unwrap_err();
    assert!(err.contains("must be `FROM scratch AS x`"), "{err}");
}

#[test]
fn the_rootfs_script_refuses_unknown_images_missing_binaries_and_leftovers() {
    let tmp = temp_dir("rootfs-");
    let script = images::repo_root().join("docker/rootfs.sh");
    let run = |image: &str, release: &Path, out: &Path| {
        let out = Command::new("bash").arg(&script).arg(image).arg(release).arg(out).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = run("shell", tmp.path(), &tmp.path().join("a"));
    assert!(!ok && err.contains("unknown image 'shell'"), "{err}");
    let (ok, err) = run("pause", tmp.path(), &tmp.path().join("a"));
    assert!(!ok && err.contains("tollgate-pause is not an executable file"), "{err}");
    let bins = tmp.path().join("bin");
    stripped_into("tollgate-pause", &bins);
    let leftover = tmp.path().join("b");
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join("sh"), "").unwrap();
    let (ok, err) = run("pause", &bins, &leftover);
    assert!(!ok && err.contains("is not empty"), "{err}");
}

// ---- pause ----

/// Whether `pid` is waiting for its signals (in sigtimedwait), i.e. past blocking them. (/proc's SigBlk does not
/// tell: while a thread waits in sigwait the kernel lifts the mask for the waited signals.)
fn waiting_for_signals(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("sigtimedwait"))
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// How often a wait for pause asks again.
const POLL: Duration = Duration::from_millis(10);

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

#[test]
fn pause_exits_0_on_sigterm_and_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut pause = Running(Command::new(workspace_bin("tollgate-pause")).stderr(Stdio::null()).spawn().unwrap());
        wait_until(Duration::from_secs(10), POLL, "pause waits for its signals", || waiting_for_signals(pause.0.id()).then_some(()));
        std::thread::sleep(Duration::from_millis(50));
        assert!(pause.0.try_wait().unwrap().is_none(), "pause must keep running");
        signal(pause.0.id(), sig);
        let status = wait_for(&mut pause.0, Duration::from_secs(5));
        assert!(status.success(), "signal {sig}: {status}");
    }
    let out = Command::new(workspace_bin("tollgate-pause")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Children of `parent` (host PIDs) and their states, from /proc.
fn children(parent: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
        if field("PPid:").and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push((pid, field("State:").and_then(|s| s.chars().next()).unwrap_or('?')));
        }
    }
    out
}

#[test]
fn pause_as_pid_1_reaps_orphans() {
    if !is_root() {
        println!("not root: a PID namespace needs root; skipped");
        return;
    }
    let probe = Command::new("unshare").args(["--pid", "--fork", "--", "true"]).output().unwrap();
    if !probe.status.success() {
        println!("cannot create a PID namespace here ({}); skipped", String::from_utf8_lossy(&probe.stderr).trim());
        return;
    }
    // --kill-child: when unshare is killed (by Running's drop, if this test fails), so is pause.
    let mut unshare = Running(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(workspace_bin("tollgate-pause"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut pause = 0;
    wait_until(Duration::from_secs(10), POLL, "pause runs as PID 1 of its namespace", || {
        pause = children(unshare.0.id()).first().map_or(0, |c| c.0);
        (pause != 0 && waiting_for_signals(pause)).then_some(())
    });
    // A process in the namespace starts a child and exits: the child is orphaned to PID 1, our pause.
    let orphaned =
        Command::new("nsenter").args(["--target", &pause.to_string(), "--pid", "--", "sh", "-c", "sleep 1 & exit 0"]).status().unwrap();
    assert!(orphaned.success());
    wait_until(Duration::from_secs(5), POLL, "the orphan is pause's child", || (!children(pause).is_empty()).then_some(()));
    wait_until(Duration::from_secs(10), POLL, "pause reaps the orphan", || children(pause).is_empty().then_some(()));
    signal(pause, libc::SIGTERM);
    let status = wait_for(&mut unshare.0, Duration::from_secs(5));
    let mut stderr = String::new();
    unshare.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("warning"), "as PID 1 it does not warn: {stderr}");
}

// ---- the example analysis ----

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// A stand-in for the proxy's egress listener: records every request and answers with `answer(method, path)`.
fn fake_egress(answer: fn(&str, &str) -> (u16, String)) -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let log = recorded.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap().to_owned(), words.next().unwrap().to_owned());
            let mut headers = BTreeMap::new();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap();
                headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
            }
            let length: usize = headers.get("content-length").map_or(0, |l| l.parse().unwrap());
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let (status, answer_body) = answer(&method, &path);
            log.lock().unwrap().push(Recorded { method, path, headers, body: String::from_utf8(body).unwrap() });
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer_body}",
                answer_body.len()
            );
        }
    });
    (url, recorded)
}

fn flame(method: &str, path: &str) -> (u16, String) {
    match (method, path) {
        ("GET", "/hub-adapter/kong/datastore/p1") => (200, r#"{"data":[{"name":"ds1","id":"x"},{"name":"ds2"}]}"#.into()),
        ("GET", "/kong/ds1/fhir/Patient?_summary=count") => (200, r#"{"resourceType":"Bundle","total":7}"#.into()),
        ("GET", "/kong/ds2/fhir/Patient?_summary=count") => (200, r#"{"resourceType":"Bundle","total":9}"#.into()),
        ("POST", "/message-broker/analyses/a1/messages") => (201, "{}".into()),
        ("PUT", "/storage/final/") => (200, r#"{"url":"http://hub/final/1"}"#.into()),
        _ => (404, r#"{"error":"no route"}"#.into()),
    }
}

fn analysis(egress: &str, args: &[&str]) -> Command {
    let mut command = Command::new(workspace_bin("tollgate-example-analysis"));
    command.args(args).env_clear().env("TOLLGATE_EGRESS_URL", egress).env("ANALYSIS_ID", "a1").env("PROJECT_ID", "p1");
    command
}

#[test]
fn the_example_analysis_makes_every_flame_call_through_the_egress_only() {
    let (url, recorded) = fake_egress(flame);
    let tmp = temp_dir("analysis-");
    let input = tmp.path().join("input.txt");
    std::fs::write(&input, "1 2\n3 4\n").unwrap();
    let out = output_within(analysis(&url, &["run", "--input", input.to_str().unwrap()]), Duration::from_secs(30));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let calls = [
        ("GET", "/hub-adapter/kong/datastore/p1", "200 OK"),
        ("GET", "/kong/ds1/fhir/Patient?_summary=count", "200 OK"),
        ("GET", "/kong/ds2/fhir/Patient?_summary=count", "200 OK"),
        ("POST", "/message-broker/analyses/a1/messages", "201 Created"),
        ("PUT", "/storage/final/", "200 OK"),
    ];
    let printed: Vec<String> =
        calls.iter().map(|(method, path, status)| format!("{method} {path} -> {status} ({} bytes)", flame(method, path).1.len())).collect();
    assert_eq!(lines[..5], printed, "one line per call");
    let result: Value = serde_json::from_str(lines[5]).unwrap();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(result["input"], json!({"count": 4, "sum": 10.0, "mean": 2.5}));
    assert_eq!(result["sources"], json!([{"name": "ds1", "total": 7}, {"name": "ds2", "total": 9}]));
    assert_eq!((&result["analysis_id"], &result["project_id"]), (&json!("a1"), &json!("p1")));

    let recorded = recorded.lock().unwrap().clone();
    let received: Vec<(&str, &str)> = recorded.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    assert_eq!(received, calls.iter().map(|(method, path, _)| (*method, *path)).collect::<Vec<_>>());
    for request in &recorded {
        assert!(!request.headers.contains_key("authorization"), "the analysis holds no credential: {request:?}");
        assert_eq!(request.headers["host"], url.trim_start_matches("http://"));
    }
    let message: Value = serde_json::from_str(&recorded[3].body).unwrap();
    assert_eq!(message["message"]["result"], result);
    assert_eq!(recorded[3].headers["content-type"], "application/json");
    let upload = &recorded[4];
    assert!(upload.headers["content-type"].starts_with("multipart/form-data; boundary="), "{upload:?}");
    assert!(upload.body.contains("name=\"file\"; filename=\"result.json\"") && upload.body.contains(&result.to_string()), "{upload:?}");

    // Without an input file, the built-in sample.
    let out = output_within(analysis(&url, &[]), Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["input"]["count"], 10);
}

#[test]
fn the_example_analysis_fails_clearly_when_a_call_is_refused() {
    fn refuse_storage(method: &str, path: &str) -> (u16, String) {
        match path {
            "/storage/final/" => (403, r#"{"error":"route storage: method PUT not allowed"}"#.into()),
            _ => flame(method, path),
        }
    }
    let (url, recorded) = fake_egress(refuse_storage);
    let out = output_within(analysis(&url, &["run"]), Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("PUT /storage/final/ -> 403 Forbidden"), "{stdout}");
    assert!(stderr.contains("PUT /storage/final/ failed with 403 Forbidden") && stderr.contains("not allowed"), "{stderr}");
    assert!(!stdout.lines().last().unwrap().starts_with('{'), "no result on failure: {stdout}");
    assert_eq!(recorded.lock().unwrap().len(), 5);

    // Nothing listening, and no ids: said plainly.
    let closed = format!("http://{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
    let out = output_within(analysis(&closed, &[]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to the proxy at"), "{}", String::from_utf8_lossy(&out.stderr));
    let mut no_ids = analysis(&url, &[]);
    no_ids.env_remove("ANALYSIS_ID");
    let out = output_within(no_ids, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no analysis id"));
}

fn http_get(addr: &str, path: &str) -> (String, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), serde_json::from_str(body).unwrap())
}

#[test]
fn the_example_analysis_serves_its_name_and_healthz() {
    let mut server = Running(analysis("http://127.0.0.1:1", &["serve", "--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).spawn().unwrap());
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit_once("listening on ").unwrap().1.to_owned();
    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!((status.as_str(), body), ("HTTP/1.1 200 OK", json!({"status": "ok"})));
    let (status, body) = http_get(&addr, "/analysis/webhook");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body["analysis"], "tollgate-example-analysis");
    assert_eq!((&body["path"], &body["analysis_id"]), (&json!("/analysis/webhook"), &json!("a1")));
    signal(server.0.id(), libc::SIGTERM);
    assert!(wait_for(&mut server.0, Duration::from_secs(5)).success());
}
