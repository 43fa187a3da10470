use std::borrow::Cow;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postgres_types::{Json, ToSql};
use serde_json::{Map, Value};
use tokio_postgres::Statement;
use uuid::Uuid;

use super::rows::{self, to_load, Changes, Rows};
use super::text;
use crate::domain::{apply_change, user, verification};
use crate::eventstore::StoredEvent;
use crate::runtime::{Projection, ReduceError, Tx};

/// Users and their email addresses (projections.users, projections.user_emails).
pub struct Users;

/// A users row as the batch changes it. A user the batch creates borrows its document from
/// the event until a later event of the batch changes it: a catch-up batch of new users
/// copies no document.
struct UserRow<'a> {
    org_id: Uuid,
    doc: Cow<'a, Map<String, Value>>,
    verified_email: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Its user_emails rows must be written again.
    emails: bool,
}

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

    fn replays_aggregates(&self) -> bool {
        true
    }

    /// Creations only: nothing to load, and [`write`] sends the users rows and then the email
    /// rows without waiting for an answer in between.
    fn sends_at_once(&self, events: &[&StoredEvent]) -> bool {
        events.iter().all(|e| e.event_type == user::ADDED)
    }

    async fn apply(&self, tx: &Tx<'_>, events: &[&StoredEvent]) -> Result<(), ReduceError> {
        let mut rows = load(tx, &to_load(events, &[user::ADDED])).await?;
        for event in events {
            fold(&mut rows, event)?;
        }
        write(tx, rows.into_changes()).await
    }
}

async fn load(tx: &Tx<'_>, ids: &[Uuid]) -> Result<Rows<Uuid, UserRow<'static>>, ReduceError> {
    let sql = "SELECT user_id, org_id, doc, verified_email, version, created_at, updated_at \
                 FROM users WHERE user_id = ANY($1)";
    rows::load(tx, sql, ids, |r| {
        let Value::Object(doc) = r.get::<_, Value>(2) else {
            return Err("users.doc is not an object".into());
        };
        Ok(UserRow {
            org_id: r.get(1),
            doc: Cow::Owned(doc),
            verified_email: r.get(3),
            version: r.get(4),
            created_at: r.get(5),
            updated_at: r.get(6),
            emails: false,
        })
    })
    .await
}

fn fold<'a>(rows: &mut Rows<Uuid, UserRow<'a>>, event: &'a StoredEvent) -> Result<(), ReduceError> {
    let id = event.aggregate.id;
    let version = event.version as i64;
    match event.event_type.as_str() {
        user::ADDED => {
            let doc = event.payload["attributes"]
                .as_object()
                .ok_or("user.added without attributes")?;
            let row = UserRow {
                org_id: event.org_id,
                doc: Cow::Borrowed(doc),
                verified_email: None,
                version,
                created_at: event.created_at,
                updated_at: event.created_at,
                emails: true,
            };
            if !rows.create(id, row) {
                return Err(format!("user.added for existing user {id}").into());
            }
        }
        user::CHANGED => {
            let row = rows
                .get_mut(&id)
                .ok_or_else(|| format!("user.changed for unknown user {id}"))?;
            apply_change(row.doc.to_mut(), &event.payload);
            row.emails |= ["set", "unset"].iter().any(|k| match &event.payload[*k] {
                Value::Object(m) => m.contains_key("emails"),
                Value::Array(a) => a.iter().any(|v| v == "emails"),
                _ => false,
            });
            row.version = version;
            row.updated_at = event.created_at;
        }
        verification::VERIFIED | verification::EMAIL_CHANGED => {
            if let Some(row) = rows.get_mut(&id) {
                row.verified_email = (event.event_type == verification::VERIFIED)
                    .then(|| event.payload["email"].as_str().map(String::from))
                    .flatten();
                row.version = version;
                row.updated_at = event.created_at;
            }
        }
        user::REMOVED => rows.remove(&id),
        _ => {
            if let Some(row) = rows.get_mut(&id) {
                row.version = version;
            }
        }
    }
    Ok(())
}

/// The users columns of a batch's rows, as arrays for unnest.
#[derive(Default)]
struct UserColumns<'a> {
    ids: Vec<Uuid>,
    orgs: Vec<Uuid>,
    user_names: Vec<&'a str>,
    external_ids: Vec<Option<&'a str>>,
    display_names: Vec<Option<&'a str>>,
    active: Vec<bool>,
    docs: Vec<Json<&'a Map<String, Value>>>,
    versions: Vec<i64>,
    created: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
    verified: Vec<Option<&'a str>>,
}

impl<'a> UserColumns<'a> {
    fn of(rows: &'a [(Uuid, UserRow<'_>)]) -> Self {
        let mut c = UserColumns::default();
        for (id, r) in rows {
            c.ids.push(*id);
            c.orgs.push(r.org_id);
            c.user_names
                .push(text(&r.doc, "userName").unwrap_or_default());
            c.external_ids.push(text(&r.doc, "externalId"));
            c.display_names.push(text(&r.doc, "displayName"));
            c.active
                .push(r.doc.get("active").and_then(Value::as_bool).unwrap_or(true));
            c.docs.push(Json(&*r.doc));
            c.versions.push(r.version);
            c.created.push(r.created_at);
            c.updated.push(r.updated_at);
            c.verified.push(r.verified_email.as_deref());
        }
        c
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.ids,
            &self.orgs,
            &self.user_names,
            &self.external_ids,
            &self.display_names,
            &self.active,
            &self.docs,
            &self.versions,
            &self.created,
            &self.updated,
            &self.verified,
        ]
    }
}

const UNNEST_USERS: &str = "unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
     $6::bool[], $7::jsonb[], $8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::text[]) \
     AS v(user_id, org_id, user_name, external_id, display_name, active, doc, version, \
          created_at, updated_at, verified_email)";

/// The email rows of users whose addresses the batch wrote.
#[derive(Default)]
struct EmailColumns<'a> {
    users: Vec<Uuid>,
    orgs: Vec<Uuid>,
    ords: Vec<i32>,
    values: Vec<&'a str>,
    types: Vec<Option<&'a str>>,
    primary: Vec<bool>,
    display: Vec<Option<&'a str>>,
}

impl<'a> EmailColumns<'a> {
    fn add(&mut self, id: Uuid, row: &'a UserRow<'_>) {
        let emails = row.doc.get("emails").and_then(Value::as_array);
        let emails = emails.into_iter().flatten().filter_map(Value::as_object);
        let mut ord = 0;
        for e in emails {
            let Some(value) = text(e, "value") else {
                continue;
            };
            self.users.push(id);
            self.orgs.push(row.org_id);
            self.ords.push(ord);
            self.values.push(value);
            self.types.push(text(e, "type"));
            self.primary
                .push(e.get("primary").and_then(Value::as_bool).unwrap_or(false));
            self.display.push(text(e, "display"));
            ord += 1;
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.users,
            &self.orgs,
            &self.ords,
            &self.values,
            &self.types,
            &self.primary,
            &self.display,
        ]
    }
}

/// The batch's statements, pipelined in this order on the connection: deletions, the users
/// rows, the email rows. The users statements go out before the email rows are laid out,
/// so the server inserts while the client builds the rest.
async fn write(tx: &Tx<'_>, changes: Changes<Uuid, UserRow<'_>>) -> Result<(), ReduceError> {
    let s = statements(tx).await?;
    let deleted: [&(dyn ToSql + Sync); 1] = [&changes.deleted];
    let (inserted, updated) = (
        UserColumns::of(&changes.inserted),
        UserColumns::of(&changes.updated),
    );
    let (inserted_params, updated_params) = (inserted.params(), updated.params());
    // Users whose addresses changed: their email rows are written again.
    let rewritten_ids: Vec<Uuid> = changes
        .updated
        .iter()
        .filter(|(_, r)| r.emails)
        .map(|(id, _)| *id)
        .collect();
    let rewritten: [&(dyn ToSql + Sync); 1] = [&rewritten_ids];
    let mut users = Vec::new();
    if !changes.deleted.is_empty() {
        users.push(tx.execute(&s.delete_users, &deleted));
        users.push(tx.execute(&s.delete_emails, &deleted));
    }
    if !inserted.ids.is_empty() {
        users.push(tx.execute(&s.insert_users, &inserted_params));
    }
    if !updated.ids.is_empty() {
        users.push(tx.execute(&s.update_users, &updated_params));
    }
    if !rewritten_ids.is_empty() {
        users.push(tx.execute(&s.delete_emails, &rewritten));
    }
    // Polled once here, so they go out now (tokio-postgres sends a prepared statement on its
    // first poll) and the email insert goes out after them.
    let mut users = std::pin::pin!(futures::future::maybe_done(futures::future::try_join_all(
        users
    )));
    let _ = futures::poll!(users.as_mut());
    let mut emails = EmailColumns::default();
    for (id, row) in changes.inserted.iter().chain(&changes.updated) {
        if row.emails {
            emails.add(*id, row);
        }
    }
    let params = emails.params();
    let insert_emails = async {
        if emails.users.is_empty() {
            Ok(0)
        } else {
            tx.execute(&s.insert_emails, &params).await
        }
    };
    let ((), inserted) = futures::join!(users.as_mut(), insert_emails);
    if let Some(written) = users.as_mut().take_output() {
        written?;
    }
    inserted?;
    Ok(())
}

/// The users model's statements, prepared once per connection.
struct Statements {
    delete_users: Statement,
    delete_emails: Statement,
    insert_users: Statement,
    update_users: Statement,
    insert_emails: Statement,
}

async fn statements(tx: &Tx<'_>) -> Result<Statements, ReduceError> {
    let insert_users = format!(
        "INSERT INTO users (user_id, org_id, user_name, external_id, \
         display_name, active, doc, version, created_at, updated_at, verified_email) \
         SELECT * FROM {UNNEST_USERS}"
    );
    let update_users = format!(
        "UPDATE users u SET user_name = v.user_name, \
         external_id = v.external_id, display_name = v.display_name, active = v.active, \
         doc = v.doc, version = v.version, updated_at = v.updated_at, \
         verified_email = v.verified_email \
         FROM {UNNEST_USERS} WHERE u.user_id = v.user_id"
    );
    let (delete_users, delete_emails, insert_users, update_users, insert_emails) = futures::try_join!(
        tx.prepare_cached("DELETE FROM users WHERE user_id = ANY($1)"),
        tx.prepare_cached("DELETE FROM user_emails WHERE user_id = ANY($1)"),
        tx.prepare_cached(&insert_users),
        tx.prepare_cached(&update_users),
        tx.prepare_cached(
            "INSERT INTO user_emails (user_id, org_id, ord, value, type, is_primary, display) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::bool[], $7::text[])",
        ),
    )?;
    Ok(Statements {
        delete_users,
        delete_emails,
        insert_users,
        update_users,
        insert_emails,
    })
}
