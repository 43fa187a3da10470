//! SCIM security events (RFC 9967) for downstream systems, as signed Security Event Tokens
//! (RFC 8417), delivered by push (RFC 8935) or poll (RFC 8936). Each receiver reads the log
//! from its own checkpoint (`feed`), so delivery is at-least-once and in log order; the
//! tables are `secevents.*`.

pub mod change;
mod error;
pub mod feed;
pub mod keys;
mod options;
mod pending;
pub mod poll;
pub mod push;
pub mod receivers;
mod scope;
mod service;
pub mod set;
pub mod uri;
mod worker;

pub use error::SecEventsError;
pub use options::{DeliveryOptions, PENDING_CHANNEL, RECEIVERS_CHANNEL};
pub use service::SecEvents;
