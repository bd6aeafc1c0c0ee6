//! Side by side: one keep-alive HTTP/1.1 request to a local upstream directly, and the same through
//! tollgate-proxy (route matching, path safety, header rewriting; with and without a bearer file).
//!
//! `cargo bench -p tollgate-proxy`; numbers from the 2-core development machine are in README.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(connection);
    sender
}

async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, path: &str) {
    sender.ready().await.unwrap();
    let request = hyper::Request::get(path).header("host", "127.0.0.1").body(Empty::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (upstream, proxy) = runtime.block_on(async {
        let upstream = common::Upstream::start().await;
        let config = format!(
            "routes:\n- {{ name: open, prefix: /open, upstream: '{0}' }}\n- {{ name: auth, prefix: /auth, allow: ['/a/**'], upstream: '{0}', auth: bearerFile, bearerFile: '{{dir}}/bearer' }}\n",
            upstream.url()
        );
        (upstream.addr, common::Proxy::start(&config, &[("TOLLGATE_LOG", "warn")]).await)
    });
    let mut group = c.benchmark_group("http1-keepalive");
    for (name, addr, path) in [
        ("direct to upstream (floor)", upstream, "/x/y"),
        ("via tollgate-proxy, auth none", proxy.egress, "/open/x/y"),
        ("via tollgate-proxy, bearer file", proxy.egress, "/auth/a/x/y"),
    ] {
        let sender = tokio::sync::Mutex::new(runtime.block_on(client(addr)));
        group.bench_function(name, |b| b.to_async(&runtime).iter(|| async { get(&mut *sender.lock().await, path).await }));
    }
    group.finish();
    drop(proxy);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(30);
    targets = bench
}
criterion_main!(benches);
