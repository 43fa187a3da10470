//! The read models. Each is a [`Projection`] kept by the runtime in `crate::projection`.

mod api_tokens;
mod event_counts;
mod orgs;

use std::sync::Arc;

use crate::projection::Projection;

pub use api_tokens::ApiTokens;
pub use event_counts::EventCounts;
pub use orgs::Orgs;

/// Every projection the service runs.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(EventCounts), Arc::new(Orgs), Arc::new(ApiTokens)]
}
