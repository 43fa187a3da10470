//! Reads that ride along a live round. A write that waits for the round to apply it usually
//! reads its resource back next: another connection, another round trip, another wake-up,
//! after the round's COMMIT came back. A reader registered with the projector
//! ([`super::Projector::ride_with`]) instead hands the round the reads due at the position
//! it reached; the round sends them on its own connection right behind its COMMIT, so they
//! travel in the same round trip and see what it committed. Their answers go out only once
//! the COMMIT is through: nobody is told of a write that a failed COMMIT took back.
//!
//! They run behind the COMMIT, not inside the transaction, so that a failing read cannot
//! turn the round's COMMIT into a ROLLBACK.

use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use deadpool_postgres::Client;

use crate::eventstore::Position;

/// Answers the reads of one round, called once its COMMIT went through. Without the COMMIT
/// it is dropped uncalled (the rows may be gone), and the requests read on their own.
pub type Deliver = Box<dyn FnOnce() + Send>;

/// A source of reads for live rounds to carry (the SCIM read backs, for one).
#[async_trait]
pub trait RoundRead: Send + Sync {
    /// Sends the reads due once the read models are at `reached` on `client` (its COMMIT is
    /// on its way ahead of them) and returns, once their rows are in, what answers them.
    /// `None` when nothing was due.
    async fn read(&self, client: &Client, reached: Position) -> Option<Deliver>;
}

/// The readers registered with one projector. Weak: a reader that is gone (its router
/// dropped) is skipped, and forgotten at the next registration.
#[derive(Default)]
pub(super) struct Riders {
    readers: Mutex<Vec<Weak<dyn RoundRead>>>,
}

impl Riders {
    pub(super) fn add(&self, reader: Weak<dyn RoundRead>) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        readers.retain(|r| r.strong_count() > 0);
        readers.push(reader);
    }

    pub(super) fn current(&self) -> Vec<Arc<dyn RoundRead>> {
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        readers.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Sends every reader's reads on `client` and collects what answers them.
pub(super) async fn read_all(
    readers: &[Arc<dyn RoundRead>],
    client: &Client,
    reached: Position,
) -> Vec<Deliver> {
    futures::future::join_all(readers.iter().map(|r| r.read(client, reached)))
        .await
        .into_iter()
        .flatten()
        .collect()
}
