//! Resources in and out: request bodies read case-insensitively into canonical documents
//! (types checked, readOnly values dropped), and `attributes` / `excludedAttributes`.

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::error::ScimError;
use super::filter::AttrPath;
use super::schema::{self, Attr, Kind, Mutability, ResourceType, Type};
use crate::domain::Doc;

/// A request body read against a resource type.
#[derive(Debug, Default)]
pub struct Input {
    pub doc: Doc,
    /// The write-only password, if the body set one.
    pub password: Option<SecretString>,
    /// The `id` the body carried (ignored, except that PATCH checks it names the resource).
    pub id: Option<String>,
}

/// Reads a whole resource (POST, PUT, a no-path PATCH value).
pub fn read(rt: &ResourceType, body: &Value) -> Result<Input, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::syntax("the body must be a JSON object"))?;
    let mut input = Input::default();
    for (key, value) in obj {
        if key.eq_ignore_ascii_case("schemas") {
            if !value.is_array() || !value.as_array().unwrap().iter().all(Value::is_string) {
                return Err(ScimError::syntax("schemas must be an array of URIs"));
            }
            continue;
        }
        if schema::is_urn(key) {
            if let Some((urn, attrs)) = rt.extension(key) {
                if value.is_null() {
                    continue;
                }
                let ext = value.as_object().ok_or_else(|| {
                    ScimError::syntax(format!("{urn} must be an object of attributes"))
                })?;
                let mut out = Map::new();
                for (k, v) in ext {
                    let attr = attrs
                        .iter()
                        .find(|a| a.name.eq_ignore_ascii_case(k))
                        .ok_or_else(|| ScimError::syntax(format!("unknown attribute {urn}:{k}")))?;
                    if !attr.writable() {
                        continue;
                    }
                    if let Some(v) = coerce(attr, v, attr.name)? {
                        out.insert(attr.name.to_string(), v);
                    }
                }
                if !out.is_empty() {
                    input.doc.insert(urn.to_string(), Value::Object(out));
                }
                continue;
            }
            if key.eq_ignore_ascii_case(rt.schema) {
                // The core schema as a wrapper object: read its attributes as top-level ones.
                let inner = read(rt, value)?;
                input.doc.extend(inner.doc);
                input.password = inner.password.or(input.password);
                continue;
            }
            if value.is_null() || value.as_object().is_some_and(Map::is_empty) {
                continue; // an extension URI without data (Entra ID sends some)
            }
            return Err(ScimError::syntax(format!(
                "unknown schema extension {key}; this service supports {}",
                rt.extensions
                    .iter()
                    .map(|(u, _)| *u)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let attr = rt
            .attr(key)
            .ok_or_else(|| ScimError::syntax(format!("unknown attribute {key:?}")))?;
        match attr.name {
            "id" => input.id = value.as_str().map(str::to_string),
            "password" => match value {
                Value::String(p) => input.password = Some(p.as_str().into()),
                Value::Null => {}
                _ => return Err(ScimError::value("password must be a string")),
            },
            _ if !attr.writable() => {} // meta, groups: readOnly, ignored
            name => {
                if let Some(v) = coerce(attr, value, name)? {
                    input.doc.insert(name.to_string(), v);
                }
            }
        }
    }
    Ok(input)
}

fn truthy(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Checks and canonicalizes one attribute's value; None means unassigned (null, [], {}).
pub fn coerce(attr: &'static Attr, v: &Value, label: &str) -> Result<Option<Value>, ScimError> {
    if v.is_null() {
        return Ok(None);
    }
    if attr.multi {
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        let mut out: Vec<Value> = Vec::new();
        for item in items {
            let Some(c) = coerce_one(attr, item, label)? else {
                continue;
            };
            let dup = if attr.name == "members" {
                out.iter().any(|o| o.get("value") == c.get("value"))
            } else {
                out.contains(&c)
            };
            if !dup {
                out.push(c);
            }
        }
        let primaries = out
            .iter()
            .filter(|o| o.get("primary") == Some(&Value::Bool(true)))
            .count();
        if primaries > 1 {
            return Err(ScimError::value(format!(
                "{label}: at most one value may be primary"
            )));
        }
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    coerce_one(attr, v, label)
}

fn coerce_one(attr: &'static Attr, v: &Value, label: &str) -> Result<Option<Value>, ScimError> {
    let wrong = |what: &str| ScimError::value(format!("{label} must be {what}; got {v}"));
    Ok(Some(match attr.ty {
        Type::String | Type::Reference | Type::DateTime => match v {
            Value::String(s) => Value::String(s.clone()),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Null => return Ok(None),
            _ => return Err(wrong("a string")),
        },
        Type::Boolean => match v {
            Value::Bool(b) => Value::Bool(*b),
            Value::String(s) => Value::Bool(truthy(s).ok_or_else(|| wrong("a boolean"))?),
            Value::Null => return Ok(None),
            _ => return Err(wrong("a boolean")),
        },
        Type::Complex => {
            let obj = match v {
                Value::Object(o) => o.clone(),
                // A bare value for a complex attribute with a `value` (Entra's manager "271").
                Value::String(_) | Value::Number(_) if attr.has_value_sub() => {
                    let mut o = Map::new();
                    o.insert("value".into(), v.clone());
                    o
                }
                Value::Null => return Ok(None),
                _ => return Err(wrong("an object")),
            };
            let mut out = Map::new();
            for (k, sv) in &obj {
                let sub = attr
                    .sub_attr(k)
                    .ok_or_else(|| ScimError::syntax(format!("unknown attribute {label}.{k}")))?;
                if sub.mutability == Mutability::ReadOnly
                    || (attr.name == "members" && sub.name == "$ref")
                {
                    continue;
                }
                if let Some(c) = coerce_one(sub, sv, &format!("{label}.{}", sub.name))? {
                    out.insert(sub.name.to_string(), c);
                }
            }
            if attr.name == "members" {
                let value = out.get("value").and_then(Value::as_str).unwrap_or_default();
                if value.is_empty() {
                    return Err(ScimError::value("every member needs a value (its id)"));
                }
                if let Some(t) = out.get("type").and_then(Value::as_str) {
                    let kind = crate::domain::group::Kind::parse(t).ok_or_else(|| {
                        ScimError::value(format!("member type must be User or Group, not {t:?}"))
                    })?;
                    out.insert("type".into(), kind.as_str().into());
                }
            }
            if out.is_empty() {
                return Ok(None);
            }
            Value::Object(out)
        }
    }))
}

/// `attributes` / `excludedAttributes`, resolved to canonical key paths.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub attributes: Vec<Vec<String>>,
    pub excluded: Vec<Vec<String>>,
}

/// A name in `attributes`, resolved to its canonical key path (None when unknown).
pub fn canonical_path(rt: &ResourceType, s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    if let Some((urn, _)) = rt.extension(s) {
        return Some(vec![urn.to_string()]);
    }
    let p = AttrPath::parse(s).ok()?;
    let r = rt.resolve(&p.full_attr())?;
    let mut out: Vec<String> = r.extension.map(str::to_string).into_iter().collect();
    out.push(r.attr.name.to_string());
    if let Some(sub) = &p.sub {
        out.push(r.attr.sub_attr(sub)?.name.to_string());
    }
    Some(out)
}

impl Selection {
    pub fn parse(rt: &ResourceType, attributes: Option<&str>, excluded: Option<&str>) -> Selection {
        let list = |s: Option<&str>| -> Vec<Vec<String>> {
            s.unwrap_or_default()
                .split(',')
                .filter(|x| !x.trim().is_empty())
                .filter_map(|x| canonical_path(rt, x))
                .collect()
        };
        Selection {
            attributes: list(attributes),
            excluded: list(excluded),
        }
    }

    /// The selection a list response uses: group members, which can run to many thousands
    /// per group, only when `attributes` names them.
    pub fn for_list(mut self, rt: &ResourceType) -> Selection {
        let members = ["members".to_string()];
        if rt.kind == Kind::Group
            && self.attributes.is_empty()
            && !self.excluded.contains(&members.to_vec())
        {
            self.excluded.push(members.to_vec());
        }
        self
    }

    /// Whether `attributes` names this exact path (for attributes returned on request).
    pub fn names(&self, path: &[&str]) -> bool {
        self.attributes
            .iter()
            .any(|p| p.len() == path.len() && p.iter().zip(path).all(|(a, b)| a == b))
    }

    /// Whether the response will hold any of top-level `key` (to skip loading it).
    pub fn wants(&self, key: &str) -> bool {
        if self.excluded.iter().any(|p| p.len() == 1 && p[0] == key) {
            return false;
        }
        self.attributes.is_empty() || self.attributes.iter().any(|p| p[0] == key)
    }

    pub fn apply(&self, resource: Value) -> Value {
        let mut v = resource;
        if !self.attributes.is_empty() {
            let paths: Vec<&[String]> = self.attributes.iter().map(Vec::as_slice).collect();
            let mut out = project(&v, &paths);
            if let (Value::Object(out), Value::Object(src)) = (&mut out, &v) {
                for k in ["schemas", "id"] {
                    if let Some(x) = src.get(k) {
                        out.insert(k.into(), x.clone());
                    }
                }
            }
            v = out;
        }
        for p in &self.excluded {
            if p.len() == 1 && (p[0] == "id" || p[0] == "schemas") {
                continue; // returned: always
            }
            remove_path(&mut v, p);
        }
        v
    }
}

fn project(src: &Value, paths: &[&[String]]) -> Value {
    match src {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| project(i, paths))
                .filter(|i| i.as_object().is_none_or(|o| !o.is_empty()))
                .collect(),
        ),
        Value::Object(obj) => {
            let mut out = Map::new();
            for (k, v) in obj {
                let mine: Vec<&[String]> = paths
                    .iter()
                    .filter(|p| p.first() == Some(k))
                    .map(|p| &p[1..])
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                if mine.iter().any(|p| p.is_empty()) {
                    out.insert(k.clone(), v.clone());
                } else {
                    let sub = project(v, &mine);
                    let empty = match &sub {
                        Value::Object(o) => o.is_empty(),
                        Value::Array(a) => a.is_empty(),
                        _ => false,
                    };
                    if !empty {
                        out.insert(k.clone(), sub);
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn remove_path(v: &mut Value, path: &[String]) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| remove_path(i, path)),
        Value::Object(obj) => {
            if path.len() == 1 {
                obj.remove(&path[0]);
            } else if let Some(child) = obj.get_mut(&path[0]) {
                remove_path(child, &path[1..]);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::{ENTERPRISE, GROUP_TYPE, USER_TYPE};
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    #[test]
    fn bodies_are_read_case_insensitively_and_read_only_values_dropped() {
        let input = read(
            &USER_TYPE,
            &json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:x:unknown"],
                "UserName": "Ann", "ACTIVE": "False", "id": "x", "meta": {"version": "1"},
                "groups": [], "password": "s3cret",
                "Name": {"GivenName": "Ann", "familyname": null},
                "emails": [{"Value": "a@x", "Primary": "True", "type": "work"}],
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user": {
                    "Manager": "271", "employeeNumber": 7
                },
                "urn:x:unknown": {}
            }),
        )
        .unwrap();
        assert_eq!(
            Value::Object(input.doc),
            json!({
                "userName": "Ann", "active": false, "name": {"givenName": "Ann"},
                "emails": [{"value": "a@x", "primary": true, "type": "work"}],
                ENTERPRISE: {"manager": {"value": "271"}, "employeeNumber": "7"}
            })
        );
        assert_eq!(
            input.password.as_ref().map(|p| p.expose_secret()),
            Some("s3cret")
        );
        assert_eq!(input.id.as_deref(), Some("x"));
    }

    #[test]
    fn bad_bodies_are_errors() {
        for bad in [
            json!([]),
            json!({"userName": 5.5, "active": "maybe"}),
            json!({"nosuch": 1}),
            json!({"name": "x"}),
            json!({"emails": [{"value": "a", "primary": true}, {"value": "b", "primary": true}]}),
            json!({"urn:x:unknown": {"a": 1}}),
            json!({"password": 1}),
        ] {
            assert!(read(&USER_TYPE, &bad).is_err(), "{bad}");
        }
        assert!(read(&GROUP_TYPE, &json!({"members": [{"display": "x"}]})).is_err());
        let g = read(
            &GROUP_TYPE,
            &json!({"displayName": "g", "members": [
                {"value": "1", "$ref": null, "type": "user"}, {"value": "1"}]}),
        )
        .unwrap();
        assert_eq!(g.doc["members"], json!([{"value": "1", "type": "User"}]));
    }

    #[test]
    fn attributes_and_excluded_attributes() {
        let r = json!({
            "schemas": ["s"], "id": "1", "userName": "a", "name": {"givenName": "g", "familyName": "f"},
            "emails": [{"value": "a@x", "type": "work"}], "meta": {"version": "W/\"1\""}
        });
        let s = Selection::parse(
            &USER_TYPE,
            Some("USERNAME,name.givenName,emails.value"),
            None,
        );
        assert_eq!(
            s.apply(r.clone()),
            json!({"schemas": ["s"], "id": "1", "userName": "a", "name": {"givenName": "g"},
                   "emails": [{"value": "a@x"}]})
        );
        let s = Selection::parse(&USER_TYPE, None, Some("emails,name.familyName,id,meta"));
        assert_eq!(
            s.apply(r),
            json!({"schemas": ["s"], "id": "1", "userName": "a", "name": {"givenName": "g"}})
        );
        assert!(!Selection::parse(&GROUP_TYPE, None, Some("members")).wants("members"));
    }
}
