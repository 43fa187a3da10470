//! Groups: a displayName unique per org case-insensitively, an externalId, and members that
//! are users or groups. Each membership change is its own event, so concurrent additions of
//! different members never undo each other.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{apply_change, check_version, diff, user, write_with, Doc, DomainError, Written};
use crate::eventstore::{
    Aggregate, Append, EventStore, ExpectedVersion, NewEvent, StoredEvent, UniqueValue,
};

pub const AGGREGATE: &str = "group";
pub const ADDED: &str = "group.added";
pub const CHANGED: &str = "group.changed";
pub const MEMBER_ADDED: &str = "group.member.added";
pub const MEMBER_REMOVED: &str = "group.member.removed";
pub const REMOVED: &str = "group.removed";
/// The pseudo-event a snapshot is loaded as (never stored in eventstore.events).
pub const SNAPSHOT: &str = "group.snapshot";
/// The unique constraint on displayName (per org, case-insensitive).
pub const DISPLAY_NAME: &str = "group.display_name";

const MAX_DISPLAY_NAME: usize = 256;
/// Members one group may hold; keeps a group's event stream loadable in milliseconds.
pub const MAX_MEMBERS: usize = 100_000;

pub fn aggregate(id: Uuid) -> Aggregate {
    Aggregate::new(AGGREGATE, id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    User,
    Group,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        if s.eq_ignore_ascii_case("user") {
            Some(Kind::User)
        } else if s.eq_ignore_ascii_case("group") {
            Some(Kind::Group)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: Uuid,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    pub org_id: Uuid,
    pub version: u64,
    /// displayName and externalId.
    pub doc: Doc,
    /// In the order they were added.
    pub members: Vec<Member>,
}

impl Group {
    pub fn display_name(&self) -> &str {
        self.doc
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

fn member_of(v: &Value) -> Option<Member> {
    Some(Member {
        id: v["value"].as_str()?.parse().ok()?,
        kind: Kind::parse(v["type"].as_str()?)?,
    })
}

pub fn fold(events: &[StoredEvent]) -> Option<Group> {
    let mut group: Option<Group> = None;
    // Members are folded through a hash of the live ones (id -> index into the group's
    // list); removed entries are dropped once at the end, so a group of 100k members with
    // thousands of changes folds in linear time.
    let mut live: HashMap<Uuid, usize> = HashMap::new();
    let reindex = |g: &Group| -> HashMap<Uuid, usize> {
        g.members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id, i))
            .collect()
    };
    for e in events {
        match e.event_type.as_str() {
            ADDED => {
                group = Some(Group {
                    org_id: e.org_id,
                    version: e.version,
                    doc: e.payload["attributes"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    members: Vec::new(),
                });
                live.clear();
            }
            CHANGED => {
                if let Some(g) = &mut group {
                    apply_change(&mut g.doc, &e.payload);
                }
            }
            MEMBER_ADDED => {
                if let (Some(g), Some(m)) = (&mut group, member_of(&e.payload)) {
                    if let std::collections::hash_map::Entry::Vacant(v) = live.entry(m.id) {
                        v.insert(g.members.len());
                        g.members.push(m);
                    }
                }
            }
            MEMBER_REMOVED => {
                if let Some(id) = e.payload["value"]
                    .as_str()
                    .and_then(|s| s.parse::<Uuid>().ok())
                {
                    live.remove(&id);
                }
            }
            REMOVED => {
                group = None;
                live.clear();
            }
            SNAPSHOT => {
                group = serde_json::from_value(e.payload.clone()).ok();
                live = group.as_ref().map(reindex).unwrap_or_default();
            }
            _ => {}
        }
        if let Some(g) = &mut group {
            g.version = e.version;
        }
    }
    if let Some(g) = &mut group {
        let mut i = 0;
        g.members.retain(|m| {
            let keep = live.get(&m.id) == Some(&i);
            i += 1;
            keep
        });
    }
    group
}

/// The state to snapshot (None for a removed group: nothing to keep).
pub fn snapshot_state(events: &[StoredEvent]) -> Option<Value> {
    fold(events).and_then(|g| serde_json::to_value(g).ok())
}

fn validate(group_id: Uuid, doc: &Doc, members: &[Member]) -> Result<String, DomainError> {
    super::check_storable(doc, &["externalId"])?;
    let name = super::required_name(doc, "displayName", MAX_DISPLAY_NAME)?;
    if members.iter().any(|m| m.id == group_id) {
        return Err(DomainError::Invalid {
            field: "members",
            reason: "a group cannot be a member of itself".into(),
        });
    }
    if members.len() > MAX_MEMBERS {
        return Err(DomainError::Invalid {
            field: "members",
            reason: format!("a group has at most {MAX_MEMBERS} members"),
        });
    }
    Ok(name)
}

/// Which of `ids` are users or groups of `org_id` (that exist now); the rest are absent.
pub async fn resolve_members<C: GenericClient>(
    client: &C,
    org_id: Uuid,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Kind>, DomainError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let found = crate::eventstore::existing(
        client,
        org_id,
        &[user::AGGREGATE, AGGREGATE],
        ids,
        &[user::REMOVED, REMOVED],
    )
    .await?;
    Ok(found
        .into_iter()
        .map(|(id, t)| {
            let kind = if t == user::AGGREGATE {
                Kind::User
            } else {
                Kind::Group
            };
            (id, kind)
        })
        .collect())
}

fn member_events(append: Append, old: &[Member], new: &[Member]) -> Append {
    let old_ids: HashSet<Uuid> = old.iter().map(|m| m.id).collect();
    let new_ids: HashSet<Uuid> = new.iter().map(|m| m.id).collect();
    let mut append = append;
    for m in old.iter().filter(|m| !new_ids.contains(&m.id)) {
        append = append.event(NewEvent::new(MEMBER_REMOVED, json!({ "value": m.id })));
    }
    let mut seen = HashSet::new();
    for m in new.iter().filter(|m| !old_ids.contains(&m.id)) {
        if seen.insert(m.id) {
            append = append.event(NewEvent::new(
                MEMBER_ADDED,
                json!({ "value": m.id, "type": m.kind.as_str() }),
            ));
        }
    }
    append
}

pub async fn create(
    store: &EventStore,
    org_id: Uuid,
    doc: Doc,
    members: Vec<Member>,
) -> Result<Written, DomainError> {
    let id = Uuid::new_v4();
    let name = validate(id, &doc, &members)?;
    let append = Append::new(org_id, aggregate(id), ExpectedVersion::NEW)
        .claim(UniqueValue::case_insensitive(DISPLAY_NAME, name))
        .event(NewEvent::new(ADDED, json!({ "attributes": doc })));
    let append = member_events(append, &[], &members);
    let pushed = store.push(&[append]).await?;
    Ok(Written {
        id,
        position: pushed.last(),
    })
}

pub async fn load(
    store: &EventStore,
    org_id: Uuid,
    id: Uuid,
) -> Result<Option<Group>, DomainError> {
    let client = store.pool().get().await?;
    let events = super::load_events(&client, &aggregate(id), Some(snapshot_state)).await?;
    Ok(fold(&events).filter(|g| g.org_id == org_id))
}

/// Changes a group: `change` gets the current group and returns the new attributes and
/// members. Writes one event per attribute change and per member added or removed.
pub async fn update<E: From<DomainError>>(
    store: &EventStore,
    org_id: Uuid,
    id: Uuid,
    if_match: Option<u64>,
    mut change: impl FnMut(&Group) -> Result<(Doc, Vec<Member>), E>,
) -> Result<Written, E> {
    let agg = aggregate(id);
    let position = write_with(
        store,
        &agg,
        Some(snapshot_state),
        |events| -> Result<_, E> {
            let group = fold(events)
                .filter(|g| g.org_id == org_id)
                .ok_or_else(|| DomainError::NotFound(format!("group {id}")))?;
            check_version(&agg, if_match, group.version)?;
            let (doc, members) = change(&group)?;
            let name = validate(id, &doc, &members)?;
            let (set, unset) = diff(&group.doc, &doc);
            let mut append =
                Append::new(org_id, agg.clone(), ExpectedVersion::Exact(group.version));
            if !set.is_empty() || !unset.is_empty() {
                append = append.event(NewEvent::new(
                    CHANGED,
                    json!({ "set": set, "unset": unset }),
                ));
                if name.to_lowercase() != group.display_name().to_lowercase() {
                    append = append
                        .release(UniqueValue::case_insensitive(
                            DISPLAY_NAME,
                            group.display_name(),
                        ))
                        .claim(UniqueValue::case_insensitive(DISPLAY_NAME, name));
                }
            }
            let append = member_events(append, &group.members, &members);
            Ok((!append.events.is_empty()).then_some(append))
        },
    )
    .await?;
    Ok(Written { id, position })
}

pub async fn remove(
    store: &EventStore,
    org_id: Uuid,
    id: Uuid,
    if_match: Option<u64>,
) -> Result<Written, DomainError> {
    let agg = aggregate(id);
    let position = write_with(
        store,
        &agg,
        Some(snapshot_state),
        |events| -> Result<_, DomainError> {
            let group = fold(events)
                .filter(|g| g.org_id == org_id)
                .ok_or_else(|| DomainError::NotFound(format!("group {id}")))?;
            check_version(&agg, if_match, group.version)?;
            Ok(Some(
                Append::new(org_id, agg.clone(), ExpectedVersion::Exact(group.version))
                    .release(UniqueValue::case_insensitive(
                        DISPLAY_NAME,
                        group.display_name(),
                    ))
                    .event(NewEvent::new(REMOVED, json!({}))),
            ))
        },
    )
    .await?;
    Ok(Written { id, position })
}
