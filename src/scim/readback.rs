//! The read back after a write of a user, coalesced. The writes one live round makes visible
//! wake together, and each would read its resource back on a connection and in a statement of
//! its own. Here the read backs that wake together ride along in a single statement per
//! column set: the first starts a reader, which lets the others queue (a yield, and the wait
//! for a pooled connection) before it takes them all. Under load a round trip and a statement
//! serve several writes; a lone write still costs the one statement it did. A reader takes
//! its wave and goes: the next wave has a reader of its own, so a slow statement holds up
//! nobody but its own wave. Groups are read back alone: one with many members costs far
//! more than a user, and it should not hold up another org's users.
//!
//! Where this process runs the live round, a read back first rides along it
//! (`runtime::RoundRead`): queued before the wait, it goes out behind the COMMIT of the round
//! that reaches its position, on that round's connection, and is answered as the round ends.
//! It falls back to a wave of its own when the round does not carry it (another process or
//! a runner applied the write, or the round failed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deadpool_postgres::{Client, Pool};
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio_postgres::Row;
use uuid::Uuid;

use super::error::ScimError;
use super::read::{self, Ctx};
use super::resource::Selection;
use super::schema::{Kind, ResourceType};
use crate::eventstore::Position;
use crate::runtime::{Deliver, Projector, RoundRead};

/// The most read backs in one statement; more go in another.
const MAX_BATCH: usize = 256;

/// The most read backs waiting for a live round; more wait and read on their own.
const MAX_RIDING: usize = 4096;

pub struct ReadBacks {
    pool: Pool,
    queue: Mutex<Queue>,
    batches_read: AtomicU64,
    tickets: AtomicU64,
    /// Read backs offered to the live round; `None` when this process runs none.
    riding: Option<Mutex<Riding>>,
}

struct Riding {
    pending: Vec<Pending>,
    /// Requests that gave up (read on their own) leave their entry behind: at this length the
    /// queue is swept.
    sweep_at: usize,
}

/// A read back riding along the live round: see [`ReadBacks::answer`].
pub struct Ride {
    ticket: u64,
    answer: oneshot::Receiver<Option<Row>>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A reader was started and has not taken the pending read backs yet: what is queued now
    /// goes with its statement.
    waiting: bool,
}

struct Pending {
    /// Names a riding read back (see [`ReadBacks::withdraw`]); 0 in a wave.
    ticket: u64,
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
        Arc::new(Self::with(pool, None))
    }

    /// Read backs that ride along `projector`'s live rounds.
    pub fn riding(pool: Pool, projector: &Projector) -> Arc<ReadBacks> {
        let riding = Riding {
            pending: Vec::new(),
            sweep_at: 64,
        };
        let rb = Arc::new(Self::with(pool, Some(Mutex::new(riding))));
        let reader: std::sync::Weak<ReadBacks> = Arc::downgrade(&rb);
        projector.ride_with(reader);
        rb
    }

    fn with(pool: Pool, riding: Option<Mutex<Riding>>) -> ReadBacks {
        ReadBacks {
            pool,
            queue: Mutex::new(Queue::default()),
            batches_read: AtomicU64::new(0),
            tickets: AtomicU64::new(1),
            riding,
        }
    }

    /// Offers the read back of a user written at `position` to the live round that will
    /// reach it (see [`Self::answer`]). `None` when no live round here takes it: the request
    /// waits and reads with [`Self::by_id_at`].
    pub fn ride(
        &self,
        rt: &'static ResourceType,
        ctx: &Ctx,
        id: Uuid,
        sel: &Selection,
        position: Position,
    ) -> Option<Ride> {
        let riding = self.riding.as_ref().filter(|_| rt.kind == Kind::User)?;
        let mut r = riding.lock().unwrap_or_else(|e| e.into_inner());
        if r.pending.len() >= r.sweep_at {
            r.pending.retain(|p| !p.reply.is_closed());
            r.sweep_at = (r.pending.len() * 2).max(64);
        }
        if r.pending.len() >= MAX_RIDING {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        r.pending.push(Pending {
            ticket,
            sql: read::by_keys_sql(rt, sel),
            id,
            org: ctx.org,
            position,
            reply,
        });
        Some(Ride { ticket, answer })
    }

    /// The row a ride brought back (`None`: not there at its position, or no round carried
    /// it, and the request reads on its own), at the latest once `reached` says the write
    /// is visible. The hub hears of a round's COMMIT before the rows read behind it are
    /// back: unless the read back is still queued, they are on their way.
    pub async fn answer(
        &self,
        ride: Ride,
        reached: impl std::future::Future<Output = Result<(), ScimError>>,
    ) -> Result<Option<Row>, ScimError> {
        let Ride { ticket, mut answer } = ride;
        let mut reached = std::pin::pin!(reached);
        tokio::select! {
            biased;
            row = &mut answer => {
                // The round told the hub before it answered: the wait ends at once, and
                // ending it counts it (portcullis_wait_for_position_seconds).
                let _ = reached.now_or_never();
                Ok(row.ok().flatten())
            }
            waited = &mut reached => {
                waited?;
                if self.withdraw(ticket) {
                    return Ok(None);
                }
                Ok(answer.await.ok().flatten())
            }
        }
    }

    /// Takes a read back off the riding queue; false when a round has taken it already.
    fn withdraw(&self, ticket: u64) -> bool {
        let Some(riding) = &self.riding else {
            return false;
        };
        let mut r = riding.lock().unwrap_or_else(|e| e.into_inner());
        match r.pending.iter().position(|p| p.ticket == ticket) {
            Some(i) => {
                r.pending.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// The riding read backs a round that reached `reached` answers, taken off the queue.
    fn due(&self, reached: Position) -> Vec<Pending> {
        let Some(riding) = &self.riding else {
            return Vec::new();
        };
        let mut r = riding.lock().unwrap_or_else(|e| e.into_inner());
        let (due, waiting) = std::mem::take(&mut r.pending)
            .into_iter()
            .filter(|p| !p.reply.is_closed())
            .partition(|p| p.position <= reached);
        r.pending = waiting;
        due
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
                ticket: 0,
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
                for (reply, row) in read_batch(&client, batch).await {
                    // The request may have gone (its client hung up): nobody to answer.
                    let _ = reply.send(row);
                }
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

    /// Read backs waiting for a live round to carry them (for tests).
    pub fn riding_queued(&self) -> usize {
        self.riding.as_ref().map_or(0, |r| {
            r.lock().unwrap_or_else(|e| e.into_inner()).pending.len()
        })
    }

    /// Batches read so far, each one round trip (for tests).
    pub fn batches(&self) -> u64 {
        self.batches_read.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl RoundRead for ReadBacks {
    async fn read(&self, client: &Client, reached: Position) -> Option<Deliver> {
        let due = self.due(reached);
        if due.is_empty() {
            return None;
        }
        self.batches_read.fetch_add(1, Ordering::Relaxed);
        let answers = read_batch(client, due).await;
        Some(Box::new(move || {
            for (reply, row) in answers {
                let _ = reply.send(row);
            }
        }))
    }
}

/// Who asked, and what was found.
type Answers = Vec<(oneshot::Sender<Option<Row>>, Option<Row>)>;

/// One statement per column set (and per [`MAX_BATCH`] keys), pipelined on one connection.
/// A statement that failed answers nobody of its group: they read on their own.
async fn read_batch(client: &Client, mut batch: Vec<Pending>) -> Answers {
    // A request that gave up meanwhile (its deadline, its client gone) needs no row.
    batch.retain(|p| !p.reply.is_closed());
    batch.sort_by(|a, b| a.sql.cmp(&b.sql));
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for p in batch {
        match groups.last_mut() {
            Some(g) if g[0].sql == p.sql && g.len() < MAX_BATCH => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    futures::future::join_all(groups.into_iter().map(|g| read_group(client, g)))
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn read_group(client: &Client, group: Vec<Pending>) -> Answers {
    let ids: Vec<Uuid> = group.iter().map(|p| p.id).collect();
    let orgs: Vec<Uuid> = group.iter().map(|p| p.org).collect();
    let txs: Vec<i64> = group.iter().map(|p| p.position.tx_sql()).collect();
    let seqs: Vec<i64> = group.iter().map(|p| p.position.seq).collect();
    let rows = match read::by_keys(client, &group[0].sql, &ids, &orgs, &txs, &seqs).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %crate::error_chain(&e), "coalesced read back");
            return Vec::new();
        }
    };
    let mut found: Vec<Option<Row>> = group.iter().map(|_| None).collect();
    for (n, row) in rows {
        if let Some(slot) = found.get_mut(n) {
            *slot = Some(row);
        }
    }
    group.into_iter().map(|p| p.reply).zip(found).collect()
}
