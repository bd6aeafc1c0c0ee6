//! The admin listener: `/healthz` (alive), `/readyz` (config loaded, and a token in hand where a route
//! needs one), `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::readiness::Readiness;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

fn reply(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Nothing here reads a body: once the head is in, the next byte starts the next request.
        crate::connections::request_done(session);
        let header = session.req_header();
        if header.method != http::Method::GET {
            return reply(405, "text/plain", "method not allowed\n");
        }
        match header.uri.path() {
            "/healthz" => reply(200, "text/plain", "ok\n"),
            "/readyz" => match self.readiness.check() {
                Ok(()) => reply(200, "text/plain", "ok\n"),
                Err(why) => reply(503, "text/plain", format!("{why}\n")),
            },
            "/metrics" => reply(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", self.metrics.encode()),
            _ => reply(404, "text/plain", "not found\n"),
        }
    }
}
