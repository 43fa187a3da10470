use std::collections::HashMap;

use async_trait::async_trait;
use uuid::Uuid;

use crate::eventstore::StoredEvent;
use crate::runtime::{Projection, ReduceError, Tx};

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

    /// One upsert, whatever the events.
    fn sends_at_once(&self, _events: &[&StoredEvent]) -> bool {
        true
    }

    async fn apply(&self, tx: &Tx<'_>, events: &[&StoredEvent]) -> Result<(), ReduceError> {
        // Counted in memory, then one upsert: events come in log order, so the last one of
        // each key holds its last position.
        let mut counts: HashMap<(Uuid, &str), (i64, String)> = HashMap::new();
        for e in events {
            let c = counts.entry((e.org_id, e.event_type.as_str())).or_default();
            c.0 += 1;
            c.1 = e.position.to_string();
        }
        let (mut orgs, mut types, mut n, mut last) = (vec![], vec![], vec![], vec![]);
        for ((org, ty), (count, pos)) in counts {
            orgs.push(org);
            types.push(ty);
            n.push(count);
            last.push(pos);
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO event_counts AS c (org_id, event_type, events, last_position) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[]) \
                 ON CONFLICT (org_id, event_type) DO UPDATE \
                    SET events = c.events + EXCLUDED.events, last_position = EXCLUDED.last_position",
            )
            .await?;
        tx.execute(&stmt, &[&orgs, &types, &n, &last]).await?;
        Ok(())
    }
}
