//! Cursor paging (RFC 9865) on the list endpoints: the client's cursor is checked before any
//! read, the page is a keyset read, and the cursors of the pages around it are signed.

use serde_json::{json, Map, Value};

use super::cursor::{self, Binding, Cursor, Direction};
use super::error::ScimError;
use super::read::{Ctx, ListQuery};
use super::resource::Selection;
use super::schema::{self, ResourceType};
use crate::http::AppState;

/// A checked cursor request: where the page starts (None: the first page).
pub struct CursorRequest {
    shape: String,
    from: Option<Cursor>,
}

/// Reads the client's cursor for this org, type and query; refuses one issued for another, a
/// forged or altered one (invalidCursor) and one older than the cursor timeout (expiredCursor).
pub fn check(
    state: &AppState,
    ctx: &Ctx,
    rt: &ResourceType,
    q: &ListQuery,
    token: &str,
) -> Result<CursorRequest, ScimError> {
    let shape = q.shape();
    let from = if token.is_empty() {
        None
    } else {
        let b = binding(ctx, rt, &shape);
        Some(cursor::decode(
            &state.cursor_key,
            &b,
            token,
            state.clock.now(),
            state.scim.cursor_timeout,
        )?)
    };
    Ok(CursorRequest { shape, from })
}

fn binding<'a>(ctx: &Ctx, rt: &ResourceType, shape: &'a str) -> Binding<'a> {
    Binding {
        org: ctx.org,
        kind: rt.kind,
        query: shape,
    }
}

/// The page as a ListResponse with nextCursor (unless it is the last) and previousCursor
/// (unless it is the first).
pub async fn list(
    state: &AppState,
    client: &deadpool_postgres::Client,
    ctx: &Ctx,
    rt: &'static ResourceType,
    q: &ListQuery,
    sel: &Selection,
    req: &CursorRequest,
) -> Result<Value, ScimError> {
    let page = super::keyset::list_by_cursor(client, rt, ctx, q, sel, req.from.as_ref()).await?;
    let b = binding(ctx, rt, &req.shape);
    let now = state.clock.now();
    let sign =
        |direction, at| cursor::encode(&state.cursor_key, &b, &Cursor { direction, at }, now);
    let mut out = Map::new();
    out.insert("schemas".into(), json!([schema::LIST]));
    out.insert("totalResults".into(), json!(page.total));
    out.insert("itemsPerPage".into(), json!(page.resources.len()));
    if let Some(at) = page.next {
        out.insert("nextCursor".into(), json!(sign(Direction::After, at)));
    }
    if let Some(at) = page.previous {
        out.insert("previousCursor".into(), json!(sign(Direction::Before, at)));
    }
    out.insert("Resources".into(), Value::Array(page.resources));
    Ok(Value::Object(out))
}
