//! `tollgate-images`: tollgate's images as OCI image-layout archives, for `ctr -n k8s.io images import` on a node
//! without a registry (see `tollgate_e2e::images`).
//!
//! ```text
//! tollgate-images build --release-dir target/release --out DIR [IMAGE...]   one archive per image (default all);
//!                                                                          prints the archive paths
//! tollgate-images list                                                     name, reference, binary per image
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use tollgate_e2e::images::{self, IMAGES, Image};

const USAGE: &str = "usage: tollgate-images build --release-dir DIR --out DIR [IMAGE...]
       tollgate-images list
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
        Some("list") if args.len() == 1 => {
            for image in &IMAGES {
                println!("{}\t{}\t{}", image.name, image.reference, image.binary);
            }
            Ok(())
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

fn build(args: &[String]) -> Result<(), String> {
    let mut release_dir = None;
    let mut out = None;
    let mut selected: Vec<&'static Image> = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let mut value = |flag: &str| words.next().cloned().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match word.as_str() {
            "--release-dir" => release_dir = Some(PathBuf::from(value("--release-dir")?)),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}\n{USAGE}")),
            name => selected.push(images::image(name)?),
        }
    }
    let release_dir = release_dir.ok_or_else(|| format!("--release-dir is required\n{USAGE}"))?;
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    if selected.is_empty() {
        selected = IMAGES.iter().collect();
    }
    for image in selected {
        let built = images::build(image, &release_dir, &out)?;
        eprintln!(
            "{}: {} {} (layer {:.1} MiB)",
            image.name,
            image.reference,
            built.manifest_digest,
            built.layer_size as f64 / (1024.0 * 1024.0)
        );
        println!("{}", built.archive.display());
    }
    Ok(())
}
