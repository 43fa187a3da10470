//! What every request leaves behind: a span (method, route, status, duration) and the HTTP
//! metrics.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use axum::routing::MethodRouter;
use axum::Router;

use crate::domain::provenance::{self, Origin};

/// The statuses whose request counters exist for every route from start-up: a series that
/// first appears at 1 hides that first request from `rate()`, and the alerting rules
/// (docs/prometheus) divide 5xx counts by all requests.
pub const COUNTED_FROM_START: [&str; 3] = ["200", "500", "503"];

/// The metrics label of a route pattern: `/scim/v2/:org/Users` (braces inside label values
/// trip up some Prometheus parsers).
fn route_label(pattern: &str) -> String {
    pattern.replace('{', ":").replace('}', "")
}

/// `Router::route` that also creates the route's request counters (at 0), so every route
/// is a series from the first scrape. Every surface registers its routes through it.
pub trait TrackedRoutes<S> {
    fn tracked_route(self, path: &str, method_router: MethodRouter<S>) -> Self;
}

impl<S: Clone + Send + Sync + 'static> TrackedRoutes<S> for Router<S> {
    fn tracked_route(self, path: &str, method_router: MethodRouter<S>) -> Self {
        let m = crate::metrics::metrics();
        let route = route_label(path);
        for status in COUNTED_FROM_START {
            m.http_requests.with_label_values(&[&route, status]);
        }
        self.route(path, method_router)
    }
}

/// The header a client may name its request with; answered on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The client's `X-Request-Id` when well formed (1 to 128 of `A-Z a-z 0-9 - _ . :`), else a
/// new random one: it lands in logs and in the log of events, so nothing else is taken.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// What the request asked, as events record it: SCIM routes relative to the org's base
/// (`POST /Users/{id}`), the others by their full pattern.
fn operation(method: &Method, pattern: Option<&str>) -> String {
    let path = pattern.unwrap_or("(unmatched)");
    let path = path.strip_prefix("/scim/v2/{org}").unwrap_or(path);
    format!("{method} {path}")
}

/// Where a request came from and what it asked, known before anyone authenticates it.
fn origin(req: &Request, request_id: &str) -> Origin {
    let pattern = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let client_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| provenance::bounded(v, 256));
    Origin {
        request_id: request_id.to_string(),
        actor: None,
        client_addr,
        user_agent,
        operation: Some(operation(req.method(), pattern)),
    }
}

/// Every request: a request id (answered in `X-Request-Id`), a span (request id, method,
/// route, status, duration), the HTTP metrics labelled by the route pattern (never the raw
/// path, which would hold ids), and the scope whose fields every event it appends records.
pub async fn track(req: Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| route_label(p.as_str()))
        .unwrap_or_else(|| "unmatched".into());
    let request_id = request_id(req.headers());
    let origin = origin(&req, &request_id);
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        %method,
        route = %route,
        status = tracing::field::Empty,
        ms = tracing::field::Empty
    );
    let started = std::time::Instant::now();
    let mut res = origin.scope(next.run(req)).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16().to_string();
    span.record("status", status.as_str());
    span.record("ms", elapsed.as_secs_f64() * 1000.0);
    span.in_scope(|| tracing::debug!("request served"));
    let m = crate::metrics::metrics();
    m.http_requests.with_label_values(&[&route, &status]).inc();
    m.http_seconds
        .with_label_values(&[&route, &status])
        .observe(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    res
}
