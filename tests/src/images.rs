//! Images without a registry or a container engine — exactly the images users get from `docker/Dockerfile`.
//!
//! One list of contents, two readings: `docker/rootfs.sh` assembles an image's root filesystem (the Dockerfile
//! runs it in a stage and copies the result into `FROM scratch`), and [`build`] runs the same script, reads the
//! image configuration (USER, ENTRYPOINT, CMD, EXPOSE, WORKDIR) from the Dockerfile's final stage for the target,
//! and writes an OCI image-layout archive that `ctr -n k8s.io images import` takes:
//!
//! ```text
//! oci-layout                     {"imageLayoutVersion":"1.0.0"}
//! index.json                     one manifest, annotated io.containerd.image.name=<reference> and
//!                                org.opencontainers.image.ref.name=<tag>
//! blobs/sha256/<config>          application/vnd.oci.image.config.v1+json (rootfs.diff_ids, os, architecture)
//! blobs/sha256/<manifest>        application/vnd.oci.image.manifest.v1+json
//! blobs/sha256/<layer>           application/vnd.oci.image.layer.v1.tar (uncompressed, so digest = diff_id)
//! ```
//!
//! Everything in it is deterministic: sorted entries, fixed mtimes (`SOURCE_DATE_EPOCH`, default 0), root
//! ownership, compact JSON in a fixed key order; equal binaries give equal digests.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One image: its Dockerfile target (and `docker/rootfs.sh` name), binary and reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image {
    pub name: &'static str,
    pub binary: &'static str,
    pub reference: &'static str,
}

/// The sandbox image: what containerd's `pinned_images.sandbox` (and kubelet) must be configured to use instead
/// of registry.k8s.io/pause.
pub const PAUSE_REFERENCE: &str = concat!("localhost/tollgate/pause:", env!("CARGO_PKG_VERSION"));

pub const IMAGES: [Image; 7] = [
    Image {
        name: "webhook",
        binary: "tollgate-webhook",
        reference: concat!("ghcr.io/privateaim/tollgate-webhook:", env!("CARGO_PKG_VERSION")),
    },
    Image { name: "proxy", binary: "tollgate-proxy", reference: concat!("ghcr.io/privateaim/tollgate-proxy:", env!("CARGO_PKG_VERSION")) },
    Image { name: "certs", binary: "tollgate-certs", reference: concat!("ghcr.io/privateaim/tollgate-certs:", env!("CARGO_PKG_VERSION")) },
    Image { name: "cni", binary: "tollgate-cni", reference: concat!("ghcr.io/privateaim/tollgate-cni:", env!("CARGO_PKG_VERSION")) },
    Image { name: "pause", binary: "tollgate-pause", reference: PAUSE_REFERENCE },
    Image {
        name: "example-analysis",
        binary: "tollgate-example-analysis",
        reference: concat!("localhost/tollgate/example-analysis:", env!("CARGO_PKG_VERSION")),
    },
    Image { name: "ctl", binary: "tollgate", reference: concat!("ghcr.io/privateaim/tollgate:", env!("CARGO_PKG_VERSION")) },
];

/// Images only the node tests use, never shipped: built the same way, from `docker/test-images.Dockerfile`'s final
/// stages and `docker/rootfs.sh`. `coredns` is the cluster DNS the node runs (its binary from
/// tests/node/provision.sh), `flame-standins` the FLAME node's services (tests/src/bin/flame_standins.rs),
/// `flame-analysis` an analysis as FLAME's Python SDK runs one (tests/flame/analysis.py on Debian's python3 and its
/// standard library).
pub const TEST_IMAGES: [Image; 3] = [
    Image { name: "coredns", binary: "coredns", reference: concat!("localhost/tollgate/coredns:", env!("CARGO_PKG_VERSION")) },
    Image {
        name: "flame-standins",
        binary: "flame_standins",
        reference: concat!("localhost/tollgate/flame-standins:", env!("CARGO_PKG_VERSION")),
    },
    Image {
        name: "flame-analysis",
        binary: "python3",
        reference: concat!("localhost/tollgate/flame-analysis:", env!("CARGO_PKG_VERSION")),
    },
];

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// What BuildKit gives every `FROM scratch` image on Linux (dockerfile2llb's emptyImage), so the config matches.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One of [`IMAGES`] or [`TEST_IMAGES`], by name.
pub fn image(name: &str) -> Result<&'static Image, String> {
    IMAGES.iter().chain(TEST_IMAGES.iter()).find(|i| i.name == name).ok_or_else(|| {
        format!(
            "unknown image {name:?} (one of: {})",
            IMAGES.iter().chain(TEST_IMAGES.iter()).map(|i| i.name).collect::<Vec<_>>().join(", ")
        )
    })
}

/// The Dockerfile whose final stages configure `image`: docker/Dockerfile, or docker/test-images.Dockerfile for the
/// [`TEST_IMAGES`].
pub fn dockerfile_of(image: &Image) -> PathBuf {
    let file = if TEST_IMAGES.iter().any(|t| t.name == image.name) { "docker/test-images.Dockerfile" } else { "docker/Dockerfile" };
    repo_root().join(file)
}

/// The repository this crate was built from (docker/Dockerfile and docker/rootfs.sh are read from it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

// ---- the Dockerfile reading ----

/// An image's configuration as the Dockerfile's final stage for its target sets it, with BuildKit's defaults for
/// `FROM scratch` (WorkingDir `/`, the default PATH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageConfig {
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `port/proto`, in the order written.
    pub exposed_ports: Vec<String>,
    pub working_dir: String,
}

/// Reads the stage named `target`. Only what the harness can reproduce is accepted: `FROM scratch AS <target>`,
/// exactly one `COPY --from=rootfs /rootfs/<target>/ /`, USER, EXPOSE, WORKDIR, and ENTRYPOINT/CMD in exec (JSON)
/// form; anything else in that stage is an error, so the two readings cannot drift apart silently.
pub fn stage_config(dockerfile: &str, target: &str) -> Result<StageConfig, String> {
    let instructions = logical_lines(dockerfile);
    let mut stage: Option<Vec<(usize, String, String)>> = None;
    let mut in_target = false;
    for (line, text) in instructions {
        let (keyword, rest) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
        let keyword = keyword.to_ascii_uppercase();
        let rest = rest.trim().to_owned();
        if keyword == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(*name),
                _ => None,
            };
            in_target = name == Some(target);
            if in_target {
                if stage.is_some() {
                    return Err(format!("Dockerfile line {line}: a second stage named {target:?}"));
                }
                stage = Some(Vec::new());
            }
        }
        if in_target {
            stage.as_mut().expect("set on FROM").push((line, keyword, rest));
        }
    }
    let stage = stage.ok_or_else(|| format!("Dockerfile: no stage named {target:?}"))?;

    let mut config = StageConfig { user: None, entrypoint: None, cmd: None, exposed_ports: Vec::new(), working_dir: "/".into() };
    let expected_copy = format!("--from=rootfs /rootfs/{target}/ /");
    let mut copies = 0;
    for (line, keyword, rest) in stage {
        let at = |what: String| format!("Dockerfile line {line} (stage {target}): {what}");
        match keyword.as_str() {
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if words.first() != Some(&"scratch") || words.len() != 3 {
                    return Err(at(format!("must be `FROM scratch AS {target}`, found `FROM {rest}`")));
                }
            }
            "COPY" => {
                if rest.split_whitespace().collect::<Vec<_>>().join(" ") != expected_copy {
                    return Err(at(format!("the only COPY allowed is `COPY {expected_copy}`, found `COPY {rest}`")));
                }
                copies += 1;
            }
            "USER" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let [user] = words.as_slice() else { return Err(at(format!("USER takes one word, found {rest:?}"))) };
                config.user = Some((*user).to_owned());
            }
            "EXPOSE" => {
                for word in rest.split_whitespace() {
                    let (port, proto) = word.split_once('/').unwrap_or((word, "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    if port.parse::<u16>().is_err() || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                        return Err(at(format!("EXPOSE {word:?} is not port[/tcp|udp|sctp]")));
                    }
                    config.exposed_ports.push(format!("{port}/{proto}"));
                }
            }
            "WORKDIR" => {
                if !rest.starts_with('/') || rest.contains(char::is_whitespace) || rest.contains('$') {
                    return Err(at(format!("WORKDIR must be one absolute path without variables, found {rest:?}")));
                }
                config.working_dir = rest;
            }
            "ENTRYPOINT" | "CMD" => {
                let words: Vec<String> = serde_json::from_str(&rest)
                    .map_err(|_| at(format!("{keyword} must be in exec form (a JSON array of strings), found {rest:?}")))?;
                if keyword == "ENTRYPOINT" {
                    config.entrypoint = Some(words);
                } else {
                    config.cmd = Some(words);
                }
            }
            other => {
                return Err(at(format!(
                    "{other} is not one the harness reproduces; keep final stages to FROM scratch, COPY --from=rootfs, USER, EXPOSE, WORKDIR, ENTRYPOINT and CMD"
                )));
            }
        }
    }
    if copies != 1 {
        return Err(format!("Dockerfile stage {target}: needs exactly one `COPY {expected_copy}`, found {copies}"));
    }
    Ok(config)
}

/// The Dockerfile's instructions with their first line numbers: comments and blank lines dropped, `\`
/// continuations joined.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (continues, body) = match trimmed.strip_suffix('\\') {
            Some(body) => (true, body),
            None => (false, trimmed),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        if !entry.1.is_empty() && !body.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(body.trim());
        if !continues {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

// ---- the root filesystem ----

/// Runs `docker/rootfs.sh IMAGE RELEASE_DIR OUT_DIR`; its errors are returned with its output.
pub fn rootfs(image: &Image, release_dir: &Path, out_dir: &Path) -> Result<(), String> {
    let script = repo_root().join("docker/rootfs.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(image.name)
        .arg(release_dir)
        .arg(out_dir)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "docker/rootfs.sh {} {} failed ({}):\n{}{}",
            image.name,
            release_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `rootfs` as an uncompressed layer tar: every directory and regular file, sorted by path, with its
/// mode and mtime, owned by root (files of the user building it unprivileged count as root's, as with
/// `tar --owner=0`). Returns the digest and size.
pub fn write_layer(rootfs: &Path, out: impl Write) -> Result<(String, u64), String> {
    let mut builder = tar::Builder::new(Hashing { inner: out, hasher: Sha256::new(), len: 0 });
    // SAFETY: geteuid has no preconditions.
    let builder_uid = unsafe { libc::geteuid() };
    let mut paths = Vec::new();
    sorted_tree(rootfs, Path::new(""), &mut paths)?;
    for relative in &paths {
        let full = rootfs.join(relative);
        let meta = full.symlink_metadata().map_err(|e| format!("{}: {e}", full.display()))?;
        let owner = |id: u32, what: &str| {
            if id == 0 || id == builder_uid {
                Ok(0u64)
            } else {
                Err(format!("{} is owned by {what} {id}: everything in an image is root's", full.display()))
            }
        };
        let mut header = tar::Header::new_ustar();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(owner(meta.uid(), "uid")?);
        header.set_gid(owner(meta.gid(), "gid")?);
        header.set_mtime(meta.mtime().max(0) as u64);
        let name = relative.to_str().ok_or_else(|| format!("{} is not UTF-8", full.display()))?;
        let written = if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, format!("{name}/"), io::empty())
        } else if meta.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = File::open(&full).map_err(|e| format!("{}: {e}", full.display()))?;
            builder.append_data(&mut header, name, file)
        } else {
            return Err(format!("{}: only directories and regular files belong in an image", full.display()));
        };
        written.map_err(|e| format!("writing {name} into the layer: {e}"))?;
    }
    let mut hashing = builder.into_inner().map_err(|e| format!("finishing the layer: {e}"))?;
    hashing.flush().map_err(|e| format!("writing the layer: {e}"))?;
    Ok((format!("sha256:{}", hex(&hashing.hasher.finalize())), hashing.len))
}

/// Every path under `rootfs/relative`, depth-first, each directory's entries sorted by name, a directory
/// before its contents.
fn sorted_tree(rootfs: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let dir = rootfs.join(relative);
    let mut names = fs::read_dir(&dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    names.sort();
    for name in names {
        let child = relative.join(name);
        out.push(child.clone());
        if rootfs.join(&child).symlink_metadata().map_err(|e| format!("{}: {e}", child.display()))?.is_dir() {
            sorted_tree(rootfs, &child, out)?;
        }
    }
    Ok(())
}

// ---- the archive ----

/// What [`build`] made.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: Image,
    pub archive: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub layer_size: u64,
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The image config (application/vnd.oci.image.config.v1+json) for a stage and a layer.
pub fn config_json(stage: &StageConfig, layer_digest: &str) -> Value {
    let mut config = serde_json::Map::new();
    if let Some(user) = &stage.user {
        config.insert("User".into(), json!(user));
    }
    if !stage.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, Value> = stage.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
        config.insert("ExposedPorts".into(), Value::Object(ports));
    }
    config.insert("Env".into(), json!([DEFAULT_PATH]));
    if let Some(entrypoint) = &stage.entrypoint {
        config.insert("Entrypoint".into(), json!(entrypoint));
    }
    if let Some(cmd) = &stage.cmd {
        config.insert("Cmd".into(), json!(cmd));
    }
    config.insert("WorkingDir".into(), json!(stage.working_dir));
    json!({
        "architecture": architecture(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
}

/// Builds `image` from the binaries in `release_dir` into `out_dir/<name>.tar` (replacing it).
pub fn build(image: &Image, release_dir: &Path, out_dir: &Path) -> Result<Built, String> {
    let dockerfile_path = dockerfile_of(image);
    let dockerfile = fs::read_to_string(&dockerfile_path).map_err(|e| format!("{}: {e}", dockerfile_path.display()))?;
    let stage = stage_config(&dockerfile, image.name)?;
    fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}-", image.name))
        .tempdir_in(out_dir)
        .map_err(|e| format!("a work directory in {}: {e}", out_dir.display()))?;
    let rootfs_dir = work.path().join("rootfs");
    rootfs(image, release_dir, &rootfs_dir)?;

    let layer_path = work.path().join("layer.tar");
    let layer_file = File::create(&layer_path).map_err(|e| format!("{}: {e}", layer_path.display()))?;
    let (layer_digest, layer_size) = write_layer(&rootfs_dir, BufWriter::with_capacity(1 << 20, layer_file))?;
    fs::remove_dir_all(&rootfs_dir).map_err(|e| format!("{}: {e}", rootfs_dir.display()))?;

    let config = serde_json::to_vec(&config_json(&stage, &layer_digest)).expect("JSON");
    let config_digest = digest_of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
    }))
    .expect("JSON");
    let manifest_digest = digest_of(&manifest);
    let tag = image.reference.rsplit_once(':').map(|(_, tag)| tag).filter(|t| !t.contains('/')).unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": image.reference, "org.opencontainers.image.ref.name": tag},
            "platform": {"architecture": architecture(), "os": "linux"},
        }],
    }))
    .expect("JSON");

    let partial = work.path().join("archive.tar");
    let file = File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut archive = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    let mtime: u64 = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut append = |name: &str, size: u64, data: &mut dyn Read| -> Result<(), String> {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_size(size);
        if name.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
        }
        archive.append_data(&mut header, name, data).map_err(|e| format!("writing {name} into the archive: {e}"))
    };
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append("oci-layout", layout.len() as u64, &mut &layout[..])?;
    append("index.json", index.len() as u64, &mut &index[..])?;
    append("blobs/", 0, &mut io::empty())?;
    append("blobs/sha256/", 0, &mut io::empty())?;
    append(&blob(&config_digest), config.len() as u64, &mut &config[..])?;
    append(&blob(&manifest_digest), manifest.len() as u64, &mut &manifest[..])?;
    let mut layer = File::open(&layer_path).map_err(|e| format!("{}: {e}", layer_path.display()))?;
    append(&blob(&layer_digest), layer_size, &mut layer)?;
    let mut writer = archive.into_inner().map_err(|e| format!("finishing the archive: {e}"))?;
    writer.flush().map_err(|e| format!("writing the archive: {e}"))?;
    drop(writer);

    let archive_path = out_dir.join(format!("{}.tar", image.name));
    fs::rename(&partial, &archive_path).map_err(|e| format!("{}: {e}", archive_path.display()))?;
    Ok(Built { image: *image, archive: archive_path, manifest_digest, config_digest, layer_digest, layer_size })
}
