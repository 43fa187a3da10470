//! The event store (docs/ARCHITECTURE.md §3-4): append with version checks and unique values, read in
//! `(tx, seq)` order below the transaction horizon, wake readers on append.

pub mod audit;
pub mod context;
mod encode;
mod error;
mod notify;
mod position;
mod read;
mod recent;
mod store;
mod types;

pub use error::StoreError;
pub use notify::EVENTS_CHANNEL;
pub use position::{ParsePositionError, Position};
pub use read::{
    event_at, existing, head, load, load_after, load_of_type, load_version, lock_aggregate,
    positions_ahead, read_after, read_batch, save_snapshot, snapshot,
};
pub use store::EventStore;
pub use types::{
    Aggregate, Append, Batch, EventFilter, ExpectedVersion, NewEvent, NotifyMode, Pushed,
    StoreOptions, StoredEvent, UniqueValue,
};
