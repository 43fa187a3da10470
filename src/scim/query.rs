//! Resolved filters and sort orders compiled to SQL on the read models. What a filter may
//! say was settled when it was resolved (`filter::typed`); this maps each attribute to where
//! it is stored. Column expressions come only from the table below; every value from the
//! client travels as a bind parameter.

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use postgres_types::{to_sql_checked, IsNull, ToSql, Type as PgType};
use uuid::Uuid;

use super::filter::{
    self, AttrPath, Cond, Expr, Field, Op, Operand, ResolveError, Resolved, SubCond, Test,
};
use super::schema::{self, Attr, Kind, ResourceType, Type};

/// A bind parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Bool(bool),
    Uuid(Uuid),
    Time(DateTime<Utc>),
    Int(i64),
}

impl Param {
    /// The parameter's SQL type, for statements run with typed parameters.
    pub fn pg_type(&self) -> PgType {
        match self {
            Param::Text(_) => PgType::TEXT,
            Param::Bool(_) => PgType::BOOL,
            Param::Uuid(_) => PgType::UUID,
            Param::Time(_) => PgType::TIMESTAMPTZ,
            Param::Int(_) => PgType::INT8,
        }
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &PgType,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Text(s) => s.to_sql(ty, out),
            Param::Bool(b) => b.to_sql(ty, out),
            Param::Uuid(u) => u.to_sql(ty, out),
            Param::Time(t) => t.to_sql(ty, out),
            Param::Int(i) => i.to_sql(ty, out),
        }
    }

    fn accepts(ty: &PgType) -> bool {
        <String as ToSql>::accepts(ty)
            || <bool as ToSql>::accepts(ty)
            || <Uuid as ToSql>::accepts(ty)
            || <DateTime<Utc> as ToSql>::accepts(ty)
            || <i64 as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// The SQL a filter became, and its parameters (numbered after the ones before them).
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub sql: String,
    pub params: Vec<Param>,
    pub planning: Planning,
}

/// How a query's statement is planned. A statement kept prepared is planned generically after
/// a few runs, without its parameters' values. That suits equality, the hot filters, but not a
/// pattern or a range: PostgreSQL then cannot tell `emails co "x"` is selective, and a generic
/// plan scanned every user of the org (363 ms where the trigram index takes 8 ms, 100k users).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Planning {
    /// Prepared once per connection and kept (bounded, see `read::PREPARED_PER_CONNECTION`).
    #[default]
    Cached,
    /// Prepared for each query, so it is always planned for its own values.
    PerQuery,
}

/// What a name in a filter refers to, as SQL.
#[derive(Debug, Clone)]
enum Col {
    Text {
        expr: String,
        ci: bool,
    },
    Bool(String),
    Time(String),
    Id(String),
    /// A multi-valued attribute: `from` is the FROM/WHERE that yields its values.
    Multi {
        from: String,
        elem: Elem,
    },
    /// A single-valued complex attribute stored as jsonb.
    Complex {
        json: String,
    },
}

#[derive(Debug, Clone)]
enum Elem {
    Emails,
    Json(&'static Attr),
    Groups,
    Members,
}

pub struct Table {
    pub from: &'static str,
    pub id: &'static str,
}

pub fn table(rt: &ResourceType) -> Table {
    match rt.kind {
        Kind::User => Table {
            from: "projections.users r",
            id: "r.user_id",
        },
        Kind::Group => Table {
            from: "projections.groups r",
            id: "r.group_id",
        },
    }
}

fn json_col(base: &str, attr: &'static Attr) -> Col {
    let field = format!("{base}->'{}'", attr.name);
    if attr.multi {
        let elem = Elem::Json(attr);
        return Col::Multi {
            from: format!("FROM jsonb_array_elements(coalesce({field}, '[]'::jsonb)) AS x(v)"),
            elem,
        };
    }
    match attr.ty {
        Type::Complex => Col::Complex { json: field },
        Type::Boolean => Col::Bool(format!("({base}->>'{}')::boolean", attr.name)),
        _ => Col::Text {
            expr: format!("({base}->>'{}')", attr.name),
            ci: !attr.case_exact,
        },
    }
}

/// Where a resolved attribute is stored, on a resource row `r`. A sub-attribute of a
/// multi-valued attribute stays with the caller: it is a column of each value.
fn column(rt: &ResourceType, f: &Field) -> Result<Col, ResolveError> {
    let attr = f.attr;
    let is_user = rt.kind == Kind::User;
    let text = |expr: &str, ci| Col::Text {
        expr: expr.into(),
        ci,
    };
    let col = match (attr.name, f.extension) {
        ("id", None) => Col::Id(table(rt).id.into()),
        ("userName", None) => text("r.user_name", true),
        ("displayName", None) => text("r.display_name", true),
        ("externalId", None) => text("r.external_id", false),
        ("active", None) => Col::Bool("r.active".into()),
        ("emails", None) => Col::Multi {
            from: "FROM projections.user_emails e WHERE e.user_id = r.user_id".into(),
            elem: Elem::Emails,
        },
        ("groups", None) if is_user => Col::Multi {
            from: "FROM projections.user_groups(r.user_id) g".into(),
            elem: Elem::Groups,
        },
        ("members", None) => Col::Multi {
            from: "FROM projections.group_members m WHERE m.group_id = r.group_id".into(),
            elem: Elem::Members,
        },
        ("meta", None) => {
            return match f.sub.map(|s| s.name) {
                Some("created") => Ok(Col::Time("r.created_at".into())),
                Some("lastModified") => Ok(Col::Time("r.updated_at".into())),
                Some("resourceType") => Ok(text(&format!("'{}'::text", rt.name), false)),
                _ => Err(not_stored(f)),
            };
        }
        (_, Some(urn)) if is_user => json_col(&format!("r.doc->'{urn}'"), attr),
        (_, None) if is_user => json_col("r.doc", attr),
        _ => return Err(not_stored(f)),
    };
    match (f.sub, col) {
        (None, col) | (Some(_), col @ Col::Multi { .. }) => Ok(col),
        (Some(s), Col::Complex { json }) => Ok(json_col(&json, s)),
        (Some(_), _) => Err(not_stored(f)),
    }
}

fn not_stored(f: &Field) -> ResolveError {
    let name = match f.sub {
        Some(s) => format!("{}.{}", f.attr.name, s.name),
        None => f.attr.name.to_string(),
    };
    ResolveError::NotFilterable(name)
}

/// A sub-attribute of a multi-valued attribute's values.
fn element(elem: &Elem, sub: &'static Attr) -> Result<Col, ResolveError> {
    let text = |expr: &str, ci| Col::Text {
        expr: expr.into(),
        ci,
    };
    match (elem, sub.name) {
        (Elem::Emails, "value") => Ok(text("e.value", true)),
        (Elem::Emails, "type") => Ok(text("e.type", true)),
        (Elem::Emails, "display") => Ok(text("e.display", true)),
        (Elem::Emails, "primary") => Ok(Col::Bool("e.is_primary".into())),
        (Elem::Emails, "verified") => Ok(Col::Bool(
            "coalesce(lower(e.value) = lower(r.verified_email), false)".into(),
        )),
        (Elem::Groups, "value") => Ok(text("g.group_id::text", false)),
        (Elem::Groups, "display") => Ok(text("g.display_name", true)),
        (Elem::Groups, "type") => Ok(text(
            "(CASE WHEN g.direct THEN 'direct' ELSE 'indirect' END)",
            true,
        )),
        (Elem::Members, "value") => Ok(text("m.member_id::text", false)),
        (Elem::Members, "type") => Ok(text("m.member_type", true)),
        (Elem::Json(_), _) => Ok(json_col("x.v", sub)),
        _ => Err(ResolveError::NotFilterable(format!(
            "the sub-attribute {:?}",
            sub.name
        ))),
    }
}

type LeafSql<'a, L> = dyn Fn(&mut Compiler, &L) -> Result<String, ResolveError> + 'a;

struct Compiler {
    first: usize,
    params: Vec<Param>,
    planning: Planning,
}

impl Compiler {
    fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.first + self.params.len() - 1)
    }

    fn walk<L>(&mut self, e: &Expr<L>, leaf: &LeafSql<'_, L>) -> Result<String, ResolveError> {
        Ok(match e {
            Expr::Or(a, b) => format!("({} OR {})", self.walk(a, leaf)?, self.walk(b, leaf)?),
            Expr::And(a, b) => format!("({} AND {})", self.walk(a, leaf)?, self.walk(b, leaf)?),
            Expr::Not(a) => format!("(NOT coalesce({}, false))", self.walk(a, leaf)?),
            Expr::Never => "false".into(),
            Expr::Leaf(l) => leaf(self, l)?,
        })
    }

    fn cond(&mut self, rt: &ResourceType, c: &Cond) -> Result<String, ResolveError> {
        match c {
            Cond::Attr(field, test) => match (column(rt, field)?, test) {
                (Col::Multi { from, elem }, test) => {
                    let inner = match field.sub {
                        Some(sub) => self.test(element(&elem, sub)?, test)?,
                        None => "true".into(),
                    };
                    Ok(exists(&from, &inner))
                }
                (col, test) => self.test(col, test),
            },
            Cond::Values(field, inner) => match column(rt, field)? {
                Col::Multi { from, elem } => {
                    let sql = self.walk(inner, &|c: &mut Compiler, s: &SubCond| {
                        c.test(element(&elem, s.sub)?, &s.test)
                    })?;
                    Ok(exists(&from, &sql))
                }
                Col::Complex { json } => self.walk(inner, &|c: &mut Compiler, s: &SubCond| {
                    c.test(json_col(&json, s.sub), &s.test)
                }),
                _ => Err(not_stored(field)),
            },
        }
    }

    fn test(&mut self, col: Col, test: &Test) -> Result<String, ResolveError> {
        if let Test::Compare(op, _) = test {
            if !matches!(op, Op::Eq | Op::Ne) {
                self.planning = Planning::PerQuery;
            }
        }
        let Test::Compare(op, operand) = test else {
            return Ok(match col {
                Col::Text { expr, .. } => format!("({expr} IS NOT NULL AND {expr} <> '')"),
                Col::Bool(e) | Col::Time(e) | Col::Id(e) => format!("({e} IS NOT NULL)"),
                Col::Multi { from, .. } => exists(&from, "true"),
                Col::Complex { json } => format!("(jsonb_typeof({json}) = 'object')"),
            });
        };
        match (col, operand) {
            (Col::Text { expr, ci }, Operand::Text(s)) => Ok(self.compare_text(&expr, ci, *op, s)),
            (Col::Id(expr), Operand::Text(s)) => Ok(self.compare_id(&expr, *op, s)),
            (Col::Bool(expr), Operand::Bool(b)) => {
                let sql_op = sql_op(*op).filter(|_| matches!(op, Op::Eq | Op::Ne));
                let sql_op = sql_op.ok_or_else(|| mismatch(test))?;
                Ok(format!("{expr} {sql_op} {}", self.bind(Param::Bool(*b))))
            }
            (Col::Time(expr), Operand::Time(t)) => {
                let sql_op = sql_op(*op).ok_or_else(|| mismatch(test))?;
                Ok(format!("{expr} {sql_op} {}", self.bind(Param::Time(*t))))
            }
            _ => Err(mismatch(test)),
        }
    }

    fn compare_id(&mut self, expr: &str, op: Op, s: &str) -> String {
        match (op, s.parse::<Uuid>()) {
            (Op::Eq, Ok(id)) => format!("{expr} = {}", self.bind(Param::Uuid(id))),
            (Op::Eq, Err(_)) => "false".into(),
            (Op::Ne, Ok(id)) => format!("{expr} <> {}", self.bind(Param::Uuid(id))),
            (Op::Ne, Err(_)) => "true".into(),
            _ => self.compare_text(&format!("{expr}::text"), false, op, s),
        }
    }

    fn compare_text(&mut self, expr: &str, ci: bool, op: Op, s: &str) -> String {
        let like = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        };
        let value = match op {
            Op::Co => format!("%{}%", like(s)),
            Op::Sw => format!("{}%", like(s)),
            Op::Ew => format!("%{}", like(s)),
            _ => s.to_string(),
        };
        let rhs = self.bind(Param::Text(value));
        let (lhs, rhs) = if ci {
            (format!("lower({expr})"), format!("lower({rhs})"))
        } else {
            (expr.to_string(), rhs)
        };
        let sql_op = match op {
            Op::Ne => "IS DISTINCT FROM",
            Op::Co | Op::Sw | Op::Ew => "LIKE",
            other => sql_op(other).unwrap_or("="),
        };
        format!("{lhs} {sql_op} {rhs}")
    }
}

/// The SQL operator of an ordering comparison; `co`, `sw` and `ew` have none.
fn sql_op(op: Op) -> Option<&'static str> {
    Some(match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Co | Op::Sw | Op::Ew => return None,
    })
}

/// A test whose operand does not fit the column: `typed` rules these out, so this is a
/// resolved tree that disagrees with the storage here.
fn mismatch(test: &Test) -> ResolveError {
    ResolveError::Invalid(format!("the comparison {test:?} does not apply here"))
}

fn exists(from: &str, cond: &str) -> String {
    let glue = if from.contains(" WHERE ") {
        "AND"
    } else {
        "WHERE"
    };
    format!("EXISTS (SELECT 1 {from} {glue} {cond})")
}

/// Compiles a resolved filter for a resource type; parameters are numbered from `$first`.
pub fn compile(rt: &ResourceType, f: &Resolved, first: usize) -> Result<Compiled, ResolveError> {
    let mut c = Compiler {
        first,
        params: Vec::new(),
        planning: Planning::Cached,
    };
    let sql = c.walk(f, &|c: &mut Compiler, cond: &Cond| c.cond(rt, cond))?;
    Ok(Compiled {
        sql,
        params: c.params,
        planning: c.planning,
    })
}

/// The ORDER BY expression for `sortBy` (multi-valued attributes sort by their primary value)
/// and its SQL type, so a cursor can carry a value of it as text and compare it again.
pub fn sort_expr(
    rt: &ResourceType,
    path: &AttrPath,
) -> Result<(String, &'static str), ResolveError> {
    let field = filter::field(rt, path)?;
    match column(rt, &field)? {
        Col::Text { expr, ci: true } => Ok((format!("lower({expr})"), "text")),
        Col::Text { expr, ci: false } => Ok((expr, "text")),
        Col::Bool(expr) => Ok((expr, "boolean")),
        Col::Time(expr) => Ok((expr, "timestamptz")),
        Col::Id(expr) => Ok((expr, "uuid")),
        Col::Multi {
            elem: Elem::Emails, ..
        } => Ok((
            "(SELECT lower(e.value) FROM projections.user_emails e \
             WHERE e.user_id = r.user_id ORDER BY e.is_primary DESC, e.ord LIMIT 1)"
                .into(),
            "text",
        )),
        Col::Multi {
            from,
            elem: Elem::Json(attr),
        } if attr.has_value_sub() => Ok((
            format!(
                "(SELECT lower(x.v->>'value') {from} \
                 ORDER BY (x.v->>'primary')::boolean IS TRUE DESC LIMIT 1)"
            ),
            "text",
        )),
        _ => Err(ResolveError::Invalid(format!("cannot sort by {path}"))),
    }
}

/// Every attribute name of the schemas, for tests that compile each one.
pub fn all_paths(rt: &ResourceType) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |prefix: &str, attrs: &'static [Attr]| {
        for a in attrs {
            out.push(format!("{prefix}{}", a.name));
            for s in a.sub {
                out.push(format!("{prefix}{}.{}", a.name, s.name));
            }
        }
    };
    add("", rt.attrs);
    add("", schema::COMMON_ATTRS);
    for (urn, attrs) in rt.extensions {
        add(&format!("{urn}:"), attrs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::filter::{parse, resolve};
    use super::super::schema::{GROUP_TYPE, USER_TYPE};
    use super::*;

    fn compile_for(rt: &ResourceType, f: &str) -> Result<Compiled, ResolveError> {
        compile(
            rt,
            &resolve(rt, &parse(f).expect("a valid filter"), false)?,
            2,
        )
    }

    fn users(f: &str) -> Result<Compiled, ResolveError> {
        compile_for(&USER_TYPE, f)
    }

    #[test]
    fn patterns_and_ranges_are_planned_per_query_equality_is_kept_prepared() {
        for f in [
            r#"userName eq "a""#,
            r#"externalId ne "a""#,
            r#"emails[type eq "work" and value eq "a@b.c"]"#,
            "active eq true",
            "title pr",
        ] {
            assert_eq!(users(f).unwrap().planning, Planning::Cached, "{f}");
        }
        for f in [
            r#"emails co "a""#,
            r#"userName sw "a""#,
            r#"emails[type eq "work" and value ew "b.c"]"#,
            r#"meta.lastModified gt "2026-01-01T00:00:00Z""#,
            r#"userName eq "a" or displayName le "b""#,
        ] {
            assert_eq!(users(f).unwrap().planning, Planning::PerQuery, "{f}");
        }
    }

    #[test]
    fn values_are_parameters_never_sql() {
        let evil = "x' OR 1=1; DROP TABLE projections.users; --";
        let c = users(&format!("userName eq {}", serde_json::json!(evil))).unwrap();
        assert!(
            !c.sql.contains(evil) && !c.sql.contains("DROP"),
            "{}",
            c.sql
        );
        assert_eq!(c.sql, "lower(r.user_name) = lower($2)");
        assert_eq!(c.params, vec![Param::Text(evil.into())]);
    }

    #[test]
    fn operators_and_case_rules() {
        assert_eq!(
            users(r#"externalId eq "A""#).unwrap().sql,
            "r.external_id = $2"
        );
        let c = users(r#"userName co "a_b%""#).unwrap();
        assert_eq!(c.sql, "lower(r.user_name) LIKE lower($2)");
        assert_eq!(c.params, vec![Param::Text("%a\\_b\\%%".into())]);
        let c = users(r#"emails co "@x" and active eq "False""#).unwrap();
        assert!(c.sql.contains("EXISTS (SELECT 1 FROM projections.user_emails e WHERE e.user_id = r.user_id AND lower(e.value) LIKE lower($2))"), "{}", c.sql);
        assert_eq!(c.params[1], Param::Bool(false));
        let c = users(r#"emails[type eq "work" and value ew "@x.org"]"#).unwrap();
        assert!(
            c.sql
                .contains("lower(e.type) = lower($2) AND lower(e.value) LIKE lower($3)"),
            "{}",
            c.sql
        );
        let c = users(r#"meta.lastModified gt "2011-05-13T04:42:34Z""#).unwrap();
        assert_eq!(c.sql, "r.updated_at > $2");
        let c = users(r#"id eq "not-a-uuid" or title pr"#).unwrap();
        assert!(c.sql.starts_with("(false OR"), "{}", c.sql);
        let c = users(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "1""#,
        )
        .unwrap();
        assert!(c.sql.contains("->'manager'->>'value'"), "{}", c.sql);
        let c = users(r#"NAME.FamilyName sw "O" and not (phoneNumbers[type eq "fax"])"#).unwrap();
        assert!(c.sql.contains("jsonb_array_elements"), "{}", c.sql);
    }

    #[test]
    fn type_errors_and_unknown_names_are_errors() {
        for bad in [
            "active gt true",
            "active co \"t\"",
            "active eq \"yes\"",
            "nosuch eq \"x\"",
            "name eq \"x\"",
            "password eq \"x\"",
            "meta.created co \"2011\"",
            "meta.created eq \"yesterday\"",
            "userName eq true",
            "userName eq null",
            "emails[nosuch eq \"x\"]",
            "userName[value eq \"x\"]",
            "members eq \"x\"",
            "urn:x:y:z eq \"1\"",
        ] {
            assert!(users(bad).is_err(), "{bad} compiled");
        }
        assert!(matches!(
            users("nosuch eq \"x\""),
            Err(ResolveError::UnknownAttribute(_))
        ));
        assert!(matches!(
            users("password eq \"x\""),
            Err(ResolveError::NotFilterable(_))
        ));
        assert!(matches!(
            users("active gt true"),
            Err(ResolveError::Invalid(_))
        ));
        assert!(matches!(
            compile_for(&GROUP_TYPE, "userName eq \"x\""),
            Err(ResolveError::UnknownAttribute(_))
        ));
        assert!(compile_for(&GROUP_TYPE, "members[value eq \"x\"]").is_ok());
    }

    /// Every attribute of every schema, with each kind of test, either fails to resolve or
    /// compiles; a resolved filter the compiler calls ill-typed would be a disagreement
    /// between the two. Only storage may still refuse (a `$ref` is not stored per value).
    #[test]
    fn every_resolved_filter_compiles() {
        for rt in schema::resource_types() {
            for p in all_paths(rt) {
                for f in [
                    format!("{p} eq \"x\""),
                    format!("{p} eq true"),
                    format!("{p} gt \"2011-05-13T04:42:34Z\""),
                    format!("{p} pr"),
                    format!("{p} co \"x\""),
                ] {
                    let Ok(resolved) = resolve(rt, &parse(&f).unwrap(), false) else {
                        continue;
                    };
                    match compile(rt, &resolved, 1) {
                        Ok(_) | Err(ResolveError::NotFilterable(_)) => {}
                        Err(e) => panic!("{f} resolved but did not compile: {e}"),
                    }
                }
                if let Ok(path) = AttrPath::parse(&p) {
                    let _ = sort_expr(rt, &path);
                }
            }
        }
    }
}
