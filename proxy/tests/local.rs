//! Credentials never go to the pod itself: a host *name* that resolves to a loopback, link-local,
//! unspecified or own address gets no token, no bearer file and no client secret, and no connection is
//! opened; the same address named literally in the config is the admin's choice and works as before.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Idp, Proxy, Upstream, localhost, raw};

fn identity(token_url: &str) -> String {
    format!(
        "identity: {{ tokenUrl: '{token_url}', clientIdFile: '{{dir}}/client-id', clientSecretFile: '{{dir}}/client-secret', timeout: 2s }}\n"
    )
}

async fn metrics(proxy: &Proxy) -> String {
    raw(proxy.admin, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.body
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
        .parse()
        .unwrap()
}

/// The refusal every credential-carrying request to a local address gets.
fn assert_refused(response: &common::RawResponse, host: &str, expected: &[&str]) {
    assert_eq!(response.status, 502, "{response:?}");
    let error = response.json();
    assert_eq!(error["decision"], "local-destination", "{error}");
    let text = error["error"].as_str().unwrap();
    assert!(text.starts_with(&format!("upstream host {host:?} resolved to ")), "{text}");
    assert!(text.contains("credentials are never sent to a local address unless the config names the address literally"), "{text}");
    for part in expected {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
}

#[tokio::test]
async fn a_name_resolving_to_loopback_gets_no_token_or_bearer_and_no_connection() {
    let local = localhost().await;
    let (by_name, idp) = (Upstream::start_on(local).await, Idp::start().await);
    let port = by_name.addr.port();
    let config = format!(
        "{}routes:\n- {{ name: hub, prefix: /hub, upstream: 'http://localhost:{port}/api', auth: token }}\n- {{ name: kong, prefix: /kong, upstream: 'http://localhost:{port}', auth: bearerFile, bearerFile: '{{dir}}/bearer' }}\n",
        identity(&format!("http://{}/token", idp.addr)),
    );
    let proxy = Proxy::start(&config, &[]).await;
    for (path, route) in [("/hub/projects", "hub"), ("/kong/x", "kong")] {
        let response = proxy.get(path).await;
        assert_refused(&response, "localhost", &[&local.to_string(), "a loopback address"]);
        assert!(!response.body.contains("token-") && !response.body.contains("static-token"), "{route}: {response:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(by_name.accepted(), 0, "no connection to the stand-in: {:?}", by_name.requests());
    let logs = proxy.logs();
    assert!(!logs.contains("static-token") && !logs.contains("token-1") && !logs.contains("s3cr3t"), "a secret was logged");
    let audit: Vec<serde_json::Value> =
        logs.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v["message"] == "request").collect();
    assert_eq!(audit.len(), 2, "{logs}");
    assert!(audit.iter().all(|a| a["decision"] == "local-destination" && a["status"] == 502), "{audit:?}");
    assert!(audit[0]["reason"].as_str().unwrap().contains("a loopback address"), "{audit:?}");
    let metrics = metrics(&proxy).await;
    assert_eq!(counter(&metrics, "tollgate_proxy_local_destination_refusals_total{call=\"egress\"}"), 2, "{metrics}");
    assert_eq!(
        counter(&metrics, "tollgate_proxy_requests_total{listener=\"egress\",route=\"hub\",status=\"502\",decision=\"local-destination\"}"),
        1
    );
}

#[tokio::test]
async fn the_same_routes_naming_the_loopback_address_literally_still_get_credentials() {
    let (upstream, idp) = (Upstream::start().await, Idp::start().await);
    let ip = upstream.addr;
    let config = format!(
        "{}routes:\n- {{ name: hub, prefix: /hub, upstream: 'http://{ip}/api', auth: token }}\n- {{ name: kong, prefix: /kong, upstream: 'http://{ip}', auth: bearerFile, bearerFile: '{{dir}}/bearer' }}\n",
        identity(&format!("http://{}/token", idp.addr)),
    );
    let proxy = Proxy::start(&config, &[]).await;
    assert_eq!(proxy.get("/hub/projects").await.status, 200, "{}", proxy.logs());
    assert_eq!(proxy.get("/kong/x").await.status, 200, "{}", proxy.logs());
    let seen: Vec<(String, Option<String>)> =
        upstream.requests().iter().map(|r| (r.target.clone(), r.header("authorization").map(str::to_owned))).collect();
    assert_eq!(
        seen,
        [("/api/projects".to_owned(), Some("Bearer token-1".to_owned())), ("/x".to_owned(), Some("Bearer static-token".to_owned()))]
    );
    assert!(idp.calls() >= 1);
    assert_eq!(counter(&metrics(&proxy).await, "tollgate_proxy_local_destination_refusals_total{call=\"egress\"}"), 0);
}

#[tokio::test]
async fn an_ipv6_loopback_named_literally_is_allowed_too() {
    // Only where this machine has ::1 (a bare IPv4 host has no IPv6 loopback to listen on).
    let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
        println!("skipped: no IPv6 loopback on this machine");
        return;
    };
    drop(listener);
    let upstream = Upstream::start_on("::1".parse().unwrap()).await;
    let config = format!(
        "routes:\n- {{ name: kong, prefix: /kong, upstream: 'http://[::1]:{}', auth: bearerFile, bearerFile: '{{dir}}/bearer' }}\n",
        upstream.addr.port()
    );
    let proxy = Proxy::start(&config, &[]).await;
    assert_eq!(proxy.get("/kong/x").await.status, 200, "{}", proxy.logs());
    assert_eq!(upstream.requests()[0].header("authorization"), Some("Bearer static-token"));
}

#[tokio::test]
async fn a_token_url_naming_localhost_gets_no_client_secret() {
    let (upstream, idp) = (Upstream::start().await, Idp::start_on(localhost().await).await);
    let config = format!(
        "{}routes:\n- {{ name: hub, prefix: /hub, upstream: '{}', auth: token }}\n",
        identity(&format!("http://localhost:{}/realms/flame/protocol/openid-connect/token", idp.addr.port())),
        upstream.url()
    );
    let proxy = Proxy::start(&config, &[]).await;
    let response = proxy.get("/hub/x").await;
    assert_eq!(response.status, 503, "{response:?}");
    let error = response.json();
    assert_eq!(error["decision"], "no-credentials");
    let text = error["error"].as_str().unwrap();
    assert!(text.contains("token endpoint host \"localhost\" resolved to"), "{text}");
    assert!(text.contains("a loopback address: credentials are never sent to a local address"), "{text}");
    // The background refresh keeps trying (with backoff), and is refused every time.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!((idp.accepted(), idp.calls()), (0, 0), "the token endpoint saw nothing: {:?}", idp.forms.lock().unwrap());
    assert!(upstream.requests().is_empty());
    assert_eq!(raw(proxy.admin, b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.status, 503);
    let metrics = metrics(&proxy).await;
    assert!(counter(&metrics, "tollgate_proxy_local_destination_refusals_total{call=\"token\"}") >= 2, "{metrics}");
    assert!(!proxy.logs().contains("s3cr3t"), "secret in the logs");
}

#[tokio::test]
async fn auth_none_routes_to_localhost_still_work() {
    let upstream = Upstream::start_on(localhost().await).await;
    let config = format!("routes:\n- {{ name: open, prefix: /open, upstream: 'http://localhost:{}' }}\n", upstream.addr.port());
    let proxy = Proxy::start(&config, &[]).await;
    let response = proxy.get("/open/x").await;
    assert_eq!(response.status, 200, "{response:?}\n{}", proxy.logs());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), None);
}

#[tokio::test]
async fn an_address_of_a_non_loopback_interface_is_refused_when_reached_by_name() {
    // The pod's own IP, reached by a name: what a pod named like an upstream's short name gets from the
    // kubelet's /etc/hosts. Tests cannot write /etc/hosts; the system resolver reads an IPv4 address
    // written as one decimal number (192.0.2.2 as "3221225986") like a name, which the proxy does not
    // take for a literal, so it goes through the same resolution.
    let own = tollgate_proxy::local::interface_addresses().unwrap();
    let Some(ip) = own.iter().find_map(|a| match a {
        IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified() => Some(*v4),
        _ => None,
    }) else {
        println!("skipped: no IPv4 address on an interface besides loopback (have {own:?}); the decision is unit-tested");
        return;
    };
    let name = u32::from(ip).to_string();
    match tokio::net::lookup_host((name.as_str(), 80)).await.map(|mut a| a.next()) {
        Ok(Some(addr)) if addr.ip() == IpAddr::V4(ip) => {}
        other => {
            println!("skipped: the resolver does not read {name} as {ip} ({other:?}); the decision is unit-tested");
            return;
        }
    }
    // Stand-ins listen on the interface address itself (binding it proves it is this machine's).
    let (upstream, idp) = (Upstream::start_on(IpAddr::V4(ip)).await, Idp::start_on(IpAddr::V4(ip)).await);
    let literal = Upstream::start().await;
    let config = format!(
        "{}routes:\n- {{ name: kong, prefix: /kong, upstream: 'http://{name}:{}', auth: bearerFile, bearerFile: '{{dir}}/bearer' }}\n- {{ name: hub, prefix: /hub, upstream: '{}', auth: token }}\n",
        identity(&format!("http://{name}:{}/token", idp.addr.port())),
        upstream.addr.port(),
        literal.url(),
    );
    let proxy = Proxy::start(&config, &[]).await;
    assert_refused(&proxy.get("/kong/x").await, &name, &[&format!("resolved to {ip}, an address of this pod")]);
    let response = proxy.get("/hub/x").await;
    assert_eq!(response.status, 503, "{response:?}");
    let text = response.json()["error"].as_str().unwrap().to_owned();
    assert!(text.contains(&format!("token endpoint host {name:?} resolved to {ip}, an address of this pod")), "{text}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.accepted() + idp.accepted() + literal.accepted(), 0, "no connection anywhere");
}
