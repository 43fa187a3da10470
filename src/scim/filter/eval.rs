//! A resolved value filter evaluated on one value of a complex attribute, as PATCH needs
//! for `emails[type eq "work"]`. The rules are the SQL compiler's: case follows the
//! sub-attribute's caseExact, a missing value is not equal to anything (so `ne` holds), and
//! values compare in the sub-attribute's type.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::parse::Op;
use super::typed::{Expr, Operand, SubCond, Test};
use crate::scim::schema::Attr;

/// Whether `item` (one value of a complex attribute) meets the value filter.
pub fn matches(item: &Value, e: &Expr<SubCond>) -> bool {
    match e {
        Expr::Or(a, b) => matches(item, a) || matches(item, b),
        Expr::And(a, b) => matches(item, a) && matches(item, b),
        Expr::Not(a) => !matches(item, a),
        Expr::Never => false,
        Expr::Leaf(SubCond { sub, test }) => {
            let have = item.get(sub.name).filter(|v| !v.is_null());
            match (test, have) {
                (Test::Present, have) => have.is_some(),
                (Test::Compare(op, _), None) => *op == Op::Ne,
                (Test::Compare(op, want), Some(have)) => compare(sub, have, *op, want),
            }
        }
    }
}

fn compare(sub: &Attr, have: &Value, op: Op, want: &Operand) -> bool {
    match want {
        Operand::Bool(w) => {
            let h = match have {
                Value::Bool(b) => Some(*b),
                Value::String(s) => s.to_ascii_lowercase().parse().ok(),
                _ => None,
            };
            match (op, h) {
                (Op::Eq, Some(h)) => h == *w,
                (Op::Ne, h) => h != Some(*w),
                _ => false,
            }
        }
        Operand::Time(w) => {
            let h = have
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
            match h {
                Some(h) => ordered(op, h.with_timezone(&Utc).cmp(w)),
                None => op == Op::Ne,
            }
        }
        Operand::Text(w) => {
            let h = match have {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let (h, w) = if sub.case_exact {
                (h, w.clone())
            } else {
                (h.to_lowercase(), w.to_lowercase())
            };
            match op {
                Op::Co => h.contains(&w),
                Op::Sw => h.starts_with(&w),
                Op::Ew => h.ends_with(&w),
                _ => ordered(op, h.cmp(&w)),
            }
        }
    }
}

/// An ordering operator applied to a comparison's result.
fn ordered(op: Op, o: Ordering) -> bool {
    match op {
        Op::Eq => o == Ordering::Equal,
        Op::Ne => o != Ordering::Equal,
        Op::Gt => o == Ordering::Greater,
        Op::Ge => o != Ordering::Less,
        Op::Lt => o == Ordering::Less,
        Op::Le => o != Ordering::Greater,
        Op::Co | Op::Sw | Op::Ew => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::parse::parse;
    use super::super::typed::values;
    use super::*;
    use crate::scim::schema::USER_TYPE;

    fn check(filter: &str, item: Value) -> bool {
        let emails = USER_TYPE.attr("emails").unwrap();
        matches(&item, &values(emails, &parse(filter).unwrap()).unwrap())
    }

    #[test]
    fn matching_follows_the_schema() {
        let work = json!({"value": "Ann@X.org", "type": "work", "primary": true});
        assert!(check(r#"type eq "WORK""#, work.clone()));
        assert!(check(
            r#"value ew "@x.ORG" and primary eq "true""#,
            work.clone()
        ));
        assert!(check(r#"not (type eq "home")"#, work.clone()));
        assert!(check("display ne \"x\"", work.clone()));
        assert!(!check("display pr", work.clone()));
        // A value without `primary` is not primary; it used to be a type error.
        assert!(!check("primary eq true", json!({"value": "b@x.org"})));
        assert!(check("primary ne true", json!({"value": "b@x.org"})));
        assert!(check(r#"type eq "home" or value sw "ann""#, work));
    }
}
