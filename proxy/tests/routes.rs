//! The FLAME route table, stricter than the nginx it replaces; route and config rules.

use tollgate_proxy::config::{Config, Environment};
use tollgate_proxy::routes::{AuthMode, Decision, decide};
use tollgate_proxy::target::{check, check_allowing_non_ascii};

const ANALYSIS: &str = "3f2c1b9e-1d7a-4c8e-9b1a-2e4f6a8c0d1e";
const PROJECT: &str = "7d1e4a2c-95b8-4f3e-a6d0-1b2c3d4e5f60";

fn env() -> Environment {
    Environment { analysis_id: Some(ANALYSIS.into()), project_id: Some(PROJECT.into()), ..Environment::default() }
}

fn flame() -> Config {
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/flame.yaml")).unwrap();
    Config::load(&yaml, &env()).unwrap_or_else(|e| panic!("{e}"))
}

/// (route name, upstream target) or the refusal.
fn route(config: &Config, method: &str, target: &str) -> Result<(String, String), String> {
    let target = check(target, &[]).map_err(|e| format!("400: {e}"))?;
    match decide(&config.routes, method, &target) {
        Decision::Forward { route, upstream_target } => Ok((config.routes[route].name.clone(), upstream_target)),
        Decision::Answer { route, .. } => Ok((config.routes[route].name.clone(), "(answered by the proxy)".into())),
        Decision::Refuse { reason } => Err(reason),
        Decision::Invalid { reason } => Err(format!("400: {reason}")),
    }
}

/// Every call the FLAME SDK makes through its sidecar (FACTS.md §2, E01–E20), as it sends it: each reaches the
/// upstream nginx sent it to, with the path nginx forwarded.
#[test]
fn flame_routes_take_every_call_of_the_sdk_where_nginx_took_it() {
    let c = flame();
    let broker = |rest: &str| (format!("/message-broker/analyses/{ANALYSIS}{rest}"), format!("/analyses/{ANALYSIS}{rest}"));
    let (subscriptions, subscriptions_up) = broker("/messages/subscriptions");
    let (self_, self_up) = broker("/participants/self");
    let (participants, participants_up) = broker("/participants");
    let (messages, messages_up) = broker("/messages");
    let datastore = format!("/hub-adapter/kong/datastore/{PROJECT}");
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("GET", "/healthz", "sidecar-health", "(answered by the proxy)"),
        ("POST", &subscriptions, "message-broker", &subscriptions_up),
        ("GET", &self_, "message-broker", &self_up),
        ("GET", &participants, "message-broker", &participants_up),
        ("POST", "/po/stream_logs", "pod-orchestrator-logs", "/po/stream_logs"),
        ("GET", &datastore, "hub-datastore", &datastore[12..]),
        ("GET", "/kong/source-1/fhir/Patient?_summary=count", "kong", "/source-1/fhir/Patient?_summary=count"),
        ("GET", "/kong/source-1/s3", "kong", "/source-1/s3"),
        ("GET", "/kong/source-1/s3/results/data.csv", "kong", "/source-1/s3/results/data.csv"),
        ("PUT", "/storage/local", "storage", "/local"),
        ("GET", "/storage/local/tags", "storage", "/local/tags"),
        ("GET", "/storage/local/tags/round-1", "storage", "/local/tags/round-1"),
        ("GET", "/storage/local/0b9e2c", "storage", "/local/0b9e2c"),
        ("PUT", "/storage/intermediate", "storage", "/intermediate"),
        ("GET", "/storage/intermediate/0b9e2c?remote_node_id=n2", "storage", "/intermediate/0b9e2c?remote_node_id=n2"),
        ("PUT", "/storage/final", "storage", "/final"),
        ("PUT", "/storage/final/localdp", "storage", "/final/localdp"),
        ("HEAD", "/storage/final", "storage", "/final"),
        ("POST", &messages, "message-broker", &messages_up),
        ("GET", "/message-broker/healthz", "message-broker", "/healthz"),
    ];
    for (method, target, name, upstream) in cases {
        assert_eq!(route(&c, method, target), Ok((name.to_owned(), upstream.to_owned())), "{method} {target}");
    }
    // Kong's object keys are whatever the bucket holds: percent-encoded UTF-8 passes on that route alone.
    let key = "/kong/source-1/s3/Befund%20M%C3%BCller.csv";
    let target = check_allowing_non_ascii(key, &[]).unwrap();
    let kong = c.routes.iter().position(|r| r.name == "kong").unwrap();
    assert_eq!(decide(&c.routes, "GET", &target), Decision::Forward { route: kong, upstream_target: key[5..].to_owned() });
    let elsewhere = check_allowing_non_ascii("/storage/final/M%C3%BCller", &[]).unwrap();
    assert!(matches!(decide(&c.routes, "PUT", &elsewhere), Decision::Invalid { .. }));
    // The credential each service checks: Kong's key-auth key in apikey, a token of the analysis' own client elsewhere.
    for r in &c.routes {
        let expected = match r.name.as_str() {
            "sidecar-health" => "none",
            "kong" => "apikey",
            _ => "token",
        };
        let auth = match &r.auth {
            AuthMode::None => "none",
            AuthMode::Token => "token",
            AuthMode::ApiKeyFile { header, .. } => header.as_str(),
            AuthMode::BearerFile(_) => "bearer file",
        };
        assert_eq!(auth, expected, "route {}", r.name);
    }
    assert!(c.credential_headers.iter().any(|h| h == "apikey"), "the app's own apikey is removed everywhere");
}

#[test]
fn flame_routes_refuse_what_nginx_let_through_and_the_sdk_never_sends() {
    let c = flame();
    for (method, target) in [
        ("GET", "/kongX"),
        ("GET", "/kong-admin/routes"),
        ("GET", "/kong/source-1/admin"),
        ("POST", "/kong/source-1/fhir/Patient"),
        ("PUT", "/storage/finalX"),
        ("PUT", "/storage/final_other/x"),
        ("GET", "/storage"),
        ("GET", "/storage/"),
        ("DELETE", "/storage/local/0b9e2c"),
        ("POST", "/storage/local"),
        ("GET", "/healthzX"),
        ("GET", "/healthz/x"),
        ("GET", "/hub-adapter/kong/datastore/other-project"),
        ("GET", &format!("/hub-adapter/kong/datastore/{PROJECT}X")),
        ("GET", &format!("/hub-adapter/kong/datastore/{PROJECT}/fhir")),
        ("GET", "/hub-adapter/projects"),
        ("GET", "/message-broker/analyses/other-analysis/participants"),
        ("POST", "/message-broker/analyses/other-analysis/messages"),
        ("GET", &format!("/message-broker/analyses/{ANALYSIS}/participantsX")),
        ("GET", &format!("/message-broker/analyses/{ANALYSIS}/participants/other")),
        ("GET", &format!("/message-broker/analyses/{ANALYSIS}/messages/subscriptions/x")),
        ("POST", &format!("/message-broker/analyses/{ANALYSIS}/messages/broadcast")),
        ("GET", "/message-broker/analyses"),
        ("GET", "/po/stream_logsX"),
        ("GET", "/po/other"),
        ("GET", "/po/stream_logs"),
        ("POST", "/po/stream_logs/x"),
        ("GET", "/analysis/healthz"),
        ("GET", "/keycloak/realms/flame/protocol/openid-connect/token"),
        ("GET", "/"),
        ("GET", "/unknown"),
    ] {
        assert!(route(&c, method, target).is_err(), "{method} {target} must be refused, got {:?}", route(&c, method, target));
    }
    assert_eq!(route(&c, "GET", "/kongX"), Err("no route for /kongX".to_owned()));
    assert_eq!(route(&c, "PUT", "/storage/finalX"), Err("route \"storage\" does not allow /storage/finalX".to_owned()));
    assert_eq!(route(&c, "GET", "/po/stream_logs"), Err("route \"pod-orchestrator-logs\" does not allow method GET".to_owned()));
    assert_eq!(route(&c, "DELETE", "/storage/local/x"), Err("route \"storage\" does not allow method DELETE".to_owned()));
}

#[test]
fn traversal_never_reaches_a_route() {
    let c = flame();
    for target in [
        "/storage/final/../../kong-admin",
        "/storage/final/%2e%2e/%2e%2e/x",
        "/storage/final%2F..%2F..%2Fx",
        "/storage/final/..%5C..%5Cx",
        "/storage;/final/x",
        "/storage/final/x#/../y",
        &format!("/message-broker/analyses/{ANALYSIS}/participants/..%2f..%2fother-analysis%2fparticipants"),
        "http://evil.example.org/storage/final/x",
    ] {
        let result = route(&c, "GET", target);
        assert!(matches!(&result, Err(e) if e.starts_with("400: ")), "{target}: {result:?}");
    }
    // The query is not part of what is matched (oauth2-proxy CVE-2025-54576).
    assert_eq!(route(&c, "GET", "/unknown?x=/kong/").map(|r| r.0), Err("no route for /unknown".to_owned()));
    assert_eq!(route(&c, "GET", "/kong//a///fhir//b").map(|r| r.1), Ok("/a/fhir/b".to_owned()), "the normalized path is what is forwarded");
}

#[test]
fn longest_prefix_wins_and_strip_prefix_can_be_off() {
    let yaml = "routes:\n- { name: all, prefix: /, upstream: 'http://a:1' }\n- { name: api, prefix: /api/v1, upstream: 'http://b:2/base/', stripPrefix: false }\n";
    let c = Config::load(yaml, &Environment::default()).unwrap();
    assert_eq!(route(&c, "GET", "/api/v1/x?q"), Ok(("api".into(), "/base/api/v1/x?q".into())));
    assert_eq!(route(&c, "GET", "/api/v2"), Ok(("all".into(), "/api/v2".into())));
    assert_eq!(route(&c, "GET", "/"), Ok(("all".into(), "/".into())));
}

#[test]
fn percent_encoded_non_ascii_needs_a_route_that_allows_it() {
    let yaml = "routes:\n- { name: names, prefix: /names, upstream: 'http://a:1', allowNonAsciiPath: true }\n- { name: other, prefix: /other, upstream: 'http://b:2' }\n";
    let c = Config::load(yaml, &Environment::default()).unwrap();
    assert!(c.routes[0].allow_non_ascii_path && !c.routes[1].allow_non_ascii_path, "off unless set");
    assert!(c.routes.iter().all(|r| !r.allow_upgrade), "upgrades are off unless a route sets allowUpgrade");
    let lenient = |target: &str| decide(&c.routes, "GET", &check_allowing_non_ascii(target, &[]).unwrap());
    assert_eq!(lenient("/names/M%C3%BCller"), Decision::Forward { route: 0, upstream_target: "/M%C3%BCller".into() });
    assert_eq!(lenient("/other/plain"), Decision::Forward { route: 1, upstream_target: "/plain".into() });
    for target in ["/other/M%C3%BCller", "/nowhere/M%C3%BCller"] {
        assert!(matches!(lenient(target), Decision::Invalid { reason } if reason.contains("non-ASCII")), "{target}");
    }
    let bad = Config::load("routes:\n- { name: a, prefix: /a, upstream: 'http://a', allowNonAsciiPath: 'yes' }\n", &Environment::default())
        .unwrap_err()
        .to_string();
    assert!(bad.starts_with("routes[0].allowNonAsciiPath: invalid type"), "{bad}");
}

#[test]
fn config_errors_name_their_path() {
    let bad = "routes:\n\
        - { name: a, prefix: kong, upstream: 'ftp://x' }\n\
        - { name: a, prefix: '/x/{analysis_id}', upstream: 'http://x:0', methods: [BREW], auth: token }\n\
        - { name: c, prefix: /c, upstream: 'http://c', allow: ['/a/**/b', '/../x'], auth: bearerFile, connectTimeout: '10' }\n\
        ingress: { upstream: 'http://127.0.0.1:8000', jwksUrl: 'http://k/certs', issuer: '', algorithms: [HS256, RS1] }\n\
        listen: { egress: '0.0.0.0:15001', admin: '127.0.0.1:15001' }\n\
        shutdown: { grace: 60s }\n";
    let errors = Config::load(bad, &Environment::default()).expect_err("invalid").to_string();
    for expected in [
        "routes[0].prefix: \"kong\" must start with '/'",
        "routes[0].upstream: \"ftp://x\" must start with http:// or https://",
        "routes[1].name: \"a\" is already the name of routes[0]",
        "routes[1].methods[0]: \"BREW\" is not one of",
        "routes[1].upstream: \"http://x:0\" has an invalid port",
        "routes[1].auth: token needs the identity section",
        "routes[2].allow[0]: \"/a/**/b\": '**' may only be last",
        "routes[2].allow[1]: \"/../x\": dot segments are not allowed",
        "routes[2].bearerFile: required when auth is bearerFile",
        "routes[2].connectTimeout: \"10\" is not a duration",
        "ingress.issuer: required",
        "ingress.audiences: at least one audience is required",
        "ingress.algorithms[0]: HS256 is never accepted",
        "ingress.algorithms[1]: \"RS1\" is not one of",
        "listen.egress: 0.0.0.0:15001 is not a loopback address",
        "listen.admin: port 15001 is already used by listen.egress",
        "shutdown.grace: must stay below Kubernetes' 30 s",
    ] {
        assert!(errors.lines().any(|l| l.starts_with(expected)), "missing {expected:?} in:\n{errors}");
    }
    let claims = "ingress: { upstream: 'http://127.0.0.1:8000', jwksUrl: 'http://k/certs', issuer: i, audiences: [a], algorithms: [RS256], jwksRefetchInterval: 0s, claimHeaders: { preferred_username: X-User, azp: 'Bad Header:', sub: Host, client_id: X_Client } }\n";
    let errors = Config::load(claims, &Environment::default()).unwrap_err().to_string();
    for expected in [
        "ingress.claimHeaders.azp: \"Bad Header:\" is not a header name",
        "ingress.claimHeaders.sub: \"Host\" is a header the proxy owns",
        "ingress.claimHeaders.client_id: \"X_Client\" is not a header name",
        "ingress.jwksRefetchInterval: must be at least 1s",
    ] {
        assert!(errors.lines().any(|l| l.starts_with(expected)), "missing {expected:?} in:\n{errors}");
    }
    assert!(!errors.contains("preferred_username"), "claim names may contain '_': {errors}");
    let typo = Config::load("routes:\n- { name: a, prefix: /a, upstrem: 'http://a' }\n", &Environment::default()).unwrap_err().to_string();
    assert!(typo.starts_with("routes[0].upstrem: unknown field `upstrem`, expected one of"), "{typo}");
    let unsafe_id = Environment { analysis_id: Some("../x".into()), ..Environment::default() };
    let errors =
        Config::load("routes:\n- { name: a, prefix: '/a/{analysis_id}', upstream: 'http://a' }\n", &unsafe_id).unwrap_err().to_string();
    assert!(errors.contains("routes[0].prefix: TOLLGATE_ANALYSIS_ID: \"../x\" is not a safe id"), "{errors}");
}

#[test]
fn an_empty_config_is_valid_and_refuses_everything() {
    let c = Config::load("", &Environment::default()).unwrap();
    assert_eq!(c.egress_listen.to_string(), "127.0.0.1:15001");
    assert!(route(&c, "GET", "/anything").is_err());
}

#[test]
fn a_pod_without_an_id_loses_only_what_needs_it_and_nothing_is_widened() {
    let config = "identity: { tokenUrl: 'http://10.0.0.1/token', clientIdFile: /c, clientSecretFile: /s }\n\
        routes:\n\
        - { name: hub, prefix: '/hub/{project_id}', upstream: 'http://10.0.0.2', auth: token }\n\
        - { name: broker, prefix: /broker, upstream: 'http://10.0.0.3', allow: ['/analyses/{analysis_id}/messages', /healthz], auth: token }\n\
        - { name: only-mine, prefix: /mine, upstream: 'http://10.0.0.4', allow: ['/{analysis_id}', '/{analysis_id}/**'], auth: token }\n\
        - { name: open, prefix: /open, upstream: 'http://10.0.0.5', auth: none }\n";
    let config = Config::load(config, &Environment::default()).expect("missing ids are no config error");
    let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["broker", "open"]);
    let left_out: Vec<(&str, &str)> = config.disabled.iter().map(|d| (d.path.as_str(), d.missing)).collect();
    assert_eq!(
        left_out,
        [("routes[0]", "TOLLGATE_PROJECT_ID"), ("routes[1].allow[0]", "TOLLGATE_ANALYSIS_ID"), ("routes[2]", "TOLLGATE_ANALYSIS_ID")]
    );
    // The broker keeps /healthz only: its allow list is not emptied into "everything".
    assert_eq!(config.routes[0].allow.len(), 1);
    // A broken pattern is still an error where the id is missing: the rest of the config is checked in full.
    let broken = "routes:\n- { name: x, prefix: '/x/{analysis_id}/../y', upstream: 'http://10.0.0.2' }\n";
    let errors = Config::load(broken, &Environment::default()).expect_err("still checked").to_string();
    assert!(errors.contains("routes[0].prefix"), "{errors}");
}

#[test]
fn answers_api_keys_credential_headers_and_the_pods_own_names_are_checked_naming_the_field() {
    let bad = "routes:\n\
        - { name: a, prefix: /a }\n\
        - { name: b, prefix: /b, upstream: 'http://b', answer: ready }\n\
        - { name: c, prefix: /c, answer: ready, auth: bearerFile, bearerFile: /x }\n\
        - { name: d, prefix: /d, upstream: 'http://d', auth: apiKeyFile }\n\
        - { name: e, prefix: /e, upstream: 'http://e', auth: apiKeyFile, apiKeyFile: /k, apiKeyHeader: 'Host' }\n\
        - { name: f, prefix: /f, upstream: 'http://f', apiKeyFile: /k }\n\
        - { name: g, prefix: /g, upstream: 'http://nginx-analysis-1:80' }\n\
        - { name: h, prefix: /h, upstream: 'http://h', auth: apiKeyFile, apiKeyFile: /k, apiKeyHeader: 'x_key' }\n\
        credentialHeaders: [apikey, 'bad header', content-length]\n\
        forwardProxy: 'http://NGINX-analysis-1:3128'\n\
        ingress: { upstream: 'http://127.0.0.1:8000', prefix: /, withoutToken: maybe, jwksUrl: 'http://k/certs', issuer: i, audiences: [a], algorithms: [RS256] }\n";
    let env = Environment { egress_hostnames: vec!["nginx-analysis-1".into()], ..Environment::default() };
    let errors = Config::load(bad, &env).expect_err("invalid").to_string();
    assert!(errors.starts_with("ingress.withoutToken: unknown variant `maybe`"), "{errors}");
    let errors = Config::load(&bad.replace("withoutToken: maybe", "withoutToken: admit"), &env).expect_err("invalid").to_string();
    for expected in [
        "routes[0].upstream: required (or answer: ready",
        "routes[1].answer: a route has an upstream or an answer, not both",
        "routes[2].auth: a route the proxy answers itself sends no credential",
        "routes[3].apiKeyFile: required when auth is apiKeyFile",
        "routes[4].apiKeyHeader: \"host\" is a header the proxy owns",
        "routes[5].apiKeyFile: only allowed when auth is apiKeyFile",
        "routes[6].upstream: \"nginx-analysis-1\" is one of this pod's names for the proxy itself",
        "routes[7].apiKeyHeader: \"x_key\" is not a header name",
        "credentialHeaders[1]: \"bad header\" is not a header name",
        "credentialHeaders[2]: \"content-length\" frames or addresses the request",
        "forwardProxy: \"NGINX-analysis-1\" is one of this pod's names for the proxy itself",
        "ingress.prefix: \"/\" is every path",
    ] {
        assert!(errors.lines().any(|l| l.starts_with(expected)), "missing {expected:?} in:\n{errors}");
    }
    let env = Environment { egress_hostnames: vec!["nginx_x".into(), "-a".into()], ..Environment::default() };
    let errors = Config::load("", &env).expect_err("invalid names").to_string();
    assert_eq!(errors.lines().filter(|l| l.starts_with("TOLLGATE_EGRESS_HOSTNAMES: ")).count(), 2, "{errors}");
    // Defaults: Kong's apikey and x-api-key are credential headers, plus every route's apiKeyHeader.
    let c = Config::load(
        "routes:\n- { name: k, prefix: /k, upstream: 'http://k', auth: apiKeyFile, apiKeyFile: /k, apiKeyHeader: X-Data-Key }\n",
        &Environment::default(),
    )
    .unwrap();
    let names: Vec<&str> = c.credential_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(names, ["apikey", "x-api-key", "x-data-key"]);
}
