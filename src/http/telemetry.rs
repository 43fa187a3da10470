//! What every request leaves behind: a span (method, route, status, duration) and the HTTP
//! metrics.

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
        // `/scim/v2/:org/Users`: braces inside label values trip up some Prometheus parsers.
        .map(|p| p.as_str().replace('{', ":").replace('}', ""))
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
