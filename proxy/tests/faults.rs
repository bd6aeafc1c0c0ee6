//! Failures in the middle of a proxied exchange, with real sockets: an upstream that dies or stalls after
//! the response has started must never leave the client with a complete-looking response. Once the head is
//! sent, the only honest signal is a truncated body on a closed connection: no final chunk, fewer bytes than
//! Content-Length, nothing appended. Ingress and egress share the one code path for this.

mod common;

use std::time::{Duration, Instant};

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

/// An upstream that switches protocols on every request, asked or not, then echoes raw bytes: what an
/// upgraded tunnel would carry.
async fn switching_upstream() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                if !common::read_head(&mut conn).await {
                    return;
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n").await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn upgrades_are_refused_unless_a_route_allows_them_and_an_unasked_101_is_never_relayed() {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (closed_addr, closed_seen) = switching_upstream().await;
    let (open_addr, _) = switching_upstream().await;
    let config = format!(
        "routes:\n- {{ name: broker, prefix: /broker, upstream: 'http://{closed_addr}' }}\n- {{ name: ws, prefix: /ws, upstream: 'http://{open_addr}', allowUpgrade: true }}\n"
    );
    let proxy = Proxy::start(&config, &[]).await;
    // Asked for on a route that does not allow it: 403, nothing forwarded.
    for extra in
        ["upgrade: websocket\r\nconnection: upgrade\r\n", "connection: keep-alive, Upgrade\r\nupgrade: h2c\r\n", "upgrade: tcp\r\n"]
    {
        let response = raw(proxy.egress, format!("GET /broker/events HTTP/1.1\r\nhost: 127.0.0.1\r\n{extra}\r\n").as_bytes()).await;
        assert_eq!(response.status, 403, "{extra:?}: {response:?}");
        assert_eq!(response.json()["decision"], "upgrade-refused");
    }
    // Not asked for, but the upstream switches anyway: the app gets a 502, never the 101 and its tunnel.
    let response = raw(proxy.egress, b"GET /broker/events HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").await;
    assert_eq!(response.status, 502, "{response:?}");
    assert_eq!(response.json()["decision"], "upstream-error");
    assert_eq!(closed_seen.load(Ordering::SeqCst), 1, "only the request that did not ask for an upgrade was forwarded");
    let audit = proxy.audit(4).await;
    assert_eq!(audit.iter().filter(|l| l["decision"] == "upgrade-refused").count(), 3, "{audit:?}");
    assert!(audit.iter().any(|l| l["reason"].as_str().unwrap_or("").contains("101")), "{audit:?}");

    // A route that allows it: the 101 is relayed and the tunnel is opaque from then on.
    let mut stream = tokio::net::TcpStream::connect(proxy.egress).await.unwrap();
    stream.write_all(b"GET /ws/socket HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream.write_all(b"anything at all").await.unwrap();
    let mut echoed = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"anything at all");
}

#[tokio::test]
async fn every_request_the_proxy_answers_is_audited_and_counted_even_those_its_parser_refuses() {
    let upstream = common::Upstream::start().await;
    let config = format!("routes:\n- {{ name: all, prefix: /, upstream: '{}', methods: [GET, POST] }}\n", upstream.url());
    let proxy = Proxy::start(&config, &[]).await;
    let requests: [(&str, &[u8], u16); 6] = [
        ("CONNECT", b"CONNECT example.org:443 HTTP/1.1\r\nhost: example.org:443\r\n\r\n", 405),
        ("obs-fold", b"GET /a HTTP/1.1\r\nhost: x\r\nx-folded: one\r\n two\r\n\r\n", 400),
        ("bad header name", b"GET /a HTTP/1.1\r\nhost: x\r\nbad header: 1\r\n\r\n", 400),
        ("two Hosts", b"GET /a HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n", 400),
        ("two Content-Lengths", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", 400),
        ("not HTTP", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    ];
    for (i, (what, request, status)) in requests.iter().enumerate() {
        let response = raw(proxy.egress, request).await;
        assert_eq!(response.status, *status, "{what}: {response:?}");
        let audit = proxy.audit(i + 1).await;
        assert_eq!(audit.len(), i + 1, "{what}: no audit line\n{}", proxy.logs());
        assert_eq!(audit[i]["status"], *status, "{what}: {}", audit[i]);
        assert_eq!(audit[i]["listener"], "egress", "{what}: {}", audit[i]);
    }
    assert!(upstream.requests().is_empty(), "nothing was forwarded");
    let metrics = raw(proxy.admin, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.body;
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tollgate_proxy_requests_total{") && l.contains("listener=\"egress\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, requests.len() as u64, "{metrics}");
}

#[tokio::test]
async fn a_slow_flapping_token_endpoint_under_200_concurrent_requests_lets_nothing_out_without_a_token() {
    use std::sync::atomic::Ordering;
    let (upstream, idp) = (common::Upstream::start().await, common::Idp::start().await);
    let config = format!(
        "identity: {{ tokenUrl: 'http://{}/token', clientIdFile: '{{dir}}/client-id', clientSecretFile: '{{dir}}/client-secret', refreshBefore: 30s, timeout: 2s }}\nroutes:\n- {{ name: hub, prefix: /hub, upstream: '{}', auth: token }}\n",
        idp.addr,
        upstream.url()
    );
    // Slow, down for the first second, then failing half the time, and handing out the shortest tokens the
    // proxy accepts (10 s, refreshed after 5), while 200 requests arrive over six seconds.
    idp.delay_ms.store(300, Ordering::SeqCst);
    idp.expires_in.store(10, Ordering::SeqCst);
    idp.status.store(500, Ordering::SeqCst);
    let proxy = Proxy::start(&config, &[]).await;
    let flapping = {
        let status = idp.status.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for i in 0..50 {
                status.store(if i % 2 == 0 { 200 } else { 500 }, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let addr = proxy.egress;
    let requests: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((i % 30) * 200)).await;
                raw(addr, format!("GET /hub/{i} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for request in requests {
        let response = request.await.unwrap();
        assert!(response.status == 200 || response.status == 503, "only success or a clear 503: {response:?}");
        if response.status == 503 {
            assert_eq!(response.json()["decision"], "no-credentials", "{response:?}");
        }
        *statuses.entry(response.status).or_insert(0) += 1;
    }
    flapping.await.unwrap();
    assert!(statuses.contains_key(&503) && statuses.contains_key(&200), "both outcomes were exercised: {statuses:?}");
    let forwarded = upstream.requests();
    assert_eq!(forwarded.len(), statuses.get(&200).copied().unwrap_or(0), "every 200 and nothing else reached the upstream");
    for request in &forwarded {
        let auth = request.header("authorization").unwrap_or_default();
        assert!(auth.starts_with("Bearer token-"), "forwarded without the proxy's token: {auth:?}");
    }
    assert!(idp.calls() < 200, "token calls are shared, not one per request: {}", idp.calls());

    // The endpoint recovers: so does the proxy, without a restart.
    idp.status.store(200, Ordering::SeqCst);
    idp.delay_ms.store(0, Ordering::SeqCst);
    idp.expires_in.store(300, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.get("/hub/after").await.status != 200 {
        assert!(Instant::now() < deadline, "the proxy did not recover:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..20 {
        assert_eq!(proxy.get(&format!("/hub/steady/{i}")).await.status, 200);
    }
}

#[tokio::test]
async fn an_upstream_resetting_mid_request_body_gets_the_app_a_clear_502_and_the_next_request_works() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Reads the head and a little of the body, then resets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resetting = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf).await;
                let _ = conn.set_zero_linger();
            });
        }
    });
    let healthy = common::Upstream::start().await;
    let config = format!(
        "routes:\n- {{ name: results, prefix: /results, upstream: 'http://{resetting}', methods: [PUT] }}\n- {{ name: hub, prefix: /hub, upstream: '{}' }}\n",
        healthy.url()
    );
    let proxy = Proxy::start(&config, &[]).await;
    for framing in ["content-length: 200000\r\n", "transfer-encoding: chunked\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(proxy.egress).await.unwrap();
        stream.write_all(format!("PUT /results/final HTTP/1.1\r\nhost: x\r\n{framing}\r\n").as_bytes()).await.unwrap();
        // The body, in pieces, until the proxy answers or stops reading.
        let chunk = vec![b'x'; 4096];
        for _ in 0..48 {
            let piece = if framing.contains("chunked") {
                [format!("{:x}\r\n", chunk.len()).into_bytes(), chunk.clone(), b"\r\n".to_vec()].concat()
            } else {
                chunk.clone()
            };
            if stream.write_all(&piece).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        // A clear failure: a 502 from the proxy, or (if the proxy's own write of the request failed first) a
        // closed connection without any response — never a 2xx.
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 502"), "{framing}: {text}");
    }
    // Nothing stuck: the next requests on other routes go through.
    for i in 0..5 {
        assert_eq!(proxy.get(&format!("/hub/{i}")).await.status, 200);
    }
    let audit = proxy.audit(7).await;
    assert!(audit.iter().filter(|l| l["route"] == "results").all(|l| l["decision"] == "upstream-error"), "{audit:?}");
}
