//! OAuth2 client-credentials tokens, fetched by the proxy itself (the app never sees a credential).
//!
//! One token is cached and refreshed ahead of expiry by a background task. Requests that find no valid
//! token wait on one shared fetch (single flight): any number of concurrent requests cause one call to the
//! token endpoint. After a failed call, requests fail fast (503) until the backoff has passed, so an
//! identity provider that is down is not hammered; the background task retries with growing backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::client::HttpClient;
use crate::config::Identity;
use crate::local::LocalGuard;

/// Never use a token this close to its expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Token lifetimes are trusted only within these bounds.
const MIN_LIFETIME: Duration = Duration::from_secs(10);
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Token {
    /// `Bearer <access token>`, ready for the Authorization header (a clone is a reference count).
    pub header_value: http::HeaderValue,
    pub expires_at: Instant,
    /// When to fetch the next one: `refreshBefore` ahead of expiry, but never in the first half of the
    /// token's life (short-lived tokens would otherwise be refetched in a loop).
    pub refresh_at: Instant,
}

/// `Bearer <token>` as a header value, marked sensitive (never logged, never indexed by HPACK); `None` when
/// the token is empty or not printable ASCII without spaces.
pub fn bearer_header(token: &str) -> Option<http::HeaderValue> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut value = http::HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// An API key as a header value, marked sensitive; `None` under the same conditions as [`bearer_header`].
pub fn key_header(key: &str) -> Option<http::HeaderValue> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut value = http::HeaderValue::try_from(key).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no valid token: {0}")]
pub struct TokenError(pub String);

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    /// A number, or a string (some identity providers): see [`lifetime`].
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// A token's lifetime from `expires_in` as the endpoint sent it: a JSON number (integer or not) or a
/// string of digits with an optional fraction (`"300"`, `"300.0"`, which some identity providers send);
/// absent or null means 60 s. It must be finite, non-negative and at least [`MIN_LIFETIME`]; above
/// [`MAX_LIFETIME`] it is clamped.
fn lifetime(expires_in: Option<&serde_json::Value>) -> Result<Duration, String> {
    use serde_json::Value;
    let decimal = |s: &str| {
        let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
        [whole, fraction].iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    };
    let seconds = match expires_in {
        None | Some(Value::Null) => 60.0,
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| format!("expires_in {n} is not a number of seconds"))?,
        Some(Value::String(s)) if decimal(s) => s.parse::<f64>().map_err(|e| format!("expires_in {s:?}: {e}"))?,
        Some(other) => return Err(format!("expires_in {other} is not a number of seconds")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("expires_in {seconds} is not a non-negative number of seconds"));
    }
    let lifetime = Duration::from_secs_f64(seconds.min(MAX_LIFETIME.as_secs_f64()));
    if lifetime < MIN_LIFETIME {
        return Err(format!("token lifetime of {lifetime:?} is too short to use (at least {MIN_LIFETIME:?})"));
    }
    Ok(lifetime)
}

/// What the token source counts (registered by metrics.rs): its calls to the token endpoint, by result.
/// Clones share the series.
#[derive(Clone, Default)]
pub struct FetchMetrics(Family<ResultLabels, Counter>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl FetchMetrics {
    pub fn register(registry: &mut Registry) -> FetchMetrics {
        let fetches = FetchMetrics::default();
        registry.register("token_fetches", "Calls to the token endpoint, by result", fetches.0.clone());
        for result in ["success", "failure"] {
            let _ = fetches.0.get_or_create(&ResultLabels { result });
        }
        fetches
    }

    fn fetched(&self, ok: bool) {
        self.0.get_or_create(&ResultLabels { result: if ok { "success" } else { "failure" } }).inc();
    }
}

struct FailureState {
    at: Instant,
    backoff: Duration,
    error: String,
}

pub struct TokenSource {
    identity: Identity,
    client: HttpClient,
    /// The token endpoint (or the forward proxy) must not be the pod itself, unless named literally.
    guard: Arc<LocalGuard>,
    current: ArcSwapOption<Token>,
    fetching: Mutex<Option<FailureState>>,
    metrics: FetchMetrics,
}

impl TokenSource {
    pub fn new(identity: Identity, client: HttpClient, guard: Arc<LocalGuard>, metrics: FetchMetrics) -> Self {
        TokenSource { identity, client, guard, current: ArcSwapOption::empty(), fetching: Mutex::new(None), metrics }
    }

    fn usable(&self) -> Option<Arc<Token>> {
        self.current.load_full().filter(|t| t.expires_at > Instant::now() + EXPIRY_MARGIN)
    }

    /// Whether a usable token is cached (for /readyz).
    pub fn ready(&self) -> bool {
        self.usable().is_some()
    }

    /// A valid token: the cached one, or one fetched now (shared by all concurrent callers).
    pub async fn token(&self) -> Result<Arc<Token>, TokenError> {
        if let Some(token) = self.usable() {
            return Ok(token);
        }
        let mut failure = self.fetching.lock().await;
        if let Some(token) = self.usable() {
            return Ok(token);
        }
        if let Some(f) = failure.as_ref().filter(|f| f.at.elapsed() < f.backoff) {
            return Err(TokenError(format!("token endpoint failed {:?} ago: {}", f.at.elapsed(), f.error)));
        }
        self.fetch_locked(&mut failure).await
    }

    async fn fetch_locked(&self, failure: &mut Option<FailureState>) -> Result<Arc<Token>, TokenError> {
        match self.fetch().await {
            Ok(token) => {
                self.metrics.fetched(true);
                *failure = None;
                let token = Arc::new(token);
                self.current.store(Some(token.clone()));
                Ok(token)
            }
            Err(error) => {
                self.metrics.fetched(false);
                let backoff = failure.as_ref().map_or(MIN_BACKOFF, |f| (f.backoff * 2).min(MAX_BACKOFF));
                tracing::warn!(%error, retry_in = ?backoff, "token request failed");
                *failure = Some(FailureState { at: Instant::now(), backoff, error: error.clone() });
                Err(TokenError(error))
            }
        }
    }

    /// Keep a token fresh: refresh `refreshBefore` ahead of expiry, retry failures with backoff.
    pub async fn keep_fresh(self: Arc<Self>) {
        loop {
            let wait = {
                let mut failure = self.fetching.lock().await;
                let due = self.current.load_full().map_or(Duration::ZERO, |t| t.refresh_at.saturating_duration_since(Instant::now()));
                if due.is_zero() {
                    match self.fetch_locked(&mut failure).await {
                        Ok(_) => Duration::ZERO,
                        Err(_) => failure.as_ref().map_or(MIN_BACKOFF, |f| f.backoff),
                    }
                } else {
                    due
                }
            };
            tokio::time::sleep(wait.max(MIN_BACKOFF)).await;
        }
    }

    async fn fetch(&self) -> Result<Token, String> {
        // Read on every fetch, so a rotated Secret is picked up; never logged.
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map(|s| s.trim().to_owned()).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        let client_id = read(&self.identity.client_id_file)?;
        let client_secret = read(&self.identity.client_secret_file)?;
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &client_id)
                .append_pair("client_secret", &client_secret);
            if let Some(scope) = &self.identity.scope {
                form.append_pair("scope", scope);
            }
            form.finish()
        };
        let url = &self.identity.token_url;
        let request = hyper::Request::post(if url.base_path.is_empty() { "/" } else { url.base_path.as_str() })
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let response = self.client.send_credentials(url, request, self.identity.timeout, &self.guard).await?;
        if response.status != 200 {
            // The body may echo the request; say only what kind of failure it was.
            let error = serde_json::from_slice::<serde_json::Value>(&response.body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
            return Err(format!("token endpoint answered {}{}", response.status, error.map(|e| format!(" ({e})")).unwrap_or_default()));
        }
        let parsed: TokenResponse = serde_json::from_slice(&response.body).map_err(|e| format!("token response is not a token: {e}"))?;
        if parsed.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(format!("token type {:?} is not Bearer", parsed.token_type.unwrap_or_default()));
        }
        let header_value = bearer_header(&parsed.access_token).ok_or("access token is empty or not a header-safe string")?;
        let lifetime = lifetime(parsed.expires_in.as_ref())?;
        let refresh_at = started + lifetime - self.identity.refresh_before.min(lifetime / 2);
        Ok(Token { header_value, expires_at: started + lifetime, refresh_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lifetimes_as_numbers_strings_and_floats() {
        let secs = |value: serde_json::Value| lifetime(Some(&value));
        assert_eq!(lifetime(None), Ok(Duration::from_secs(60)), "absent: 60 s");
        assert_eq!(secs(json!(null)), Ok(Duration::from_secs(60)));
        for value in [json!(300), json!(300.0), json!("300"), json!("300.0"), json!("0300")] {
            assert_eq!(secs(value.clone()), Ok(Duration::from_secs(300)), "{value}");
        }
        assert_eq!(secs(json!("299.5")), Ok(Duration::from_millis(299_500)));
        assert_eq!(secs(json!(10)), Ok(MIN_LIFETIME), "the lower bound is allowed");
        for value in [json!(u64::MAX), json!(1e300), json!("99999999999999999999999"), json!(86_401)] {
            assert_eq!(secs(value.clone()), Ok(MAX_LIFETIME), "{value}: clamped");
        }
    }

    #[test]
    fn lifetimes_that_are_negative_not_numbers_or_too_short_are_refused() {
        let secs = |value: serde_json::Value| lifetime(Some(&value));
        for value in [json!(0), json!(9), json!(9.999), json!("5"), json!(-0.0)] {
            assert!(secs(value.clone()).unwrap_err().contains("too short"), "{value}");
        }
        for value in [json!(-1), json!(-300.0), json!("-300"), json!("+300"), json!(" 300"), json!("300s"), json!("1e3"), json!("1e400")] {
            assert!(secs(value.clone()).unwrap_err().starts_with("expires_in"), "{value}");
        }
        for value in
            [json!("inf"), json!("NaN"), json!(""), json!("."), json!("3."), json!(".5"), json!(true), json!([300]), json!({"s": 300})]
        {
            assert!(secs(value.clone()).unwrap_err().starts_with("expires_in"), "{value}");
        }
    }
}
