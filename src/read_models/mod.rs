//! The read models. Each is a [`Projection`] kept by the runtime in `crate::runtime`.
//! Their SQL names tables without a schema: the runtime sets `search_path` to `projections`
//! for the live model, and to `projections_rebuild` while a rebuild builds a copy beside it.

mod api_tokens;
mod event_counts;
mod groups;
mod orgs;
mod rows;
mod users;

use std::sync::Arc;

use crate::runtime::Projection;

pub use api_tokens::ApiTokens;
pub use event_counts::EventCounts;
pub use groups::Groups;
pub use orgs::Orgs;
pub use users::Users;

/// A string member of a document.
fn text<'a>(doc: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> Option<&'a str> {
    doc.get(key).and_then(serde_json::Value::as_str)
}

/// A projection by name.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all().into_iter().find(|p| p.name() == name)
}

/// Every projection the service runs.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(EventCounts),
        Arc::new(Orgs),
        Arc::new(ApiTokens),
        Arc::new(Users),
        Arc::new(Groups),
    ]
}
