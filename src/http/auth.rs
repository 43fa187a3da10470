//! Who is calling: bearer tokens, org tokens (the SCIM scope, for `/scim/v2/{org}` and
//! `/api/v1/orgs/{org}`), and admins (the bootstrap token or an admin-scope API token, by
//! bearer, or a dashboard session opened with one: `session`). Every failure looks the same to the caller, so nothing
//! reveals whether an org or a token exists. Each surface turns [`AuthError`] into its own
//! error body.

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::AppState;
use crate::domain::provenance::Actor;
use crate::domain::token::{self, Scope};
use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing, malformed or unknown bearer token")]
    Unauthorized,
    /// This address presented too many unknown tokens lately (`throttle`).
    #[error("too many unknown bearer tokens from this address; try again in {retry_after} s")]
    Throttled { retry_after: i64 },
    #[error("cannot check the token")]
    Check(#[from] DomainError),
}

impl From<deadpool_postgres::PoolError> for AuthError {
    fn from(e: deadpool_postgres::PoolError) -> AuthError {
        AuthError::Check(DomainError::from(e))
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// The address a request came from (the accept loop records it).
pub fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Who `presented` speaks for, through the token cache. An address that presented too many
/// unknown tokens lately gets no lookup (so a flood of made-up tokens costs no query) unless
/// the token is one this process has seen valid.
async fn lookup(
    state: &AppState,
    presented: &str,
    from: Option<IpAddr>,
) -> Result<Option<token::Caller>, AuthError> {
    let now = state.clock.now();
    if let Some(ip) = from {
        if let Err(retry_after) = state.bearer_failures.check(ip, now) {
            if !state.tokens.seen_valid(presented) {
                return Err(AuthError::Throttled { retry_after });
            }
        }
    }
    let at = state.hub.generation("api_tokens");
    let caller = state
        .tokens
        .authenticate(&state.pool, presented, at, now)
        .await?;
    match &caller {
        Some(c) => Actor::Token {
            token_id: c.token_id,
            name: c.name.clone(),
            scope: c.scope,
        }
        .record(),
        None => {
            if let Some(ip) = from {
                state.bearer_failures.failed(ip, now);
            }
        }
    }
    Ok(caller)
}

/// Checks that the request's bearer token is an org token of `org` with `scope`.
pub async fn check_org_token(
    state: &AppState,
    org: Uuid,
    scope: Scope,
    parts: &Parts,
) -> Result<(), AuthError> {
    let presented = bearer(&parts.headers).ok_or(AuthError::Unauthorized)?;
    match lookup(state, presented, peer(parts)).await? {
        Some(c) if c.org_id == org && c.scope == scope => Ok(()),
        _ => Err(AuthError::Unauthorized),
    }
}

/// The `{org}` of the route.
async fn org_in_path(parts: &mut Parts, state: &AppState) -> Result<Uuid, AuthError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| AuthError::Unauthorized)?;
    params
        .iter()
        .find(|(k, _)| *k == "org")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or(AuthError::Unauthorized)
}

/// A caller holding an org token (SCIM scope) of the `{org}` in the route; `E` is the
/// surface's error.
pub struct OrgCaller<E> {
    pub org: Uuid,
    surface: PhantomData<fn() -> E>,
}

impl<E> FromRequestParts<AppState> for OrgCaller<E>
where
    E: From<AuthError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, E> {
        let org = org_in_path(parts, state).await?;
        check_org_token(state, org, Scope::Scim, parts).await?;
        Ok(OrgCaller {
            org,
            surface: PhantomData,
        })
    }
}

/// A caller who may read the audit trail of the `{org}` in the route: an audit-scope token
/// of that org, or an admin (bearer).
pub struct OrgAuditor<E> {
    pub org: Uuid,
    surface: PhantomData<fn() -> E>,
}

impl<E> FromRequestParts<AppState> for OrgAuditor<E>
where
    E: From<AuthError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, E> {
        let org = org_in_path(parts, state).await?;
        let presented = bearer(&parts.headers).ok_or(AuthError::Unauthorized)?;
        let allowed = is_bootstrap(state, presented)
            || match lookup(state, presented, peer(parts)).await? {
                Some(c) => (c.org_id == org && c.scope == Scope::Audit) || c.scope == Scope::Admin,
                None => false,
            };
        if !allowed {
            return Err(AuthError::Unauthorized.into());
        }
        Ok(OrgAuditor {
            org,
            surface: PhantomData,
        })
    }
}

/// Whether `presented` is the bootstrap token (compared in constant time) or an API token
/// with the admin scope; `from` is the caller's address.
pub async fn is_admin(
    state: &AppState,
    presented: Option<&str>,
    from: Option<IpAddr>,
) -> Result<bool, AuthError> {
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    if is_bootstrap(state, presented) {
        return Ok(true);
    }
    Ok(matches!(
        lookup(state, presented, from).await?,
        Some(caller) if caller.scope == Scope::Admin
    ))
}

/// Whether `presented` is `PORTCULLIS_ADMIN_TOKEN` (compared in constant time); if so, the
/// bootstrap admin is the actor.
fn is_bootstrap(state: &AppState, presented: &str) -> bool {
    let Some(expected) = &state.admin_token else {
        return false;
    };
    let same = bool::from(
        presented
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    );
    if same {
        Actor::BootstrapAdmin.record();
    }
    same
}

/// An admin caller; `E` is the surface's error (a JSON 401, or the dashboard's redirect to
/// its login form).
pub struct Admin<E>(PhantomData<fn() -> E>);

impl<E> FromRequestParts<AppState> for Admin<E>
where
    E: From<AuthError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, E> {
        let admin = match bearer(&parts.headers) {
            Some(token) => is_admin(state, Some(token), peer(parts)).await?,
            None => match super::session::from_cookies(&parts.headers) {
                Some(id) => {
                    let valid = super::session::valid(state, &id)
                        .await
                        .map_err(AuthError::from)?;
                    if valid {
                        let session = token::hash(&id)[..12].to_string();
                        Actor::DashboardSession { session }.record();
                    }
                    valid
                }
                None => false,
            },
        };
        if admin {
            Ok(Admin(PhantomData))
        } else {
            Err(AuthError::Unauthorized.into())
        }
    }
}
