//! What every request passes before a route sees it, outermost first: the `Host` check (DNS
//! rebinding), the origin check for state-changing requests (CSRF), the token, and an idle
//! timeout on request bodies.

use crate::api::{ApiError, State};
use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A request body that sends nothing for this long is abandoned (408).
pub(crate) const BODY_IDLE: Duration = Duration::from_secs(30);

/// Shortest token accepted at start.
pub(crate) const MIN_TOKEN_CHARS: usize = 16;

/// Whether `host` (a `Host` header or URI authority) names this server bound on `bound`: a
/// loopback name or the bound address, with the bound port. A page on another name that
/// resolves to 127.0.0.1 (DNS rebinding) is refused. Bound on an unspecified address
/// (`0.0.0.0`, `[::]`), any IP literal is accepted (a literal cannot be rebound) and so is this
/// machine's host name.
pub(crate) fn host_allowed(host: &str, bound: SocketAddr, hostname: Option<&str>) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !p.contains(']') => match p.parse::<u16>() {
            Ok(p) => (n, p),
            Err(_) => return false,
        },
        _ => (host, 80),
    };
    if port != bound.port() {
        return false;
    }
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    let ip = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name).parse::<IpAddr>().ok();
    if name == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
        return true;
    }
    if let Some(ip) = ip {
        return ip == bound.ip() || bound.ip().is_unspecified();
    }
    bound.ip().is_unspecified() && hostname.is_some_and(|h| h.eq_ignore_ascii_case(name))
}

/// Refuses (421, JSON) a request whose host is not this server's.
pub(crate) async fn check_host(AxState(st): AxState<State>, req: Request, next: Next) -> Response {
    let host = req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| host_header(req.headers()));
    match host {
        Some(h) if host_allowed(&h, st.bound, st.hostname.as_deref()) => next.run(req).await,
        Some(h) => ApiError::Misdirected(format!(
            "host '{h}' is not this server (use http://127.0.0.1:{}/ or http://localhost:{}/)",
            st.bound.port(),
            st.bound.port()
        ))
        .into_response(),
        None => ApiError::Misdirected("request without a Host header".into()).into_response(),
    }
}

fn host_header(h: &HeaderMap) -> Option<String> {
    h.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// State-changing requests (anything but GET, HEAD, OPTIONS) must come from this server's own
/// page or from a client that is not a browser: a foreign `Origin`, or without one a
/// `Sec-Fetch-Site` other than `same-origin`/`none`, is refused (403). Bodies of every request
/// get an idle timeout.
pub(crate) async fn check_origin(req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        let h = req.headers();
        if let Some(origin) = h.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("?");
            let own = req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| host_header(h)).map(|a| format!("http://{a}"));
            if own.as_deref().is_none_or(|o| !o.eq_ignore_ascii_case(origin)) {
                return ApiError::Forbidden(format!("cross-origin request from '{origin}' refused")).into_response();
            }
        } else if let Some(site) = h.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("?");
            if site != "same-origin" && site != "none" {
                return ApiError::Forbidden(format!("cross-site request refused (Sec-Fetch-Site: {site})")).into_response();
            }
        }
    }
    next.run(req.map(idle_timeout)).await
}

/// The body as a stream whose next piece must come within [`BODY_IDLE`].
fn idle_timeout(body: Body) -> Body {
    let stream = futures_util::stream::unfold(Some(body.into_data_stream()), |s| async move {
        let mut s = s?;
        match tokio::time::timeout(BODY_IDLE, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, BodyTimeout)), None)),
        }
    });
    Body::from_stream(stream)
}

/// The error a body stream ends with when the client stopped sending.
#[derive(Debug, thiserror::Error)]
#[error("{BODY_TIMEOUT_TEXT}")]
pub(crate) struct BodyTimeout;

/// What [`BodyTimeout`] says (found again in extractors' rejection texts).
pub(crate) const BODY_TIMEOUT_TEXT: &str = "the request body stalled";

/// Whether a body error (from axum's body stream) is [`BodyTimeout`].
pub(crate) fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<BodyTimeout>() || e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Byte strings equal, in time that depends only on their lengths.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// With a token configured, every request (the page included) must carry it:
/// `Authorization: Bearer T`, the `mnema_token` cookie, or a `token` query parameter, which
/// sets the cookie; `GET /?token=T` then redirects to `/` so the token leaves the address bar.
pub(crate) async fn auth(AxState(st): AxState<State>, req: Request, next: Next) -> Response {
    let Some(token) = st.opts.token.as_deref().filter(|t| !t.is_empty()) else {
        return next.run(req).await;
    };
    let h = req.headers();
    let bearer = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_string);
    let cookie = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|c| c.split(';'))
        .find_map(|kv| kv.trim().strip_prefix("mnema_token=").map(str::to_string));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(|t| percent_decode(t).unwrap_or_default()));
    // Every candidate is compared (no early exit on the first one present).
    let ok = [&bearer, &cookie, &query]
        .iter()
        .fold(false, |ok, t| ok | t.as_deref().is_some_and(|t| same_secret(t.as_bytes(), token.as_bytes())));
    if !ok {
        return ApiError::Unauthorized.into_response();
    }
    let login = query.is_some();
    let page = req.uri().path() == "/" && req.method() == Method::GET;
    let mut resp = if login && page {
        let mut r = StatusCode::SEE_OTHER.into_response();
        r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
        r
    } else {
        next.run(req).await
    };
    if login {
        if let Ok(v) = HeaderValue::from_str(&format!("mnema_token={token}; Path=/; HttpOnly; SameSite=Strict")) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

/// `%XX` and `+` decoding of one query value (None when it is not UTF-8).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_bound_address_pass_other_hosts_do_not() {
        let lo: SocketAddr = "127.0.0.1:8501".parse().unwrap();
        for ok in ["127.0.0.1:8501", "localhost:8501", "LOCALHOST:8501", "[::1]:8501", "127.0.0.2:8501", "localhost.:8501"] {
            assert!(host_allowed(ok, lo, None), "{ok}");
        }
        for bad in
            ["evil.example:8501", "evil.example", "127.0.0.1:8502", "127.0.0.1", "localhost", "127.0.0.1.evil.example:8501", "", ":8501"]
        {
            assert!(!host_allowed(bad, lo, None), "{bad}");
        }
        let any: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert!(host_allowed("192.168.1.5", any, Some("box")));
        assert!(host_allowed("box", any, Some("box")));
        assert!(!host_allowed("evil.example", any, Some("box")));
        let lan: SocketAddr = "192.168.1.5:8501".parse().unwrap();
        assert!(host_allowed("192.168.1.5:8501", lan, None) && !host_allowed("192.168.1.6:8501", lan, None));
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%2Bb+c").as_deref(), Some("a+b c"));
        assert_eq!(percent_decode("%D0%B4%D0%B0").as_deref(), Some("да"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
    }
}
