//! Reading SCIM resources from the read models (after waiting for them; see `wait`).

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::GenericClient;
use postgres_types::ToSql;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::error::ScimError;
use super::filter::{AttrPath, Filter};
use super::query::{self, Param};
use super::resource::Selection;
use super::schema::{self, ResourceType, GROUP_TYPE, USER_TYPE};

/// The org and the base URL its resources live under (`http://host/scim/v2/{org}`).
#[derive(Debug, Clone)]
pub struct Ctx {
    pub org: Uuid,
    pub base: String,
}

/// A list request, already validated.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub sort_by: Option<AttrPath>,
    pub descending: bool,
    /// 1-based.
    pub start_index: i64,
    pub count: i64,
}

pub struct Page {
    pub total: i64,
    pub resources: Vec<Value>,
}

const USER_COLS: &str = "r.user_id, r.version, r.created_at, r.updated_at, r.doc, r.active";
const GROUP_COLS: &str =
    "r.group_id, r.version, r.created_at, r.updated_at, r.display_name, r.external_id";

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

fn meta(rt: &ResourceType, ctx: &Ctx, id: Uuid, row: &tokio_postgres::Row) -> Value {
    let version: i64 = row.get(1);
    json!({
        "resourceType": rt.name,
        "created": time(row.get(2)),
        "lastModified": time(row.get(3)),
        "location": format!("{}/{}/{id}", ctx.base, rt.endpoint),
        "version": etag(version),
    })
}

/// Rows of one resource type, rendered (with what `sel` keeps).
async fn render<C: GenericClient>(
    client: &C,
    rt: &'static ResourceType,
    ctx: &Ctx,
    rows: &[tokio_postgres::Row],
    sel: &Selection,
) -> Result<Vec<Value>, ScimError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    if rt.name == USER_TYPE.name {
        let mut groups: HashMap<Uuid, Vec<Value>> = HashMap::new();
        if sel.wants("groups") && !ids.is_empty() {
            let stmt = client
                .prepare_cached(
                    "SELECT u.id, g.group_id, g.display_name, g.direct \
                     FROM unnest($1::uuid[]) AS u(id), LATERAL projections.user_groups(u.id) g",
                )
                .await?;
            for r in client.query(&stmt, &[&ids]).await? {
                let gid: Uuid = r.get(1);
                groups.entry(r.get(0)).or_default().push(json!({
                    "value": gid,
                    "$ref": format!("{}/Groups/{gid}", ctx.base),
                    "display": r.get::<_, String>(2),
                    "type": if r.get::<_, bool>(3) { "direct" } else { "indirect" },
                }));
            }
        }
        Ok(rows
            .iter()
            .map(|row| {
                let id: Uuid = row.get(0);
                let Value::Object(doc) = row.get::<_, Value>(4) else {
                    return Value::Null;
                };
                let mut schemas = vec![schema::USER];
                if doc.contains_key(schema::ENTERPRISE) {
                    schemas.push(schema::ENTERPRISE);
                }
                let mut out = Map::new();
                out.insert("schemas".into(), json!(schemas));
                out.insert("id".into(), json!(id));
                out.extend(doc);
                out.insert("active".into(), Value::Bool(row.get(5)));
                if let Some(g) = groups.remove(&id) {
                    out.insert("groups".into(), Value::Array(g));
                }
                out.insert("meta".into(), meta(rt, ctx, id, row));
                sel.apply(Value::Object(out))
            })
            .collect())
    } else {
        let mut members: HashMap<Uuid, Vec<Value>> = HashMap::new();
        if sel.wants("members") && !ids.is_empty() {
            // Members whose user or group is gone are not shown.
            let stmt = client
                .prepare_cached(
                    "SELECT m.group_id, m.member_id, m.member_type, \
                            coalesce(u.display_name, u.user_name, g.display_name) \
                     FROM projections.group_members m \
                     LEFT JOIN projections.users u ON m.member_type = 'User' AND u.user_id = m.member_id \
                     LEFT JOIN projections.groups g ON m.member_type = 'Group' AND g.group_id = m.member_id \
                     WHERE m.group_id = ANY($1) AND (u.user_id IS NOT NULL OR g.group_id IS NOT NULL) \
                     ORDER BY m.group_id, m.added_at, m.member_id",
                )
                .await?;
            for r in client.query(&stmt, &[&ids]).await? {
                let mid: Uuid = r.get(1);
                let kind: &str = r.get(2);
                let endpoint = if kind == "User" { "Users" } else { "Groups" };
                members.entry(r.get(0)).or_default().push(json!({
                    "value": mid,
                    "$ref": format!("{}/{endpoint}/{mid}", ctx.base),
                    "display": r.get::<_, Option<String>>(3),
                    "type": kind,
                }));
            }
        }
        Ok(rows
            .iter()
            .map(|row| {
                let id: Uuid = row.get(0);
                let mut out = Map::new();
                out.insert("schemas".into(), json!([schema::GROUP]));
                out.insert("id".into(), json!(id));
                out.insert("displayName".into(), json!(row.get::<_, String>(4)));
                if let Some(x) = row.get::<_, Option<String>>(5) {
                    out.insert("externalId".into(), json!(x));
                }
                let m = members.remove(&id).unwrap_or_default();
                if !m.is_empty() || sel.wants("members") {
                    out.insert("members".into(), Value::Array(m));
                }
                out.insert("meta".into(), meta(rt, ctx, id, row));
                sel.apply(Value::Object(out))
            })
            .collect())
    }
}

fn cols(rt: &ResourceType) -> &'static str {
    if rt.name == USER_TYPE.name {
        USER_COLS
    } else {
        GROUP_COLS
    }
}

/// One resource by id, with its version (None: not in this org).
pub async fn by_id<C: GenericClient>(
    client: &C,
    rt: &'static ResourceType,
    ctx: &Ctx,
    id: Uuid,
    sel: &Selection,
) -> Result<Option<(Value, i64)>, ScimError> {
    let t = query::table(rt);
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {} FROM {} WHERE {} = $1 AND r.org_id = $2",
            cols(rt),
            t.from,
            t.id
        ))
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&id, &ctx.org]).await? else {
        return Ok(None);
    };
    let version: i64 = row.get(1);
    let mut v = render(client, rt, ctx, &[row], sel).await?;
    Ok(v.pop().map(|v| (v, version)))
}

/// The current version of a resource (for If-None-Match), None when absent.
pub async fn version<C: GenericClient>(
    client: &C,
    rt: &'static ResourceType,
    ctx: &Ctx,
    id: Uuid,
) -> Result<Option<i64>, ScimError> {
    let t = query::table(rt);
    let stmt = client
        .prepare_cached(&format!(
            "SELECT r.version FROM {} WHERE {} = $1 AND r.org_id = $2",
            t.from, t.id
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&id, &ctx.org])
        .await?
        .map(|r| r.get(0)))
}

/// Statements longer than this are not kept prepared per connection (client-chosen filter
/// shapes must not grow the cache without bound).
const CACHE_SQL_UP_TO: usize = 600;

async fn run<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, ScimError> {
    if sql.len() <= CACHE_SQL_UP_TO {
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.query(&stmt, params).await?)
    } else {
        Ok(client.query(sql, params).await?)
    }
}

/// A compiled list query for one resource type: its WHERE, ORDER BY and parameters.
pub struct Plan {
    rt: &'static ResourceType,
    where_sql: String,
    order: String,
    params: Vec<Param>,
}

pub fn plan(rt: &'static ResourceType, ctx: &Ctx, q: &ListQuery) -> Result<Plan, ScimError> {
    plan_with(rt, ctx, q, false)
}

fn plan_with(
    rt: &'static ResourceType,
    ctx: &Ctx,
    q: &ListQuery,
    lenient: bool,
) -> Result<Plan, ScimError> {
    let mut params = vec![Param::Uuid(ctx.org)];
    let mut where_sql = "r.org_id = $1".to_string();
    if let Some(f) = &q.filter {
        let c = if lenient {
            query::compile_lenient(rt, f, 2)
        } else {
            query::compile(rt, f, 2)
        }
        .map_err(ScimError::filter)?;
        where_sql = format!("{where_sql} AND ({})", c.sql);
        params.extend(c.params);
    }
    let t = query::table(rt);
    let mut order = format!("r.created_at, {}", t.id);
    if let Some(s) = &q.sort_by {
        let e = query::sort_expr(rt, s).map_err(ScimError::value)?;
        let dir = if q.descending {
            "DESC NULLS LAST"
        } else {
            "ASC NULLS LAST"
        };
        order = format!("{e} {dir}, {order}");
    }
    Ok(Plan {
        rt,
        where_sql,
        order,
        params,
    })
}

impl Plan {
    pub async fn count<C: GenericClient>(&self, client: &C) -> Result<i64, ScimError> {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            query::table(self.rt).from,
            self.where_sql
        );
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect();
        Ok(run(client, &sql, &params).await?[0].get(0))
    }

    pub async fn page<C: GenericClient>(
        &self,
        client: &C,
        ctx: &Ctx,
        offset: i64,
        limit: i64,
        sel: &Selection,
    ) -> Result<Vec<Value>, ScimError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let n = self.params.len();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT ${} OFFSET ${}",
            cols(self.rt),
            query::table(self.rt).from,
            self.where_sql,
            self.order,
            n + 1,
            n + 2
        );
        let (limit, offset) = (Param::Int(limit), Param::Int(offset));
        let mut params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect();
        params.push(&limit);
        params.push(&offset);
        let rows = run(client, &sql, &params).await?;
        render(client, self.rt, ctx, &rows, sel).await
    }
}

/// A list of one resource type.
pub async fn list<C: GenericClient>(
    client: &C,
    rt: &'static ResourceType,
    ctx: &Ctx,
    q: &ListQuery,
    sel: &Selection,
) -> Result<Page, ScimError> {
    let plan = plan(rt, ctx, q)?;
    let offset = q.start_index - 1;
    let (total, resources) = futures::try_join!(
        plan.count(client),
        plan.page(client, ctx, offset, q.count, sel)
    )?;
    Ok(Page { total, resources })
}

/// Users and groups together (`POST /.search`): users first, each in its own order. An
/// attribute only one type has compares false on the other; a filter neither type
/// understands is an error.
pub async fn list_all<C: GenericClient>(
    client: &C,
    ctx: &Ctx,
    q: &ListQuery,
    attributes: Option<&str>,
    excluded: Option<&str>,
) -> Result<Page, ScimError> {
    let types = [&USER_TYPE, &GROUP_TYPE];
    if let Some(err) = types
        .iter()
        .map(|rt| plan(rt, ctx, q).err())
        .collect::<Option<Vec<_>>>()
    {
        return Err(err.into_iter().next().expect("two types"));
    }
    let mut total = 0;
    let mut resources = Vec::new();
    let mut skip = q.start_index - 1;
    let mut want = q.count;
    for rt in types {
        let p = plan_with(rt, ctx, q, true)?;
        let n = p.count(client).await?;
        total += n;
        if want > 0 && skip < n {
            let sel = Selection::parse(p.rt, attributes, excluded);
            let got = p.page(client, ctx, skip, want, &sel).await?;
            want -= got.len() as i64;
            resources.extend(got);
            skip = 0;
        } else {
            skip = (skip - n).max(0);
        }
    }
    Ok(Page { total, resources })
}
