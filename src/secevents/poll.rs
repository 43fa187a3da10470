//! Poll delivery (RFC 8936): the receiver POSTs its acknowledgements (`ack`), the SETs it
//! refuses (`setErrs`) and how many it wants (`maxEvents`), and gets the oldest SETs it has
//! not acknowledged (`sets`, by jti) and whether more wait (`moreAvailable`). Acknowledged
//! SETs are deleted, so they never come back; unacknowledged ones come back on the next poll.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::SecEventsError;

/// SETs one poll returns unless `maxEvents` says fewer, and the most it may ask for.
pub const DEFAULT_MAX_EVENTS: usize = 100;
pub const MAX_EVENTS: usize = 1000;
/// Acknowledgements and errors one poll may carry.
pub const MAX_ACKS: usize = 10_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollRequest {
    #[serde(default)]
    pub ack: Vec<String>,
    #[serde(default)]
    pub set_errs: BTreeMap<String, SetErr>,
    pub max_events: Option<usize>,
    #[serde(default)]
    pub return_immediately: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SetErr {
    pub err: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PollResponse {
    /// In log order (the service's JSON objects keep their order).
    pub sets: serde_json::Map<String, serde_json::Value>,
    pub more_available: bool,
}

impl PollRequest {
    pub fn check(&self) -> Result<usize, SecEventsError> {
        if self.ack.len() + self.set_errs.len() > MAX_ACKS {
            return Err(SecEventsError::Invalid(format!(
                "at most {MAX_ACKS} acknowledgements and errors per poll"
            )));
        }
        if self
            .ack
            .iter()
            .chain(self.set_errs.keys())
            .any(|j| j.len() > 128)
        {
            return Err(SecEventsError::Invalid(
                "a jti is at most 128 characters".into(),
            ));
        }
        match self.max_events {
            Some(n) if n > MAX_EVENTS => Err(SecEventsError::Invalid(format!(
                "maxEvents is at most {MAX_EVENTS}"
            ))),
            Some(n) => Ok(n),
            None => Ok(DEFAULT_MAX_EVENTS),
        }
    }
}

/// Applies the acknowledgements and errors of a poll.
pub async fn settle(
    pool: &Pool,
    id: Uuid,
    req: &PollRequest,
    now: DateTime<Utc>,
) -> Result<(), SecEventsError> {
    if req.ack.is_empty() && req.set_errs.is_empty() {
        return Ok(());
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let ack: Vec<&str> = req.ack.iter().map(String::as_str).collect();
    let acked = super::pending::acknowledge(&tx, id, &ack).await?;
    let refused: Vec<(&str, String)> = req
        .set_errs
        .iter()
        .map(|(j, e)| {
            let d = e.description.as_deref().unwrap_or_default();
            (
                j.as_str(),
                format!("{}: {}", e.err, d).chars().take(500).collect(),
            )
        })
        .collect();
    let refused = super::pending::refuse(&tx, id, &refused, now).await?;
    tx.execute(
        "UPDATE secevents.receivers SET delivered_total = delivered_total + $2, \
           last_delivered_at = $3 WHERE id = $1",
        &[&id, &((acked + refused) as i64), &now],
    )
    .await?;
    tx.commit().await?;
    crate::metrics::metrics().sets_delivered.inc_by(acked);
    Ok(())
}

/// The oldest `max` SETs waiting for receiver `id`.
pub async fn take(pool: &Pool, id: Uuid, max: usize) -> Result<PollResponse, SecEventsError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT jti, token FROM secevents.pending \
             WHERE receiver_id = $1 AND rejected_at IS NULL ORDER BY tx, seq, jti LIMIT $2",
            &[&id, &(max as i64 + 1)],
        )
        .await?;
    let more_available = rows.len() > max;
    let sets = rows
        .iter()
        .take(max)
        .map(|r| (r.get(0), serde_json::Value::String(r.get(1))))
        .collect();
    Ok(PollResponse {
        sets,
        more_available,
    })
}
