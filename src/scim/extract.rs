//! What SCIM handlers take from a request: the authenticated caller's [`Ctx`], the resource
//! type the path names, a JSON body, the position to wait for, If-Match, and what the answer
//! to a write needs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::ScimError;
use super::json::MEDIA_TYPE;
use super::read::Ctx;
use super::readback::ReadBacks;
use super::schema::{resource_types, ResourceType};
use crate::http::auth::OrgCaller;
use crate::http::AppState;

/// Checks the bearer token against the org in the path (every failure looks the same, see
/// `http::auth`) and puts the caller's [`Ctx`] into the request.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let caller = match OrgCaller::<ScimError>::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let ctx = Ctx {
        org: caller.org,
        base: format!("{}/scim/v2/{}", public_base(&parts.headers), caller.org),
    };
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(ctx);
    next.run(req).await
}

/// `scheme://host` as the client addressed us (for `location` and `$ref`): a Host header
/// that is a plain host name, else localhost; https when a proxy says so.
fn public_base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Ctx>()
            .cloned()
            .ok_or(ScimError::Unauthorized)
    }
}

/// A JSON request body: `application/json` or `application/scim+json`, within the size limit.
pub struct Body(pub Value);

impl FromRequest<AppState> for Body {
    type Rejection = ScimError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if essence != "application/json" && essence != MEDIA_TYPE {
                return Err(ScimError::syntax(format!(
                    "unsupported Content-Type {essence:?}: send application/scim+json or application/json"
                )));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ScimError::TooLarge(format!(
                    "the request body is over the limit of {} bytes",
                    state.scim.max_body_bytes
                ))
            } else {
                ScimError::syntax(format!("cannot read the request body: {e}"))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ScimError::syntax("the request body is empty"));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ScimError::syntax(format!("the body is not valid JSON: {e}")))
    }
}

/// The Portcullis-Min-Position a read must reflect.
pub type MinPosition = crate::http::position::MinPosition<ScimError>;

/// If-Match: `W/"3"`, `"3"` or `*` (any).
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ScimError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or_default().trim();
    if s == "*" {
        return Ok(None);
    }
    let n = s.trim_start_matches("W/").trim_matches('"');
    n.parse().map(Some).map_err(|_| {
        ScimError::PreconditionFailed(format!("If-Match {s:?} is not a version of this resource"))
    })
}

/// The resource type the path names (`/scim/v2/{org}/Users/...`).
pub struct Resource(pub &'static ResourceType);

impl FromRequestParts<AppState> for Resource {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ScimError> {
        let segment = parts.uri.path().split('/').nth(4).unwrap_or_default();
        resource_types()
            .into_iter()
            .find(|rt| rt.endpoint == segment)
            .map(Resource)
            .ok_or_else(|| ScimError::NotFound("no such endpoint or resource".into()))
    }
}

/// What answering a write needs: the query (`attributes`, `excludedAttributes`) and the
/// app's coalesced read backs (put into every SCIM request by `scim::router`).
pub struct Answer {
    pub query: HashMap<String, String>,
    pub readbacks: Arc<ReadBacks>,
}

impl FromRequestParts<AppState> for Answer {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ScimError> {
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ScimError::syntax(format!("the query string: {}", e.body_text())))?;
        let readbacks = match parts.extensions.get::<Arc<ReadBacks>>() {
            Some(r) => r.clone(),
            // Outside the SCIM router: read backs still work, one statement each.
            None => ReadBacks::new(state.pool.clone()),
        };
        Ok(Answer { query, readbacks })
    }
}
