//! A filter resolved once against a resource type's schema. Every name in a [`Resolved`]
//! tree is an attribute the schema has and may be filtered on; every value already has its
//! attribute's type (text, boolean, dateTime) and every operator applies to that type. So
//! what is a valid filter is decided here, in one place, and the walkers (the SQL compiler,
//! PATCH's value matching) only translate.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::parse::{AttrPath, Filter, Op};
use crate::scim::schema::{Attr, ResourceType, Returned, Type, SCHEMAS_ATTR};

/// Why a filter (or a sortBy) does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown attribute {0}")]
    UnknownAttribute(String),
    #[error("cannot filter or sort on {0}")]
    NotFilterable(String),
    /// A value of the wrong type, an operator that does not apply, a path that is not there.
    #[error("{0}")]
    Invalid(String),
}

/// A boolean tree of conditions `L`.
#[derive(Debug, Clone)]
pub enum Expr<L> {
    Or(Box<Expr<L>>, Box<Expr<L>>),
    And(Box<Expr<L>>, Box<Expr<L>>),
    Not(Box<Expr<L>>),
    Leaf(L),
    /// An attribute the resource type does not have, in a search across resource types
    /// (the root `/.search`): it matches nothing there instead of failing the search.
    Never,
}

/// A value from a filter, of the type of the attribute it is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Text(String),
    Bool(bool),
    Time(DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Present,
    Compare(Op, Operand),
}

/// A top-level attribute (in the core schema or an extension) and maybe one sub-attribute.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub attr: &'static Attr,
    /// The extension's URN, for an attribute of an extension.
    pub extension: Option<&'static str>,
    pub sub: Option<&'static Attr>,
}

impl Field {
    /// The attribute a test applies to: the sub-attribute if there is one.
    pub fn target(&self) -> &'static Attr {
        self.sub.unwrap_or(self.attr)
    }
}

/// A condition on a resource.
#[derive(Debug, Clone)]
pub enum Cond {
    /// `userName eq "x"`, `name.givenName pr`; on a multi-valued attribute
    /// (`emails.value co "@x"`) some value meets it.
    Attr(Field, Test),
    /// `emails[type eq "work" and primary eq true]`: one value meets all of the inner filter
    /// (for a single-valued complex attribute, `name[givenName eq "x"]`, its one value).
    Values(Field, Expr<SubCond>),
}

/// A condition on one value of a complex attribute, inside `attr[...]`.
#[derive(Debug, Clone)]
pub struct SubCond {
    pub sub: &'static Attr,
    pub test: Test,
}

pub type Resolved = Expr<Cond>;

impl<L> Expr<L> {
    fn build(
        f: &Filter,
        leaf: &dyn Fn(&Filter) -> Result<Expr<L>, ResolveError>,
    ) -> Result<Expr<L>, ResolveError> {
        let both = |a, b| -> Result<_, ResolveError> {
            Ok((
                Box::new(Self::build(a, leaf)?),
                Box::new(Self::build(b, leaf)?),
            ))
        };
        Ok(match f {
            Filter::Or(a, b) => {
                let (a, b) = both(a, b)?;
                Expr::Or(a, b)
            }
            Filter::And(a, b) => {
                let (a, b) = both(a, b)?;
                Expr::And(a, b)
            }
            Filter::Not(a) => Expr::Not(Box::new(Self::build(a, leaf)?)),
            leaf_filter => leaf(leaf_filter)?,
        })
    }
}

/// Resolves a filter against a resource type. With `lenient`, a top-level attribute the
/// type does not have becomes [`Expr::Never`]; anything else wrong is still an error.
pub fn resolve(rt: &ResourceType, f: &Filter, lenient: bool) -> Result<Resolved, ResolveError> {
    Expr::build(f, &|leaf| {
        let path = match leaf {
            Filter::Present(p) | Filter::Compare(p, ..) | Filter::ValuePath(p, _) => p,
            _ => unreachable!("build hands over leaves only"),
        };
        if lenient && rt.resolve(&path.full_attr()).is_none() {
            return Ok(Expr::Never);
        }
        Ok(Expr::Leaf(cond(rt, leaf)?))
    })
}

fn cond(rt: &ResourceType, f: &Filter) -> Result<Cond, ResolveError> {
    match f {
        Filter::Present(p) => Ok(Cond::Attr(field(rt, p)?, Test::Present)),
        Filter::Compare(p, op, v) => {
            let mut field = field(rt, p)?;
            if field.sub.is_none() && field.attr.ty == Type::Complex {
                // `emails eq "a@x.org"`, `manager eq "<id>"`: the value sub-attribute.
                let value = field.attr.sub_attr("value").ok_or_else(|| {
                    ResolveError::Invalid(format!("{p} is complex: name a sub-attribute"))
                })?;
                field.sub = Some(value);
            }
            let operand = operand(field.target(), p, *op, v)?;
            Ok(Cond::Attr(field, Test::Compare(*op, operand)))
        }
        Filter::ValuePath(p, inner) => {
            let field = field(rt, p)?;
            if field.sub.is_some() || field.attr.ty != Type::Complex {
                return Err(ResolveError::Invalid(format!(
                    "{p} is not a complex attribute"
                )));
            }
            Ok(Cond::Values(field, values(field.attr, inner)?))
        }
        _ => unreachable!("and, or and not are not leaves"),
    }
}

/// Resolves an attribute path (`userName`, `name.givenName`, `urn:...:manager.value`).
pub fn field(rt: &ResourceType, p: &AttrPath) -> Result<Field, ResolveError> {
    let unknown = || ResolveError::UnknownAttribute(p.to_string());
    let r = rt.resolve(&p.full_attr()).ok_or_else(unknown)?;
    let attr = r.attr;
    // Filtering on a secret would make the list an oracle for it.
    if attr.returned == Returned::Never || std::ptr::eq(attr, &SCHEMAS_ATTR) {
        return Err(ResolveError::NotFilterable(p.to_string()));
    }
    let sub = match &p.sub {
        None => None,
        Some(_) if attr.sub.is_empty() => {
            return Err(ResolveError::Invalid(format!(
                "{} has no sub-attributes",
                attr.name
            )))
        }
        Some(s) => Some(attr.sub_attr(s).ok_or_else(unknown)?),
    };
    let is_meta = attr.name == "meta" && r.extension.is_none();
    let stored_meta = |s: &Attr| matches!(s.name, "created" | "lastModified" | "resourceType");
    if is_meta && !sub.is_some_and(stored_meta) {
        return Err(ResolveError::NotFilterable(p.to_string()));
    }
    Ok(Field {
        attr,
        extension: r.extension,
        sub,
    })
}

/// Resolves a value filter (the inside of `attr[...]`) against `attr`'s sub-attributes.
pub fn values(attr: &'static Attr, f: &Filter) -> Result<Expr<SubCond>, ResolveError> {
    Expr::build(f, &|leaf| {
        let (p, compare) = match leaf {
            Filter::Present(p) => (p, None),
            Filter::Compare(p, op, v) => (p, Some((*op, v))),
            Filter::ValuePath(..) => {
                return Err(ResolveError::Invalid("value filters cannot nest".into()))
            }
            _ => unreachable!("build hands over leaves only"),
        };
        let sub = attr
            .sub_attr(&p.attr)
            .filter(|_| p.urn.is_none() && p.sub.is_none())
            .ok_or_else(|| ResolveError::UnknownAttribute(format!("{}.{p}", attr.name)))?;
        let test = match compare {
            None => Test::Present,
            Some((op, v)) => Test::Compare(op, operand(sub, p, op, v)?),
        };
        Ok(Expr::Leaf(SubCond { sub, test }))
    })
}

/// The filter's value as a value of `attr`'s type, if `op` applies to that type.
fn operand(attr: &Attr, p: &AttrPath, op: Op, v: &Value) -> Result<Operand, ResolveError> {
    let invalid = |m: String| Err(ResolveError::Invalid(m));
    match attr.ty {
        Type::String | Type::Reference => match v {
            Value::String(s) => Ok(Operand::Text(s.clone())),
            Value::Number(n) => Ok(Operand::Text(n.to_string())),
            Value::Null => invalid(format!(
                "{p}: compare with null is not supported; use pr or not (... pr)"
            )),
            other => invalid(format!("{p} is a string; {other} is not")),
        },
        Type::Boolean => {
            let b = match v {
                Value::Bool(b) => *b,
                Value::String(s) if s.eq_ignore_ascii_case("true") => true,
                Value::String(s) if s.eq_ignore_ascii_case("false") => false,
                other => return invalid(format!("{p} is a boolean; {other} is not")),
            };
            match op {
                Op::Eq | Op::Ne => Ok(Operand::Bool(b)),
                _ => invalid(format!("{p} is a boolean: only eq, ne and pr apply")),
            }
        }
        Type::DateTime => {
            if matches!(op, Op::Co | Op::Sw | Op::Ew) {
                return invalid(format!("{p} is a dateTime: co, sw and ew do not apply"));
            }
            match v
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            {
                Some(t) => Ok(Operand::Time(t.with_timezone(&Utc))),
                None => invalid(format!("{p} is a dateTime; {v} is not (RFC 3339)")),
            }
        }
        Type::Complex => invalid(format!("{p} is complex: name a sub-attribute")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;
    use crate::scim::schema::{GROUP_TYPE, USER_TYPE};

    fn users(f: &str) -> Result<Resolved, ResolveError> {
        resolve(&USER_TYPE, &parse(f).expect("a valid filter"), false)
    }

    #[test]
    fn values_take_the_attributes_type() {
        let Ok(Expr::Leaf(Cond::Attr(f, Test::Compare(Op::Eq, Operand::Bool(false))))) =
            users(r#"active eq "False""#)
        else {
            panic!("a boolean operand")
        };
        assert_eq!(f.attr.name, "active");
        let Ok(Expr::Leaf(Cond::Attr(f, Test::Compare(_, Operand::Text(v))))) =
            users("emails eq 42")
        else {
            panic!("a text operand on emails.value")
        };
        assert_eq!((f.target().name, v.as_str()), ("value", "42"));
        assert!(matches!(
            users(r#"meta.created gt "2011-05-13T04:42:34Z""#),
            Ok(Expr::Leaf(Cond::Attr(
                _,
                Test::Compare(Op::Gt, Operand::Time(_))
            )))
        ));
        let Ok(Expr::Leaf(Cond::Values(f, Expr::And(..)))) =
            users(r#"emails[type eq "work" and primary eq true]"#)
        else {
            panic!("a value filter")
        };
        assert_eq!(f.attr.name, "emails");
    }

    #[test]
    fn what_does_not_fit_the_schema_is_an_error() {
        for (bad, want) in [
            ("nosuch eq \"x\"", "unknown"),
            ("emails.nosuch eq \"x\"", "unknown"),
            ("emails[nosuch eq \"x\"]", "unknown"),
            ("urn:x:y:z eq \"1\"", "unknown"),
            ("password eq \"x\"", "not filterable"),
            ("schemas eq \"x\"", "not filterable"),
            ("meta.location eq \"x\"", "not filterable"),
            ("meta pr", "not filterable"),
            ("active gt true", "invalid"),
            ("active eq \"yes\"", "invalid"),
            ("meta.created co \"2011\"", "invalid"),
            ("meta.created eq \"yesterday\"", "invalid"),
            ("userName eq true", "invalid"),
            ("userName eq null", "invalid"),
            ("userName.x eq \"1\"", "invalid"),
            ("name eq \"x\"", "invalid"),
            ("userName[value eq \"x\"]", "invalid"),
            ("emails[primary co \"t\"]", "invalid"),
        ] {
            let got = match users(bad) {
                Err(ResolveError::UnknownAttribute(_)) => "unknown",
                Err(ResolveError::NotFilterable(_)) => "not filterable",
                Err(ResolveError::Invalid(_)) => "invalid",
                Ok(_) => "resolved",
            };
            assert_eq!(got, want, "{bad}");
        }
    }

    #[test]
    fn lenient_drops_only_names_the_type_does_not_have() {
        let f = parse(r#"userName eq "x" or displayName eq "y""#).unwrap();
        let r = resolve(&GROUP_TYPE, &f, true).unwrap();
        assert!(matches!(r, Expr::Or(a, _) if matches!(*a, Expr::Never)));
        assert!(resolve(&GROUP_TYPE, &f, false).is_err());
        let bad_sub = parse(r#"members[nosuch eq "x"]"#).unwrap();
        assert!(resolve(&GROUP_TYPE, &bad_sub, true).is_err());
    }
}
