//! The read back after a write of a user, coalesced. The writes one live round makes visible
//! wake together, and each would read its resource back on a connection and in a statement of
//! its own. Here the read backs that wake together ride along in a single statement per
//! column set: the first starts a reader, which lets the others queue (a yield, and the wait
//! for a pooled connection) before it takes them all. Under load a round trip and a statement
//! serve several writes; a lone write still costs the one statement it did. A reader takes
//! its wave and goes: the next wave has a reader of its own, so a slow statement holds up
//! nobody but its own wave. Groups are read back alone: one with many members costs far
//! more than a user, and it should not hold up another org's users.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Client, Pool};
use tokio::sync::oneshot;
use tokio_postgres::Row;
use uuid::Uuid;

use super::error::ScimError;
use super::read::{self, Ctx};
use super::resource::Selection;
use super::schema::{Kind, ResourceType};
use crate::eventstore::Position;

/// The most read backs in one statement; more go in another.
const MAX_BATCH: usize = 256;

pub struct ReadBacks {
    pool: Pool,
    queue: Mutex<Queue>,
    batches_read: AtomicU64,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A reader was started and has not taken the pending read backs yet: what is queued now
    /// goes with its statement.
    waiting: bool,
}

struct Pending {
    sql: String,
    id: Uuid,
    org: Uuid,
    position: Position,
    /// The row, or none when the resource is not there at the position. Dropped unanswered
    /// when the statement failed: the request then reads on its own and reports the error.
    reply: oneshot::Sender<Option<Row>>,
}

impl ReadBacks {
    pub fn new(pool: Pool) -> Arc<ReadBacks> {
        Arc::new(ReadBacks {
            pool,
            queue: Mutex::new(Queue::default()),
            batches_read: AtomicU64::new(0),
        })
    }

    /// The resource `id` as a read at `position` renders it (`read::by_id_at`), with its
    /// version; `None` when it is not there, or the read models do not hold `position`.
    pub async fn by_id_at(
        self: &Arc<Self>,
        rt: &'static ResourceType,
        ctx: &Ctx,
        id: Uuid,
        sel: &Selection,
        position: Position,
    ) -> Result<Option<(serde_json::Value, i64)>, ScimError> {
        if rt.kind == Kind::User {
            let (reply, answer) = oneshot::channel();
            self.enqueue(Pending {
                sql: read::by_keys_sql(rt, sel),
                id,
                org: ctx.org,
                position,
                reply,
            });
            if let Ok(row) = answer.await {
                return Ok(row.and_then(|row| read::rendered(rt, ctx, row, sel)));
            }
        }
        let client = self.pool.get().await?;
        read::by_id_at(&client, rt, ctx, id, sel, position).await
    }

    /// Queues a read back, and starts a reader unless one is about to take it.
    fn enqueue(self: &Arc<Self>, pending: Pending) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.pending.push(pending);
        if !std::mem::replace(&mut q.waiting, true) {
            self.start_reader();
        }
    }

    fn start_reader(self: &Arc<Self>) {
        tokio::spawn(self.clone().read_wave());
    }

    /// Reads the read backs that queued while it got going: one statement per column set.
    async fn read_wave(self: Arc<Self>) {
        // The other writes of the same round are waking now: let them queue first. While the
        // pool has no connection to spare, the wave grows.
        tokio::task::yield_now().await;
        let client = self.pool.get().await;
        let batch = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.pending.len().min(MAX_BATCH);
            let batch: Vec<Pending> = q.pending.drain(..n).collect();
            if q.pending.is_empty() {
                q.waiting = false;
            } else {
                // Over the most one statement takes: the rest is another wave's, now.
                self.start_reader();
            }
            batch
        };
        match client {
            Ok(client) => {
                self.batches_read.fetch_add(1, Ordering::Relaxed);
                read_batch(&client, batch).await
            }
            // Dropping the batch tells its requests to read on their own and report it.
            Err(e) => tracing::debug!(error = %crate::error_chain(&e), "coalesced read back"),
        }
    }

    /// Read backs waiting for a statement (for tests).
    pub fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .len()
    }

    /// Batches read so far, each one round trip (for tests).
    pub fn batches(&self) -> u64 {
        self.batches_read.load(Ordering::Relaxed)
    }
}

/// One statement per column set, pipelined on one connection.
async fn read_batch(client: &Client, mut batch: Vec<Pending>) {
    // A request that gave up meanwhile (its deadline, its client gone) needs no row.
    batch.retain(|p| !p.reply.is_closed());
    batch.sort_by(|a, b| a.sql.cmp(&b.sql));
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for p in batch {
        match groups.last_mut() {
            Some(g) if g[0].sql == p.sql => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    futures::future::join_all(groups.into_iter().map(|g| read_group(client, g))).await;
}

async fn read_group(client: &Client, group: Vec<Pending>) {
    let ids: Vec<Uuid> = group.iter().map(|p| p.id).collect();
    let orgs: Vec<Uuid> = group.iter().map(|p| p.org).collect();
    let txs: Vec<i64> = group.iter().map(|p| p.position.tx_sql()).collect();
    let seqs: Vec<i64> = group.iter().map(|p| p.position.seq).collect();
    let rows = match read::by_keys(client, &group[0].sql, &ids, &orgs, &txs, &seqs).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %crate::error_chain(&e), "coalesced read back");
            return;
        }
    };
    let mut found: Vec<Option<Row>> = group.iter().map(|_| None).collect();
    for (n, row) in rows {
        if let Some(slot) = found.get_mut(n) {
            *slot = Some(row);
        }
    }
    for (p, row) in group.into_iter().zip(found) {
        // The request may have gone (its client hung up): nobody to answer.
        let _ = p.reply.send(row);
    }
}
