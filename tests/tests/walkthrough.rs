//! README's "tollgate in ten minutes", followed step by step on the one-node cluster (scripts/test.sh runs it
//! right after `scripts/cluster.sh up`, before the node suite): every command between the README's
//! `<!-- walkthrough: begin -->` and `<!-- walkthrough: end -->` markers, as written, with the `export` lines
//! the README gives before them; each `sh` block's output must hold the lines of the `text` block after it, in
//! order (each a part of one line of output). So the walkthrough an admin reads is one that works.
//!
//!   eval "$(scripts/cluster.sh up)"; cargo test -p tollgate-e2e --test walkthrough -- --ignored

use std::path::PathBuf;
use std::process::Command;

/// One `sh` block and the `text` block that says what its output holds.
#[derive(Debug)]
struct Step {
    commands: String,
    expected: Vec<String>,
}

fn readme() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced blocks of `text`, as (language, body), in order.
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(language)) => current = Some((language.trim().to_owned(), String::new())),
            (Some(_), Some("")) => out.extend(current.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The `export` lines of the `sh` blocks before the walkthrough, and its steps.
fn walkthrough(readme: &str) -> (String, Vec<Step>) {
    let (before, rest) = readme.split_once("<!-- walkthrough: begin -->").expect("README has the walkthrough's begin marker");
    let (inside, _) = rest.split_once("<!-- walkthrough: end -->").expect("README has the walkthrough's end marker");
    let before = before.rsplit_once("### tollgate in ten minutes").map_or(before, |(_, section)| section);
    let exports: Vec<String> = blocks(before)
        .into_iter()
        .filter(|(language, _)| language == "sh")
        .flat_map(|(_, body)| body.lines().filter(|l| l.starts_with("export ")).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let mut steps = Vec::new();
    for (language, body) in blocks(inside) {
        match language.as_str() {
            "sh" => steps.push(Step { commands: body, expected: Vec::new() }),
            "text" => {
                let step = steps.last_mut().expect("a text block follows an sh block");
                assert!(step.expected.is_empty(), "two text blocks after one sh block:\n{body}");
                step.expected = body.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
            }
            other => panic!("the walkthrough has a {other:?} block; only sh and text are followed"),
        }
    }
    (exports.join("\n"), steps)
}

/// Where `expected`'s lines first fail to appear, in order, in `output`.
fn missing<'a>(output: &str, expected: &'a [String]) -> Option<&'a str> {
    let mut lines = output.lines();
    expected.iter().find(|want| !lines.any(|line| line.contains(want.as_str()))).map(String::as_str)
}

#[test]
fn the_readme_walkthrough_is_parsed_into_steps_that_each_say_what_they_print() {
    let (exports, steps) = walkthrough(&readme());
    assert!(exports.contains("export PATH="), "the walkthrough puts kubectl and tollgate on the PATH: {exports}");
    assert!(steps.len() >= 3, "{steps:#?}");
    for step in &steps {
        assert!(!step.expected.is_empty(), "every step says what it prints: {step:#?}");
    }
    // The matching is ordered and per line.
    let expected = ["b".to_owned(), "a".to_owned()];
    assert_eq!(missing("a\nb\n", &expected), Some("a"));
    assert_eq!(missing("b x\ny a\n", &expected), None);
}

#[test]
#[ignore = "needs the one-node cluster: eval \"$(scripts/cluster.sh up)\""]
fn the_readme_walkthrough_works_as_written() {
    assert!(std::env::var_os("KUBECONFIG").is_some(), "run after eval \"$(scripts/cluster.sh up)\"");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let (exports, steps) = walkthrough(&readme());
    let shell = |script: &str| {
        let out =
            Command::new("bash").arg("-c").arg(format!("exec 2>&1\n{exports}\n{script}")).current_dir(&root).output().expect("bash runs");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    // A walkthrough run before (or stopped half way) left its pods.
    shell("kubectl -n analyses delete pod hello root-shell --ignore-not-found --wait");
    for (i, step) in steps.iter().enumerate() {
        let output = shell(&step.commands);
        eprintln!("walkthrough step {}:\n{}\n{output}", i + 1, step.commands);
        if let Some(line) = missing(&output, &step.expected) {
            panic!("walkthrough step {}: its output lacks {line:?}\ncommands:\n{}\noutput:\n{output}", i + 1, step.commands);
        }
    }
    // A denied pod was never created; the walkthrough's own pod it deleted itself.
    let left = shell("kubectl -n analyses get pod hello root-shell --ignore-not-found -o name");
    assert!(left.trim().is_empty(), "the walkthrough left {left}");
}
