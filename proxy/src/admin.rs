//! The admin listener: `/healthz` (alive), `/readyz` (config loaded, and a token in hand where a route
//! needs one), `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::tokens::TokenSource;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

/// Whether the proxy is ready: what `/readyz` answers, and what a route with `answer: ready` answers.
pub struct Readiness {
    /// Set when a route needs a token: ready only once one is in hand.
    pub tokens: Option<Arc<TokenSource>>,
    pub draining: Arc<AtomicBool>,
    /// Set when the ingress listener runs: ready only once the JWKS is loaded.
    pub verifier: Option<Arc<crate::jwt::Verifier>>,
}

impl Readiness {
    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Err("draining")
        } else if self.tokens.as_ref().is_some_and(|t| !t.ready()) {
            Err("waiting for a token")
        } else if self.verifier.as_ref().is_some_and(|v| !v.ready()) {
            Err("waiting for the JWKS")
        } else {
            Ok(())
        }
    }
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
