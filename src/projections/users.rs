use async_trait::async_trait;
use deadpool_postgres::Transaction;
use serde_json::{Map, Value};

use super::text;
use crate::domain::{apply_change, user, verification};
use crate::eventstore::StoredEvent;
use crate::projection::{Projection, ReduceError};

/// Users and their email addresses (projections.users, projections.user_emails).
pub struct Users;

#[async_trait]
impl Projection for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    fn event_types(&self) -> Option<Vec<String>> {
        Some(vec![
            user::ADDED.into(),
            user::CHANGED.into(),
            user::REMOVED.into(),
            verification::VERIFIED.into(),
            verification::EMAIL_CHANGED.into(),
            // Not shown, but they move the aggregate version: the ETag must follow.
            user::PASSWORD_CHANGED.into(),
            verification::REQUESTED.into(),
            verification::CODE_SENT.into(),
            verification::FAILED.into(),
        ])
    }

    fn tables(&self) -> Vec<String> {
        vec!["projections.user_emails".into(), "projections.users".into()]
    }

    async fn reduce(&self, tx: &Transaction<'_>, event: &StoredEvent) -> Result<(), ReduceError> {
        let id = event.aggregate.id;
        let version = event.version as i64;
        match event.event_type.as_str() {
            user::ADDED => {
                let doc = event.payload["attributes"]
                    .as_object()
                    .ok_or("user.added without attributes")?;
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO projections.users (user_id, org_id, user_name, external_id, \
                         display_name, active, doc, version, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[
                        &id,
                        &event.org_id,
                        &text(doc, "userName").unwrap_or_default(),
                        &text(doc, "externalId"),
                        &text(doc, "displayName"),
                        &active(doc),
                        &Value::Object(doc.clone()),
                        &version,
                        &event.created_at,
                    ],
                )
                .await?;
                write_emails(tx, event, doc).await?;
            }
            user::CHANGED => {
                let stmt = tx
                    .prepare_cached("SELECT doc FROM projections.users WHERE user_id = $1")
                    .await?;
                let Some(row) = tx.query_opt(&stmt, &[&id]).await? else {
                    return Err(format!("user.changed for unknown user {id}").into());
                };
                let Value::Object(mut doc) = row.get::<_, Value>(0) else {
                    return Err("users.doc is not an object".into());
                };
                apply_change(&mut doc, &event.payload);
                let stmt = tx
                    .prepare_cached(
                        "UPDATE projections.users SET user_name = $2, external_id = $3, \
                         display_name = $4, active = $5, doc = $6, version = $7, updated_at = $8 \
                         WHERE user_id = $1",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[
                        &id,
                        &text(&doc, "userName").unwrap_or_default(),
                        &text(&doc, "externalId"),
                        &text(&doc, "displayName"),
                        &active(&doc),
                        &Value::Object(doc.clone()),
                        &version,
                        &event.created_at,
                    ],
                )
                .await?;
                let emails_changed = ["set", "unset"].iter().any(|k| match &event.payload[*k] {
                    Value::Object(m) => m.contains_key("emails"),
                    Value::Array(a) => a.iter().any(|v| v == "emails"),
                    _ => false,
                });
                if emails_changed {
                    write_emails(tx, event, &doc).await?;
                }
            }
            verification::VERIFIED | verification::EMAIL_CHANGED => {
                let verified = (event.event_type == verification::VERIFIED)
                    .then(|| event.payload["email"].as_str())
                    .flatten();
                let stmt = tx
                    .prepare_cached(
                        "UPDATE projections.users SET verified_email = $2, version = $3, \
                         updated_at = $4 WHERE user_id = $1",
                    )
                    .await?;
                tx.execute(&stmt, &[&id, &verified, &version, &event.created_at])
                    .await?;
            }
            user::REMOVED => {
                let stmt = tx
                    .prepare_cached("DELETE FROM projections.users WHERE user_id = $1")
                    .await?;
                tx.execute(&stmt, &[&id]).await?;
            }
            _ => {
                let stmt = tx
                    .prepare_cached("UPDATE projections.users SET version = $2 WHERE user_id = $1")
                    .await?;
                tx.execute(&stmt, &[&id, &version]).await?;
            }
        }
        Ok(())
    }
}

fn active(doc: &Map<String, Value>) -> bool {
    doc.get("active").and_then(Value::as_bool).unwrap_or(true)
}

async fn write_emails(
    tx: &Transaction<'_>,
    event: &StoredEvent,
    doc: &Map<String, Value>,
) -> Result<(), ReduceError> {
    let id = event.aggregate.id;
    let del = tx
        .prepare_cached("DELETE FROM projections.user_emails WHERE user_id = $1")
        .await?;
    tx.execute(&del, &[&id]).await?;
    let emails = doc.get("emails").and_then(Value::as_array);
    let emails: Vec<&Map<String, Value>> = emails
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .filter(|e| e.get("value").and_then(Value::as_str).is_some())
        .collect();
    if emails.is_empty() {
        return Ok(());
    }
    let ords: Vec<i32> = (0..emails.len() as i32).collect();
    let values: Vec<&str> = emails.iter().filter_map(|e| text(e, "value")).collect();
    let types: Vec<Option<&str>> = emails.iter().map(|e| text(e, "type")).collect();
    let primary: Vec<bool> = emails
        .iter()
        .map(|e| e.get("primary").and_then(Value::as_bool).unwrap_or(false))
        .collect();
    let display: Vec<Option<&str>> = emails.iter().map(|e| text(e, "display")).collect();
    let ins = tx
        .prepare_cached(
            "INSERT INTO projections.user_emails (user_id, org_id, ord, value, type, is_primary, display) \
             SELECT $1, $2, * FROM unnest($3::int[], $4::text[], $5::text[], $6::bool[], $7::text[])",
        )
        .await?;
    tx.execute(
        &ins,
        &[
            &id,
            &event.org_id,
            &ords,
            &values,
            &types,
            &primary,
            &display,
        ],
    )
    .await?;
    Ok(())
}
