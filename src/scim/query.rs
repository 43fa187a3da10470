//! Filters and sort orders compiled to SQL on the read models. Column expressions come only
//! from the schema table below; every value from the client travels as a bind parameter.

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use postgres_types::{to_sql_checked, IsNull, ToSql, Type as PgType};
use serde_json::Value;
use uuid::Uuid;

use super::filter::{AttrPath, Filter, Op};
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
        attr: &'static Attr,
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

/// Why a filter or sortBy does not compile against the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("unknown attribute {0}")]
    UnknownAttribute(String),
    #[error("cannot filter on {0}")]
    NotFilterable(String),
    /// A value of the wrong type, an operator that does not apply, a path that is not there.
    #[error("{0}")]
    Invalid(String),
}

fn unknown(path: &AttrPath) -> CompileError {
    CompileError::UnknownAttribute(path.to_string())
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
        Type::Complex => Col::Complex { json: field, attr },
        Type::Boolean => Col::Bool(format!("({base}->>'{}')::boolean", attr.name)),
        _ => Col::Text {
            expr: format!("({base}->>'{}')", attr.name),
            ci: !attr.case_exact,
        },
    }
}

/// Resolves a top-level path (with its optional sub-attribute) on a resource row `r`.
fn resolve(rt: &ResourceType, path: &AttrPath) -> Result<Col, CompileError> {
    let r = rt.resolve(&path.full_attr()).ok_or_else(|| unknown(path))?;
    let attr = r.attr;
    let is_user = rt.kind == Kind::User;
    let col = match (attr.name, r.extension) {
        ("id", None) => Col::Id(table(rt).id.into()),
        ("userName", None) => Col::Text {
            expr: "r.user_name".into(),
            ci: true,
        },
        ("displayName", None) => Col::Text {
            expr: "r.display_name".into(),
            ci: true,
        },
        ("externalId", None) => Col::Text {
            expr: "r.external_id".into(),
            ci: false,
        },
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
            let sub = path.sub.as_deref().unwrap_or_default();
            return match sub.to_ascii_lowercase().as_str() {
                "created" => Ok(Col::Time("r.created_at".into())),
                "lastmodified" => Ok(Col::Time("r.updated_at".into())),
                "resourcetype" => Ok(Col::Text {
                    expr: format!("'{}'::text", rt.name),
                    ci: false,
                }),
                _ => Err(CompileError::NotFilterable(path.to_string())),
            };
        }
        ("password", None) | ("schemas", None) => {
            return Err(CompileError::NotFilterable(path.to_string()))
        }
        (_, Some(urn)) if is_user => json_col(&format!("r.doc->'{urn}'"), attr),
        (_, None) if is_user => json_col("r.doc", attr),
        _ => return Err(unknown(path)),
    };
    let Some(sub) = &path.sub else {
        return Ok(col);
    };
    match col {
        Col::Complex { json, attr } if !attr.multi => {
            let s = attr.sub_attr(sub).ok_or_else(|| unknown(path))?;
            Ok(json_col(&json, s))
        }
        Col::Multi { .. } => Ok(col),
        _ => Err(CompileError::Invalid(format!(
            "{} has no sub-attributes",
            attr.name
        ))),
    }
}

/// A sub-attribute of a multi-valued attribute's values.
fn element(elem: &Elem, name: &str) -> Result<Col, CompileError> {
    let text = |expr: &str, ci| Col::Text {
        expr: expr.into(),
        ci,
    };
    let lower = name.to_ascii_lowercase();
    match (elem, lower.as_str()) {
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
        (Elem::Json(attr), _) => {
            let s = attr
                .sub_attr(name)
                .ok_or_else(|| CompileError::UnknownAttribute(format!("{}.{name}", attr.name)))?;
            Ok(json_col("x.v", s))
        }
        _ => Err(CompileError::NotFilterable(format!(
            "the sub-attribute {name:?}"
        ))),
    }
}

struct Compiler {
    first: usize,
    params: Vec<Param>,
    /// Unknown attributes compare false instead of failing (the root /.search, where an
    /// attribute of one resource type is unknown to the other).
    lenient: bool,
}

impl Compiler {
    fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.first + self.params.len() - 1)
    }

    fn filter(
        &mut self,
        f: &Filter,
        scope: &dyn Fn(&AttrPath) -> Result<Col, CompileError>,
        in_value: bool,
    ) -> Result<String, CompileError> {
        if let Filter::Present(p) | Filter::Compare(p, ..) | Filter::ValuePath(p, _) = f {
            if self.lenient
                && !in_value
                && matches!(scope(p), Err(CompileError::UnknownAttribute(_)))
            {
                return Ok("false".into());
            }
        }
        Ok(match f {
            Filter::Or(a, b) => format!(
                "({} OR {})",
                self.filter(a, scope, in_value)?,
                self.filter(b, scope, in_value)?
            ),
            Filter::And(a, b) => format!(
                "({} AND {})",
                self.filter(a, scope, in_value)?,
                self.filter(b, scope, in_value)?
            ),
            Filter::Not(a) => format!(
                "(NOT coalesce({}, false))",
                self.filter(a, scope, in_value)?
            ),
            Filter::Present(p) => {
                let col = scope(p)?;
                self.present(col, p)?
            }
            Filter::Compare(p, op, v) => {
                let col = scope(p)?;
                self.compare(col, p, *op, v)?
            }
            Filter::ValuePath(p, inner) => {
                if in_value {
                    return Err(CompileError::Invalid("value filters cannot nest".into()));
                }
                match scope(p)? {
                    Col::Multi { from, elem } => {
                        let inner = self.filter(
                            inner,
                            &|q: &AttrPath| {
                                if q.urn.is_some() || q.sub.is_some() {
                                    return Err(CompileError::Invalid(format!(
                                        "{q} is not a sub-attribute of {p}"
                                    )));
                                }
                                element(&elem, &q.attr)
                            },
                            true,
                        )?;
                        exists(&from, &inner)
                    }
                    Col::Complex { json, attr } => self.filter(
                        inner,
                        &|q: &AttrPath| {
                            let s = attr
                                .sub_attr(&q.attr)
                                .filter(|_| q.urn.is_none() && q.sub.is_none())
                                .ok_or_else(|| {
                                    CompileError::Invalid(format!(
                                        "{q} is not a sub-attribute of {p}"
                                    ))
                                })?;
                            Ok(json_col(&json, s))
                        },
                        true,
                    )?,
                    _ => {
                        return Err(CompileError::Invalid(format!(
                            "{p} is not a complex attribute"
                        )))
                    }
                }
            }
        })
    }

    fn present(&mut self, col: Col, p: &AttrPath) -> Result<String, CompileError> {
        Ok(match col {
            Col::Text { expr, .. } => format!("({expr} IS NOT NULL AND {expr} <> '')"),
            Col::Bool(e) | Col::Time(e) | Col::Id(e) => format!("({e} IS NOT NULL)"),
            Col::Multi { from, elem } => match &p.sub {
                Some(sub) => {
                    let c = element(&elem, sub)?;
                    let inner = self.present(c, p)?;
                    exists(&from, &inner)
                }
                None => exists(&from, "true"),
            },
            Col::Complex { json, .. } => format!("(jsonb_typeof({json}) = 'object')"),
        })
    }

    fn compare(
        &mut self,
        col: Col,
        p: &AttrPath,
        op: Op,
        v: &Value,
    ) -> Result<String, CompileError> {
        match col {
            Col::Text { expr, ci } => self.compare_text(&expr, ci, p, op, v),
            Col::Id(expr) => {
                let id = v.as_str().and_then(|s| s.parse::<Uuid>().ok());
                match (op, id) {
                    (Op::Eq, Some(id)) => Ok(format!("{expr} = {}", self.bind(Param::Uuid(id)))),
                    (Op::Eq, None) => Ok("false".into()),
                    (Op::Ne, Some(id)) => Ok(format!("{expr} <> {}", self.bind(Param::Uuid(id)))),
                    (Op::Ne, None) => Ok("true".into()),
                    _ => self.compare(
                        Col::Text {
                            expr: format!("{expr}::text"),
                            ci: false,
                        },
                        p,
                        op,
                        v,
                    ),
                }
            }
            Col::Bool(expr) => self.compare_bool(&expr, p, op, v),
            Col::Time(expr) => self.compare_time(&expr, p, op, v),
            Col::Multi { from, elem } => {
                let sub = p.sub.as_deref().unwrap_or("value");
                let c = element(&elem, sub)?;
                let inner = self.compare(c, p, op, v)?;
                Ok(exists(&from, &inner))
            }
            Col::Complex { json, attr } => {
                let s = attr.sub_attr("value").ok_or_else(|| {
                    CompileError::Invalid(format!("{p} is complex: name a sub-attribute"))
                })?;
                self.compare(json_col(&json, s), p, op, v)
            }
        }
    }

    fn compare_text(
        &mut self,
        expr: &str,
        ci: bool,
        p: &AttrPath,
        op: Op,
        v: &Value,
    ) -> Result<String, CompileError> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Null => {
                return Err(CompileError::Invalid(format!(
                    "{p}: compare with null is not supported; use pr or not (... pr)"
                )))
            }
            other => {
                return Err(CompileError::Invalid(format!(
                    "{p} is a string; {other} is not"
                )))
            }
        };
        let like = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        };
        let lhs = if ci {
            format!("lower({expr})")
        } else {
            expr.to_string()
        };
        let wrap = |b: String| if ci { format!("lower({b})") } else { b };
        Ok(match op {
            Op::Eq => format!("{lhs} = {}", wrap(self.bind(Param::Text(s)))),
            Op::Ne => format!("{lhs} IS DISTINCT FROM {}", wrap(self.bind(Param::Text(s)))),
            Op::Co => format!(
                "{lhs} LIKE {}",
                wrap(self.bind(Param::Text(format!("%{}%", like(&s)))))
            ),
            Op::Sw => format!(
                "{lhs} LIKE {}",
                wrap(self.bind(Param::Text(format!("{}%", like(&s)))))
            ),
            Op::Ew => format!(
                "{lhs} LIKE {}",
                wrap(self.bind(Param::Text(format!("%{}", like(&s)))))
            ),
            Op::Gt => format!("{lhs} > {}", wrap(self.bind(Param::Text(s)))),
            Op::Ge => format!("{lhs} >= {}", wrap(self.bind(Param::Text(s)))),
            Op::Lt => format!("{lhs} < {}", wrap(self.bind(Param::Text(s)))),
            Op::Le => format!("{lhs} <= {}", wrap(self.bind(Param::Text(s)))),
        })
    }

    fn compare_bool(
        &mut self,
        expr: &str,
        p: &AttrPath,
        op: Op,
        v: &Value,
    ) -> Result<String, CompileError> {
        let b = match v {
            Value::Bool(b) => *b,
            Value::String(s) if s.eq_ignore_ascii_case("true") => true,
            Value::String(s) if s.eq_ignore_ascii_case("false") => false,
            other => {
                return Err(CompileError::Invalid(format!(
                    "{p} is a boolean; {other} is not"
                )))
            }
        };
        match op {
            Op::Eq => Ok(format!("{expr} = {}", self.bind(Param::Bool(b)))),
            Op::Ne => Ok(format!(
                "{expr} IS DISTINCT FROM {}",
                self.bind(Param::Bool(b))
            )),
            _ => Err(CompileError::Invalid(format!(
                "{p} is a boolean: only eq, ne and pr apply"
            ))),
        }
    }

    fn compare_time(
        &mut self,
        expr: &str,
        p: &AttrPath,
        op: Op,
        v: &Value,
    ) -> Result<String, CompileError> {
        let t = v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .ok_or_else(|| {
                CompileError::Invalid(format!("{p} is a dateTime; {v} is not (RFC 3339)"))
            })?
            .with_timezone(&Utc);
        let sql_op = match op {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            _ => {
                return Err(CompileError::Invalid(format!(
                    "{p} is a dateTime: co, sw and ew do not apply"
                )))
            }
        };
        Ok(format!("{expr} {sql_op} {}", self.bind(Param::Time(t))))
    }
}

fn exists(from: &str, cond: &str) -> String {
    let glue = if from.contains(" WHERE ") {
        "AND"
    } else {
        "WHERE"
    };
    format!("EXISTS (SELECT 1 {from} {glue} {cond})")
}

/// Compiles a filter for a resource type; parameters are numbered from `$first`.
pub fn compile(rt: &ResourceType, f: &Filter, first: usize) -> Result<Compiled, CompileError> {
    compile_with(rt, f, first, false)
}

/// Like [`compile`], but attributes the resource type does not have compare false.
pub fn compile_lenient(
    rt: &ResourceType,
    f: &Filter,
    first: usize,
) -> Result<Compiled, CompileError> {
    compile_with(rt, f, first, true)
}

fn compile_with(
    rt: &ResourceType,
    f: &Filter,
    first: usize,
    lenient: bool,
) -> Result<Compiled, CompileError> {
    let mut c = Compiler {
        first,
        params: Vec::new(),
        lenient,
    };
    let sql = c.filter(f, &|p| resolve(rt, p), false)?;
    Ok(Compiled {
        sql,
        params: c.params,
    })
}

/// The ORDER BY expression for `sortBy` (multi-valued attributes sort by their primary value)
/// and its SQL type, so a cursor can carry a value of it as text and compare it again.
pub fn sort_expr(
    rt: &ResourceType,
    path: &AttrPath,
) -> Result<(String, &'static str), CompileError> {
    match resolve(rt, path)? {
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
        _ => Err(CompileError::Invalid(format!("cannot sort by {path}"))),
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
    use super::super::filter::parse;
    use super::super::schema::{GROUP_TYPE, USER_TYPE};
    use super::*;

    fn users(f: &str) -> Result<Compiled, CompileError> {
        compile(&USER_TYPE, &parse(f).expect("a valid filter"), 2)
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
            Err(CompileError::UnknownAttribute(_))
        ));
        assert!(matches!(
            users("password eq \"x\""),
            Err(CompileError::NotFilterable(_))
        ));
        assert!(matches!(
            users("active gt true"),
            Err(CompileError::Invalid(_))
        ));
        assert!(matches!(
            compile(&GROUP_TYPE, &parse("userName eq \"x\"").unwrap(), 2),
            Err(CompileError::UnknownAttribute(_))
        ));
        assert!(compile(&GROUP_TYPE, &parse("members[value eq \"x\"]").unwrap(), 2).is_ok());
    }

    /// Every attribute of every schema either compiles with eq, co, pr or gives a clean error.
    #[test]
    fn every_attribute_compiles_or_errors() {
        for rt in schema::resource_types() {
            for p in all_paths(rt) {
                for f in [
                    format!("{p} eq \"x\""),
                    format!("{p} pr"),
                    format!("{p} co \"x\""),
                ] {
                    let _ = compile(rt, &parse(&f).unwrap(), 1);
                }
                if let Ok(path) = AttrPath::parse(&p) {
                    let _ = sort_expr(rt, &path);
                }
            }
        }
    }
}
