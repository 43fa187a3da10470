//! Reading SCIM resources from the read models (after waiting for them; see `wait`).

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::GenericClient;
use postgres_types::ToSql;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::eventstore::Position;

use super::error::ScimError;
use super::filter::{self, AttrPath, Filter};
use super::query::{self, Param, Planning};
use super::resource::Selection;
use super::schema::{self, Kind, ResourceType, GROUP_TYPE, USER_TYPE};

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
    /// Cursor paging (RFC 9865) instead of index paging: the client's cursor, empty for the
    /// first page.
    pub cursor: Option<String>,
}

impl ListQuery {
    /// What a cursor is bound to: the filter and the order (parsed, so spacing and case of
    /// keywords do not matter).
    pub fn shape(&self) -> String {
        format!("{:?}|{:?}|{}", self.filter, self.sort_by, self.descending)
    }
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

/// User.groups as one jsonb array per row (a sub-select, so one statement reads a user
/// and its groups).
const USER_GROUPS: &str = "(SELECT jsonb_agg(jsonb_build_object('value', g.group_id, \
     'display', g.display_name, 'direct', g.direct)) FROM projections.user_groups(r.user_id) g)";
/// Group.members likewise; members whose user or group is gone are not shown.
const GROUP_MEMBERS: &str = "(SELECT jsonb_agg(jsonb_build_object('value', m.member_id, \
     'type', m.member_type, 'display', coalesce(u.display_name, u.user_name, g.display_name)) \
     ORDER BY m.added_at, m.member_id) \
     FROM projections.group_members m \
     LEFT JOIN projections.users u ON m.member_type = 'User' AND u.user_id = m.member_id \
     LEFT JOIN projections.groups g ON m.member_type = 'Group' AND g.group_id = m.member_id \
     WHERE m.group_id = r.group_id AND (u.user_id IS NOT NULL OR g.group_id IS NOT NULL))";

/// The columns to select: the row's own, then the computed attribute (or NULL when the
/// response will not hold it).
pub(super) fn cols(rt: &ResourceType, sel: &Selection) -> String {
    if rt.kind == Kind::User {
        let groups = if sel.wants("groups") {
            USER_GROUPS
        } else {
            "NULL::jsonb"
        };
        format!("{USER_COLS}, {groups} AS computed, r.verified_email")
    } else {
        let members = if sel.wants("members") {
            GROUP_MEMBERS
        } else {
            "NULL::jsonb"
        };
        format!("{GROUP_COLS}, {members} AS computed")
    }
}

/// Rows of one resource type (selected with [`cols`]), rendered with what `sel` keeps.
pub(super) fn render(
    rt: &'static ResourceType,
    ctx: &Ctx,
    rows: &[tokio_postgres::Row],
    sel: &Selection,
) -> Vec<Value> {
    rows.iter()
        .filter_map(|row| {
            let id: Uuid = row.get(0);
            let computed: Option<Value> = row.get(6);
            let mut out = match rt.kind {
                Kind::User => user_attributes(ctx, id, row, computed)?,
                Kind::Group => group_attributes(ctx, id, row, computed, sel),
            };
            out.insert("meta".into(), meta(rt, ctx, id, row));
            Some(sel.apply(Value::Object(out)))
        })
        .collect()
}

/// A user's attributes: its document, `verified` on the verified address, its groups.
fn user_attributes(
    ctx: &Ctx,
    id: Uuid,
    row: &tokio_postgres::Row,
    computed: Option<Value>,
) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    let Value::Object(doc) = row.get::<_, Value>(4) else {
        return None;
    };
    let mut schemas = vec![schema::USER];
    if doc.contains_key(schema::ENTERPRISE) {
        schemas.push(schema::ENTERPRISE);
    }
    out.insert("schemas".into(), json!(schemas));
    out.insert("id".into(), json!(id));
    out.extend(doc);
    let verified: Option<String> = row.get(7);
    if let Some(Value::Array(emails)) = out.get_mut("emails") {
        for e in emails.iter_mut().filter_map(Value::as_object_mut) {
            let is = match (e.get("value").and_then(Value::as_str), &verified) {
                (Some(v), Some(x)) => v.eq_ignore_ascii_case(x),
                _ => false,
            };
            // Only a verified address says so: a client that never sent
            // `verified` gets back what it wrote.
            if is {
                e.insert("verified".into(), Value::Bool(true));
            } else {
                e.remove("verified");
            }
        }
    }
    if let Some(Value::Array(groups)) = computed {
        let groups = groups
            .into_iter()
            .map(|g| {
                let gid = g["value"].as_str().unwrap_or_default().to_string();
                json!({
                    "value": gid,
                    "$ref": format!("{}/Groups/{gid}", ctx.base),
                    "display": g["display"],
                    "type": if g["direct"] == true { "direct" } else { "indirect" },
                })
            })
            .collect();
        out.insert("groups".into(), Value::Array(groups));
    }
    Some(out)
}

/// A group's attributes: displayName, externalId and (when selected) its members.
fn group_attributes(
    ctx: &Ctx,
    id: Uuid,
    row: &tokio_postgres::Row,
    computed: Option<Value>,
    sel: &Selection,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("schemas".into(), json!([schema::GROUP]));
    out.insert("id".into(), json!(id));
    out.insert("displayName".into(), json!(row.get::<_, String>(4)));
    if let Some(x) = row.get::<_, Option<String>>(5) {
        out.insert("externalId".into(), json!(x));
    }
    if sel.wants("members") {
        let display = sel.names(&["members", "display"]);
        let members: Vec<Value> = match computed {
            Some(Value::Array(m)) => m
                .into_iter()
                .map(|m| {
                    let mid = m["value"].as_str().unwrap_or_default().to_string();
                    let endpoint = if m["type"] == "Group" {
                        "Groups"
                    } else {
                        "Users"
                    };
                    let mut o = json!({
                        "value": mid,
                        "$ref": format!("{}/{endpoint}/{mid}", ctx.base),
                        "type": m["type"],
                    });
                    if display {
                        o["display"] = m["display"].clone();
                    }
                    o
                })
                .collect(),
            _ => Vec::new(),
        };
        out.insert("members".into(), Value::Array(members));
    }
    out
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
            cols(rt, sel),
            t.from,
            t.id
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&id, &ctx.org]).await?;
    Ok(row.and_then(|row| rendered(rt, ctx, row, sel)))
}

/// [`by_id`] in a read model that holds `position` (confirmed in the same statement, see
/// `runtime::confirm_reached`): `None` also when it does not. The statement is the one
/// coalesced read backs use (`readback`), with one key.
pub async fn by_id_at<C: GenericClient>(
    client: &C,
    rt: &'static ResourceType,
    ctx: &Ctx,
    id: Uuid,
    sel: &Selection,
    position: Position,
) -> Result<Option<(Value, i64)>, ScimError> {
    let sql = by_keys_sql(rt, sel);
    let (tx, seq) = (position.tx_sql(), position.seq);
    let rows = by_keys(client, &sql, &[id], &[ctx.org], &[tx], &[seq]).await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|(_, row)| rendered(rt, ctx, row, sel)))
}

/// A row of [`cols`] rendered, with its version.
pub(super) fn rendered(
    rt: &'static ResourceType,
    ctx: &Ctx,
    row: tokio_postgres::Row,
    sel: &Selection,
) -> Option<(Value, i64)> {
    let version: i64 = row.get(1);
    render(rt, ctx, &[row], sel).pop().map(|v| (v, version))
}

/// [`by_id_at`] for many keys at once (see `readback`): the statement, for one column set.
pub(super) fn by_keys_sql(rt: &ResourceType, sel: &Selection) -> String {
    let t = query::table(rt);
    format!(
        "SELECT {}, k.n FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[]) \
                WITH ORDINALITY AS k(id, org, tx, seq, n) \
           JOIN {} ON {} = k.id AND r.org_id = k.org \
          WHERE NOT EXISTS (SELECT 1 FROM projections.projection_states \
                 WHERE name = ANY($5) AND (position_tx, position_seq) < (k.tx, k.seq))",
        cols(rt, sel),
        t.from,
        t.id
    )
}

/// Runs a [`by_keys_sql`] statement: each row found with the index of its key.
pub(super) async fn by_keys<C: GenericClient>(
    client: &C,
    sql: &str,
    ids: &[Uuid],
    orgs: &[Uuid],
    txs: &[i64],
    seqs: &[i64],
) -> Result<Vec<(usize, tokio_postgres::Row)>, ScimError> {
    let stmt = client.prepare_cached(sql).await?;
    let models: &[&str] = &super::wait::READ_MODELS;
    let rows = client
        .query(&stmt, &[&ids, &orgs, &txs, &seqs, &models])
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let n: i64 = row.get(row.len() - 1);
            (usize::try_from(n - 1).unwrap_or(usize::MAX), row)
        })
        .collect())
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

/// Client-shaped statements (one per filter structure, sortBy and attribute set) a pooled
/// connection keeps prepared. The hot shapes (`userName eq`, the import's page) are then
/// planned once; past the bound the connection's statement cache is emptied, its statements
/// closed, so a client that varies its filters cannot grow a backend.
pub const PREPARED_PER_CONNECTION: usize = 64;

/// Runs client-shaped SQL through the connection's bounded statement cache, or prepared for
/// this query alone when its plan depends on its values.
pub(super) async fn run(
    client: &deadpool_postgres::Client,
    sql: &str,
    params: &[Param],
    planning: Planning,
) -> Result<Vec<tokio_postgres::Row>, ScimError> {
    let types: Vec<postgres_types::Type> = params.iter().map(Param::pg_type).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let st = match planning {
        Planning::Cached => {
            if client.statement_cache.size() >= PREPARED_PER_CONNECTION {
                client.statement_cache.clear();
            }
            client.prepare_typed_cached(sql, &types).await?
        }
        // Dropped after the query, which closes it on the server.
        Planning::PerQuery => client.prepare_typed(sql, &types).await?,
    };
    Ok(client.query(&st, &refs).await?)
}

/// A compiled list query for one resource type: its WHERE, ORDER BY and parameters.
pub struct Plan {
    pub(super) rt: &'static ResourceType,
    pub(super) where_sql: String,
    pub(super) order: String,
    /// The `sortBy` expression and its SQL type (the order is then it, created_at, id).
    pub(super) sort: Option<(String, &'static str)>,
    pub(super) descending: bool,
    pub(super) params: Vec<Param>,
    pub(super) planning: Planning,
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
    let mut planning = Planning::Cached;
    if let Some(f) = &q.filter {
        let c = filter::resolve(rt, f, lenient)
            .and_then(|resolved| query::compile(rt, &resolved, 2))
            .map_err(|e| ScimError::filter(e.to_string()))?;
        where_sql = format!("{where_sql} AND ({})", c.sql);
        params.extend(c.params);
        planning = c.planning;
    }
    let t = query::table(rt);
    let mut order = format!("r.created_at, {}", t.id);
    let sort = match &q.sort_by {
        Some(s) => Some(query::sort_expr(rt, s).map_err(|e| ScimError::value(e.to_string()))?),
        None => None,
    };
    if let Some((e, _)) = &sort {
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
        sort,
        descending: q.descending,
        params,
        planning,
    })
}

impl Plan {
    pub async fn count(&self, client: &deadpool_postgres::Client) -> Result<i64, ScimError> {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            query::table(self.rt).from,
            self.where_sql
        );
        Ok(run(client, &sql, &self.params, self.planning).await?[0].get(0))
    }

    /// One page and the total in one statement (the total row is there even when the page
    /// is empty).
    pub async fn page_and_total(
        &self,
        client: &deadpool_postgres::Client,
        ctx: &Ctx,
        offset: i64,
        limit: i64,
        sel: &Selection,
    ) -> Result<(Vec<Value>, i64), ScimError> {
        let from = query::table(self.rt).from;
        let n = self.params.len();
        // The page's rows are picked first and only they get their columns computed (the
        // groups of a user are a function call): the rows OFFSET skips cost an index step.
        let sql = format!(
            "WITH total AS (SELECT count(*) AS n FROM {from} WHERE {w}) \
             SELECT p.*, total.n FROM total LEFT JOIN LATERAL \
             (SELECT {cols} FROM (SELECT r.* FROM {from} WHERE {w} ORDER BY {order} \
              LIMIT ${} OFFSET ${}) r ORDER BY {order}) p ON true",
            n + 1,
            n + 2,
            w = self.where_sql,
            cols = cols(self.rt, sel),
            order = self.order,
        );
        let mut params = self.params.clone();
        params.extend([Param::Int(limit), Param::Int(offset)]);
        let rows = run(client, &sql, &params, self.planning).await?;
        let total = rows.first().map_or(0, |r| r.get(r.len() - 1));
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| r.get::<_, Option<Uuid>>(0).is_some())
            .collect();
        Ok((render(self.rt, ctx, &rows, sel), total))
    }
}

/// A list of one resource type.
pub async fn list(
    client: &deadpool_postgres::Client,
    rt: &'static ResourceType,
    ctx: &Ctx,
    q: &ListQuery,
    sel: &Selection,
) -> Result<Page, ScimError> {
    let plan = plan(rt, ctx, q)?;
    let sel = &sel.clone().for_list(rt);
    if q.count <= 0 {
        let total = plan.count(client).await?;
        return Ok(Page {
            total,
            resources: Vec::new(),
        });
    }
    let (resources, total) = plan
        .page_and_total(client, ctx, q.start_index - 1, q.count, sel)
        .await?;
    Ok(Page { total, resources })
}

/// Users and groups together (`POST /.search`): users first, each in its own order. An
/// attribute only one type has compares false on the other; a filter neither type
/// understands is an error.
pub async fn list_all(
    client: &deadpool_postgres::Client,
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
        let sel = Selection::parse(p.rt, attributes, excluded).for_list(p.rt);
        // The page of this type starts at `skip`; a page past its end still counts it.
        let (got, n) = if want > 0 {
            p.page_and_total(client, ctx, skip, want, &sel).await?
        } else {
            (Vec::new(), p.count(client).await?)
        };
        total += n;
        want -= got.len() as i64;
        resources.extend(got);
        skip = (skip - n).max(0);
    }
    Ok(Page { total, resources })
}
