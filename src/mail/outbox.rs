//! The outbox (`mail.outbox`, owned here): a mail to send is a row written in the same
//! transaction as the events that call for it, so it is sent exactly when they commit; the
//! worker sends and retries it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::json;
use uuid::Uuid;

/// A verification mail to queue: the code and link token travel in the row's `secret`
/// (the worker clears it once the mail is sent).
pub struct Verification<'a> {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub request_id: Uuid,
    pub to: &'a str,
    pub code: &'a str,
    pub token: &'a str,
    pub name: &'a str,
}

/// Queues `mail` inside the caller's transaction `tx`, due at `now`.
pub async fn enqueue_verification<C: GenericClient>(
    tx: &C,
    mail: &Verification<'_>,
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO mail.outbox (id, org_id, user_id, request_id, kind, to_address, secret, \
         next_attempt_at, created_at) VALUES ($1, $2, $3, $4, 'email_verification', $5, $6, $7, $7)",
        &[
            &Uuid::new_v4(),
            &mail.org_id,
            &mail.user_id,
            &mail.request_id,
            &mail.to,
            &json!({"code": mail.code, "token": mail.token, "name": mail.name}),
            &now,
        ],
    )
    .await?;
    Ok(())
}
