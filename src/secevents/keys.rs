//! Per-organization signing keys for SETs: ECDSA P-256 (ES256), made by ring, named by their
//! JWK thumbprint (RFC 7638), published as a JWKS. Rotating makes a new active key and
//! retires the old one, which stays published until it is removed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::SecEventsError;

/// A key that signs.
pub struct ActiveKey {
    pub kid: String,
    pub key: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActiveKey({})", self.kid)
    }
}

/// What an admin sees of a key (never its private part).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub algorithm: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

struct NewKey {
    kid: String,
    pkcs8: Vec<u8>,
    jwk: Value,
}

fn generate() -> Result<NewKey, SecEventsError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| SecEventsError::KeyGeneration)?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| SecEventsError::KeyGeneration)?;
    // An uncompressed point: 0x04, then x and y of 32 bytes each.
    let point = pair.public_key().as_ref();
    let (x, y) = (
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    );
    // RFC 7638: the thumbprint hashes the required members in lexicographic order.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "x": x, "y": y,
        "kid": kid, "use": "sig", "alg": "ES256",
    });
    Ok(NewKey {
        kid,
        pkcs8: pkcs8.as_ref().to_vec(),
        jwk,
    })
}

async fn insert<C: GenericClient>(client: &C, org: Uuid, k: &NewKey) -> Result<(), SecEventsError> {
    client
        .execute(
            "INSERT INTO secevents.signing_keys (kid, org_id, private_key, public_jwk) \
             VALUES ($1, $2, $3, $4)",
            &[&k.kid, &org, &k.pkcs8, &k.jwk],
        )
        .await?;
    Ok(())
}

/// Makes the org's first key unless it has an active one; returns the active key's id.
pub async fn ensure<C: GenericClient>(client: &C, org: Uuid) -> Result<String, SecEventsError> {
    if let Some(kid) = active_kid(client, org).await? {
        return Ok(kid);
    }
    let k = generate()?;
    // Two registrations at once: the partial unique index lets one of them in.
    let inserted = client
        .execute(
            "INSERT INTO secevents.signing_keys (kid, org_id, private_key, public_jwk) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&k.kid, &org, &k.pkcs8, &k.jwk],
        )
        .await?;
    if inserted == 1 {
        return Ok(k.kid);
    }
    active_kid(client, org)
        .await?
        .ok_or(SecEventsError::NoSigningKey(org))
}

async fn active_kid<C: GenericClient>(
    client: &C,
    org: Uuid,
) -> Result<Option<String>, SecEventsError> {
    let row = client
        .query_opt(
            "SELECT kid FROM secevents.signing_keys WHERE org_id = $1 AND retired_at IS NULL",
            &[&org],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The key SETs of `org` are signed with now.
pub async fn active<C: GenericClient>(
    client: &C,
    org: Uuid,
) -> Result<Option<ActiveKey>, SecEventsError> {
    let stmt = client
        .prepare_cached(
            "SELECT kid, private_key FROM secevents.signing_keys \
             WHERE org_id = $1 AND retired_at IS NULL",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&org]).await?;
    Ok(row.map(|r| ActiveKey {
        kid: r.get(0),
        key: jsonwebtoken::EncodingKey::from_ec_der(r.get::<_, &[u8]>(1)),
    }))
}

/// Retires the active key and makes a new one, in one transaction; returns the new key id.
pub async fn rotate(
    client: &mut deadpool_postgres::Client,
    org: Uuid,
) -> Result<String, SecEventsError> {
    let k = generate()?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE secevents.signing_keys SET retired_at = now() \
         WHERE org_id = $1 AND retired_at IS NULL",
        &[&org],
    )
    .await?;
    insert(&tx, org, &k).await?;
    tx.commit().await?;
    Ok(k.kid)
}

/// Unpublishes a retired key: SETs it signed no longer verify. The active key stays.
pub async fn remove<C: GenericClient>(
    client: &C,
    org: Uuid,
    kid: &str,
) -> Result<(), SecEventsError> {
    let n = client
        .execute(
            "DELETE FROM secevents.signing_keys \
             WHERE org_id = $1 AND kid = $2 AND retired_at IS NOT NULL",
            &[&org, &kid],
        )
        .await?;
    if n == 1 {
        return Ok(());
    }
    let active = active_kid(client, org).await?;
    if active.as_deref() == Some(kid) {
        Err(SecEventsError::ActiveKey)
    } else {
        Err(SecEventsError::NoSuchKey(kid.chars().take(64).collect()))
    }
}

pub async fn list<C: GenericClient>(client: &C, org: Uuid) -> Result<Vec<KeyInfo>, SecEventsError> {
    let rows = client
        .query(
            "SELECT kid, algorithm, created_at, retired_at FROM secevents.signing_keys \
             WHERE org_id = $1 ORDER BY created_at DESC, kid",
            &[&org],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeyInfo {
            kid: r.get(0),
            algorithm: r.get(1),
            created_at: r.get(2),
            retired_at: r.get(3),
            active: r.get::<_, Option<DateTime<Utc>>>(3).is_none(),
        })
        .collect())
}

/// The org's JWKS (RFC 7517 §5): the active key and the retired ones not removed yet.
pub async fn jwks<C: GenericClient>(client: &C, org: Uuid) -> Result<Value, SecEventsError> {
    let rows = client
        .query(
            "SELECT public_jwk FROM secevents.signing_keys WHERE org_id = $1 \
             ORDER BY retired_at IS NOT NULL, created_at DESC",
            &[&org],
        )
        .await?;
    let keys: Vec<Value> = rows.iter().map(|r| r.get(0)).collect();
    Ok(json!({ "keys": keys }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_signs_what_its_jwk_verifies() {
        let k = generate().unwrap();
        let header = jsonwebtoken::Header {
            kid: Some(k.kid.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
        };
        let key = jsonwebtoken::EncodingKey::from_ec_der(&k.pkcs8);
        let token = jsonwebtoken::encode(&header, &json!({"jti": "a"}), &key).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.jwk.clone()).unwrap();
        let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let got = jsonwebtoken::decode::<Value>(&token, &dk, &v).unwrap();
        assert_eq!(got.claims["jti"], "a");
        assert_eq!(k.kid.len(), 43);
    }
}
