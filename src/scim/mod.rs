//! SCIM 2.0 (RFC 7643/7644) under `/scim/v2/{org_id}/`: the routes. The handlers are in
//! `handlers.rs`, what they extract from a request in `extract.rs`, list parameters in
//! `params.rs`, reads in `read.rs`, writes in `write.rs` and `patch.rs`.

mod bulk;
pub mod cursor;
mod discovery;
mod error;
mod extract;
pub mod filter;
mod handlers;
mod json;
mod keyset;
mod paging;
mod params;
pub mod patch;
mod patch_ops;
pub mod query;
mod read;
pub mod readback;
pub mod resource;
pub mod schema;
mod wait;
mod write;

use axum::middleware;
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;

use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;

pub use error::ScimError;
pub use json::MEDIA_TYPE;
pub use params::MAX_RESULTS;
pub use read::{Ctx, PREPARED_PER_CONNECTION};
pub use wait::READ_MODELS;

pub fn router(state: &AppState) -> Router<AppState> {
    let limit = state.scim.max_body_bytes;
    let m = |r: MethodRouter<AppState>| r.fallback(method_not_allowed);
    // One route per resource type (so metrics tell Users from Groups), the same handlers.
    let mut scim = Router::new();
    for rt in schema::resource_types() {
        let base = format!("/scim/v2/{{org}}/{}", rt.endpoint);
        scim = scim
            .tracked_route(&base, m(get(handlers::list).post(handlers::create)))
            .tracked_route(&format!("{base}/.search"), m(post(handlers::search)))
            .tracked_route(
                &format!("{base}/{{id}}"),
                m(get(handlers::get_one)
                    .put(handlers::replace)
                    .patch(handlers::patch)
                    .delete(handlers::delete)),
            );
    }
    scim.tracked_route("/scim/v2/{org}/.search", m(post(handlers::search_all)))
        .tracked_route("/scim/v2/{org}/Bulk", m(post(bulk::bulk)))
        .tracked_route("/scim/v2/{org}/Me", any(me))
        .merge(discovery::router(m))
        .tracked_route("/scim/v2/{org}", any(not_found))
        .tracked_route("/scim/v2/{org}/", any(not_found))
        .tracked_route("/scim/v2/{org}/{*rest}", any(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::Extension(match &state.projector {
            Some(projector) => readback::ReadBacks::riding(state.pool.clone(), projector),
            None => readback::ReadBacks::new(state.pool.clone()),
        }))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            extract::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::limits::deadline::<ScimError>,
        ))
}

async fn method_not_allowed() -> ScimError {
    ScimError::MethodNotAllowed("method not allowed on this endpoint".into())
}

async fn not_found() -> ScimError {
    ScimError::NotFound("no such endpoint or resource".into())
}

async fn me() -> ScimError {
    ScimError::NotImplemented(
        "/Me is not implemented: tokens act for an organization, not a user".into(),
    )
}
