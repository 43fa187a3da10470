//! What every request leaves behind: a span (method, route, status, duration) and the HTTP
//! metrics.

use axum::routing::MethodRouter;
use axum::Router;

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

/// Every request: a span (method, route, status, duration) and the HTTP metrics, labelled
/// by the route pattern (never the raw path, which would hold ids).
pub async fn track(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| route_label(p.as_str()))
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        %method,
        route = %route,
        status = tracing::field::Empty,
        ms = tracing::field::Empty
    );
    let started = std::time::Instant::now();
    let res = next.run(req).instrument(span.clone()).await;
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
    res
}
