//! Read-your-writes on the SCIM surface: what a request waits for before it answers.

use super::error::ScimError;
use crate::domain::DomainError;
use crate::eventstore::Position;
use crate::http::AppState;

/// The read models SCIM answers from: every response waits for both.
pub const READ_MODELS: [&str; 2] = ["users", "groups"];

/// Waits until the read models reach `position` (503 after the configured timeout).
pub async fn wait(state: &AppState, position: Option<Position>) -> Result<(), ScimError> {
    if let Some(p) = position {
        state
            .hub
            .wait_for_all(&READ_MODELS, p, state.scim.wait_timeout)
            .await?;
    }
    Ok(())
}

/// What a read needs first: its Min-Position reached (announced, then confirmed on the
/// connection the read will use), and no read model it answers from half-built after a
/// reset (a 503 with Retry-After then, never a partial answer).
pub async fn wait_for_read<C: deadpool_postgres::GenericClient>(
    state: &AppState,
    client: &C,
    position: Option<Position>,
) -> Result<(), ScimError> {
    wait(state, position).await?;
    if let Some(p) = position {
        confirm(client, p).await??;
    }
    match READ_MODELS.into_iter().find(|m| !state.hub.is_complete(m)) {
        Some(model) => Err(ScimError::Incomplete(model)),
        None => Ok(()),
    }
}

/// That the read models SCIM answers from hold `position` in the database, not only in the
/// hub (see `runtime::confirm_reached`): a 503 after a crash of PostgreSQL took what was
/// announced.
pub async fn confirm<C: deadpool_postgres::GenericClient>(
    client: &C,
    position: Position,
) -> Result<Result<(), ScimError>, ScimError> {
    Ok(
        crate::runtime::confirm_reached(client, &READ_MODELS, position)
            .await?
            .map_err(ScimError::NotCaughtUp),
    )
}

pub async fn wait_after_write(state: &AppState, position: Position) -> Result<(), ScimError> {
    after_write(state, wait(state, Some(position)).await, position).await
}

/// [`confirm`] for a write's read back, on the connection that reads it next.
pub async fn confirm_after_write<C: deadpool_postgres::GenericClient>(
    state: &AppState,
    client: &C,
    position: Position,
) -> Result<(), ScimError> {
    after_write(state, confirm(client, position).await?, position).await
}

/// A write that is kept but not visible yet: 503 with its position, so the client can wait
/// for it instead of writing it again. Kept means durable before the client hears it: a
/// write whose append deferred its flush to the read models (`EventStore::deferring`) waits
/// for a flush of its own here.
async fn after_write(
    state: &AppState,
    waited: Result<(), ScimError>,
    position: Position,
) -> Result<(), ScimError> {
    match waited {
        Err(ScimError::NotCaughtUp(error)) => {
            state
                .store
                .make_durable()
                .await
                .map_err(DomainError::from)?;
            Err(ScimError::NotVisibleYet { error, position })
        }
        other => other,
    }
}
