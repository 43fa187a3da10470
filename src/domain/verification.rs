//! Email verification (README, email verification): a code and a link token per request, only their hashes
//! in the event log, the plain values in an outbox row written in the same transaction,
//! single use, expiry, a wrong-attempt limit and a resend limit, all against a `Clock`.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{user, write, Doc, DomainError};
use crate::clock::Clock;
use crate::eventstore::{
    self, Append, EventStore, ExpectedVersion, NewEvent, Position, StoreError, StoredEvent,
};

pub const REQUESTED: &str = "user.email.verification.requested";
pub const CODE_SENT: &str = "user.email.verification.code.sent";
pub const FAILED: &str = "user.email.verification.failed";
/// The mail with the code and link was given up: the request is closed, so neither works.
pub const UNDELIVERED: &str = "user.email.verification.undelivered";
pub const VERIFIED: &str = "user.email.verified";
/// The user's address changed: verification starts over.
pub const EMAIL_CHANGED: &str = "user.email.changed";

/// Upper-case letters and digits without look-alikes (no 0/O, 1/I): 32 symbols, so each
/// is exactly 5 random bits and the draw is uniform.
pub const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
pub const CODE_LEN: usize = 8;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a code and link stay valid.
    pub ttl: Duration,
    /// How soon a user may ask again.
    pub resend_after: Duration,
    /// Wrong codes after which a code is burnt.
    pub max_failures: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ttl: Duration::hours(1),
            resend_after: Duration::minutes(1),
            max_failures: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No such user in the org (also: another org's user).
    #[error("no such user")]
    NotFound,
    #[error("the user has no email address")]
    NoEmail,
    #[error("a code was sent recently; ask again in {retry_after} s")]
    TooSoon { retry_after: i64 },
    /// Wrong, expired, used or burnt code or link, or an unknown user: one answer for all.
    #[error("invalid or expired code")]
    Invalid,
    #[error(transparent)]
    Domain(#[from] DomainError),
}

impl From<StoreError> for VerifyError {
    fn from(e: StoreError) -> Self {
        VerifyError::Domain(e.into())
    }
}

/// The request in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Uuid,
    pub email: String,
    pub code_hash: String,
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
    pub failures: u32,
    /// Used, burnt, or voided by a change of address.
    pub closed: bool,
}

/// A user's verification state, from the user's events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub user: Option<user::User>,
    pub request: Option<Request>,
    pub verified_email: Option<String>,
    pub last_requested_at: Option<DateTime<Utc>>,
}

impl State {
    /// The address verification is about.
    pub fn address(&self) -> Option<String> {
        self.user.as_ref().and_then(|u| address(&u.doc))
    }

    pub fn verified(&self) -> bool {
        matches!((self.address(), &self.verified_email), (Some(a), Some(v)) if a.eq_ignore_ascii_case(v))
    }
}

/// A user's address: the primary email, else the first.
pub fn address(doc: &Doc) -> Option<String> {
    let emails = doc.get("emails")?.as_array()?;
    let value = |e: &Value| e.get("value").and_then(Value::as_str).map(str::to_string);
    emails
        .iter()
        .find(|e| e.get("primary") == Some(&Value::Bool(true)))
        .and_then(value)
        .or_else(|| emails.iter().find_map(value))
}

pub fn fold(events: &[StoredEvent], max_failures: u32) -> State {
    let mut s = State {
        user: user::fold(events),
        ..State::default()
    };
    for e in events {
        let p = &e.payload;
        match e.event_type.as_str() {
            REQUESTED => {
                let (Some(id), Some(expires_at)) = (
                    p["request_id"].as_str().and_then(|x| x.parse().ok()),
                    p["expires_at"]
                        .as_str()
                        .and_then(|x| DateTime::parse_from_rfc3339(x).ok()),
                ) else {
                    continue;
                };
                s.request = Some(Request {
                    id,
                    email: p["email"].as_str().unwrap_or_default().to_string(),
                    code_hash: p["code_hash"].as_str().unwrap_or_default().to_string(),
                    token_hash: p["token_hash"].as_str().unwrap_or_default().to_string(),
                    expires_at: expires_at.with_timezone(&Utc),
                    failures: 0,
                    closed: false,
                });
                s.last_requested_at = p["requested_at"]
                    .as_str()
                    .and_then(|x| DateTime::parse_from_rfc3339(x).ok())
                    .map(|t| t.with_timezone(&Utc));
            }
            FAILED => {
                if let Some(r) = s
                    .request
                    .as_mut()
                    .filter(|r| p["request_id"] == json!(r.id))
                {
                    r.failures += 1;
                    if r.failures >= max_failures {
                        r.closed = true;
                    }
                }
            }
            UNDELIVERED => {
                if let Some(r) = s
                    .request
                    .as_mut()
                    .filter(|r| p["request_id"] == json!(r.id))
                {
                    r.closed = true;
                }
            }
            VERIFIED => {
                s.verified_email = p["email"].as_str().map(str::to_string);
                if let Some(r) = s.request.as_mut() {
                    r.closed = true;
                }
            }
            EMAIL_CHANGED | user::REMOVED => {
                s.verified_email = None;
                s.request = None;
            }
            _ => {}
        }
    }
    s
}

fn random(bytes: &mut [u8]) -> Result<(), DomainError> {
    getrandom::fill(bytes).map_err(DomainError::Random)
}

/// A code of CODE_LEN symbols, each 5 bits of OS randomness.
pub fn generate_code() -> Result<String, DomainError> {
    let mut bytes = [0u8; CODE_LEN];
    random(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect())
}

/// A link token: 32 random bytes, base64url.
pub fn generate_token() -> Result<String, DomainError> {
    let mut bytes = [0u8; 32];
    random(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Link tokens carry 256 bits, so a plain SHA-256 cannot be reversed.
pub fn hash_token(token: &str) -> String {
    super::token::hash(token)
}

/// Codes have only 40 bits: a salted argon2id hash, so the event log does not give them away
/// to a brute-force search. Lighter than for passwords (4 MiB, one pass, about 4 ms): a
/// code lives at most an hour, and 2^40 guesses at this cost take far longer than that,
/// while every verification request pays it once.
fn code_hasher() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(4096, 1, 1, None).expect("valid argon2 parameters");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

async fn hash_code(code: String) -> Result<String, DomainError> {
    let mut salt = [0u8; 16];
    random(&mut salt)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&salt)
            .map_err(|e| DomainError::Hash(super::HashError::Argon2(e)))?;
        code_hasher()
            .hash_password(code.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| DomainError::Hash(super::HashError::Argon2(e)))
    })
    .await
    .map_err(|e| DomainError::Hash(super::HashError::Task(e)))?
}

/// Compares in constant time (argon2's verification compares its outputs so).
async fn code_matches(code: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(code.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// What people type: case and separators do not matter.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// How the mail greets the user: displayName, given name, or userName.
fn greeting_name(doc: &Doc) -> String {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    s(doc.get("displayName"))
        .or_else(|| s(doc.get("name").and_then(|n| n.get("givenName"))))
        .or_else(|| s(doc.get("userName")))
        .unwrap_or_default()
}

/// A request just written: the plain secrets exist only here and in the outbox row.
pub struct Requested {
    pub request_id: Uuid,
    pub position: Position,
}

/// Asks for a code and a link for the user's address: one event and one outbox row, in one
/// transaction under the user's lock.
pub async fn request(
    store: &EventStore,
    clock: &dyn Clock,
    settings: &Settings,
    org_id: Uuid,
    user_id: Uuid,
) -> Result<Requested, VerifyError> {
    let code = generate_code()?;
    let token = generate_token()?;
    let code_hash = hash_code(code.clone()).await?;
    let agg = user::aggregate(user_id);
    let mut client = store.pool().get().await.map_err(DomainError::from)?;
    let tx = client.transaction().await.map_err(DomainError::from)?;
    eventstore::lock_aggregate(&tx, &agg)
        .await
        .map_err(DomainError::from)?;
    let events = eventstore::load(&tx, &agg).await?;
    let state = fold(&events, settings.max_failures);
    let Some(u) = state.user.as_ref().filter(|u| u.org_id == org_id) else {
        return Err(VerifyError::NotFound);
    };
    let email = state.address().ok_or(VerifyError::NoEmail)?;
    let now = clock.now();
    if let Some(last) = state.last_requested_at {
        let next = last + settings.resend_after;
        if now < next {
            let ms = (next - now).num_milliseconds();
            return Err(VerifyError::TooSoon {
                retry_after: (ms + 999) / 1000,
            });
        }
    }
    let request_id = Uuid::new_v4();
    let append = Append::new(org_id, agg, ExpectedVersion::Exact(u.version)).event(NewEvent::new(
        REQUESTED,
        json!({
            "request_id": request_id,
            "email": email,
            "code_hash": code_hash,
            "token_hash": hash_token(&token),
            "expires_at": (now + settings.ttl).to_rfc3339(),
            "requested_at": now.to_rfc3339(),
        }),
    ));
    let pushed = store.push_in(&tx, &[append]).await?;
    let mail = crate::mail::outbox::Verification {
        org_id,
        user_id,
        request_id,
        to: &email,
        code: &code,
        token: &token,
        name: &greeting_name(&u.doc),
    };
    crate::mail::outbox::enqueue_verification(&tx, &mail, now)
        .await
        .map_err(DomainError::from)?;
    tx.commit().await.map_err(DomainError::from)?;
    store.committed(&pushed);
    Ok(Requested {
        request_id,
        position: pushed.last(),
    })
}

/// Checks a typed code. A wrong code for a live request is recorded (it counts toward
/// burning the code); every failure gives the same error.
pub async fn verify_code(
    store: &EventStore,
    clock: &dyn Clock,
    settings: &Settings,
    org_id: Uuid,
    user_id: Uuid,
    code: &str,
) -> Result<Position, VerifyError> {
    let agg = user::aggregate(user_id);
    let events = {
        let client = store.pool().get().await.map_err(DomainError::from)?;
        eventstore::load(&client, &agg).await?
    };
    let state = fold(&events, settings.max_failures);
    let now = clock.now();
    let live = |s: &State| -> Option<Request> {
        s.user.as_ref().filter(|u| u.org_id == org_id)?;
        s.request
            .clone()
            .filter(|r| !r.closed && now < r.expires_at)
    };
    let Some(req) = live(&state) else {
        return Err(VerifyError::Invalid);
    };
    let code = normalize(code);
    let ok = code.len() == CODE_LEN && code_matches(code, req.code_hash.clone()).await;
    let position = write(store, &agg, |events| -> Result<_, VerifyError> {
        let s = fold(events, settings.max_failures);
        let (Some(u), Some(r)) = (s.user.as_ref(), live(&s)) else {
            return Err(VerifyError::Invalid);
        };
        if r.id != req.id {
            return Err(VerifyError::Invalid); // a newer request replaced it meanwhile
        }
        let event = if ok {
            NewEvent::new(
                VERIFIED,
                json!({"request_id": r.id, "email": r.email, "via": "code"}),
            )
        } else {
            NewEvent::new(
                FAILED,
                json!({"request_id": r.id, "failures": r.failures + 1}),
            )
        };
        Ok(Some(
            Append::new(org_id, agg.clone(), ExpectedVersion::Exact(u.version)).event(event),
        ))
    })
    .await?;
    if ok {
        Ok(position)
    } else {
        Err(VerifyError::Invalid)
    }
}

/// Checks a link token (the user id comes with it in the link).
pub async fn verify_link(
    store: &EventStore,
    clock: &dyn Clock,
    settings: &Settings,
    user_id: Uuid,
    token: &str,
) -> Result<Position, VerifyError> {
    let agg = user::aggregate(user_id);
    let presented = hash_token(token);
    let now = clock.now();
    write(store, &agg, |events| -> Result<_, VerifyError> {
        let s = fold(events, settings.max_failures);
        let (Some(u), Some(r)) = (s.user.as_ref(), s.request.as_ref()) else {
            return Err(VerifyError::Invalid);
        };
        let matches: bool = presented.as_bytes().ct_eq(r.token_hash.as_bytes()).into();
        if !matches || r.closed || now >= r.expires_at {
            return Err(VerifyError::Invalid);
        }
        Ok(Some(
            Append::new(u.org_id, agg.clone(), ExpectedVersion::Exact(u.version)).event(
                NewEvent::new(
                    VERIFIED,
                    json!({"request_id": r.id, "email": r.email, "via": "link"}),
                ),
            ),
        ))
    })
    .await
}

/// The user's address and whether it is verified, from the user's events.
pub async fn status(
    store: &EventStore,
    settings: &Settings,
    org_id: Uuid,
    user_id: Uuid,
) -> Result<(Option<String>, bool), VerifyError> {
    let client = store.pool().get().await.map_err(DomainError::from)?;
    let events = eventstore::load(&client, &user::aggregate(user_id)).await?;
    let s = fold(&events, settings.max_failures);
    if s.user.as_ref().is_none_or(|u| u.org_id != org_id) {
        return Err(VerifyError::NotFound);
    }
    Ok((s.address(), s.verified()))
}

/// Records that the mail for `request_id` went out (the outbox row is deleted in `tx`).
pub fn code_sent(org_id: Uuid, user_id: Uuid, request_id: Uuid) -> Append {
    Append::new(org_id, user::aggregate(user_id), ExpectedVersion::Any)
        .event(NewEvent::new(CODE_SENT, json!({"request_id": request_id})))
}

/// Records that the mail for `request_id` was given up (its outbox row loses its secrets in
/// `tx`): the code and the link of that request stop working.
pub fn undelivered(org_id: Uuid, user_id: Uuid, request_id: Uuid) -> Append {
    Append::new(org_id, user::aggregate(user_id), ExpectedVersion::Any).event(NewEvent::new(
        UNDELIVERED,
        json!({"request_id": request_id}),
    ))
}

/// For user.rs: whether a change of attributes changes the address, and whether the old one
/// was verified.
pub fn address_change(
    events: &[StoredEvent],
    old: &Doc,
    new: &Doc,
) -> Option<(Option<String>, bool)> {
    let (a, b) = (address(old), address(new));
    let same = match (&a, &b) {
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
        (None, None) => true,
        _ => false,
    };
    if same {
        return None;
    }
    let was_verified = fold(events, u32::MAX).verified();
    Some((b, was_verified))
}

/// The event for a change of address.
pub fn email_changed(new: Option<&str>) -> NewEvent {
    NewEvent::new(EMAIL_CHANGED, json!({ "email": new }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_uniform_over_the_alphabet_and_unambiguous() {
        let mut counts = [0u32; 32];
        for _ in 0..4000 {
            let c = generate_code().unwrap();
            assert_eq!(c.len(), CODE_LEN);
            for b in c.bytes() {
                counts[ALPHABET.iter().position(|a| *a == b).unwrap()] += 1;
            }
        }
        // 32000 draws, 1000 expected per symbol; a biased draw would stray far.
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        for confusable in [b'0', b'O', b'1', b'I'] {
            assert!(!ALPHABET.contains(&confusable));
        }
        assert_ne!(generate_token().unwrap(), generate_token().unwrap());
        assert_eq!(generate_token().unwrap().len(), 43);
    }

    #[test]
    fn typed_codes_are_normalized() {
        assert_eq!(normalize(" abcd-efgh "), "ABCDEFGH");
    }

    #[tokio::test]
    async fn code_hashes_are_salted_and_verify() {
        let h1 = hash_code("ABCDEFGH".into()).await.unwrap();
        let h2 = hash_code("ABCDEFGH".into()).await.unwrap();
        assert_ne!(h1, h2);
        assert!(h1.starts_with("$argon2id$"));
        assert!(code_matches("ABCDEFGH".into(), h1.clone()).await);
        assert!(!code_matches("ABCDEFGJ".into(), h1).await);
    }
}
