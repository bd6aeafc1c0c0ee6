//! The request headers the proxy owns: a caller may not pass them on, and a route may not map a claim onto
//! one. Names only (lowercase); the proxy strips them.

/// Whether `name` (lowercase) must be dropped before forwarding: credentials, what says who the client is
/// (an upstream may trust it), and what says the request is another one (an upstream may honour a method
/// override, so a GET-only route would carry a DELETE).
pub fn is_spoofable(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "forwarded"
            | "x-real-ip"
            | "x-rewrite-url"
            | "x-client-ip"
            | "true-client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-host"
            | "x-http-method"
            | "x-method"
    ) || name.starts_with("x-forwarded-")
        || name.starts_with("x-original-")
        || (name.starts_with("x-") && name.ends_with("-method-override"))
        // CGI/WSGI-style servers read `_` as `-`: `X_Forwarded_For` would pass for `X-Forwarded-For`.
        || name.contains('_')
}

/// Headers the proxy must own on the way to the app or an upstream, never set from a claim.
pub fn is_reserved(name: &str) -> bool {
    is_spoofable(name)
        || matches!(
            name,
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "upgrade"
                | "expect"
                | "x-request-id"
        )
        || name.starts_with("proxy-")
}
