use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::token;
use crate::eventstore::StoredEvent;
use crate::runtime::{Projection, ReduceError, Tx};

/// API tokens by hash, for authentication (projections.api_tokens).
pub struct ApiTokens;

#[async_trait]
impl Projection for ApiTokens {
    fn name(&self) -> &'static str {
        "api_tokens"
    }

    fn event_types(&self) -> Option<Vec<String>> {
        Some(vec![token::ISSUED.into(), token::REVOKED.into()])
    }

    fn tables(&self) -> Vec<String> {
        vec!["projections.api_tokens".into()]
    }

    fn replays_aggregates(&self) -> bool {
        true
    }

    /// Issued tokens go in with one INSERT, then revocations with one UPDATE: a token is
    /// revoked once, after it was issued, so the two never need ordering among themselves.
    async fn apply(&self, tx: &Tx<'_>, events: &[&StoredEvent]) -> Result<(), ReduceError> {
        let (mut ids, mut orgs, mut scopes, mut names, mut hashes, mut created) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut revoked, mut revoked_at): (Vec<Uuid>, Vec<DateTime<Utc>>) = (vec![], vec![]);
        for event in events {
            let p = &event.payload;
            match event.event_type.as_str() {
                token::ISSUED => {
                    ids.push(event.aggregate.id);
                    orgs.push(event.org_id);
                    scopes.push(p["scope"].as_str().ok_or("token.issued without a scope")?);
                    names.push(p["name"].as_str());
                    hashes.push(p["hash"].as_str().ok_or("token.issued without a hash")?);
                    created.push(event.created_at);
                }
                token::REVOKED => {
                    revoked.push(event.aggregate.id);
                    revoked_at.push(event.created_at);
                }
                _ => {}
            }
        }
        if !ids.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO api_tokens \
                     (token_id, org_id, scope, name, token_hash, created_at) \
                     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], \
                                          $5::text[], $6::timestamptz[])",
                )
                .await?;
            tx.execute(&stmt, &[&ids, &orgs, &scopes, &names, &hashes, &created])
                .await?;
        }
        if !revoked.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "UPDATE api_tokens t SET revoked_at = v.at \
                       FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at) \
                      WHERE t.token_id = v.id",
                )
                .await?;
            tx.execute(&stmt, &[&revoked, &revoked_at]).await?;
        }
        Ok(())
    }
}
