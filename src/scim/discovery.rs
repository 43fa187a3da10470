//! Discovery: ServiceProviderConfig, ResourceTypes and Schemas, generated from the same
//! tables that drive the API, so they advertise exactly what works.

use axum::extract::{Path, State};
use axum::routing::{get, MethodRouter};
use axum::Router;
use serde_json::{json, Value};

use super::error::ScimError;
use super::json::ScimJson;
use super::params::MAX_RESULTS;
use super::read::Ctx;
use super::schema::{self, resource_types};
use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;

pub fn router(m: impl Fn(MethodRouter<AppState>) -> MethodRouter<AppState>) -> Router<AppState> {
    Router::new()
        .tracked_route(
            "/scim/v2/{org}/ServiceProviderConfig",
            m(get(service_provider_config)),
        )
        .tracked_route("/scim/v2/{org}/ResourceTypes", m(get(resource_types_list)))
        .tracked_route("/scim/v2/{org}/ResourceTypes/{name}", m(get(resource_type)))
        .tracked_route("/scim/v2/{org}/Schemas", m(get(schemas_list)))
        .tracked_route("/scim/v2/{org}/Schemas/{urn}", m(get(schema_one)))
}

async fn service_provider_config(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<ScimJson, ScimError> {
    let client = state.pool.get().await?;
    let events = crate::secevents::receivers::any_in(&client, ctx.org).await?;
    drop(client);
    let mut config = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": true},
        "bulk": {
            "supported": true,
            "maxOperations": state.scim.max_bulk_operations,
            "maxPayloadSize": state.scim.max_body_bytes,
        },
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        // RFC 9865: a request with `cursor` (empty for the first page) pages by cursor; one
        // without pages by startIndex, as before.
        "pagination": {
            "cursor": true,
            "index": true,
            "defaultPaginationMethod": "index",
            "defaultPageSize": MAX_RESULTS,
            "maxPageSize": MAX_RESULTS,
            "cursorTimeout": state.scim.cursor_timeout.as_secs(),
        },
        "changePassword": {"supported": true},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "An API token of the organization with the scim scope \
                            (portcullis tokens create --scope scim), as Authorization: Bearer <token>.",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{}/ServiceProviderConfig", ctx.base),
        },
    });
    // RFC 9967 §4: absent means not supported or not configured, so only an org with
    // receivers gets it (strict clients that know only RFC 7643 refuse unknown attributes).
    // Requests complete synchronously: no asynchronous requests.
    if events {
        config["securityEvents"] = json!({
            "asyncRequest": "none",
            "eventUris": crate::secevents::uri::EventUri::all()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        });
    }
    Ok(ScimJson(config))
}

fn list(items: Vec<Value>) -> ScimJson {
    ScimJson(json!({
        "schemas": [schema::LIST],
        "totalResults": items.len(),
        "itemsPerPage": items.len(),
        "startIndex": 1,
        "Resources": items,
    }))
}

async fn resource_types_list(ctx: Ctx) -> ScimJson {
    list(
        resource_types()
            .iter()
            .map(|rt| rt.resource_type_json(&ctx.base))
            .collect(),
    )
}

async fn resource_type(
    ctx: Ctx,
    Path((_, name)): Path<(String, String)>,
) -> Result<ScimJson, ScimError> {
    resource_types()
        .iter()
        .find(|rt| rt.name.eq_ignore_ascii_case(&name))
        .map(|rt| ScimJson(rt.resource_type_json(&ctx.base)))
        .ok_or_else(|| ScimError::NotFound(format!("no resource type {name:?}")))
}

fn all_schemas(base: &str) -> Vec<Value> {
    resource_types()
        .iter()
        .flat_map(|rt| rt.schema_json(base))
        .collect()
}

async fn schemas_list(ctx: Ctx) -> ScimJson {
    list(all_schemas(&ctx.base))
}

async fn schema_one(
    ctx: Ctx,
    Path((_, urn)): Path<(String, String)>,
) -> Result<ScimJson, ScimError> {
    all_schemas(&ctx.base)
        .into_iter()
        .find(|s| {
            s["id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(&urn))
        })
        .map(ScimJson)
        .ok_or_else(|| ScimError::NotFound(format!("no schema {urn:?}")))
}
