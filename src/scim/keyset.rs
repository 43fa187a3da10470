//! Keyset pages for cursor paging (RFC 9865): the rows beyond a cursor's position in the
//! list's order, read on the order's index where it has one, in either direction.

use serde_json::Value;
use uuid::Uuid;

use super::cursor::{self, Cursor, Direction};
use super::error::ScimError;
use super::query::{self, Param};
use super::read::{cols, plan, render, run, Ctx, ListQuery, Plan};
use super::resource::Selection;
use super::schema::ResourceType;

/// A cursor-paged list's page: the resources, the total, and where the pages before and
/// after it start (None: there is none).
pub struct CursorPage {
    pub total: i64,
    pub resources: Vec<Value>,
    pub next: Option<cursor::Position>,
    pub previous: Option<cursor::Position>,
}

impl Plan {
    /// The condition "beyond `at` in `dir`" of this plan's order, on an index where the
    /// order has one (created_at, id). Nulls of `sortBy` sort last in both directions.
    fn keyset(&self, dir: Direction, at: &cursor::Position, params: &mut Vec<Param>) -> String {
        let id = query::table(self.rt).id;
        let mut bind = |p: Param| {
            params.push(p);
            format!("${}", params.len())
        };
        let (c, i) = (bind(Param::Time(at.created_at)), bind(Param::Uuid(at.id)));
        let tie_op = if dir == Direction::After { ">" } else { "<" };
        let tie = format!("(r.created_at, {id}) {tie_op} ({c}, {i})");
        let Some((e, ty)) = &self.sort else {
            return tie;
        };
        match (&at.sort, dir) {
            (Some(v), _) => {
                let v = format!("{}::{ty}", bind(Param::Text(v.clone())));
                let ahead = (dir == Direction::After) != self.descending;
                let op = if ahead { ">" } else { "<" };
                let nulls = if dir == Direction::After {
                    format!(" OR {e} IS NULL")
                } else {
                    String::new()
                };
                format!("({e} {op} {v} OR ({e} = {v} AND {tie}){nulls})")
            }
            (None, Direction::After) => format!("({e} IS NULL AND {tie})"),
            (None, Direction::Before) => format!("({e} IS NOT NULL OR ({e} IS NULL AND {tie}))"),
        }
    }

    /// The order read backwards (for a previousCursor page, reversed again after reading).
    fn reverse_order(&self) -> String {
        let id = query::table(self.rt).id;
        let tie = format!("r.created_at DESC, {id} DESC");
        match &self.sort {
            None => tie,
            Some((e, _)) => {
                let dir = if self.descending { "ASC" } else { "DESC" };
                format!("{e} {dir} NULLS FIRST, {tie}")
            }
        }
    }

    fn position(&self, row: &tokio_postgres::Row) -> cursor::Position {
        cursor::Position {
            sort: row.get(row.len() - 2),
            created_at: row.get(2),
            id: row.get(0),
        }
    }

    /// A page of `limit` rows beyond `from` (the first page when None), and the total, in
    /// one statement: a keyset read, so the cost does not grow with how far the client is.
    pub async fn cursor_page(
        &self,
        client: &deadpool_postgres::Client,
        ctx: &Ctx,
        from: Option<&Cursor>,
        limit: i64,
        sel: &Selection,
    ) -> Result<CursorPage, ScimError> {
        let table = query::table(self.rt).from;
        let mut params = self.params.clone();
        let dir = from.map_or(Direction::After, |c| c.direction);
        let (cond, order) = match from {
            None => (String::new(), self.order.clone()),
            Some(c) if dir == Direction::After => (
                format!(" AND {}", self.keyset(dir, &c.at, &mut params)),
                self.order.clone(),
            ),
            Some(c) => (
                format!(" AND {}", self.keyset(dir, &c.at, &mut params)),
                self.reverse_order(),
            ),
        };
        params.push(Param::Int(limit + 1));
        let sort_key = self
            .sort
            .as_ref()
            .map_or("NULL::text".to_string(), |(e, _)| format!("({e})::text"));
        let sql = format!(
            "WITH total AS (SELECT count(*) AS n FROM {table} WHERE {w}) \
             SELECT p.*, total.n FROM total LEFT JOIN LATERAL \
             (SELECT {cols}, {sort_key} AS sort_key FROM {table} WHERE {w}{cond} \
              ORDER BY {order} LIMIT ${}) p ON true",
            params.len(),
            w = self.where_sql,
            cols = cols(self.rt, sel),
        );
        let rows = run(client, &sql, &params, self.planning).await?;
        let total = rows.first().map_or(0, |r| r.get(r.len() - 1));
        let mut rows: Vec<_> = rows
            .into_iter()
            .filter(|r| r.get::<_, Option<Uuid>>(0).is_some())
            .collect();
        let more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        if dir == Direction::Before {
            rows.reverse();
        }
        let edge = |r: Option<&tokio_postgres::Row>| r.map(|r| self.position(r));
        let (first, last) = (edge(rows.first()), edge(rows.last()));
        let (previous, next) = match (from, dir) {
            (None, _) => (None, last.filter(|_| more)),
            // Paging on: the rows behind are there unless the cursor's own row was the first.
            (Some(c), Direction::After) => (first.or(Some(c.at.clone())), last.filter(|_| more)),
            (Some(c), Direction::Before) => (first.filter(|_| more), last.or(Some(c.at.clone()))),
        };
        Ok(CursorPage {
            total,
            resources: render(self.rt, ctx, &rows, sel),
            next,
            previous,
        })
    }
}

/// A cursor-paged list of one resource type, from `from` (the first page when None).
pub async fn list_by_cursor(
    client: &deadpool_postgres::Client,
    rt: &'static ResourceType,
    ctx: &Ctx,
    q: &ListQuery,
    sel: &Selection,
    from: Option<&Cursor>,
) -> Result<CursorPage, ScimError> {
    let plan = plan(rt, ctx, q)?;
    let sel = &sel.clone().for_list(rt);
    if q.count <= 0 {
        return Ok(CursorPage {
            total: plan.count(client).await?,
            resources: Vec::new(),
            next: None,
            previous: None,
        });
    }
    plan.cursor_page(client, ctx, from, q.count, sel).await
}
