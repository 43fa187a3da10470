//! The read models. Each is a [`Projection`] kept by the runtime in `crate::projection`.

mod event_counts;

use std::sync::Arc;

use crate::projection::Projection;

pub use event_counts::EventCounts;

/// Every projection the service runs.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(EventCounts)]
}
