use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::rows::{self, to_load};
use crate::domain::org;
use crate::eventstore::StoredEvent;
use crate::runtime::{Projection, ReduceError, Tx};

/// The organizations (projections.orgs).
pub struct Orgs;

struct OrgRow {
    name: String,
    created_at: DateTime<Utc>,
    verify_email_on_change: bool,
}

#[async_trait]
impl Projection for Orgs {
    fn name(&self) -> &'static str {
        "orgs"
    }

    fn event_types(&self) -> Option<Vec<String>> {
        Some(vec![org::ADDED.into(), org::SETTINGS_CHANGED.into()])
    }

    fn tables(&self) -> Vec<String> {
        vec!["projections.orgs".into()]
    }

    fn replays_aggregates(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &Tx<'_>, events: &[&StoredEvent]) -> Result<(), ReduceError> {
        let sql = "SELECT org_id, name, created_at, verify_email_on_change \
                     FROM orgs WHERE org_id = ANY($1)";
        let ids = to_load(events, &[org::ADDED]);
        let mut rows = rows::load(tx, sql, &ids, |r| {
            Ok(OrgRow {
                name: r.get(1),
                created_at: r.get(2),
                verify_email_on_change: r.get(3),
            })
        })
        .await?;
        for event in events {
            let id = event.aggregate.id;
            if event.event_type == org::SETTINGS_CHANGED {
                let on = event.payload["verify_email_on_change"].as_bool();
                if let (Some(row), Some(on)) = (rows.get_mut(&id), on) {
                    row.verify_email_on_change = on;
                }
                continue;
            }
            let name = event.payload["name"]
                .as_str()
                .ok_or("org.added without a name")?;
            let row = OrgRow {
                name: name.into(),
                created_at: event.created_at,
                verify_email_on_change: false,
            };
            if !rows.create(id, row) {
                return Err(format!("org.added for existing org {id}").into());
            }
        }
        let changes = rows.into_changes();
        let statements = [
            (
                &changes.inserted,
                "INSERT INTO orgs (org_id, name, created_at, verify_email_on_change) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bool[])",
            ),
            (
                &changes.updated,
                "UPDATE orgs o SET verify_email_on_change = v.verify \
                   FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bool[]) \
                        AS v(id, name, created_at, verify) \
                  WHERE o.org_id = v.id",
            ),
        ];
        for (rows, sql) in statements {
            if rows.is_empty() {
                continue;
            }
            let ids: Vec<Uuid> = rows.iter().map(|(k, _)| *k).collect();
            let names: Vec<&str> = rows.iter().map(|(_, r)| r.name.as_str()).collect();
            let created: Vec<DateTime<Utc>> = rows.iter().map(|(_, r)| r.created_at).collect();
            let verify: Vec<bool> = rows.iter().map(|(_, r)| r.verify_email_on_change).collect();
            let stmt = tx.prepare_cached(sql).await?;
            tx.execute(&stmt, &[&ids, &names, &created, &verify])
                .await?;
        }
        Ok(())
    }
}
