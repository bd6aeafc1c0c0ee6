//! The ingress listener on pingora: calls into the analysis container, admitted only with a valid JWT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use serde_json::Value;

use crate::audit::{Requests, request_id};
use crate::config::WithoutToken;
use crate::decision::{Decision, Refusal};
use crate::headers::{answer_failure, asks_for_upgrade, check_framing, check_switching, json_error, strip_credentials, strip_spoofable};
use crate::jwt::{AuthError, Verifier};
use crate::target::{check, check_host};

pub struct IngressProxy {
    pub verifier: Arc<Verifier>,
    /// Every request the ingress answers, counted (handed in by main.rs).
    requests: Requests,
    /// Removed from every call (`credentialHeaders`), like `Authorization`.
    credential_headers: Vec<http::HeaderName>,
    own_authorities: Vec<String>,
    resolver: crate::resolve::Resolver,
}

impl IngressProxy {
    pub fn new(
        verifier: Arc<Verifier>,
        requests: Requests,
        listen: std::net::SocketAddr,
        credential_headers: Vec<http::HeaderName>,
    ) -> Self {
        let port = listen.port();
        IngressProxy {
            verifier,
            requests,
            credential_headers,
            own_authorities: vec![listen.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}")],
            resolver: crate::resolve::Resolver::default(),
        }
    }
}

#[derive(Default)]
pub struct IngressCtx {
    /// Counted until the request is done with (drain.rs).
    _in_flight: Option<crate::drain::InFlight>,
    target: String,
    claims: Option<Value>,
    decision: Decision,
    reason: String,
    client: String,
    started: Option<Instant>,
    request_id: String,
}

/// Answer locally with a JSON error (`headers` along); nothing is forwarded.
async fn respond(session: &mut Session, ctx: &mut IngressCtx, refusal: Refusal, headers: Vec<(&'static str, String)>) -> Result<bool> {
    json_error(session, refusal.status(), refusal.decision.label(), &refusal.reason, headers).await?;
    ctx.decision = refusal.decision;
    ctx.reason = refusal.reason;
    Ok(true)
}

fn bearer(header: &RequestHeader) -> Option<&str> {
    // Exactly one Authorization header: a second, unverified one must not ride along.
    let mut values = header.headers.get_all("authorization").iter();
    let (value, None) = (values.next()?.to_str().ok()?, values.next()) else { return None };
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

#[async_trait]
impl ProxyHttp for IngressProxy {
    type CTX = IngressCtx;

    fn new_ctx(&self) -> IngressCtx {
        IngressCtx { started: Some(Instant::now()), _in_flight: Some(crate::drain::InFlight::begin()), ..IngressCtx::default() }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut IngressCtx) -> Result<()> {
        crate::connections::head_received(session);
        // Requests sent back to back on one connection are answered one after the other, in order (RFC 9112
        // §9.3.2), instead of the first answered and the rest dropped with the connection.
        session.set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut IngressCtx) -> Result<bool> {
        let header = session.req_header();
        ctx.request_id = request_id(header.headers.get("x-request-id").and_then(|v| v.to_str().ok()));
        if header.method == http::Method::CONNECT {
            return respond(session, ctx, Refusal::new(Decision::ConnectRefused, "CONNECT is never tunnelled"), Vec::new()).await;
        }
        let hosts: Vec<&[u8]> = header.headers.get_all("host").iter().map(|v| v.as_bytes()).collect();
        if let Err(e) = check_host(header.version == http::Version::HTTP_11, &hosts) {
            return respond(session, ctx, Refusal::new(Decision::BadRequest, e.to_string()), Vec::new()).await;
        }
        let raw = String::from_utf8_lossy(session.req_header().raw_path()).into_owned();
        let target = match check(&raw, &self.own_authorities) {
            Ok(target) => target,
            Err(e) => return respond(session, ctx, Refusal::new(Decision::BadRequest, e.to_string()), Vec::new()).await,
        };
        // The app must read the request the proxy checked: one unambiguous framing, as on egress.
        if let Err(why) = check_framing(session.req_header()) {
            return respond(session, ctx, Refusal::new(Decision::BadRequest, why), Vec::new()).await;
        }
        // After a 101 nothing on the connection would be checked: the ingress never switches protocols.
        if asks_for_upgrade(session.req_header()) {
            let refusal = Refusal::new(Decision::UpgradeRefused, "the ingress does not allow protocol upgrades");
            return respond(session, ctx, refusal, Vec::new()).await;
        }
        let config = self.verifier.config();
        // Only paths under the prefix, which the app does not see.
        ctx.target = match config.app_target(&target) {
            Some(forwarded) => forwarded,
            None => {
                let reason = format!("{} is not under the ingress prefix", target.path);
                return respond(session, ctx, Refusal::new(Decision::Denied, reason), Vec::new()).await;
            }
        };
        // A caller that sends no credential at all is admitted only where the config says the network decides
        // (withoutToken: admit); one that sends any Authorization must send a valid token.
        if config.without_token == WithoutToken::Admit && !session.req_header().headers.contains_key("authorization") {
            ctx.reason = "no token: admitted by the network policy in front of the ingress port (withoutToken: admit)".into();
            ctx.decision = Decision::Forwarded;
            return Ok(false);
        }
        let Some(token) = bearer(session.req_header()).map(str::to_owned) else {
            let error = AuthError::Missing;
            let challenge = vec![("www-authenticate", "Bearer realm=\"tollgate\"".to_owned())];
            return respond(session, ctx, Refusal::new(Decision::Unauthenticated, error.to_string()), challenge).await;
        };
        match self.verifier.verify(&token).await {
            Ok(claims) => {
                ctx.client = claims.get("azp").or_else(|| claims.get("client_id")).and_then(Value::as_str).unwrap_or("").to_owned();
                ctx.claims = Some(claims);
            }
            // The issuer's keys cannot be loaded: not the caller's fault, and worth a retry.
            Err(error @ AuthError::Keys(_)) => {
                let retry = self.verifier.retry_after().as_secs_f64().ceil().max(1.0) as u64;
                let refusal = Refusal::new(Decision::KeysUnavailable, error.to_string());
                return respond(session, ctx, refusal, vec![("retry-after", retry.to_string())]).await;
            }
            Err(error) => {
                let challenge = format!("Bearer realm=\"tollgate\", error=\"{}\", error_description=\"{}\"", error.code(), error);
                let refusal = Refusal::new(Decision::Unauthenticated, error.to_string());
                return respond(session, ctx, refusal, vec![("www-authenticate", challenge)]).await;
            }
        }
        ctx.decision = Decision::Forwarded;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut IngressCtx) -> Result<Box<HttpPeer>> {
        let upstream = &self.verifier.config().upstream;
        let addr = self.resolver.resolve(&upstream.host, upstream.port).await.map_err(|e| Error::explain(ErrorType::ConnectNoRoute, e))?;
        let mut peer = HttpPeer::new(addr, upstream.tls, upstream.host.clone());
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(Duration::from_secs(120));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(&self, _session: &mut Session, request: &mut RequestHeader, ctx: &mut IngressCtx) -> Result<()> {
        let config = self.verifier.config();
        request.set_uri(ctx.target.parse().map_err(|e| Error::because(ErrorType::InternalError, "building the target", e))?);
        // Forwarding and `_` headers from the caller never reach the app; the token only when configured.
        let verified = request.headers.get("authorization").cloned();
        strip_spoofable(request);
        strip_credentials(request, &self.credential_headers);
        if config.forward_token
            && let Some(token) = verified
        {
            request.insert_header("authorization", token)?;
        }
        // Claim headers come from the verified token only, never from the caller.
        for (claim, header) in &config.claim_headers {
            request.remove_header(header.as_str());
            if let Some(value) = ctx.claims.as_ref().and_then(|c| c.get(claim)) {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    request.insert_header(header.clone(), text)?;
                }
            }
        }
        request.insert_header("host", config.upstream.authority())?;
        request.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(&self, _session: &mut Session, response: &mut ResponseHeader, _ctx: &mut IngressCtx) -> Result<()> {
        check_switching(response.status.as_u16(), false).map_err(|reason| Error::explain(ErrorType::HTTPStatus(502), reason))
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut IngressCtx) -> FailToProxy {
        // What the caller sent (a body cut short or framed wrong) is its own fault, not the app's.
        let downstream = e.esource() == &ErrorSource::Downstream;
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout if !downstream => 504,
            _ if downstream => 400,
            _ => 502,
        };
        let decision = if downstream { Decision::BadRequest } else { Decision::UpstreamError };
        ctx.decision = match answer_failure(session, code, decision.label(), e.etype().as_str()).await {
            true if !downstream => Decision::UpstreamAborted,
            _ => decision,
        };
        ctx.reason = e.to_string();
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _error: Option<&Error>, ctx: &mut IngressCtx) {
        crate::connections::request_done(session);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.requests.count("ingress", "", status, ctx.decision);
        crate::audit::write(&crate::audit::Line {
            listener: "ingress",
            route: "",
            method: session.req_header().method.as_str(),
            path: &ctx.target,
            status,
            decision: ctx.decision,
            reason: &ctx.reason,
            client: Some(&ctx.client),
            bytes_in: None,
            bytes_out: session.body_bytes_sent(),
            duration_ms: ctx.started.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0),
            request_id: &ctx.request_id,
            error: "",
        });
    }
}
