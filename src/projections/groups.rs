use async_trait::async_trait;
use deadpool_postgres::Transaction;
use serde_json::Map;
use uuid::Uuid;

use super::text;
use crate::domain::{apply_change, group, user};
use crate::eventstore::StoredEvent;
use crate::projection::{Projection, ReduceError};

/// Groups and their direct members (projections.groups, projections.group_members).
/// Consumes user.removed too: a deleted user leaves every group.
pub struct Groups;

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

    async fn reduce(&self, tx: &Transaction<'_>, event: &StoredEvent) -> Result<(), ReduceError> {
        let id = event.aggregate.id;
        let version = event.version as i64;
        let touch = async || -> Result<(), ReduceError> {
            let stmt = tx
                .prepare_cached(
                    "UPDATE projections.groups SET version = $2, updated_at = $3 WHERE group_id = $1",
                )
                .await?;
            tx.execute(&stmt, &[&id, &version, &event.created_at])
                .await?;
            Ok(())
        };
        match event.event_type.as_str() {
            group::ADDED => {
                let doc = event.payload["attributes"]
                    .as_object()
                    .ok_or("group.added without attributes")?;
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO projections.groups (group_id, org_id, display_name, \
                         external_id, version, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $6)",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[
                        &id,
                        &event.org_id,
                        &text(doc, "displayName").unwrap_or_default(),
                        &text(doc, "externalId"),
                        &version,
                        &event.created_at,
                    ],
                )
                .await?;
            }
            group::CHANGED => {
                let stmt = tx
                    .prepare_cached(
                        "SELECT display_name, external_id FROM projections.groups WHERE group_id = $1",
                    )
                    .await?;
                let Some(row) = tx.query_opt(&stmt, &[&id]).await? else {
                    return Err(format!("group.changed for unknown group {id}").into());
                };
                let mut doc = Map::new();
                if let Some(n) = row.get::<_, Option<String>>(0) {
                    doc.insert("displayName".into(), n.into());
                }
                if let Some(x) = row.get::<_, Option<String>>(1) {
                    doc.insert("externalId".into(), x.into());
                }
                apply_change(&mut doc, &event.payload);
                let stmt = tx
                    .prepare_cached(
                        "UPDATE projections.groups SET display_name = $2, external_id = $3, \
                         version = $4, updated_at = $5 WHERE group_id = $1",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[
                        &id,
                        &text(&doc, "displayName").unwrap_or_default(),
                        &text(&doc, "externalId"),
                        &version,
                        &event.created_at,
                    ],
                )
                .await?;
            }
            group::MEMBER_ADDED => {
                let member: Uuid = event.payload["value"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or("group.member.added without a member id")?;
                let kind = event.payload["type"].as_str().unwrap_or("User");
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO projections.group_members (group_id, member_id, org_id, member_type, added_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[&id, &member, &event.org_id, &kind, &event.created_at],
                )
                .await?;
                touch().await?;
            }
            group::MEMBER_REMOVED => {
                let member: Uuid = event.payload["value"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or("group.member.removed without a member id")?;
                let stmt = tx
                    .prepare_cached(
                        "DELETE FROM projections.group_members WHERE group_id = $1 AND member_id = $2",
                    )
                    .await?;
                tx.execute(&stmt, &[&id, &member]).await?;
                touch().await?;
            }
            group::REMOVED | user::REMOVED => {
                let stmt = tx
                    .prepare_cached("DELETE FROM projections.group_members WHERE member_id = $1")
                    .await?;
                tx.execute(&stmt, &[&id]).await?;
                if event.event_type == group::REMOVED {
                    let stmt = tx
                        .prepare_cached("DELETE FROM projections.groups WHERE group_id = $1")
                        .await?;
                    tx.execute(&stmt, &[&id]).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
