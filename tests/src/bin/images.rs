//! `tollgate-images`: tollgate's images as OCI image-layout archives, for `ctr -n k8s.io images import` on a node
//! without a registry, or to push unchanged to a registry (see `tollgate_e2e::images`).
//!
//! ```text
//! tollgate-images build --release-dir target/release --out DIR [IMAGE...]   one archive per image (default all),
//!                                                                          DIR/<image>.tar, and its SBOM,
//!                                                                          DIR/<image>.cdx.json; prints the
//!                                                                          archive paths
//! tollgate-images list                                                     name, reference, binary per image
//! tollgate-images list --out DIR                                           name, reference, digest per image
//!                                                                          built into DIR (for mirroring)
//! tollgate-images sbom --release-dir DIR [IMAGE...]                        DIR/<binary>.cdx.json per image
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use tollgate_e2e::images::{self, IMAGES, Image};

const USAGE: &str = "usage: tollgate-images build --release-dir DIR --out DIR [IMAGE...]
       tollgate-images list [--out DIR]
       tollgate-images sbom --release-dir DIR [IMAGE...]
IMAGE: webhook, proxy, certs, cni, pause, example-analysis, ctl (default: all)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-images: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("build") => build(&args[1..]),
        Some("list") => list(&args[1..]),
        Some("sbom") => sbom(&args[1..]),
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

/// The options every subcommand reads: `--release-dir`, `--out` and image names (default: all of [`IMAGES`]).
struct Options {
    release_dir: Option<PathBuf>,
    out: Option<PathBuf>,
    selected: Vec<&'static Image>,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut options = Options { release_dir: None, out: None, selected: Vec::new() };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let mut value = |flag: &str| words.next().cloned().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match word.as_str() {
            "--release-dir" => options.release_dir = Some(PathBuf::from(value("--release-dir")?)),
            "--out" => options.out = Some(PathBuf::from(value("--out")?)),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}\n{USAGE}")),
            name => options.selected.push(images::image(name)?),
        }
    }
    if options.selected.is_empty() {
        options.selected = IMAGES.iter().collect();
    }
    Ok(options)
}

fn build(args: &[String]) -> Result<(), String> {
    let options = options(args)?;
    let release_dir = options.release_dir.ok_or_else(|| format!("--release-dir is required\n{USAGE}"))?;
    let out = options.out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    for image in options.selected {
        let built = images::build(image, &release_dir, &out)?;
        eprintln!(
            "{}: {} {} (layer {:.1} MiB{})",
            image.name,
            image.reference,
            built.manifest_digest,
            built.layer_size as f64 / (1024.0 * 1024.0),
            built.sbom.as_ref().map(|p| format!(", SBOM {}", p.display())).unwrap_or_default()
        );
        println!("{}", built.archive.display());
    }
    Ok(())
}

/// Without `--out`, what each image is; with it, the digest of each image built there (every one of tollgate's
/// images unless some are named), tab-separated.
fn list(args: &[String]) -> Result<(), String> {
    let options = options(args)?;
    if options.release_dir.is_some() {
        return Err(format!("list takes --out DIR (the images built), not --release-dir\n{USAGE}"));
    }
    for image in options.selected {
        match &options.out {
            None => println!("{}\t{}\t{}", image.name, image.reference, image.binary),
            Some(out) => println!("{}\t{}\t{}", image.name, image.reference, images::built_digest(image, out)?),
        }
    }
    Ok(())
}

fn sbom(args: &[String]) -> Result<(), String> {
    let options = options(args)?;
    let release_dir = options.release_dir.ok_or_else(|| format!("--release-dir is required\n{USAGE}"))?;
    if options.out.is_some() {
        return Err(format!("sbom writes beside the binaries, into --release-dir\n{USAGE}"));
    }
    for image in options.selected {
        let path = release_dir.join(format!("{}.cdx.json", image.binary));
        images::write_sbom(image, &path)?;
        println!("{}", path.display());
    }
    Ok(())
}
