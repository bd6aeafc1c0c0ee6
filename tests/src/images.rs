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
//!
//! Every image tollgate ships carries the SBOM of its binary ([`sbom`]: CycloneDX, the crates cargo resolves for
//! the release's build of that binary, from Cargo.lock) at [`SBOM_IN_IMAGE`], and [`build`] leaves a copy beside
//! the archive; [`built_digest`] reads an archive's digest back, for `tollgate-images list --out`.

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

// ---- the bill of materials ----

/// The packages the release builds together in one `cargo build` (docker/Dockerfile, scripts/release.sh; and
/// scripts/cluster.sh's `--workspace` resolves them alike, which tests/tests/release.rs checks): cargo unifies
/// their dependencies' features, so each of their binaries links what this set resolves to. tollgate-cni is
/// built by itself (static, for the node's glibc).
pub const RELEASE_BUILD: [&str; 6] =
    ["tollgate-webhook", "tollgate-proxy", "tollgate-certs", "tollgate-e2e", "tollgate-example-analysis", "tollgate-ctl"];

/// Where an image's SBOM is inside it.
pub const SBOM_IN_IMAGE: &str = "/usr/share/doc/tollgate/sbom.cdx.json";

/// The cargo package whose binary `image` runs; None for the node tests' [`TEST_IMAGES`], which get no SBOM.
pub fn package_of(image: &Image) -> Option<&'static str> {
    Some(match image.name {
        "webhook" => "tollgate-webhook",
        "proxy" => "tollgate-proxy",
        "certs" => "tollgate-certs",
        "cni" => "tollgate-cni",
        "pause" => "tollgate-e2e",
        "example-analysis" => "tollgate-example-analysis",
        "ctl" => "tollgate-ctl",
        _ => return None,
    })
}

/// The packages built in the one `cargo build` that makes `package`'s binaries.
pub fn built_with(package: &str) -> Vec<&str> {
    if RELEASE_BUILD.contains(&package) { RELEASE_BUILD.to_vec() } else { vec![package] }
}

/// A crate of the lockfile: name and version.
pub type Crate = (String, String);

/// What cargo resolves for building some packages together, for this machine's target, normal dependencies only
/// (no build scripts' or tests' dependencies): `cargo tree -e normal`, read from Cargo.lock and the crates'
/// manifests, offline.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    /// Each crate's direct dependencies.
    pub edges: std::collections::BTreeMap<Crate, std::collections::BTreeSet<Crate>>,
    /// Licence expression and repository, as each crate's manifest declares them; whether it is a workspace crate.
    pub info: std::collections::BTreeMap<Crate, (String, String, bool)>,
    /// The packages asked for, as crates.
    pub roots: Vec<Crate>,
}

impl Resolution {
    /// `package` and every crate it depends on, directly or not.
    pub fn closure(&self, package: &str) -> Result<std::collections::BTreeSet<Crate>, String> {
        let root = self.roots.iter().find(|(name, _)| name == package).ok_or_else(|| format!("{package} was not resolved"))?;
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![root.clone()];
        while let Some(krate) = todo.pop() {
            if seen.insert(krate.clone()) {
                todo.extend(self.edges.get(&krate).into_iter().flatten().cloned());
            }
        }
        Ok(seen)
    }
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(repo_root());
    command
}

fn host_triple() -> Result<String, String> {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV names no host".into())
}

/// Resolves `packages` as one `cargo build -p …` of them does (see [`Resolution`]); once per set in a process.
pub fn resolve(packages: &[&str]) -> Result<Resolution, String> {
    static RESOLVED: std::sync::Mutex<std::collections::BTreeMap<Vec<String>, Resolution>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let key: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    if let Some(known) = RESOLVED.lock().unwrap().get(&key) {
        return Ok(known.clone());
    }
    let resolution = resolve_now(packages)?;
    RESOLVED.lock().unwrap().insert(key, resolution.clone());
    Ok(resolution)
}

fn resolve_now(packages: &[&str]) -> Result<Resolution, String> {
    let mut command = cargo();
    command.args(["tree", "--locked", "--offline", "-e", "normal", "--prefix", "depth", "-f", "{p}|{l}|{r}", "--target"]);
    command.arg(host_triple()?).arg("--manifest-path").arg(repo_root().join("Cargo.toml"));
    for package in packages {
        command.args(["-p", package]);
    }
    let out = command.output().map_err(|e| format!("running cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo tree -e normal -p {}: {}", packages.join(" -p "), String::from_utf8_lossy(&out.stderr)));
    }
    let mut resolution = Resolution::default();
    let mut stack: Vec<Crate> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
        let digits = line.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
        let depth: usize = line[..digits].parse().map_err(|_| format!("cargo tree: no depth in {line:?}"))?;
        let mut fields = line[digits..].splitn(3, '|');
        let (package, licence, repository) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let words: Vec<&str> = package.split_whitespace().collect();
        let [name, version, rest @ ..] = words.as_slice() else { return Err(format!("cargo tree: {line:?}")) };
        let version = version.strip_prefix('v').ok_or_else(|| format!("cargo tree: no version in {line:?}"))?;
        let krate: Crate = ((*name).to_owned(), version.to_owned());
        let workspace = rest.first().is_some_and(|r| r.starts_with("(/"));
        let repository = repository.trim_end_matches(" (*)").trim().to_owned();
        resolution.info.entry(krate.clone()).or_insert((licence.trim().to_owned(), repository, workspace));
        stack.truncate(depth);
        match stack.last() {
            Some(parent) => {
                resolution.edges.entry(parent.clone()).or_default().insert(krate.clone());
            }
            None => resolution.roots.push(krate.clone()),
        }
        resolution.edges.entry(krate.clone()).or_default();
        stack.push(krate);
    }
    Ok(resolution)
}

/// The SHA-256 checksum Cargo.lock records for each registry crate.
fn lockfile_checksums() -> Result<std::collections::BTreeMap<Crate, String>, String> {
    let path = repo_root().join("Cargo.lock");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::collections::BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| l.strip_prefix(&format!("{key} = \""))).and_then(|v| v.strip_suffix('"')).map(str::to_owned)
        };
        if let (Some(name), Some(version), Some(checksum)) = (field("name"), field("version"), field("checksum")) {
            out.insert((name, version), checksum);
        }
    }
    Ok(out)
}

/// `SOURCE_DATE_EPOCH` (default 0) as an RFC 3339 UTC time.
fn source_date() -> String {
    let seconds: i64 = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// The CycloneDX 1.5 SBOM of `image`'s binary: its package and every crate it links, as the release's build
/// resolves them ([`built_with`]), each with its version, licence expression, repository, and for crates.io
/// crates the package URL and the checksum Cargo.lock pins; the dependency graph among them. Deterministic:
/// sorted, no serial number, the time `SOURCE_DATE_EPOCH` (default 0).
pub fn sbom(image: &Image) -> Result<Value, String> {
    let package = package_of(image).ok_or_else(|| format!("the image {} is a test image: no SBOM", image.name))?;
    let resolution = resolve(&built_with(package))?;
    let closure = resolution.closure(package)?;
    let checksums = lockfile_checksums()?;
    let bom_ref = |(name, version): &Crate| format!("{name}@{version}");
    let component = |krate: &Crate, kind: &str| {
        let (licence, repository, workspace) = resolution.info.get(krate).cloned().unwrap_or_default();
        let mut c = serde_json::Map::new();
        c.insert("type".into(), json!(kind));
        c.insert("bom-ref".into(), json!(bom_ref(krate)));
        c.insert("name".into(), json!(krate.0));
        c.insert("version".into(), json!(krate.1));
        if !workspace {
            c.insert("purl".into(), json!(format!("pkg:cargo/{}@{}", krate.0, krate.1)));
        }
        if let Some(checksum) = checksums.get(krate) {
            c.insert("hashes".into(), json!([{"alg": "SHA-256", "content": checksum}]));
        }
        if !licence.is_empty() {
            // Cargo's old "MIT/Apache-2.0" means "MIT OR Apache-2.0" (the Cargo reference, `license`).
            let expression = licence.replace('/', " OR ").split_whitespace().collect::<Vec<_>>().join(" ");
            c.insert("licenses".into(), json!([{"expression": expression}]));
        }
        if !repository.is_empty() {
            c.insert("externalReferences".into(), json!([{"type": "vcs", "url": repository}]));
        }
        Value::Object(c)
    };
    let root = resolution.roots.iter().find(|(name, _)| name == package).expect("closure found it").clone();
    let mut root_component = component(&root, "application");
    root_component["name"] = json!(image.binary);
    root_component["properties"] = json!([
        {"name": "tollgate:cargo:package", "value": package},
        {"name": "tollgate:image", "value": image.reference},
    ]);
    let components: Vec<Value> = closure.iter().filter(|k| **k != root).map(|k| component(k, "library")).collect();
    let dependencies: Vec<Value> = closure
        .iter()
        .map(|k| {
            let on: Vec<String> = resolution.edges.get(k).into_iter().flatten().filter(|d| closure.contains(*d)).map(bom_ref).collect();
            json!({"ref": bom_ref(k), "dependsOn": on})
        })
        .collect();
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": source_date(),
            "tools": {"components": [{"type": "application", "name": "tollgate-images", "version": env!("CARGO_PKG_VERSION"),
                "description": "cargo tree -e normal over Cargo.lock (tests/src/images.rs)"}]},
            "component": root_component,
            "properties": [
                {"name": "cdx:rustc:sbom:target:triple", "value": host_triple()?},
                {"name": "tollgate:cargo:built-with", "value": built_with(package).join(" ")},
            ],
        },
        "components": components,
        "dependencies": dependencies,
    }))
}

/// Writes [`sbom`] of `image` to `path` (pretty JSON and a newline).
pub fn write_sbom(image: &Image, path: &Path) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&sbom(image)?).expect("JSON") + "\n";
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

// ---- the archive ----

/// The digest of the image in the archive `out_dir/<name>.tar` that [`build`] made: its manifest's, as its
/// index.json names it (what `REPO@sha256:…` pulls once the archive is pushed unchanged).
pub fn built_digest(image: &Image, out_dir: &Path) -> Result<String, String> {
    let path = out_dir.join(format!("{}.tar", image.name));
    let file = File::open(&path).map_err(|e| format!("{}: {e} (build it first: tollgate-images build)", path.display()))?;
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().map_err(|e| format!("{}: {e}", path.display()))? {
        let mut entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
        if entry.path().ok().as_deref() == Some(Path::new("index.json")) {
            let mut index = String::new();
            entry.read_to_string(&mut index).map_err(|e| format!("{}: index.json: {e}", path.display()))?;
            let index: Value = serde_json::from_str(&index).map_err(|e| format!("{}: index.json: {e}", path.display()))?;
            let manifests = index["manifests"].as_array().filter(|m| m.len() == 1);
            let digest = manifests.and_then(|m| m[0]["digest"].as_str()).filter(|d| d.starts_with("sha256:") && d.len() == 71);
            return digest.map(str::to_owned).ok_or_else(|| format!("{}: index.json names not one sha256 manifest", path.display()));
        }
    }
    Err(format!("{}: no index.json: not an OCI image-layout archive", path.display()))
}

/// What [`build`] made.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: Image,
    pub archive: PathBuf,
    /// `<out>/<name>.cdx.json`, the SBOM the image holds at [`SBOM_IN_IMAGE`] (none for the [`TEST_IMAGES`]).
    pub sbom: Option<PathBuf>,
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

/// Builds `image` from the binaries in `release_dir` into `out_dir/<name>.tar` (replacing it), with its SBOM
/// ([`sbom`]) written beside the binary (`release_dir/<binary>.cdx.json`), inside the image ([`SBOM_IN_IMAGE`]) and
/// beside the archive (`out_dir/<name>.cdx.json`).
pub fn build(image: &Image, release_dir: &Path, out_dir: &Path) -> Result<Built, String> {
    let dockerfile_path = dockerfile_of(image);
    let dockerfile = fs::read_to_string(&dockerfile_path).map_err(|e| format!("{}: {e}", dockerfile_path.display()))?;
    let stage = stage_config(&dockerfile, image.name)?;
    fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}-", image.name))
        .tempdir_in(out_dir)
        .map_err(|e| format!("a work directory in {}: {e}", out_dir.display()))?;
    // The binary's SBOM beside it, where docker/rootfs.sh takes it from (made anew: never one of another build).
    let sbom_path = package_of(image).map(|_| release_dir.join(format!("{}.cdx.json", image.binary)));
    if let Some(path) = &sbom_path {
        write_sbom(image, path)?;
    }
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
    let sbom = match sbom_path {
        Some(source) => {
            let path = out_dir.join(format!("{}.cdx.json", image.name));
            fs::copy(&source, &path).map_err(|e| format!("{} to {}: {e}", source.display(), path.display()))?;
            Some(path)
        }
        None => None,
    };
    Ok(Built { image: *image, archive: archive_path, sbom, manifest_digest, config_digest, layer_digest, layer_size })
}
