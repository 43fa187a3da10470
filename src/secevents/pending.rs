//! The two ways a waiting SET leaves the queue, for push and poll alike: acknowledged
//! (deleted: it never comes back) or refused by the receiver (kept aside until a retry).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::error::SecEventsError;

/// Deletes the SETs of receiver `id` with these jtis; returns how many there were.
pub(super) async fn acknowledge<C: GenericClient>(
    client: &C,
    id: Uuid,
    jtis: &[&str],
) -> Result<u64, SecEventsError> {
    if jtis.is_empty() {
        return Ok(0);
    }
    Ok(client
        .execute(
            "DELETE FROM secevents.pending WHERE receiver_id = $1 AND jti = ANY($2)",
            &[&id, &jtis],
        )
        .await?)
}

/// Sets aside the SETs the receiver refused, each with its reason; returns how many.
pub(super) async fn refuse<C: GenericClient>(
    client: &C,
    id: Uuid,
    refused: &[(&str, String)],
    now: DateTime<Utc>,
) -> Result<u64, SecEventsError> {
    if refused.is_empty() {
        return Ok(0);
    }
    let (jti, why): (Vec<&str>, Vec<&str>) = refused.iter().map(|(j, w)| (*j, w.as_str())).unzip();
    Ok(client
        .execute(
            "UPDATE secevents.pending p SET rejected_at = $4, rejection = r.why \
               FROM unnest($2::text[], $3::text[]) AS r(jti, why) \
              WHERE p.receiver_id = $1 AND p.jti = r.jti AND p.rejected_at IS NULL",
            &[&id, &jti, &why, &now],
        )
        .await?)
}
