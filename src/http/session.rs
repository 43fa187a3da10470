//! The dashboard's sessions. The cookie holds a random session id, never a token; the
//! database keeps only its SHA-256 (`admin.sessions`, owned here), with an absolute expiry
//! and the SHA-256 of the admin credential that opened it. A session ends at logout, at its
//! expiry, or when that credential stops being an admin's. Failed logins are throttled per
//! client address (`throttle`).

use axum::http::{header, HeaderMap};
use base64::Engine;
use chrono::Duration;
use secrecy::ExposeSecret;

use super::AppState;
use crate::domain::token;
use crate::domain::DomainError;

/// The session cookie's name.
pub const COOKIE: &str = "portcullis_session";
/// How long a session lasts, however active.
pub const LIFETIME: Duration = Duration::hours(12);

/// A new session for `credential` (an admin token just checked); returns the cookie value.
pub async fn open(state: &AppState, credential: &str) -> Result<String, DomainError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(DomainError::Random)?;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = state.clock.now();
    let client = state.pool.get().await?;
    client
        .execute("DELETE FROM admin.sessions WHERE expires_at <= $1", &[&now])
        .await?;
    client
        .execute(
            "INSERT INTO admin.sessions (id_hash, credential_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
            &[
                &token::hash(&id),
                &token::hash(credential),
                &now,
                &(now + LIFETIME),
            ],
        )
        .await?;
    Ok(id)
}

/// Whether the session `id` is open, unexpired, and its credential still an admin's.
pub async fn valid(state: &AppState, id: &str) -> Result<bool, DomainError> {
    if id.is_empty() || id.len() > 100 {
        return Ok(false);
    }
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT credential_hash FROM admin.sessions WHERE id_hash = $1 AND expires_at > $2",
            &[&token::hash(id), &state.clock.now()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let credential: String = row.get(0);
    let bootstrap = state
        .admin_token
        .as_ref()
        .is_some_and(|t| token::hash(t.expose_secret()) == credential);
    Ok(bootstrap || token::admin_hash_active(&client, &credential).await?)
}

/// Ends the session `id` (logout); an unknown id is already closed.
pub async fn close(state: &AppState, id: &str) -> Result<(), DomainError> {
    let client = state.pool.get().await?;
    client
        .execute(
            "DELETE FROM admin.sessions WHERE id_hash = $1",
            &[&token::hash(id)],
        )
        .await?;
    Ok(())
}

/// The session id in a request's cookies.
pub fn from_cookies(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

/// The `Set-Cookie` value for a new session: HTTP-only, same-site, `Secure` unless the
/// operator said the service is served over plain http.
pub fn set_cookie(id: &str, plain_http: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.num_seconds(),
        if plain_http { "" } else { "; Secure" }
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(plain_http: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if plain_http { "" } else { "; Secure" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_secure_unless_told_otherwise() {
        assert!(set_cookie("x", false).ends_with("; Secure"));
        assert!(!set_cookie("x", true).contains("Secure"));
        assert!(set_cookie("x", false).contains("HttpOnly; SameSite=Strict; Max-Age=43200"));
    }
}
