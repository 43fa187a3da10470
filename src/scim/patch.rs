//! PATCH (RFC 7644 §3.5.2) on a canonical document, with the quirks real clients send
//! (README, SCIM): operations apply to a copy, so a failing operation changes nothing.

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::error::ScimError;
use super::filter::{self, PatchPath};
use super::patch_ops::{filtered, sub_of_all, whole, Kind};
use super::schema::{Attr, Mutability, ResourceType};
use crate::domain::Doc;

/// The outcome of a PATCH: the new document and a new password, if one was set.
#[derive(Debug)]
pub struct Patched {
    pub doc: Doc,
    pub password: Option<SecretString>,
}

/// Checks the PatchOp body and returns its operations (before any state is loaded, so a
/// malformed request costs nothing).
pub fn operations(body: &Value) -> Result<Vec<Value>, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::syntax("the body must be a PatchOp object"))?;
    let ops = get(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::syntax("a PatchOp needs an Operations array"))?;
    if ops.is_empty() {
        return Err(ScimError::syntax("Operations is empty"));
    }
    for op in ops {
        let o = op
            .as_object()
            .ok_or_else(|| ScimError::syntax("each operation must be an object"))?;
        let kind = get(o, "op").and_then(Value::as_str).unwrap_or_default();
        if !["add", "replace", "remove"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(kind))
        {
            return Err(ScimError::syntax(format!(
                "unknown operation {kind:?}: expected add, replace or remove"
            )));
        }
    }
    Ok(ops.clone())
}

use super::json::member as get;

/// The password a PATCH sets, found before applying it (hashing is slow; do it once).
pub fn password_in(ops: &[Value]) -> Option<SecretString> {
    let mut found = None;
    for op in ops {
        let Some(o) = op.as_object() else { continue };
        // An empty path means no path, as in `apply`.
        let path = get(o, "path")
            .and_then(Value::as_str)
            .filter(|p| !p.trim().is_empty());
        let value = get(o, "value");
        match (path, value) {
            (Some(p), Some(Value::String(s))) if is_password(p) => found = Some(s.as_str().into()),
            (None, Some(Value::Object(m))) => {
                for (k, v) in m {
                    if let (true, Value::String(s)) = (is_password(k), v) {
                        found = Some(s.as_str().into());
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// Whether a PATCH path names the password (`password`, any case, or URN-prefixed).
fn is_password(path: &str) -> bool {
    filter::parse_path(path).is_ok_and(|p| {
        p.filter.is_none()
            && p.attr.sub.is_none()
            && super::schema::USER_TYPE
                .resolve(&p.attr.full_attr())
                .is_some_and(|r| r.extension.is_none() && r.attr.name == "password")
    })
}

/// Applies the operations to `doc` (the resource `id`).
pub fn apply(
    rt: &'static ResourceType,
    doc: &Doc,
    id: &str,
    ops: &[Value],
) -> Result<Patched, ScimError> {
    let mut p = Patcher {
        rt,
        doc: doc.clone(),
        password: None,
        id,
    };
    for op in ops {
        let o = op.as_object().expect("checked by operations()");
        let kind = match get(o, "op").and_then(Value::as_str).unwrap_or_default() {
            k if k.eq_ignore_ascii_case("add") => Kind::Add,
            k if k.eq_ignore_ascii_case("replace") => Kind::Replace,
            _ => Kind::Remove,
        };
        let value = get(o, "value").cloned().unwrap_or(Value::Null);
        match get(o, "path") {
            None | Some(Value::Null) => p.no_path(kind, &value)?,
            Some(Value::String(path)) if path.trim().is_empty() => p.no_path(kind, &value)?,
            Some(Value::String(path)) => p.op(kind, path, &value)?,
            Some(_) => return Err(ScimError::path("path must be a string")),
        }
    }
    Ok(Patched {
        doc: p.doc,
        password: p.password,
    })
}

struct Patcher<'a> {
    rt: &'static ResourceType,
    doc: Doc,
    password: Option<SecretString>,
    id: &'a str,
}

impl Patcher<'_> {
    fn no_path(&mut self, kind: Kind, value: &Value) -> Result<(), ScimError> {
        if kind == Kind::Remove {
            return Err(ScimError::bad("noTarget", "remove needs a path"));
        }
        let map = value.as_object().ok_or_else(|| {
            ScimError::syntax("an operation without a path needs an object of attributes")
        })?;
        for (k, v) in map {
            if k.eq_ignore_ascii_case("schemas") || k.eq_ignore_ascii_case("meta") {
                continue;
            }
            if k.eq_ignore_ascii_case("id") {
                if v.as_str() == Some(self.id) {
                    continue; // Okta echoes the id of the resource it patches
                }
                return Err(ScimError::mutability("id cannot change"));
            }
            self.op(kind, k, v)?;
        }
        Ok(())
    }

    fn op(&mut self, kind: Kind, path: &str, value: &Value) -> Result<(), ScimError> {
        let rt = self.rt;
        if let Some((urn, _)) = rt.extension(path.trim()) {
            return self.whole_extension(kind, urn, value);
        }
        let pp = filter::parse_path(path).map_err(|e| ScimError::path(e.to_string()))?;
        let resolved = rt
            .resolve(&pp.attr.full_attr())
            .ok_or_else(|| ScimError::path(format!("unknown attribute in path {path:?}")))?;
        let attr = resolved.attr;
        if attr.name == "password" && resolved.extension.is_none() {
            return match (kind, value) {
                (Kind::Remove, _) => Err(ScimError::mutability("password cannot be removed")),
                (_, Value::String(s)) => {
                    self.password = Some(s.as_str().into());
                    Ok(())
                }
                _ => Err(ScimError::value("password must be a string")),
            };
        }
        if attr.mutability == Mutability::ReadOnly || attr.name == "schemas" {
            return Err(ScimError::mutability(format!("{} is read-only", attr.name)));
        }
        let sub = writable_sub(attr, pp.attr.sub.as_deref())?;
        let sub_after = writable_sub(attr, pp.sub_after_filter.as_deref())?;
        if pp.filter.is_some() && !attr.multi {
            return Err(ScimError::path(format!(
                "{} is single-valued: a value filter does not apply",
                attr.name
            )));
        }
        let container = container(&mut self.doc, resolved.extension);
        let label = pp.attr.to_string();
        match (&pp, sub, sub_after) {
            (PatchPath { filter: None, .. }, None, _) => {
                whole(container, attr, kind, value, &label)?
            }
            (PatchPath { filter: None, .. }, Some(sub), _) => {
                sub_of_all(container, attr, sub, kind, value, &label)?
            }
            (
                PatchPath {
                    filter: Some(f), ..
                },
                _,
                sub_after,
            ) => {
                let f = filter::values(attr, f).map_err(ScimError::patch_filter)?;
                filtered(container, attr, &f, sub_after, kind, value, &label)?
            }
        }
        if let Some(urn) = resolved.extension {
            if self
                .doc
                .get(urn)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                self.doc.remove(urn);
            }
        }
        Ok(())
    }
}

impl Patcher<'_> {
    /// A path naming a whole extension: each of its attributes, as its own operation.
    fn whole_extension(&mut self, kind: Kind, urn: &str, value: &Value) -> Result<(), ScimError> {
        if kind == Kind::Remove {
            self.doc.remove(urn);
            return Ok(());
        }
        let map = value
            .as_object()
            .ok_or_else(|| ScimError::value(format!("{urn} takes an object")))?;
        for (k, v) in map {
            // Clients echo the extension's `schemas` inside it; it names nothing.
            if k.eq_ignore_ascii_case("schemas") {
                continue;
            }
            self.op(kind, &format!("{urn}:{k}"), v)?;
        }
        Ok(())
    }
}

/// The sub-attribute a path names, if any: it must exist and not be read-only.
fn writable_sub(
    attr: &'static Attr,
    name: Option<&str>,
) -> Result<Option<&'static Attr>, ScimError> {
    let Some(s) = name else { return Ok(None) };
    let sub = attr
        .sub_attr(s)
        .ok_or_else(|| ScimError::path(format!("{} has no sub-attribute {s:?}", attr.name)))?;
    if sub.mutability == Mutability::ReadOnly {
        return Err(ScimError::mutability(format!(
            "{}.{} is read-only",
            attr.name, sub.name
        )));
    }
    Ok(Some(sub))
}

/// The object an attribute lives in: the document, or its extension's object (made when
/// missing).
fn container<'d>(doc: &'d mut Doc, extension: Option<&str>) -> &'d mut Map<String, Value> {
    let Some(urn) = extension else { return doc };
    let e = doc
        .entry(urn.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !e.is_object() {
        *e = Value::Object(Map::new());
    }
    e.as_object_mut().expect("made an object above")
}

#[cfg(test)]
mod tests {
    use super::super::schema::{ENTERPRISE, GROUP_TYPE, USER_TYPE};
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn doc(v: Value) -> Doc {
        v.as_object().unwrap().clone()
    }

    fn patch(rt: &'static ResourceType, d: Value, ops: Value) -> Result<Value, ScimError> {
        let ops = operations(&json!({"Operations": ops}))?;
        Ok(Value::Object(apply(rt, &doc(d), "id1", &ops)?.doc))
    }

    #[test]
    fn entra_id_shapes() {
        let d = json!({"userName": "a", "active": true});
        assert_eq!(
            patch(
                &USER_TYPE,
                d.clone(),
                json!([{"op": "Replace", "path": "active", "value": "False"}])
            )
            .unwrap(),
            json!({"userName": "a", "active": false})
        );
        assert_eq!(
            patch(
                &USER_TYPE,
                d.clone(),
                json!([{"op": "replace", "value": {
                "name.givenName": "G", (format!("{ENTERPRISE}:employeeNumber")): "7"}}])
            )
            .unwrap(),
            json!({"userName": "a", "active": true, "name": {"givenName": "G"}, ENTERPRISE: {"employeeNumber": "7"}})
        );
        assert_eq!(
            patch(
                &USER_TYPE,
                d.clone(),
                json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "a@x"}])
            )
            .unwrap(),
            json!({"userName": "a", "active": true, "emails": [{"type": "work", "value": "a@x"}]})
        );
        assert_eq!(
            patch(
                &USER_TYPE,
                d.clone(),
                json!([{"op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": "271"}])
            )
            .unwrap(),
            json!({"userName": "a", "active": true, ENTERPRISE: {"manager": {"value": "271"}}})
        );
        let g = json!({"displayName": "g", "members": [{"value": "u1", "type": "User"}, {"value": "u2", "type": "User"}]});
        assert_eq!(
            patch(
                &GROUP_TYPE,
                g,
                json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}]}])
            )
            .unwrap(),
            json!({"displayName": "g", "members": [{"value": "u2", "type": "User"}]})
        );
    }

    #[test]
    fn whole_extensions_unset_active_and_value_filters_that_match_nothing() {
        let d = json!({"userName": "a", "active": true});
        assert_eq!(
            patch(
                &USER_TYPE,
                d.clone(),
                json!([{"op": "add", "path": ENTERPRISE, "value": {
                    "schemas": [ENTERPRISE], "department": "R&D"}}])
            )
            .unwrap(),
            json!({"userName": "a", "active": true, ENTERPRISE: {"department": "R&D"}})
        );
        assert_eq!(
            patch(
                &USER_TYPE,
                d.clone(),
                json!([{"op": "remove", "path": "active"}])
            )
            .unwrap(),
            json!({"userName": "a"})
        );
        for (path, created) in [
            ("emails[type eq \"work\"].value", true),
            ("phoneNumbers[type eq \"mobile\"].value", true),
            ("emails[type eq \"nomatch\"].value", false),
            ("emails[value eq \"b@x\"].type", false),
            ("emails[type eq \"work\" or type eq \"home\"].value", false),
            ("ims[type eq \"work\"].value", false),
        ] {
            let r = patch(
                &USER_TYPE,
                d.clone(),
                json!([{"op": "replace", "path": path, "value": "v@x"}]),
            );
            match r {
                Ok(doc) => assert!(created, "{path} created {doc}"),
                Err(e) => {
                    assert!(!created, "{path}: {e:?}");
                    assert_eq!(e.scim_type(), Some("noTarget"), "{path}");
                }
            }
        }
    }

    #[test]
    fn okta_shapes() {
        let g = json!({"displayName": "g", "members": [{"value": "u1"}, {"value": "u2"}]});
        assert_eq!(
            patch(
                &GROUP_TYPE,
                g.clone(),
                json!([
                    {"op": "remove", "path": "members[value eq \"u1\"]"},
                    {"op": "add", "path": "members", "value": [{"value": "u3"}, {"value": "u2"}]}
                ])
            )
            .unwrap(),
            json!({"displayName": "g", "members": [{"value": "u2"}, {"value": "u3"}]})
        );
        assert_eq!(
            patch(
                &GROUP_TYPE,
                g.clone(),
                json!([{"op": "replace", "path": "members", "value": []}])
            )
            .unwrap(),
            json!({"displayName": "g"})
        );
        assert_eq!(
            patch(
                &GROUP_TYPE,
                g.clone(),
                json!([{"op": "replace", "value": {"id": "id1", "displayName": "new"}}])
            )
            .unwrap()["displayName"],
            "new"
        );
        assert!(patch(
            &GROUP_TYPE,
            g,
            json!([{"op": "replace", "value": {"id": "other"}}])
        )
        .is_err());
        assert_eq!(
            patch(
                &USER_TYPE,
                json!({"userName": "a"}),
                json!([{"op": "replace", "value": {"active": false}}])
            )
            .unwrap(),
            json!({"userName": "a", "active": false})
        );
    }

    #[test]
    fn primary_is_demoted_and_adds_dedupe() {
        let d = json!({"userName": "a", "emails": [{"value": "a@x", "primary": true}]});
        assert_eq!(
            patch(&USER_TYPE, d.clone(), json!([{"op": "add", "path": "emails", "value": [{"value": "b@x", "primary": true}]}])).unwrap()["emails"],
            json!([{"value": "a@x", "primary": false}, {"value": "b@x", "primary": true}])
        );
        assert_eq!(
            patch(&USER_TYPE, d.clone(), json!([{"op": "add", "path": "emails", "value": [{"value": "a@x", "primary": true}]}])).unwrap()["emails"],
            json!([{"value": "a@x", "primary": true}])
        );
    }

    #[test]
    fn the_password_is_found_in_every_path_form() {
        for ops in [
            json!([{"op": "replace", "path": "password", "value": "p1"}]),
            json!([{"op": "Replace", "path": "PASSWORD", "value": "p1"}]),
            json!([{"op": "replace", "path": format!("{}:password", super::super::schema::USER), "value": "p1"}]),
            json!([{"op": "replace", "value": {"Password": "p1"}}]),
            json!([{"op": "replace", "path": "", "value": {"password": "p1"}}]),
        ] {
            assert_eq!(
                password_in(ops.as_array().unwrap())
                    .as_ref()
                    .map(|p| p.expose_secret()),
                Some("p1"),
                "{ops}"
            );
        }
        assert!(password_in(&[json!({"op": "replace", "path": "title", "value": "p1"})]).is_none());
    }

    #[test]
    fn errors() {
        let d = json!({"userName": "a"});
        for (ops, scim_type) in [
            (json!([{"op": "remove"}]), "noTarget"),
            (
                json!([{"op": "replace", "path": "id", "value": "x"}]),
                "mutability",
            ),
            (
                json!([{"op": "add", "path": "groups", "value": []}]),
                "mutability",
            ),
            (
                json!([{"op": "add", "path": "nosuch", "value": 1}]),
                "invalidPath",
            ),
            (
                json!([{"op": "add", "path": "emails[type eq", "value": 1}]),
                "invalidPath",
            ),
            (
                json!([{"op": "replace", "path": "emails[type eq \"x\"]", "value": {"value": "a"}}]),
                "noTarget",
            ),
            (
                json!([{"op": "replace", "path": "active", "value": "maybe"}]),
                "invalidValue",
            ),
            (json!([{"op": "move", "path": "active"}]), "invalidSyntax"),
            (json!([]), "invalidSyntax"),
        ] {
            match patch(&USER_TYPE, d.clone(), ops.clone()) {
                Err(ScimError::BadRequest { scim_type: t, .. }) => {
                    assert_eq!(t, scim_type, "{ops}")
                }
                other => panic!("{ops}: {other:?}"),
            }
        }
    }
}
