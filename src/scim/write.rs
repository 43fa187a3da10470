//! SCIM writes as domain commands: POST, PUT, PATCH and DELETE of users and groups. Each
//! returns what it wrote; the HTTP layer (and /Bulk) then waits and reads.

use std::collections::{HashMap, HashSet};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use uuid::Uuid;

use super::error::ScimError;
use super::patch;
use super::resource;
use super::schema::{self, ResourceType};
use crate::domain::group::{self, Kind, Member};
use crate::domain::{user, verification, Doc, Written};
use crate::eventstore::EventStore;
use crate::http::AppState;

/// A verified address that SCIM changed gets a new code when the org asks for that. The
/// change itself is committed already; a failure here is logged, and the user can ask again.
async fn reverify(state: &AppState, org: Uuid, updated: &user::Updated) {
    if !updated.verified_address_changed {
        return;
    }
    let on = match crate::domain::org::settings(&state.store, org).await {
        Ok(s) => s.verify_email_on_change,
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), %org, "cannot read the organization's settings");
            return;
        }
    };
    if !on {
        return;
    }
    let user_id = updated.written.id;
    let (clock, settings) = (&*state.clock, &state.verification);
    match verification::request(&state.store, clock, settings, org, user_id).await {
        Ok(_) => state.wake_mailer(),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), %user_id, "no verification code after the address changed")
        }
    }
}

/// The resource `id` of `rt`: a 404 naming it for a malformed id, and for a domain
/// "not found" (another org's resource included) on the way out.
struct Target<'a> {
    rt: &'static ResourceType,
    id: &'a str,
}

impl Target<'_> {
    fn not_found(&self) -> ScimError {
        ScimError::NotFound(format!("{} {} not found", self.rt.name, self.id))
    }

    fn uuid(&self) -> Result<Uuid, ScimError> {
        parse_id(self.id).ok_or_else(|| self.not_found())
    }

    fn missing(&self, e: ScimError) -> ScimError {
        match e {
            ScimError::NotFound(_) => self.not_found(),
            e => e,
        }
    }
}

fn parse_id(id: &str) -> Option<Uuid> {
    id.parse().ok()
}

async fn hash(password: Option<SecretString>) -> Result<Option<String>, ScimError> {
    match password {
        Some(p) => Ok(Some(
            user::hash_password(p.expose_secret().to_string()).await?,
        )),
        None => Ok(None),
    }
}

/// Every uuid the values mention (except `except`), looked up at once as a user or group
/// of the org.
async fn resolve<'a>(
    state: &AppState,
    org: Uuid,
    values: impl IntoIterator<Item = &'a Value>,
    except: Option<Uuid>,
) -> Result<HashMap<Uuid, Kind>, ScimError> {
    let mut ids = HashSet::new();
    values.into_iter().for_each(|v| mentioned(v, &mut ids));
    if let Some(x) = except {
        ids.remove(&x);
    }
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let client = state.pool.get().await?;
    Ok(group::resolve_members(&client, org, &ids).await?)
}

fn mentioned(v: &Value, out: &mut HashSet<Uuid>) {
    match v {
        Value::String(s) => {
            if let Ok(id) = s.parse() {
                out.insert(id);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| mentioned(x, out)),
        Value::Object(o) => o.values().for_each(|x| mentioned(x, out)),
        _ => {}
    }
}

/// Splits a group document into attributes and members, resolving each member's kind: the
/// kind it already has, else what the store says the id is (it must exist in the org).
fn split_members(
    mut doc: Doc,
    current: &[Member],
    known: &HashMap<Uuid, Kind>,
) -> Result<(Doc, Vec<Member>), ScimError> {
    let mut members = Vec::new();
    let mut seen = HashSet::new();
    let current: HashMap<Uuid, Kind> = current.iter().map(|c| (c.id, c.kind)).collect();
    if let Some(Value::Array(items)) = doc.remove("members") {
        for m in items {
            let value = m.get("value").and_then(Value::as_str).unwrap_or_default();
            let missing = || {
                ScimError::value(format!(
                    "member {value:?} is not a user or group of this organization"
                ))
            };
            let id = parse_id(value).ok_or_else(missing)?;
            let kind = *current
                .get(&id)
                .or_else(|| known.get(&id))
                .ok_or_else(missing)?;
            if let Some(t) = m.get("type").and_then(Value::as_str) {
                if Kind::parse(t) != Some(kind) {
                    return Err(ScimError::value(format!(
                        "member {id} is a {}, not a {t}",
                        kind.as_str()
                    )));
                }
            }
            if seen.insert(id) {
                members.push(Member { id, kind });
            }
        }
    }
    Ok((doc, members))
}

fn group_doc(g: &group::Group) -> Doc {
    let mut doc = g.doc.clone();
    if !g.members.is_empty() {
        doc.insert(
            "members".into(),
            Value::Array(
                g.members
                    .iter()
                    .map(
                        |m| serde_json::json!({"value": m.id.to_string(), "type": m.kind.as_str()}),
                    )
                    .collect(),
            ),
        );
    }
    doc
}

// Each write appends through `store`: the service's, or one that defers durability to the
// read models (`EventStore::deferring`) for a writer that answers once they hold the write.

pub async fn create(
    state: &AppState,
    store: &EventStore,
    org: Uuid,
    rt: &'static ResourceType,
    body: &Value,
) -> Result<Written, ScimError> {
    let input = resource::read(rt, body)?;
    match rt.kind {
        schema::Kind::User => {
            let hash = hash(input.password).await?;
            Ok(user::create(store, org, input.doc, hash).await?)
        }
        schema::Kind::Group => {
            let known = resolve(state, org, input.doc.get("members"), None).await?;
            let (doc, members) = split_members(input.doc, &[], &known)?;
            Ok(group::create(store, org, doc, members).await?)
        }
    }
}

pub async fn replace(
    state: &AppState,
    store: &EventStore,
    org: Uuid,
    rt: &'static ResourceType,
    id: &str,
    if_match: Option<u64>,
    body: &Value,
) -> Result<Written, ScimError> {
    let target = Target { rt, id };
    let uid = target.uuid()?;
    let input = resource::read(rt, body)?;
    if input.id.as_deref().is_some_and(|given| given != id) {
        return Err(ScimError::mutability(
            "id in the body differs from the id in the URL",
        ));
    }
    let missing = |e| target.missing(e);
    match rt.kind {
        schema::Kind::User => {
            let hash = hash(input.password).await?;
            let doc = input.doc;
            let updated = user::update(store, org, uid, if_match, hash, |_| {
                Ok::<_, ScimError>(doc.clone())
            })
            .await
            .map_err(missing)?;
            reverify(state, org, &updated).await;
            Ok(updated.written)
        }
        schema::Kind::Group => {
            let known = resolve(state, org, input.doc.get("members"), None).await?;
            let doc = input.doc;
            group::update(store, org, uid, if_match, |g| {
                split_members(doc.clone(), &g.members, &known)
            })
            .await
            .map_err(missing)
        }
    }
}

pub async fn patch(
    state: &AppState,
    store: &EventStore,
    org: Uuid,
    rt: &'static ResourceType,
    id: &str,
    if_match: Option<u64>,
    body: &Value,
) -> Result<Written, ScimError> {
    let target = Target { rt, id };
    let uid = target.uuid()?;
    let ops = patch::operations(body)?;
    let missing = |e| target.missing(e);
    match rt.kind {
        schema::Kind::User => {
            let hash = hash(patch::password_in(&ops)).await?;
            let updated = user::update(store, org, uid, if_match, hash, |doc| {
                patch::apply(rt, doc, id, &ops).map(|p| p.doc)
            })
            .await
            .map_err(missing)?;
            reverify(state, org, &updated).await;
            Ok(updated.written)
        }
        schema::Kind::Group => {
            let known = resolve(state, org, &ops, Some(uid)).await?;
            group::update(store, org, uid, if_match, |g| {
                let patched = patch::apply(rt, &group_doc(g), id, &ops)?;
                split_members(patched.doc, &g.members, &known)
            })
            .await
            .map_err(missing)
        }
    }
}

pub async fn delete(
    store: &EventStore,
    org: Uuid,
    rt: &'static ResourceType,
    id: &str,
    if_match: Option<u64>,
) -> Result<Written, ScimError> {
    let target = Target { rt, id };
    let uid = target.uuid()?;
    let r = match rt.kind {
        schema::Kind::User => user::remove(store, org, uid, if_match).await,
        schema::Kind::Group => group::remove(store, org, uid, if_match).await,
    };
    r.map_err(|e| target.missing(e.into()))
}
