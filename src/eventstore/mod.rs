//! The event store (docs/ARCHITECTURE.md §3-4): append with version checks and unique values, read in
//! `(tx, seq)` order below the transaction horizon, wake readers on append.

mod error;
mod notify;
mod position;
mod read;
mod store;
mod types;

pub use error::StoreError;
pub use notify::{NotifyMode, EVENTS_CHANNEL};
pub use position::{ParsePositionError, Position};
pub use read::{
    event_at, head, load, load_after, load_version, positions_ahead, read_after, read_batch,
    save_snapshot, snapshot,
};
pub use store::EventStore;
pub use types::{
    Aggregate, Append, Batch, EventFilter, ExpectedVersion, NewEvent, Pushed, StoreOptions,
    StoredEvent, UniqueValue,
};
