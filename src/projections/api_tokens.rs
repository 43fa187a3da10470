use async_trait::async_trait;
use deadpool_postgres::Transaction;

use crate::domain::token;
use crate::eventstore::StoredEvent;
use crate::projection::{Projection, ReduceError};

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

    async fn reduce(&self, tx: &Transaction<'_>, event: &StoredEvent) -> Result<(), ReduceError> {
        match event.event_type.as_str() {
            token::ISSUED => {
                let p = &event.payload;
                let scope = p["scope"].as_str().ok_or("token.issued without a scope")?;
                let hash = p["hash"].as_str().ok_or("token.issued without a hash")?;
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO projections.api_tokens \
                         (token_id, org_id, scope, name, token_hash, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[
                        &event.aggregate.id,
                        &event.org_id,
                        &scope,
                        &p["name"].as_str(),
                        &hash,
                        &event.created_at,
                    ],
                )
                .await?;
            }
            token::REVOKED => {
                let stmt = tx
                    .prepare_cached(
                        "UPDATE projections.api_tokens SET revoked_at = $2 WHERE token_id = $1",
                    )
                    .await?;
                tx.execute(&stmt, &[&event.aggregate.id, &event.created_at])
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}
