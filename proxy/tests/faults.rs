//! Failures in the middle of a proxied exchange, with real sockets: an upstream that dies or stalls after
//! the response has started must never leave the client with a complete-looking response. Once the head is
//! sent, the only honest signal is a truncated body on a closed connection: no final chunk, fewer bytes than
//! Content-Length, nothing appended. Ingress and egress share the one code path for this.

mod common;

use std::time::Duration;

use common::{Fault, Proxy, assert_truncated, exchange, faulty_upstream, raw};

#[tokio::test]
async fn an_upstream_failing_mid_body_leaves_the_app_a_truncated_response_never_a_complete_looking_one() {
    let faults = [
        ("chunked-close", Fault::ChunkedThenClose),
        ("length-close", Fault::ShortThenClose),
        ("chunked-stall", Fault::ChunkedThenStall),
        ("length-reset", Fault::ShortThenReset),
    ];
    let mut routes = String::from("routes:\n");
    for (name, fault) in faults {
        let addr = faulty_upstream(fault).await;
        routes += &format!("- {{ name: {name}, prefix: /{name}, upstream: 'http://{addr}', readTimeout: 1s }}\n");
    }
    let proxy = Proxy::start(&routes, &[]).await;
    for (i, (name, _)) in faults.iter().enumerate() {
        let (bytes, took) = exchange(proxy.egress, &format!("GET /{name}/result HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")).await;
        assert_truncated(&bytes, name);
        assert!(took < Duration::from_secs(5), "{name}: {took:?}");
        // Logged and counted as what it was.
        let audit = proxy.audit(i + 1).await;
        let line = audit.iter().find(|l| l["route"] == *name).unwrap_or_else(|| panic!("no audit line for {name}: {audit:?}"));
        assert_eq!(line["decision"], "upstream-aborted", "{line}");
        assert_eq!(line["status"], 200, "the status the app saw: {line}");
        assert!(!line["reason"].as_str().unwrap_or("").is_empty(), "{line}");
    }
    let metrics = raw(proxy.admin, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.body;
    for (name, _) in faults {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("decision=\"upstream-aborted\"") && l.contains(&format!("route=\"{name}\"")) && l.ends_with(" 1")),
            "{name} not counted: {metrics}"
        );
    }
}
