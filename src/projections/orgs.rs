use async_trait::async_trait;
use deadpool_postgres::Transaction;

use crate::domain::org;
use crate::eventstore::StoredEvent;
use crate::projection::{Projection, ReduceError};

/// The organizations (projections.orgs).
pub struct Orgs;

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

    async fn reduce(&self, tx: &Transaction<'_>, event: &StoredEvent) -> Result<(), ReduceError> {
        if event.event_type == org::SETTINGS_CHANGED {
            let on = event.payload["verify_email_on_change"].as_bool();
            let stmt = tx
                .prepare_cached(
                    "UPDATE projections.orgs SET verify_email_on_change = \
                     coalesce($2, verify_email_on_change) WHERE org_id = $1",
                )
                .await?;
            tx.execute(&stmt, &[&event.aggregate.id, &on]).await?;
            return Ok(());
        }
        let name = event.payload["name"]
            .as_str()
            .ok_or("org.added without a name")?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO projections.orgs (org_id, name, created_at) VALUES ($1, $2, $3)",
            )
            .await?;
        tx.execute(&stmt, &[&event.aggregate.id, &name, &event.created_at])
            .await?;
        Ok(())
    }
}
