//! What operators and their tools poll: `/metrics` (Prometheus) and `/readyz`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use crate::http::AppState;
use crate::runtime;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let client = state.pool.get().await?;
    let health = runtime::health(&client).await?;
    let gauges: Vec<_> = health
        .projections
        .iter()
        .map(|p| crate::metrics::ProjectionGauges {
            name: &p.name,
            events_behind: p.events_behind as f64,
            seconds_behind: p.seconds_behind,
            failed: p.failed as f64,
            dead_lettered: p.dead_lettered as f64,
        })
        .collect();
    let mut res = crate::metrics::metrics()
        .render(&gauges, health.horizon_age_seconds)
        .into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}

/// 200 only when the database answers, its migrations are this binary's, and no projection
/// is stalled or lagging beyond the configured thresholds (the status column of
/// projections.health); otherwise 503 with the reasons.
/// A reason for anyone to read: the cause goes to the log, not to an anonymous caller.
fn hidden(reason: &str, e: &(dyn std::error::Error + 'static)) -> String {
    tracing::warn!(error = %crate::error_chain(e), "readyz: {reason}");
    reason.to_string()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let mut reasons: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    match state.pool.get().await {
        Err(e) => reasons.push(hidden("database unreachable", &e)),
        Ok(client) => {
            let want = crate::db::latest_migration();
            match client
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM refinery_schema_history",
                    &[],
                )
                .await
            {
                Ok(r) => {
                    let have: i32 = r.get(0);
                    if have < want {
                        reasons.push(format!(
                            "migrations behind: the database is at V{have}, this binary needs V{want}"
                        ));
                    }
                }
                Err(e) => reasons.push(hidden("cannot read the migration history", &e)),
            }
            match runtime::health(&client).await {
                Ok(h) => {
                    for p in &h.projections {
                        match p.status.as_str() {
                            "stalled" | "lagging" => reasons.push(format!(
                                "projection {} is {}: {} events and {:.1} s behind",
                                p.name, p.status, p.events_behind, p.seconds_behind
                            )),
                            "degraded" => warnings.push(format!(
                                "projection {} has {} dead-lettered events",
                                p.name, p.dead_lettered
                            )),
                            _ => {}
                        }
                    }
                }
                Err(e) => reasons.push(hidden("cannot read projections.health", &e)),
            }
        }
    }
    if reasons.is_empty() {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "warnings": warnings})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"status": "not ready", "reasons": reasons, "warnings": warnings})),
        )
            .into_response()
    }
}
