//! Security Event Tokens (RFC 8417) for one change and one receiver: the SCIM events of
//! RFC 9967 it wants, `sub_id` of format `scim`, `txn` the change's position, a `jti` that is
//! the same whenever the same receiver is sent the same change, signed with ES256.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::change::{Change, What};
use super::error::SecEventsError;
use super::keys::ActiveKey;
use super::uri::{EventKind, EventUri, Form, Wants};
use crate::domain::group::Kind;
use crate::domain::Doc;
use crate::eventstore::Position;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The JWS `typ` of a SET (RFC 8417 §2.3).
pub const TYP: &str = "secevent+jwt";
/// Past this size the `data` of a full event is left out and the event goes as a notice
/// (the receiver reads the resource with a GET).
const MAX_DATA_BYTES: usize = 256 * 1024;

/// A SET made for a receiver, ready to queue.
#[derive(Debug, Clone)]
pub struct Made {
    pub jti: String,
    pub position: Position,
    pub subject: String,
    pub token: String,
    pub event_at: DateTime<Utc>,
}

/// Who the SETs are from and for.
pub struct Addressing<'a> {
    pub receiver: Uuid,
    pub issuer: &'a str,
    pub audience: &'a str,
    pub wants: &'a Wants,
}

/// The same for the same receiver, change and subject, different for any other: 128 bits
/// of SHA-256 over them, in hex.
pub fn jti(receiver: Uuid, position: Position, subject: &str) -> String {
    let mut h = Sha256::new();
    h.update(receiver.as_bytes());
    h.update(position.tx.to_be_bytes());
    h.update(position.seq.to_be_bytes());
    h.update(subject.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// The resource as SCIM shows it, from its document (and members, for a group).
pub fn representation(kind: Kind, id: Uuid, doc: &Doc, members: &[Value], version: u64) -> Value {
    let mut m = Map::new();
    let schemas: Vec<&str> = match kind {
        Kind::User if doc.contains_key(ENTERPRISE) => vec![USER_SCHEMA, ENTERPRISE],
        Kind::User => vec![USER_SCHEMA],
        Kind::Group => vec![GROUP_SCHEMA],
    };
    m.insert("schemas".into(), json!(schemas));
    m.insert("id".into(), json!(id));
    for (k, v) in doc {
        m.insert(k.clone(), v.clone());
    }
    if kind == Kind::Group {
        let members: Vec<Value> = members.iter().map(member).collect();
        m.insert("members".into(), Value::Array(members));
    }
    m.insert(
        "meta".into(),
        json!({"resourceType": kind.as_str(), "version": etag(version)}),
    );
    Value::Object(m)
}

fn member(m: &Value) -> Value {
    let id = m["value"].as_str().unwrap_or_default();
    let path = if m["type"] == "Group" {
        "Groups"
    } else {
        "Users"
    };
    json!({"value": id, "type": m["type"], "$ref": format!("/{path}/{id}")})
}

/// The PATCH request equivalent to a modification (RFC 9967 §2.4.2: `data` is the command).
/// Passwords are never in it; None when nothing else changed.
fn patch_op(c: &Change) -> Option<Value> {
    let What::Modified {
        set,
        unset,
        added,
        removed,
        ..
    } = &c.what
    else {
        return None;
    };
    let mut ops: Vec<Value> = set
        .iter()
        .map(|(k, v)| json!({"op": "replace", "path": k, "value": v}))
        .collect();
    ops.extend(unset.iter().map(|k| json!({"op": "remove", "path": k})));
    if !added.is_empty() {
        let v: Vec<Value> = added.iter().map(member).collect();
        ops.push(json!({"op": "add", "path": "members", "value": v}));
    }
    for m in removed {
        let path = format!(
            "members[value eq \"{}\"]",
            m["value"].as_str().unwrap_or_default()
        );
        ops.push(json!({"op": "remove", "path": path}));
    }
    (!ops.is_empty()).then(|| json!({"schemas": [PATCH_OP], "Operations": ops}))
}

fn fits(data: &Value) -> bool {
    serde_json::to_vec(data)
        .map(|b| b.len())
        .unwrap_or(usize::MAX)
        <= MAX_DATA_BYTES
}

/// Adds the `kind` events `wants` asks for: a notice lists the attributes, a full event
/// carries `data` (when there is one and it fits).
fn add_forms(
    out: &mut Map<String, Value>,
    c: &Change,
    wants: &Wants,
    kind: EventKind,
    data: Option<Value>,
) {
    let version = (kind != EventKind::Create).then(|| etag(c.version));
    for form in wants.forms(kind) {
        let full = form == Some(Form::Full);
        let payload = match &data {
            Some(d) if full && fits(d) => json!({"data": d}),
            None if full => continue,
            _ => json!({"attributes": c.attributes()}),
        };
        let form = if payload.get("data").is_some() {
            Form::Full
        } else {
            Form::Notice
        };
        let mut payload = payload;
        if let Some(v) = &version {
            payload["version"] = json!(v);
        }
        out.insert(EventUri::new(kind, Some(form)).to_string(), payload);
    }
}

/// The `events` claim for `c`: empty when the receiver wants none of what happened.
/// `state` is the resource after the change, for a full PUT event.
pub fn events(c: &Change, wants: &Wants, state: Option<Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let mut plain = |kind: EventKind| {
        if !wants.forms(kind).is_empty() {
            out.insert(EventUri::new(kind, None).to_string(), json!({}));
        }
    };
    match &c.what {
        What::Removed => plain(EventKind::Delete),
        What::Created { .. } => {}
        What::Modified { .. } if c.kind == Kind::User => match c.active() {
            Some(true) => plain(EventKind::Activate),
            Some(false) => plain(EventKind::Deactivate),
            None => {}
        },
        What::Modified { .. } => {}
    }
    match &c.what {
        What::Created { doc, members } => {
            let data = representation(c.kind, c.id, doc, members, c.version);
            add_forms(&mut out, c, wants, EventKind::Create, Some(data));
        }
        What::Modified { .. } if c.is_put() => {
            add_forms(&mut out, c, wants, EventKind::Put, state);
        }
        What::Modified { .. } => add_forms(&mut out, c, wants, EventKind::Patch, patch_op(c)),
        What::Removed => {}
    }
    out
}

/// Signs the SET of `c` for `to`; None when it wants nothing of it.
pub fn make(
    c: &Change,
    to: &Addressing<'_>,
    key: &ActiveKey,
    state: Option<Value>,
    now: DateTime<Utc>,
) -> Result<Option<Made>, SecEventsError> {
    let events = events(c, to.wants, state);
    let mut sub = json!({"format": "scim", "uri": c.uri(), "id": c.id});
    if let Some(x) = c.external_id() {
        sub["externalId"] = json!(x);
    }
    let subject = Subject {
        uri: c.uri(),
        sub_id: sub,
        position: c.position,
        at: c.at,
    };
    sign(subject, events, to, key, now)
}

/// A user joining (`FeedAdd`) or leaving (`FeedRemove`) a group's feed at `position`.
pub fn make_feed(
    user: Uuid,
    kind: EventKind,
    position: Position,
    at: DateTime<Utc>,
    to: &Addressing<'_>,
    key: &ActiveKey,
    now: DateTime<Utc>,
) -> Result<Option<Made>, SecEventsError> {
    let mut events = Map::new();
    if !to.wants.forms(kind).is_empty() {
        events.insert(EventUri::new(kind, None).to_string(), json!({}));
    }
    let uri = format!("/Users/{user}");
    let subject = Subject {
        sub_id: json!({"format": "scim", "uri": uri, "id": user}),
        uri,
        position,
        at,
    };
    sign(subject, events, to, key, now)
}

/// What a SET is about.
struct Subject {
    uri: String,
    sub_id: Value,
    position: Position,
    at: DateTime<Utc>,
}

fn sign(
    s: Subject,
    events: Map<String, Value>,
    to: &Addressing<'_>,
    key: &ActiveKey,
    now: DateTime<Utc>,
) -> Result<Option<Made>, SecEventsError> {
    if events.is_empty() {
        return Ok(None);
    }
    let jti = jti(to.receiver, s.position, &s.uri);
    let claims = json!({
        "iss": to.issuer,
        "iat": now.timestamp(),
        "jti": jti,
        "aud": to.audience,
        "txn": s.position.to_string(),
        "toe": s.at.timestamp(),
        "sub_id": s.sub_id,
        "events": events,
    });
    let header = jsonwebtoken::Header {
        typ: Some(TYP.into()),
        kid: Some(key.kid.clone()),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
    };
    let token = jsonwebtoken::encode(&header, &claims, &key.key)?;
    Ok(Some(Made {
        jti,
        position: s.position,
        subject: s.uri,
        token,
        event_at: s.at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secevents::change::What;

    fn change(what: What, op: &str) -> Change {
        Change {
            kind: Kind::User,
            id: Uuid::nil(),
            position: Position::new(9, 3),
            version: 4,
            at: Utc::now(),
            what,
            operation: Some(op.into()),
        }
    }

    fn modified(set: Value) -> What {
        What::Modified {
            set: set.as_object().cloned().unwrap(),
            unset: vec!["title".into()],
            added: vec![],
            removed: vec![],
            password: false,
        }
    }

    #[test]
    fn a_patch_that_deactivates_is_a_patch_and_a_deactivate() {
        let wants =
            Wants::parse(&["prov:patch:full", "prov:patch:notice", "prov:deactivate"]).unwrap();
        let c = change(modified(json!({"active": false})), "PATCH /Users/{id}");
        let e = events(&c, &wants, None);
        let full = &e["urn:ietf:params:scim:event:prov:patch:full"];
        assert_eq!(
            full["data"]["Operations"][0],
            json!({"op": "replace", "path": "active", "value": false})
        );
        assert_eq!(
            full["data"]["Operations"][1],
            json!({"op": "remove", "path": "title"})
        );
        assert_eq!(full["version"], "W/\"4\"");
        assert_eq!(
            e["urn:ietf:params:scim:event:prov:patch:notice"]["attributes"],
            json!(["active", "title"])
        );
        assert_eq!(e["urn:ietf:params:scim:event:prov:deactivate"], json!({}));
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn a_put_is_a_put_and_a_receiver_wanting_neither_gets_nothing() {
        let wants = Wants::parse(&["prov:put:full"]).unwrap();
        let c = change(modified(json!({"displayName": "x"})), "PUT /Users/{id}");
        let state = json!({"id": "x"});
        let e = events(&c, &wants, Some(state.clone()));
        assert_eq!(e["urn:ietf:params:scim:event:prov:put:full"]["data"], state);
        let wants = Wants::parse(&["prov:create:notice"]).unwrap();
        assert!(events(&c, &wants, None).is_empty());
        assert_eq!(jti(Uuid::nil(), c.position, "/Users/a").len(), 32);
        assert_ne!(
            jti(Uuid::nil(), c.position, "/Users/a"),
            jti(Uuid::max(), c.position, "/Users/a")
        );
        assert_ne!(
            jti(Uuid::nil(), c.position, "/Users/a"),
            jti(Uuid::nil(), c.position, "/Users/b")
        );
    }
}
