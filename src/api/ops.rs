//! What operators and their tools poll: `/metrics` (Prometheus) and `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;
use crate::runtime;

pub fn router() -> Router<AppState> {
    Router::new()
        .tracked_route("/metrics", get(metrics))
        .tracked_route("/readyz", get(readyz))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(expected) = &state.http.metrics_token {
        let presented = crate::http::auth::bearer(&headers).unwrap_or_default();
        if !bool::from(
            presented
                .as_bytes()
                .ct_eq(expected.expose_secret().as_bytes()),
        ) {
            return Err(ApiError::Unauthorized);
        }
    }
    let health = state
        .health
        .get_or(|| async {
            let client = state.pool.get().await?;
            Ok::<_, ApiError>(Arc::new(runtime::health(&client).await?))
        })
        .await?;
    let gauges: Vec<_> = health
        .projections
        .iter()
        .map(|p| crate::metrics::ProjectionGauges {
            name: &p.name,
            events_behind: p.events_behind as f64,
            seconds_behind: p.seconds_behind,
            failed: p.failed as f64,
            dead_lettered: p.dead_lettered as f64,
            status: &p.status,
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

/// A reason for anyone to read: the cause goes to the log, not to an anonymous caller.
fn hidden(reason: &str, e: &(dyn std::error::Error + 'static)) -> String {
    tracing::warn!(error = %crate::error_chain(e), "readyz: {reason}");
    reason.to_string()
}

/// 200 only when the database answers, its migrations are this binary's, and no projection
/// is stalled or lagging beyond the configured thresholds (the status column of
/// projections.health); otherwise 503 with the reasons. Checked at most once a second.
async fn readyz(State(state): State<AppState>) -> Response {
    let verdict = state
        .readiness
        .get_or(|| async { Ok::<_, std::convert::Infallible>(readiness(&state).await) })
        .await;
    let Ok((ready, body)) = verdict;
    if ready {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response()
    }
}

async fn readiness(state: &AppState) -> (bool, serde_json::Value) {
    let mut reasons: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    match state.pool.get().await {
        Err(e) => reasons.push(hidden("database unreachable", &e)),
        Ok(client) => {
            if let Err(reason) = migrations_current(&client).await {
                reasons.push(reason);
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
        (true, json!({"status": "ready", "warnings": warnings}))
    } else {
        (
            false,
            json!({"status": "not ready", "reasons": reasons, "warnings": warnings}),
        )
    }
}

async fn migrations_current(client: &deadpool_postgres::Object) -> Result<(), String> {
    let want = crate::db::latest_migration();
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM refinery_schema_history",
            &[],
        )
        .await
        .map_err(|e| hidden("cannot read the migration history", &e))?;
    let have: i32 = row.get(0);
    if have < want {
        return Err(format!(
            "migrations behind: the database is at V{have}, this binary needs V{want}"
        ));
    }
    Ok(())
}
