//! The `tollgate-proxy` binary's offline commands: check-config (as one pod, or as a namespace's template)
//! and config-schema.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-proxy");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TOLLGATE_ANALYSIS_ID")
        .env_remove("TOLLGATE_PROJECT_ID")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn example() -> String {
    format!("{}/examples/flame.yaml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_checks_one_pods_routes_or_a_namespaces_template() {
    // As one pod without ids: the routes that need them are left out, and said to be.
    let out = run(&["check-config", &example()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("valid (5 routes)") && stdout.contains("needs TOLLGATE_PROJECT_ID, which is not set"), "{stdout}");
    // As the ConfigMap shared by a namespace's pods: every route checked, with sample ids.
    let out = run(&["check-config", "--template", &example()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("valid as a template, ids filled in (6 routes)") && !stdout.contains("left out"), "{stdout}");
    // An id from the environment is still checked as given.
    let out = run(&["check-config", "--template", &example()], &[("TOLLGATE_ANALYSIS_ID", "../up")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"../up\" is not a safe id"), "{}", String::from_utf8_lossy(&out.stderr));
    // A template with a broken route fails, naming it.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("routes.yaml");
    std::fs::write(&broken, "routes:\n  - { name: hub, prefix: /hub/, upstream: 'ftp://hub/{analysis_id}' }\n").unwrap();
    let out = run(&["check-config", "--template", broken.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].upstream"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn config_schema_is_json_schema_of_the_config() {
    let out = run(&["config-schema"], &[]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["additionalProperties"], false, "unknown keys are refused, as the proxy refuses them");
    let route = &schema["properties"]["routes"]["items"];
    // A route has an upstream or an answer: the schema cannot say "one of", check-config does.
    assert_eq!(route["required"], serde_json::json!(["name", "prefix"]));
    assert_eq!(route["properties"]["auth"]["enum"], serde_json::json!(["none", "token", "bearerFile", "apiKeyFile"]), "{route}");
    assert!(route["properties"]["answer"].to_string().contains(r#""const":"ready""#), "{route}");
}
