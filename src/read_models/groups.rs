use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Map;
use uuid::Uuid;

use super::rows::{self, to_load, Changes, Rows};
use super::text;
use crate::domain::{apply_change, group, user};
use crate::eventstore::StoredEvent;
use crate::runtime::{Projection, ReduceError, Tx};

/// Groups and their direct members (projections.groups, projections.group_members).
/// Consumes user.removed too: a deleted user leaves every group.
pub struct Groups;

struct GroupRow {
    org_id: Uuid,
    display_name: String,
    external_id: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// What the batch leaves of one (group, member) pair.
enum Member {
    Added {
        org_id: Uuid,
        kind: String,
        at: DateTime<Utc>,
        /// A removal came first in the batch: a stored row goes before this one is added.
        replaces: bool,
    },
    Removed,
}

/// The batch's changes to group_members, in the order they must be written: members who
/// left every group, then pairs removed, then pairs added.
#[derive(Default)]
struct Memberships {
    gone: Vec<Uuid>,
    pairs: HashMap<(Uuid, Uuid), Member>,
}

impl Memberships {
    fn add(&mut self, pair: (Uuid, Uuid), org_id: Uuid, kind: &str, at: DateTime<Utc>) {
        let replaces = match self.pairs.get(&pair) {
            // Already added in this batch: the first add's time stays (ON CONFLICT DO NOTHING).
            Some(Member::Added { .. }) => return,
            Some(Member::Removed) => true,
            None => false,
        };
        let kind = kind.to_string();
        self.pairs.insert(
            pair,
            Member::Added {
                org_id,
                kind,
                at,
                replaces,
            },
        );
    }

    /// The member leaves every group (a removed user or group).
    fn leave_all(&mut self, member: Uuid) {
        self.pairs.retain(|(_, m), _| *m != member);
        self.gone.push(member);
    }
}

#[async_trait]
impl Projection for Groups {
    fn name(&self) -> &'static str {
        "groups"
    }

    fn event_types(&self) -> Option<Vec<String>> {
        Some(
            [
                group::ADDED,
                group::CHANGED,
                group::MEMBER_ADDED,
                group::MEMBER_REMOVED,
                group::REMOVED,
                user::REMOVED,
            ]
            .map(String::from)
            .to_vec(),
        )
    }

    fn tables(&self) -> Vec<String> {
        vec![
            "projections.group_members".into(),
            "projections.groups".into(),
        ]
    }

    fn replays_aggregates(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &Tx<'_>, events: &[&StoredEvent]) -> Result<(), ReduceError> {
        let groups: Vec<&StoredEvent> = events
            .iter()
            .copied()
            .filter(|e| e.event_type != user::REMOVED)
            .collect();
        let mut rows = load(tx, &to_load(&groups, &[group::ADDED])).await?;
        let mut members = Memberships::default();
        for event in events {
            fold(&mut rows, &mut members, event)?;
        }
        write(tx, rows.into_changes(), members).await
    }
}

async fn load(tx: &Tx<'_>, ids: &[Uuid]) -> Result<Rows<Uuid, GroupRow>, ReduceError> {
    let sql = "SELECT group_id, org_id, display_name, external_id, version, created_at, \
                      updated_at FROM groups WHERE group_id = ANY($1)";
    rows::load(tx, sql, ids, |r| {
        Ok(GroupRow {
            org_id: r.get(1),
            display_name: r.get(2),
            external_id: r.get(3),
            version: r.get(4),
            created_at: r.get(5),
            updated_at: r.get(6),
        })
    })
    .await
}

fn member_id(event: &StoredEvent) -> Result<Uuid, ReduceError> {
    event.payload["value"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{} without a member id", event.event_type).into())
}

fn fold(
    rows: &mut Rows<Uuid, GroupRow>,
    members: &mut Memberships,
    event: &StoredEvent,
) -> Result<(), ReduceError> {
    let id = event.aggregate.id;
    let version = event.version as i64;
    let unknown = || format!("{} for unknown group {id}", event.event_type);
    match event.event_type.as_str() {
        group::ADDED => {
            let doc = event.payload["attributes"]
                .as_object()
                .ok_or("group.added without attributes")?;
            let row = GroupRow {
                org_id: event.org_id,
                display_name: text(doc, "displayName").unwrap_or_default().into(),
                external_id: text(doc, "externalId").map(String::from),
                version,
                created_at: event.created_at,
                updated_at: event.created_at,
            };
            if !rows.create(id, row) {
                return Err(format!("group.added for existing group {id}").into());
            }
        }
        group::CHANGED => {
            let row = rows.get_mut(&id).ok_or_else(unknown)?;
            let mut doc = Map::new();
            doc.insert("displayName".into(), row.display_name.clone().into());
            if let Some(x) = &row.external_id {
                doc.insert("externalId".into(), x.clone().into());
            }
            apply_change(&mut doc, &event.payload);
            row.display_name = text(&doc, "displayName").unwrap_or_default().into();
            row.external_id = text(&doc, "externalId").map(String::from);
            row.version = version;
            row.updated_at = event.created_at;
        }
        group::MEMBER_ADDED | group::MEMBER_REMOVED => {
            let member = member_id(event)?;
            let Some(row) = rows.get_mut(&id) else {
                // Removing from a group that is not there changes nothing; adding fails.
                if event.event_type == group::MEMBER_REMOVED {
                    return Ok(());
                }
                return Err(unknown().into());
            };
            row.version = version;
            row.updated_at = event.created_at;
            if event.event_type == group::MEMBER_ADDED {
                let kind = event.payload["type"].as_str().unwrap_or("User");
                members.add((id, member), event.org_id, kind, event.created_at);
            } else {
                members.pairs.insert((id, member), Member::Removed);
            }
        }
        group::REMOVED => {
            rows.remove(&id);
            members.pairs.retain(|(g, _), _| *g != id);
            members.leave_all(id);
        }
        user::REMOVED => members.leave_all(id),
        _ => {}
    }
    Ok(())
}

async fn write(
    tx: &Tx<'_>,
    changes: Changes<Uuid, GroupRow>,
    members: Memberships,
) -> Result<(), ReduceError> {
    if !members.gone.is_empty() {
        let stmt = tx
            .prepare_cached("DELETE FROM group_members WHERE member_id = ANY($1)")
            .await?;
        tx.execute(&stmt, &[&members.gone]).await?;
    }
    if !changes.deleted.is_empty() {
        let (groups, members) = futures::try_join!(
            tx.prepare_cached("DELETE FROM groups WHERE group_id = ANY($1)"),
            tx.prepare_cached("DELETE FROM group_members WHERE group_id = ANY($1)"),
        )?;
        let ids: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&changes.deleted];
        futures::try_join!(tx.execute(&groups, &ids), tx.execute(&members, &ids))?;
    }
    write_groups(tx, &changes).await?;
    write_members(tx, members).await
}

async fn write_groups(tx: &Tx<'_>, changes: &Changes<Uuid, GroupRow>) -> Result<(), ReduceError> {
    const UNNEST: &str = "unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], \
         $6::timestamptz[], $7::timestamptz[]) \
         AS v(group_id, org_id, display_name, external_id, version, created_at, updated_at)";
    let statements = [
        (
            &changes.inserted,
            format!(
                "INSERT INTO groups (group_id, org_id, display_name, external_id, \
                 version, created_at, updated_at) SELECT * FROM {UNNEST}"
            ),
        ),
        (
            &changes.updated,
            format!(
                "UPDATE groups g SET display_name = v.display_name, \
                 external_id = v.external_id, version = v.version, updated_at = v.updated_at \
                 FROM {UNNEST} WHERE g.group_id = v.group_id"
            ),
        ),
    ];
    for (rows, sql) in statements {
        if rows.is_empty() {
            continue;
        }
        let ids: Vec<Uuid> = rows.iter().map(|(k, _)| *k).collect();
        let orgs: Vec<Uuid> = rows.iter().map(|(_, r)| r.org_id).collect();
        let names: Vec<&str> = rows.iter().map(|(_, r)| r.display_name.as_str()).collect();
        let ext: Vec<Option<&str>> = rows.iter().map(|(_, r)| r.external_id.as_deref()).collect();
        let versions: Vec<i64> = rows.iter().map(|(_, r)| r.version).collect();
        let created: Vec<DateTime<Utc>> = rows.iter().map(|(_, r)| r.created_at).collect();
        let updated: Vec<DateTime<Utc>> = rows.iter().map(|(_, r)| r.updated_at).collect();
        let stmt = tx.prepare_cached(&sql).await?;
        tx.execute(
            &stmt,
            &[&ids, &orgs, &names, &ext, &versions, &created, &updated],
        )
        .await?;
    }
    Ok(())
}

async fn write_members(tx: &Tx<'_>, members: Memberships) -> Result<(), ReduceError> {
    let (mut del_g, mut del_m) = (Vec::new(), Vec::new());
    let (mut groups, mut ids, mut orgs, mut kinds, mut ats) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((g, m), change) in &members.pairs {
        match change {
            Member::Removed => {
                del_g.push(*g);
                del_m.push(*m);
            }
            Member::Added {
                org_id,
                kind,
                at,
                replaces,
            } => {
                if *replaces {
                    del_g.push(*g);
                    del_m.push(*m);
                }
                groups.push(*g);
                ids.push(*m);
                orgs.push(*org_id);
                kinds.push(kind.as_str());
                ats.push(*at);
            }
        }
    }
    if !del_g.is_empty() {
        let stmt = tx
            .prepare_cached(
                "DELETE FROM group_members m \
                  USING unnest($1::uuid[], $2::uuid[]) AS v(group_id, member_id) \
                  WHERE m.group_id = v.group_id AND m.member_id = v.member_id",
            )
            .await?;
        tx.execute(&stmt, &[&del_g, &del_m]).await?;
    }
    if !groups.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO group_members (group_id, member_id, org_id, member_type, added_at) \
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[]) \
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(&stmt, &[&groups, &ids, &orgs, &kinds, &ats])
            .await?;
    }
    Ok(())
}
