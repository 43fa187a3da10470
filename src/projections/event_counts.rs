use async_trait::async_trait;
use deadpool_postgres::Transaction;

use crate::eventstore::StoredEvent;
use crate::projection::{Projection, ReduceError};

/// Events per organization and type (projections.event_counts).
pub struct EventCounts;

#[async_trait]
impl Projection for EventCounts {
    fn name(&self) -> &'static str {
        "event_counts"
    }

    fn event_types(&self) -> Option<Vec<String>> {
        None
    }

    fn tables(&self) -> Vec<String> {
        vec!["projections.event_counts".into()]
    }

    async fn reduce(&self, tx: &Transaction<'_>, event: &StoredEvent) -> Result<(), ReduceError> {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO projections.event_counts AS c (org_id, event_type, events, last_position) \
                 VALUES ($1, $2, 1, $3) \
                 ON CONFLICT (org_id, event_type) DO UPDATE \
                    SET events = c.events + 1, last_position = EXCLUDED.last_position",
            )
            .await?;
        tx.execute(
            &stmt,
            &[
                &event.org_id,
                &event.event_type,
                &event.position.to_string(),
            ],
        )
        .await?;
        Ok(())
    }
}
