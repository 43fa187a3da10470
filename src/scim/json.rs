//! SCIM's JSON: the media type, responses served as it, and the case-insensitive member
//! lookup SCIM names need.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub const MEDIA_TYPE: &str = "application/scim+json";

/// A member of a JSON object by name, case-insensitively (SCIM names are).
pub(crate) fn member<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// A JSON body served as `application/scim+json`.
pub struct ScimJson(pub Value);

impl IntoResponse for ScimJson {
    fn into_response(self) -> Response {
        let mut res = axum::Json(self.0).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        res
    }
}
