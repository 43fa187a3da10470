//! The floor under both HTTP surfaces (`api/` and `scim/`): the state every handler gets,
//! who is calling (bearer, org tokens, admins), and the position headers. It imports neither
//! surface; `app.rs` assembles them on top of it.

pub mod auth;
pub mod cache;
pub mod limits;
pub mod position;
pub mod server;
pub mod session;
mod state;
pub mod telemetry;
pub mod throttle;

pub(crate) use state::Sampler;
pub use state::{AppState, Shared};
