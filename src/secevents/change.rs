//! From the log to changes of SCIM resources: the events one transaction appended to one
//! user or group (a group created with its members, a PATCH of several attributes) become
//! one change, which becomes at most one SET per receiver.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::group::{self, Kind};
use crate::domain::{user, Doc};
use crate::eventstore::{Position, StoredEvent};

/// The event types that change SCIM resources; the others make no SETs.
pub fn event_types() -> Vec<String> {
    [
        user::ADDED,
        user::CHANGED,
        user::PASSWORD_CHANGED,
        user::REMOVED,
        group::ADDED,
        group::CHANGED,
        group::MEMBER_ADDED,
        group::MEMBER_REMOVED,
        group::REMOVED,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub enum What {
    Created {
        doc: Doc,
        members: Vec<Value>,
    },
    Modified {
        set: Doc,
        unset: Vec<String>,
        added: Vec<Value>,
        removed: Vec<Value>,
        password: bool,
    },
    Removed,
}

/// What one transaction did to one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: Kind,
    pub id: Uuid,
    /// Of its last event: where the change is complete (the write's `Portcullis-Position`).
    pub position: Position,
    pub version: u64,
    pub at: DateTime<Utc>,
    pub what: What,
    /// The request line that made it (`PUT /Users/{id}`), when it came over HTTP.
    pub operation: Option<String>,
}

impl Change {
    /// `/Users/{id}` or `/Groups/{id}`: the SET's `sub_id.uri`.
    pub fn uri(&self) -> String {
        match self.kind {
            Kind::User => format!("/Users/{}", self.id),
            Kind::Group => format!("/Groups/{}", self.id),
        }
    }

    /// A replacement (SCIM PUT) rather than a PATCH.
    pub fn is_put(&self) -> bool {
        self.operation
            .as_deref()
            .is_some_and(|o| o.starts_with("PUT "))
    }

    /// The externalId the change names, if it names one.
    pub fn external_id(&self) -> Option<&str> {
        let doc = match &self.what {
            What::Created { doc, .. } => doc,
            What::Modified { set, .. } => set,
            What::Removed => return None,
        };
        doc.get("externalId").and_then(Value::as_str)
    }

    /// The top-level attributes it touched, as a notice lists them.
    pub fn attributes(&self) -> Vec<String> {
        let mut out: Vec<String> = match &self.what {
            What::Created { doc, members } => {
                let mut a: Vec<String> = std::iter::once("id".to_string())
                    .chain(doc.keys().cloned())
                    .collect();
                if !members.is_empty() {
                    a.push("members".into());
                }
                a
            }
            What::Modified {
                set,
                unset,
                added,
                removed,
                password,
            } => {
                let mut a: Vec<String> = set.keys().chain(unset.iter()).cloned().collect();
                if !added.is_empty() || !removed.is_empty() {
                    a.push("members".into());
                }
                if *password {
                    a.push("password".into());
                }
                a
            }
            What::Removed => Vec::new(),
        };
        out.dedup();
        out
    }

    /// Whether it set `active`, and to what.
    pub fn active(&self) -> Option<bool> {
        match &self.what {
            What::Modified { set, .. } => set.get("active").and_then(Value::as_bool),
            _ => None,
        }
    }
}

fn kind_of(aggregate_type: &str) -> Option<Kind> {
    match aggregate_type {
        user::AGGREGATE => Some(Kind::User),
        group::AGGREGATE => Some(Kind::Group),
        _ => None,
    }
}

/// Folds `e` into the change `c` of the same transaction and resource.
fn merge(c: &mut Change, e: &StoredEvent) {
    c.position = e.position;
    c.version = e.version;
    let p = &e.payload;
    match e.event_type.as_str() {
        user::ADDED | group::ADDED => {
            c.what = What::Created {
                doc: p["attributes"].as_object().cloned().unwrap_or_default(),
                members: Vec::new(),
            };
            return;
        }
        user::REMOVED | group::REMOVED => {
            c.what = What::Removed;
            return;
        }
        _ => {}
    }
    if matches!(c.what, What::Removed) {
        c.what = empty_modification();
    }
    match &mut c.what {
        What::Created { doc, members } => match e.event_type.as_str() {
            group::MEMBER_ADDED => members.push(p.clone()),
            group::MEMBER_REMOVED => members.retain(|m| m["value"] != p["value"]),
            user::CHANGED | group::CHANGED => crate::domain::apply_change(doc, p),
            _ => {}
        },
        What::Modified {
            set,
            unset,
            added,
            removed,
            password,
        } => match e.event_type.as_str() {
            group::MEMBER_ADDED => added.push(p.clone()),
            group::MEMBER_REMOVED => removed.push(p.clone()),
            user::PASSWORD_CHANGED => *password = true,
            user::CHANGED | group::CHANGED => {
                if let Some(s) = p.get("set").and_then(Value::as_object) {
                    for (k, v) in s {
                        unset.retain(|u| u != k);
                        set.insert(k.clone(), v.clone());
                    }
                }
                for k in p["unset"].as_array().into_iter().flatten() {
                    if let Some(k) = k.as_str() {
                        set.remove(k);
                        unset.push(k.to_string());
                    }
                }
            }
            _ => {}
        },
        What::Removed => {}
    }
}

fn empty_modification() -> What {
    What::Modified {
        set: Doc::new(),
        unset: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
        password: false,
    }
}

/// The changes in `events` (log order): consecutive events of one transaction and resource
/// make one change.
pub fn changes(events: &[StoredEvent]) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for e in events {
        let Some(kind) = kind_of(&e.aggregate.aggregate_type) else {
            continue;
        };
        let same = out.last().is_some_and(|c| {
            c.position.tx == e.position.tx && c.id == e.aggregate.id && c.kind == kind
        });
        if !same {
            out.push(Change {
                kind,
                id: e.aggregate.id,
                position: e.position,
                version: e.version,
                at: e.created_at,
                what: empty_modification(),
                operation: e.metadata["operation"].as_str().map(str::to_string),
            });
        }
        if let Some(c) = out.last_mut() {
            merge(c, e);
        }
    }
    // A modification that touched nothing (a PATCH to the same values) makes no SET.
    out.retain(|c| !matches!(c.what, What::Modified { .. }) || !c.attributes().is_empty());
    out
}

/// Where a batch of `limit` events may be taken up to without cutting the last change in
/// two: before the last transaction's run when the batch came back full and that run does
/// not fill it all.
pub fn whole_changes(events: &[StoredEvent], limit: usize) -> usize {
    if events.len() < limit {
        return events.len();
    }
    let Some(last) = events.last() else {
        return 0;
    };
    let cut = events
        .iter()
        .rposition(|e| e.position.tx != last.position.tx || e.aggregate != last.aggregate)
        .map(|i| i + 1)
        .unwrap_or(0);
    if cut == 0 {
        events.len()
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstore::Aggregate;
    use serde_json::json;

    fn ev(tx: u64, seq: i64, agg: &str, id: Uuid, t: &str, payload: Value) -> StoredEvent {
        StoredEvent {
            position: Position::new(tx, seq),
            org_id: Uuid::nil(),
            aggregate: Aggregate::new(agg, id),
            version: seq as u64,
            event_type: t.into(),
            payload,
            metadata: json!({"operation": "PATCH /Groups/{id}"}),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn one_transaction_on_one_resource_is_one_change() {
        let (g, u) = (Uuid::new_v4(), Uuid::new_v4());
        let m = json!({"value": u.to_string(), "type": "User"});
        let events = vec![
            ev(
                5,
                1,
                "group",
                g,
                group::ADDED,
                json!({"attributes": {"displayName": "x"}}),
            ),
            ev(5, 2, "group", g, group::MEMBER_ADDED, m.clone()),
            ev(6, 3, "group", g, group::MEMBER_REMOVED, m.clone()),
            ev(
                6,
                4,
                "group",
                g,
                group::CHANGED,
                json!({"set": {"displayName": "y"}}),
            ),
            ev(
                7,
                5,
                "user",
                u,
                user::CHANGED,
                json!({"set": {}, "unset": []}),
            ),
            ev(8, 6, "user", u, user::REMOVED, json!({})),
        ];
        let c = changes(&events);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c[0].position, Position::new(5, 2));
        assert_eq!(c[0].attributes(), vec!["id", "displayName", "members"]);
        assert!(matches!(&c[1].what, What::Modified { removed, .. } if removed.len() == 1));
        assert_eq!(c[1].attributes(), vec!["displayName", "members"]);
        assert_eq!(c[2].what, What::Removed);
        assert_eq!(whole_changes(&events, 6), 5);
        assert_eq!(whole_changes(&events[..2], 2), 2);
        assert_eq!(whole_changes(&events[..3], 4), 3);
    }
}
