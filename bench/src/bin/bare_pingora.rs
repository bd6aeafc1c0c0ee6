//! Bare pingora, configured like tollgate-proxy (one worker thread, the same pingora features) and doing
//! the least a FLAME sidecar route does: requests under a prefix go to one fixed upstream with the prefix
//! stripped and a constant `Authorization` header; everything else is 404. bench/proxy.sh measures
//! tollgate-proxy against it, so that tollgate's own per-request work is seen apart from pingora's.
//!
//!   bare-pingora LISTEN UPSTREAM PREFIX TOKEN      e.g. 127.0.0.1:16001 127.0.0.1:16080 /storage secret

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    prefix: String,
    authorization: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let path = session.req_header().uri.path();
        let under = path.strip_prefix(self.prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if under {
            return Ok(false);
        }
        let mut header = ResponseHeader::build(404, Some(1))?;
        header.insert_header("content-length", "0")?;
        session.write_response_header(Box::new(header), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(&self, _session: &mut Session, request: &mut RequestHeader, _ctx: &mut ()) -> Result<()> {
        let stripped = {
            let uri = &request.uri;
            let rest = &uri.path()[self.prefix.len()..];
            let rest = if rest.is_empty() { "/" } else { rest };
            match uri.query() {
                Some(query) => format!("{rest}?{query}"),
                None => rest.to_owned(),
            }
        };
        request.set_uri(stripped.parse().map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?);
        request.insert_header("authorization", self.authorization.as_str())?;
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, prefix, token] = args.as_slice() else {
        eprintln!("usage: bare-pingora LISTEN UPSTREAM PREFIX TOKEN");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is an address like 127.0.0.1:16080");
    let conf =
        ServerConf { threads: 1, grace_period_seconds: Some(0), graceful_shutdown_timeout_seconds: Some(0), ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let bare = Bare { upstream, prefix: prefix.clone(), authorization: format!("Bearer {token}") };
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, bare);
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
