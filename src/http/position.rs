//! The position headers both surfaces speak: a write answers with `Portcullis-Position`
//! (where it landed in the log), a read may send `Portcullis-Min-Position` (what it must
//! reflect), to any node of the same database.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::eventstore::Position;

pub const POSITION_HEADER: &str = "portcullis-position";
pub const MIN_POSITION_HEADER: &str = "portcullis-min-position";

/// A `Portcullis-Min-Position` that is not `tx/seq`.
#[derive(Debug, thiserror::Error)]
#[error("{MIN_POSITION_HEADER} must be a position: tx/seq")]
pub struct BadPosition;

/// Adds `Portcullis-Position` to a response.
pub fn with_position(mut res: Response, position: Position) -> Response {
    if let Ok(v) = HeaderValue::from_str(&position.to_string()) {
        res.headers_mut().insert(POSITION_HEADER, v);
    }
    res
}

/// The `Portcullis-Min-Position` a read must reflect (None: any); `E` is the surface's error.
pub struct MinPosition<E> {
    pub position: Option<Position>,
    surface: PhantomData<fn() -> E>,
}

impl<E, S: Sync> FromRequestParts<S> for MinPosition<E>
where
    E: From<BadPosition> + IntoResponse,
{
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, E> {
        match parts.headers.get(MIN_POSITION_HEADER) {
            None => Ok(MinPosition {
                position: None,
                surface: PhantomData,
            }),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(|p| MinPosition {
                    position: Some(p),
                    surface: PhantomData,
                })
                .ok_or_else(|| BadPosition.into()),
        }
    }
}
