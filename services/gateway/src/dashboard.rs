//! The dispatcher's web dashboard, served on the gateway's HTTP listener: the page's built
//! assets (`dashboards/web/dist`), the page's settings at `/dashboard-config.json`, and the
//! trips service's history API proxied under `/api/` so the page needs a single origin.
//!
//! The trips service checks the dispatcher token on every API call; the gateway only passes the
//! `Authorization` header along.
//!
//! Assets are served as built: precompressed copies (`.br`, `.gz`, written by the page's build)
//! chosen by `Accept-Encoding`; hashed files under `/assets/` cached for a year as immutable,
//! everything else revalidated (`no-cache`) so a new build is picked up at once. The Content
//! Security Policy lets the page connect only to its own origin and its WebSocket's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use protocol::Point;
use serde::Serialize;
use tower_http::services::ServeDir;

use crate::meters as m;

/// What the dashboard needs; everything optional so a gateway without a page stays lean.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// The built page (`index.html` and `assets/`). Without it `/` explains how to build it.
    pub assets: Option<PathBuf>,
    /// Base URL of the trips service's HTTP API (`http://host:port`), proxied under `/api/`.
    pub trips_api: Option<String>,
    /// The WebSocket URL the page connects to. By default the host the page was loaded from,
    /// on the gateway's WebSocket port.
    pub ws_url: Option<String>,
    /// Where the map opens.
    pub center: Point,
    pub zoom: f64,
    /// The pages' map style: a MapLibre style URL (`https://...`) or a path on this gateway
    /// (`/tiles/style.json`). Without it the pages draw their bundled offline outline.
    pub map_style: Option<String>,
    /// A directory served under `/tiles/` (with HTTP range requests, as PMTiles archives
    /// need): styles, PMTiles archives, sprites and glyphs for `map_style`.
    pub tiles: Option<PathBuf>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self {
            assets: None,
            trips_api: None,
            ws_url: None,
            center: Point::new(52.52, 13.405),
            zoom: 12.0,
            map_style: None,
            tiles: None,
        }
    }
}

#[derive(Clone)]
struct DashState {
    settings: Dashboard,
    ws: SocketAddr,
    http: reqwest::Client,
}

/// The page's settings, read by the page at start.
#[derive(Debug, Serialize)]
struct PageConfig {
    ws_url: String,
    center: [f64; 2],
    zoom: f64,
    map_style: Option<String>,
}

/// The WebSocket URL the page connects to: the configured one, or the host the browser used
/// for the page on the WebSocket port.
fn ws_url(settings: &Dashboard, ws: SocketAddr, headers: &HeaderMap) -> String {
    settings.ws_url.clone().unwrap_or_else(|| {
        let host = page_host(headers).unwrap_or_else(|| match ws.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        format!("ws://{host}:{}/ws", ws.port())
    })
}

/// `scheme://host[:port]` of a WebSocket URL, for the policy's `connect-src`.
fn origin(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    matches!(url.scheme(), "ws" | "wss")
        .then(|| url.origin().ascii_serialization())
        .filter(|origin| origin != "null")
}

/// Checks a configured map style: an `http(s)://` URL with a host, or an absolute path on
/// this gateway.
pub fn check_map_style(style: &str) -> Result<String, String> {
    let path = style.starts_with('/') && !style.starts_with("//");
    let url = reqwest::Url::parse(style).ok().filter(|url| {
        matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty())
    });
    if (path || url.is_some()) && !style.chars().any(|c| c.is_whitespace() || c == ';') {
        Ok(style.to_owned())
    } else {
        Err(format!(
            "expected an http(s):// URL or a path such as /tiles/style.json, got {style:?}"
        ))
    }
}

/// The origin of a map style on another host, which the pages must be let fetch from.
fn style_origin(style: Option<&str>) -> Option<String> {
    let url = reqwest::Url::parse(style?).ok()?;
    matches!(url.scheme(), "http" | "https")
        .then(|| url.origin().ascii_serialization())
        .filter(|origin| origin != "null")
}

/// Checks a configured public WebSocket URL (`ws://` or `wss://` with a host).
pub fn check_ws_url(url: &str) -> Result<String, String> {
    origin(url)
        .map(|_| url.to_owned())
        .ok_or_else(|| format!("expected a ws:// or wss:// URL with a host, got {url:?}"))
}

async fn page_config(State(state): State<DashState>, headers: HeaderMap) -> impl IntoResponse {
    let ws_url = ws_url(&state.settings, state.ws, &headers);
    axum::Json(PageConfig {
        ws_url,
        center: [state.settings.center.lat, state.settings.center.lng],
        zoom: state.settings.zoom,
        map_style: state.settings.map_style.clone(),
    })
}

/// The host part of the request's `Host` header (`name`, `name:port`, `[v6]:port`), if it is
/// a valid authority made only of the characters of names and addresses (it goes into the
/// policy header and the page's settings).
fn page_host(headers: &HeaderMap) -> Option<String> {
    let authority: Authority = headers.get(header::HOST)?.to_str().ok()?.parse().ok()?;
    let host = authority.host();
    let plain = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    Some(host.to_owned()).filter(|host| !host.is_empty() && plain)
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// The path to forward for a request's `path`, which must lie under `/api/`: each segment is
/// decoded once and must then be a plain name of unreserved characters (letters, digits, `-`,
/// `_`, `.`, `~`) other than `.` and `..`. So no form of a dot segment, an encoded slash or
/// backslash, a double encoding (a `%` left after decoding) or an empty segment can make the
/// trips service's URL leave its `/api/`, and what is forwarded needs no encoding that a URL
/// parser could normalise.
fn api_path(path: &str) -> Result<String, &'static str> {
    const REFUSED: &str = "an API path is /api/ followed by plain names: no `.` or `..` \
                           segments, empty segments, encoded slashes, backslashes or `%` \
                           escapes of anything but letters, digits and -_.~";
    let rest = path.strip_prefix("/api/").ok_or(REFUSED)?;
    let mut forward = String::from("/api");
    for raw in rest.split('/') {
        let segment = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| REFUSED)?;
        let plain = segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
        if segment.is_empty() || segment == "." || segment == ".." || !plain {
            return Err(REFUSED);
        }
        forward.push('/');
        forward.push_str(&segment);
    }
    Ok(forward)
}

/// Largest request body passed on to the trips API (a zone with many vertices fits).
const MAX_API_BODY_BYTES: usize = 1024 * 1024;

/// Forwards a request under `/api/` (reads, and the zone changes the page makes) to the trips
/// service with the caller's credentials.
async fn proxy(State(state): State<DashState>, request: Request) -> Response {
    let Some(base) = &state.settings.trips_api else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this gateway has no trips API configured",
        );
    };
    let path = match api_path(request.uri().path()) {
        Ok(path) => path,
        Err(why) => {
            metrics::counter!(m::API_PROXY_REFUSED).increment(1);
            return json_error(StatusCode::BAD_REQUEST, "invalid_message", why);
        }
    };
    let query = request
        .uri()
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let url = format!("{}{path}{query}", base.trim_end_matches('/'));
    let (parts, body) = request.into_parts();
    let mut forward = match parts.method {
        Method::GET => state.http.get(url),
        Method::POST => state.http.post(url),
        Method::PUT => state.http.put(url),
        Method::DELETE => state.http.delete(url),
        _ => {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_message",
                "the API takes GET, POST, PUT and DELETE",
            );
        }
    };
    for name in [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::IF_MATCH,
    ] {
        if let Some(value) = parts.headers.get(&name) {
            forward = forward.header(name, value.clone());
        }
    }
    if parts.method != Method::GET {
        match axum::body::to_bytes(body, MAX_API_BODY_BYTES).await {
            Ok(bytes) => forward = forward.body(bytes),
            Err(_) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the request body is larger than the API takes",
                );
            }
        }
    }
    let answer = match forward.send().await {
        Ok(answer) => answer,
        Err(error) => {
            metrics::counter!(m::API_PROXY_FAILURES).increment(1);
            tracing::warn!(%error, "trips API unreachable");
            return json_error(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                "the trips service did not answer; try again",
            );
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(body) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(_) => json_error(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            "the trips service's answer was cut off",
        ),
    }
}

/// Content Security Policy for the pages: only their own scripts, no inline script, so even
/// text that slipped into the DOM as markup could not run; connections only to their own
/// origin, to `ws_origin`, the WebSocket they are configured with, and to the map style's
/// origin when it is on another host.
fn policy(ws_origin: &str, map_origin: Option<&str>) -> String {
    let map = map_origin.map(|o| format!(" {o}")).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data: blob:{map}; worker-src blob:; child-src blob:; \
         connect-src 'self' {ws_origin}{map}; object-src 'none'; base-uri 'none'; \
         frame-ancestors 'none'"
    )
}

/// Hashed build output: the name changes with the content, so it never needs revalidating.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

async fn security_headers(
    State(state): State<DashState>,
    request: Request,
    next: Next,
) -> Response {
    let ws_origin = origin(&ws_url(&state.settings, state.ws, request.headers()));
    let asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let ok = response.status().is_success();
    let headers = response.headers_mut();
    // Without a WebSocket origin the page may connect only to its own.
    let map_origin = style_origin(state.settings.map_style.as_deref());
    let csp = policy(
        ws_origin.as_deref().unwrap_or("'self'"),
        map_origin.as_deref(),
    );
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        let cache = if asset && ok { IMMUTABLE } else { "no-cache" };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    }
    if headers.contains_key(header::CONTENT_ENCODING) || asset {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn not_built() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "The dashboard is not built into this gateway. Build it with \
         `npm ci && npm run build` in dashboards/web and start the gateway with \
         --dashboard-dir dashboards/web/dist (cargo xtask demo does both).\n",
    )
}

/// The dashboard's routes, to merge beside the operator endpoints. `ws` is the gateway's
/// WebSocket listener.
pub fn routes(settings: Dashboard, ws: SocketAddr) -> Router {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a plain HTTP client always builds");
    let assets = settings.assets.clone();
    let tiles = settings.tiles.clone();
    let state = DashState { settings, ws, http };
    let mut router = Router::new()
        .route("/dashboard-config.json", get(page_config))
        .route("/api/{*path}", any(proxy))
        .with_state(state.clone());
    if let Some(tiles) = tiles {
        // ServeDir answers range requests, which is how a PMTiles archive is read.
        router = router.nest_service("/tiles", ServeDir::new(tiles).precompressed_gzip());
    }
    let router = match assets {
        Some(dir) => {
            router.fallback_service(ServeDir::new(dir).precompressed_br().precompressed_gzip())
        }
        None => router.fallback(not_built),
    };
    router.layer(middleware::from_fn_with_state(state, security_headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_under_api_are_forwarded() {
        for (path, forwarded) in [
            ("/api/trips", "/api/trips"),
            ("/api/zones/6f1c/queue", "/api/zones/6f1c/queue"),
            (
                "/api/webhooks/a-b_c.d~e/dead",
                "/api/webhooks/a-b_c.d~e/dead",
            ),
            // An unreserved character needlessly encoded is decoded and forwarded plainly.
            ("/api/tr%69ps", "/api/trips"),
        ] {
            assert_eq!(api_path(path).as_deref(), Ok(forwarded), "{path}");
        }
        for path in [
            "/api/../metrics",
            "/api/%2e%2e/metrics",
            "/api/%2E%2E/v1/openapi.json",
            "/api/.%2e/metrics",
            "/api/%2e./metrics",
            "/api/%252e%252e/metrics",
            "/api/%2e%2e%2fmetrics",
            "/api/trips%2F..%2F..%2Fmetrics",
            "/api/..%5cmetrics",
            "/api/..\\metrics",
            "/api/..;/metrics",
            "/api/%c0%ae%c0%ae/metrics",
            "/api/%ff",
            "/api/./trips",
            "/api//trips",
            "/api/trips/",
            "/api/trips/%00",
            "/api/trips?x",
            "/metrics",
            "/apix/trips",
        ] {
            assert!(api_path(path).is_err(), "{path} was let through");
        }
    }

    #[test]
    fn host_header_parts() {
        let host = |s: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, s.parse().unwrap());
            page_host(&headers)
        };
        assert_eq!(host("example.org:8081").as_deref(), Some("example.org"));
        assert_eq!(host("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(host("[::1]:8081").as_deref(), Some("[::1]"));
        assert_eq!(host("evil\"host"), None);
        assert_eq!(host("a;script-src"), None);
        assert_eq!(host(""), None);
        assert_eq!(page_host(&HeaderMap::new()), None);
    }

    #[test]
    fn the_policy_names_the_websocket_origin_only() {
        assert_eq!(
            origin("wss://dispatch.example.org/ws").as_deref(),
            Some("wss://dispatch.example.org")
        );
        assert_eq!(
            origin("ws://10.0.0.1:8080/ws").as_deref(),
            Some("ws://10.0.0.1:8080")
        );
        for bad in [
            "https://example.org/ws",
            "ws://",
            "not a url",
            "javascript:alert(1)",
        ] {
            assert_eq!(origin(bad), None, "{bad}");
            assert!(check_ws_url(bad).is_err(), "{bad}");
        }
        let settings = Dashboard::default();
        let ws: SocketAddr = "[::1]:8080".parse().unwrap();
        let url = ws_url(&settings, ws, &HeaderMap::new());
        assert_eq!(origin(&url).as_deref(), Some("ws://[::1]:8080"));
        let csp = policy("ws://[::1]:8080", None);
        assert!(csp.contains("connect-src 'self' ws://[::1]:8080;"), "{csp}");
    }

    #[test]
    fn a_map_style_is_a_url_or_a_path_and_its_host_is_let_in() {
        for good in [
            "/tiles/style.json",
            "https://tiles.example.org/styles/streets.json?key=abc",
            "http://10.0.0.5:8080/style.json",
        ] {
            assert_eq!(check_map_style(good).as_deref(), Ok(good));
        }
        for bad in [
            "style.json",
            "//evil.example/style.json",
            "javascript:alert(1)",
            "ftp://example.org/style.json",
            "https://example.org/a b",
            "https://example.org/x;script-src *",
            "",
        ] {
            assert!(check_map_style(bad).is_err(), "{bad}");
        }
        assert_eq!(style_origin(Some("/tiles/style.json")), None);
        let origin = style_origin(Some("https://tiles.example.org/s.json"));
        assert_eq!(origin.as_deref(), Some("https://tiles.example.org"));
        let csp = policy("wss://d.example.org", origin.as_deref());
        assert!(
            csp.contains("connect-src 'self' wss://d.example.org https://tiles.example.org;"),
            "{csp}"
        );
        assert!(
            csp.contains("img-src 'self' data: blob: https://tiles.example.org;"),
            "{csp}"
        );
    }
}
