//! The operations on the attribute a PATCH path names: a whole attribute, a sub-attribute
//! of every value, or the values a filter selects (with Entra ID's create-on-no-match).
//! Member lists are hashed by `value`, so large groups stay linear.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::error::ScimError;
use super::filter::{self, Expr, Op, Operand, SubCond, Test};
use super::resource::coerce;
use super::schema::{Attr, Type};

/// What a PATCH operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Add,
    Replace,
    Remove,
}

fn demote_primaries(items: &mut [Value]) {
    for i in items {
        if let Some(o) = i.as_object_mut() {
            if o.get("primary") == Some(&Value::Bool(true)) {
                o.insert("primary".into(), Value::Bool(false));
            }
        }
    }
}

fn is_primary(v: &Value) -> bool {
    v.get("primary") == Some(&Value::Bool(true))
}

/// A value's `value` sub-attribute as a hash key (None when it has none).
fn value_key(v: &Value) -> Option<String> {
    match v.get("value")? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Values of an attribute with a `value` sub-attribute are identified by it.
fn same_value(attr: &Attr, a: &Value, b: &Value) -> bool {
    if attr.has_value_sub() {
        a.get("value").is_some() && a.get("value") == b.get("value")
    } else {
        a == b
    }
}

/// add / replace / remove on a whole attribute.
pub(super) fn whole(
    c: &mut Map<String, Value>,
    attr: &'static Attr,
    kind: Kind,
    value: &Value,
    label: &str,
) -> Result<(), ScimError> {
    let key = attr.name;
    match kind {
        Kind::Remove if attr.multi && !value.is_null() => remove_listed(c, key, value),
        Kind::Remove => {
            c.remove(key);
        }
        Kind::Add if attr.multi => add_values(c, attr, value, label)?,
        Kind::Add | Kind::Replace if attr.ty == Type::Complex && !attr.multi => {
            // Sub-attributes not named are left as they are (RFC 7644 §3.5.2.3).
            match coerce(attr, value, label)? {
                Some(Value::Object(new)) => {
                    let e = c
                        .entry(key.to_string())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !e.is_object() {
                        *e = Value::Object(Map::new());
                    }
                    e.as_object_mut().unwrap().extend(new);
                }
                _ if kind == Kind::Replace => {
                    c.remove(key);
                }
                _ => {}
            }
        }
        Kind::Add | Kind::Replace => match coerce(attr, value, label)? {
            Some(v) => {
                c.insert(key.to_string(), v);
            }
            None => {
                c.remove(key);
            }
        },
    }
    Ok(())
}

/// Entra ID's `remove` with a value: only the listed values go (by `value` when they have
/// one, hashed, so removing thousands of members from a large group stays linear).
fn remove_listed(c: &mut Map<String, Value>, key: &str, value: &Value) {
    // Entra ID: remove only the listed values.
    let listed: Vec<Value> = match value {
        Value::Array(a) => a.clone(),
        v => vec![v.clone()],
    };
    // Hashed, so removing thousands of members from a large group stays linear.
    let by_value: HashSet<String> = listed.iter().filter_map(value_key).collect();
    let whole_values: Vec<&Value> = listed.iter().filter(|l| value_key(l).is_none()).collect();
    if let Some(Value::Array(items)) = c.get_mut(key) {
        items.retain(|i| {
            let listed_by_value = value_key(i).is_some_and(|k| by_value.contains(&k));
            !listed_by_value && !whole_values.contains(&i)
        });
        if items.is_empty() {
            c.remove(key);
        }
    }
}

/// `add` to a multi-valued attribute: new values are appended, known ones updated (members
/// are found through a hash of their values, so adding a thousand to a group of 100k is
/// linear).
fn add_values(
    c: &mut Map<String, Value>,
    attr: &'static Attr,
    value: &Value,
    label: &str,
) -> Result<(), ScimError> {
    let key = attr.name;
    let Some(Value::Array(new)) = coerce(attr, value, label)? else {
        return Ok(());
    };
    let items = c
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !items.is_array() {
        *items = Value::Array(Vec::new());
    }
    let items = items.as_array_mut().unwrap();
    if new.iter().any(is_primary) {
        demote_primaries(items);
    }
    // Values identified by `value` are found through a hash of them, so adding a
    // thousand members to a group of 100k is linear, not quadratic.
    let mut at: HashMap<String, usize> = HashMap::new();
    if attr.has_value_sub() {
        for (i, item) in items.iter().enumerate() {
            if let Some(k) = value_key(item) {
                at.entry(k).or_insert(i);
            }
        }
    }
    for n in new {
        let found = match value_key(&n) {
            Some(k) if attr.has_value_sub() => at.get(&k).copied(),
            _ if attr.has_value_sub() => None,
            _ => items.iter().position(|i| same_value(attr, i, &n)),
        };
        match found {
            // Re-adding a member is a no-op; re-adding an email updates its fields.
            Some(_) if attr.name == "members" => {}
            Some(i) => {
                if let (Some(e), Value::Object(n)) = (items[i].as_object_mut(), n) {
                    e.extend(n);
                }
            }
            None => {
                if let Some(k) = value_key(&n).filter(|_| attr.has_value_sub()) {
                    at.insert(k, items.len());
                }
                items.push(n);
            }
        }
    }
    Ok(())
}

/// `name.givenName`, or `emails.value` without a filter (every value).
pub(super) fn sub_of_all(
    c: &mut Map<String, Value>,
    attr: &'static Attr,
    sub: &'static Attr,
    kind: Kind,
    value: &Value,
    label: &str,
) -> Result<(), ScimError> {
    let v = if kind == Kind::Remove {
        None
    } else {
        coerce(sub, value, label)?
    };
    let set = |o: &mut Map<String, Value>| match &v {
        Some(v) => {
            o.insert(sub.name.to_string(), v.clone());
        }
        None => {
            o.remove(sub.name);
        }
    };
    if attr.multi {
        match c.get_mut(attr.name) {
            Some(Value::Array(items)) if !items.is_empty() => {
                if sub.name == "primary" && v == Some(Value::Bool(true)) && items.len() > 1 {
                    return Err(ScimError::value(format!(
                        "{label}: only one value may be primary"
                    )));
                }
                items
                    .iter_mut()
                    .filter_map(Value::as_object_mut)
                    .for_each(set);
                items.retain(|i| i.as_object().is_some_and(|o| !o.is_empty()));
            }
            _ if kind == Kind::Remove => {}
            _ => {
                if let Some(v) = v {
                    let mut o = Map::new();
                    o.insert(sub.name.to_string(), v);
                    c.insert(attr.name.to_string(), Value::Array(vec![Value::Object(o)]));
                }
            }
        }
    } else {
        let e = c
            .entry(attr.name.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !e.is_object() {
            *e = Value::Object(Map::new());
        }
        set(e.as_object_mut().unwrap());
    }
    if c.get(attr.name).is_some_and(|v| match v {
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }) {
        c.remove(attr.name);
    }
    Ok(())
}

/// `emails[type eq "work"]` and `emails[type eq "work"].value`.
pub(super) fn filtered(
    c: &mut Map<String, Value>,
    attr: &'static Attr,
    f: &Expr<SubCond>,
    sub_after: Option<&'static Attr>,
    kind: Kind,
    value: &Value,
    label: &str,
) -> Result<(), ScimError> {
    // Taken out, not cloned: PATCH works on its own copy of the document, and an error
    // discards that copy.
    let mut items = match c.remove(attr.name) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let mut hits = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if filter::matches(item, f) {
            hits.push(i);
        }
    }
    match (kind, sub_after) {
        (Kind::Remove, None) => {
            let mut hit = vec![false; items.len()];
            for &i in &hits {
                hit[i] = true;
            }
            let mut i = 0;
            items.retain(|_| {
                let keep = !hit[i];
                i += 1;
                keep
            });
        }
        (Kind::Remove, Some(sub)) => {
            for &i in &hits {
                if let Some(o) = items[i].as_object_mut() {
                    o.remove(sub.name);
                }
            }
        }
        (_, Some(sub)) => set_sub_of_hits(&mut items, &hits, attr, f, sub, value, label)?,
        (_, None) => set_hits(&mut items, &hits, attr, kind, value, label)?,
    }
    items.retain(|i| i.as_object().is_some_and(|o| !o.is_empty()));
    if items.iter().filter(|i| is_primary(i)).count() > 1 {
        return Err(ScimError::value(format!(
            "{label}: only one value may be primary"
        )));
    }
    if items.is_empty() {
        c.remove(attr.name);
    } else {
        c.insert(attr.name.to_string(), Value::Array(items));
    }
    Ok(())
}

/// add / replace of a sub-attribute in the values a filter selected; none selected is
/// noTarget, except in Entra ID's shape, which creates the value.
fn set_sub_of_hits(
    items: &mut Vec<Value>,
    hits: &[usize],
    attr: &'static Attr,
    f: &Expr<SubCond>,
    sub: &'static Attr,
    value: &Value,
    label: &str,
) -> Result<(), ScimError> {
    let v = coerce(sub, value, label)?;
    if v == Some(Value::Bool(true)) && sub.name == "primary" {
        demote_primaries(items);
    }
    if hits.is_empty() {
        let mut o = entra_new_value(attr, f).ok_or_else(|| {
            ScimError::bad(
                "noTarget",
                format!("no value of {} matches the filter", attr.name),
            )
        })?;
        if let Some(v) = v.clone() {
            o.insert(sub.name.to_string(), v);
        }
        let new = coerce(attr, &Value::Object(o), label)?;
        if let Some(Value::Array(new)) = new {
            items.extend(new);
        }
    }
    for &i in hits {
        if let Some(o) = items[i].as_object_mut() {
            match &v {
                Some(v) => o.insert(sub.name.to_string(), v.clone()),
                None => o.remove(sub.name),
            };
        }
    }
    Ok(())
}

/// add / replace of whole values in the values a filter selected (their fields merged);
/// `add` with none selected appends, `replace` is noTarget.
fn set_hits(
    items: &mut Vec<Value>,
    hits: &[usize],
    attr: &'static Attr,
    kind: Kind,
    value: &Value,
    label: &str,
) -> Result<(), ScimError> {
    let Some(Value::Array(new)) = coerce(attr, value, label)? else {
        return Err(ScimError::value(format!("{label}: a value is required")));
    };
    if new.iter().any(is_primary) {
        demote_primaries(items);
    }
    if hits.is_empty() {
        if kind == Kind::Replace {
            return Err(ScimError::bad(
                "noTarget",
                format!("no value of {} matches the filter", attr.name),
            ));
        }
        items.extend(new);
    } else {
        let patch = new.into_iter().next().unwrap_or(Value::Null);
        for &i in hits {
            if let (Some(o), Some(p)) = (items[i].as_object_mut(), patch.as_object()) {
                o.extend(p.clone());
            }
        }
    }
    Ok(())
}

/// Entra ID's shape, `emails[type eq "work"].value`, where `work` is one of the
/// attribute's canonical types: replacing into a value that does not exist creates it.
/// Any other filter that matches nothing is `noTarget` (RFC 7644 §3.5.2).
fn entra_new_value(attr: &'static Attr, f: &Expr<SubCond>) -> Option<Map<String, Value>> {
    let Expr::Leaf(SubCond {
        sub,
        test: Test::Compare(Op::Eq, Operand::Text(ty)),
    }) = f
    else {
        return None;
    };
    let canonical = attr.sub_attr("type")?.canonical;
    if sub.name != "type" || !canonical.iter().any(|c| c.eq_ignore_ascii_case(ty)) {
        return None;
    }
    let mut m = Map::new();
    m.insert("type".into(), Value::String(ty.clone()));
    Some(m)
}
