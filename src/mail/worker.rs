//! The outbox worker: claims due rows with `FOR UPDATE SKIP LOCKED` and a lease (so no
//! transaction stays open, holding the horizon back, while a mail is on its way), sends
//! them, then deletes each row and records `...code.sent` in one transaction. A crash after
//! sending and before that commit sends the mail again when the lease runs out: at worst
//! twice, never lost. Failures are retried with backoff and given up after a set number of
//! tries (the row stays, with `failed_at` and the last error).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::Mailer;
use crate::clock::SharedClock;
use crate::domain::provenance::Actor;
use crate::domain::verification;
use crate::eventstore::EventStore;
use crate::listener::ListenEvent;

pub const CHANNEL: &str = "mail_outbox";

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Base of links in mails, e.g. `https://id.example.com`.
    pub public_url: String,
    /// Tries before a mail is given up.
    pub max_attempts: i32,
    /// First retry delay; doubles per failure up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long a claimed row is left to its claimer before another worker may take it.
    pub lease: Duration,
    /// Mails sent at once.
    pub batch: i64,
    /// How long codes are valid, as the mail says it.
    pub valid_for: String,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            public_url: "http://127.0.0.1:8080".into(),
            max_attempts: 8,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            lease: Duration::from_secs(120),
            batch: 16,
            valid_for: "1 hour".into(),
        }
    }
}

impl WorkerOptions {
    /// The delay after the `failures`-th failure.
    pub fn backoff(&self, failures: i32) -> Duration {
        crate::backoff::Backoff::new(self.retry_base, self.retry_max).nth(failures.max(1) as u32)
    }
}

pub struct MailWorker {
    wake: Arc<Notify>,
    task: JoinHandle<()>,
    listener: JoinHandle<()>,
}

impl Drop for MailWorker {
    fn drop(&mut self) {
        self.task.abort();
        self.listener.abort();
    }
}

struct Ctx {
    pool: Pool,
    store: EventStore,
    mailer: Mailer,
    clock: SharedClock,
    opts: WorkerOptions,
}

impl MailWorker {
    pub fn start(
        url: &str,
        pool: Pool,
        store: EventStore,
        mailer: Mailer,
        clock: SharedClock,
        opts: WorkerOptions,
    ) -> MailWorker {
        let wake = Arc::new(Notify::new());
        let (events, listener) =
            crate::listener::spawn(url.to_string(), vec![CHANNEL.to_string()], "mail");
        let ctx = Ctx {
            pool,
            store,
            mailer,
            clock,
            opts,
        };
        // The events the worker appends (code sent, undelivered) name it as their actor.
        let actor = Actor::Service {
            name: "mail worker",
        };
        let w = wake.clone();
        let task = tokio::spawn(async move { actor.scope(work(ctx, w, events)).await });
        MailWorker {
            wake,
            task,
            listener,
        }
    }

    /// Looks at the outbox now (after an in-process write, or after a test moved the clock).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Sends what is due, then waits until the next row is due (a backoff), a wake-up, or a slow
/// fallback tick that only covers lost notifications; ends with the listener.
async fn work(ctx: Ctx, w: Arc<Notify>, mut events: tokio::sync::mpsc::Receiver<ListenEvent>) {
    loop {
        let next_due = match drain(&ctx).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "mail worker: database error; trying again soon");
                Some(ctx.clock.now() + chrono::Duration::seconds(1))
            }
        };
        let fallback = Duration::from_secs(30);
        let delay = next_due
            .map(|t| (t - ctx.clock.now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(fallback)
            .min(fallback);
        tokio::select! {
            _ = w.notified() => {}
            e = events.recv() => if e.is_none() { return },
            _ = tokio::time::sleep(delay) => {} // backoff timer, not a wait for state
        }
    }
}

struct Claimed {
    id: Uuid,
    org_id: Uuid,
    user_id: Uuid,
    request_id: Uuid,
    to: String,
    secret: Value,
    attempts: i32,
}

/// Sends everything due; returns when the next row falls due (None: nothing pending).
async fn drain(ctx: &Ctx) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    loop {
        let now = ctx.clock.now();
        let lease_until = now + chrono::Duration::from_std(ctx.opts.lease).unwrap_or_default();
        let rows = {
            let client = match ctx.pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "mail worker: no database connection");
                    return Ok(Some(now + chrono::Duration::seconds(1)));
                }
            };
            let claimed = client
                .query(
                    "UPDATE mail.outbox o SET next_attempt_at = $2 \
                     WHERE o.id IN (SELECT id FROM mail.outbox \
                                     WHERE failed_at IS NULL AND next_attempt_at <= $1 \
                                     ORDER BY next_attempt_at, created_at LIMIT $3 \
                                     FOR UPDATE SKIP LOCKED) \
                     RETURNING id, org_id, user_id, request_id, to_address, secret, attempts",
                    &[&now, &lease_until, &ctx.opts.batch],
                )
                .await?;
            if claimed.is_empty() {
                let next: Option<DateTime<Utc>> = client
                    .query_one(
                        "SELECT min(next_attempt_at) FROM mail.outbox WHERE failed_at IS NULL",
                        &[],
                    )
                    .await?
                    .get(0);
                return Ok(next);
            }
            claimed
        };
        let claimed: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                id: r.get(0),
                org_id: r.get(1),
                user_id: r.get(2),
                request_id: r.get(3),
                to: r.get(4),
                secret: r.get(5),
                attempts: r.get(6),
            })
            .collect();
        let results = futures::future::join_all(claimed.iter().map(|c| send_one(ctx, c))).await;
        for r in results {
            r?;
        }
    }
}

async fn send_one(ctx: &Ctx, c: &Claimed) -> Result<(), tokio_postgres::Error> {
    let m = crate::metrics::metrics();
    let s = |k: &str| c.secret[k].as_str().unwrap_or_default().to_string();
    let link = format!(
        "{}/verify-email?user={}&token={}",
        ctx.opts.public_url.trim_end_matches('/'),
        c.user_id,
        s("token")
    );
    let name = Some(s("name"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| c.to.clone());
    let sent = match super::verification(&name, &c.to, &s("code"), &link, &ctx.opts.valid_for) {
        Ok(mail) => ctx.mailer.send(&c.to, &mail).await,
        Err(e) => Err(e),
    };
    let mut client = match ctx.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            // The lease runs out and the mail is sent again: at worst twice.
            tracing::warn!(error = %crate::error_chain(&e), "mail worker: no database connection after sending");
            return Ok(());
        }
    };
    match sent {
        Ok(()) => {
            m.mail_sent.inc();
            let tx = client.transaction().await?;
            let deleted = tx
                .execute("DELETE FROM mail.outbox WHERE id = $1", &[&c.id])
                .await?;
            if deleted == 1 {
                let append = verification::code_sent(c.org_id, c.user_id, c.request_id);
                match ctx.store.push_in(&tx, &[append]).await {
                    Ok(pushed) => {
                        tx.commit().await?;
                        ctx.store.committed(&pushed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "mail worker: cannot record that the code was sent")
                    }
                }
            }
        }
        Err(e) => record_failure(ctx, &mut client, c, &e).await?,
    }
    Ok(())
}

/// A failed send: retried with backoff, or given up, when the row also loses its secrets and
/// the request is closed.
async fn record_failure(
    ctx: &Ctx,
    client: &mut deadpool_postgres::Object,
    c: &Claimed,
    e: &super::MailError,
) -> Result<(), tokio_postgres::Error> {
    let m = crate::metrics::metrics();
    let failures = c.attempts + 1;
    let now = ctx.clock.now();
    let retry_at = now + chrono::Duration::from_std(ctx.opts.backoff(failures)).unwrap_or_default();
    let give_up = failures >= ctx.opts.max_attempts;
    m.mail_failed.inc();
    if give_up {
        m.mail_given_up.inc();
        tracing::error!(error = %crate::error_chain(e), outbox_id = %c.id, failures, "mail worker: giving up on a mail");
    } else {
        tracing::warn!(error = %crate::error_chain(e), outbox_id = %c.id, failures, %retry_at, "mail worker: sending failed; will retry");
    }
    let tx = client.transaction().await?;
    // A given-up row keeps what a DBA needs to see why, and loses the code and link
    // token; the request is closed in the same transaction, so neither would work.
    let updated = tx
        .execute(
            "UPDATE mail.outbox SET attempts = $2, last_error = $3, next_attempt_at = $4, \
             failed_at = CASE WHEN $5::boolean THEN $6::timestamptz END, \
             secret = CASE WHEN $5::boolean THEN '{}'::jsonb ELSE secret END \
             WHERE id = $1",
            &[
                &c.id,
                &failures,
                &crate::error_chain(e),
                &retry_at,
                &give_up,
                &now,
            ],
        )
        .await?;
    if give_up && updated == 1 {
        let append = verification::undelivered(c.org_id, c.user_id, c.request_id);
        match ctx.store.push_in(&tx, &[append]).await {
            Ok(pushed) => {
                tx.commit().await?;
                ctx.store.committed(&pushed);
            }
            Err(e) => {
                // The secrets go regardless: nobody holds that code any more.
                tracing::warn!(error = %crate::error_chain(&e), "mail worker: cannot record that the mail was given up");
                tx.commit().await?;
            }
        }
    } else {
        tx.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let o = WorkerOptions::default();
        assert_eq!(o.backoff(1), Duration::from_secs(5));
        assert_eq!(o.backoff(2), Duration::from_secs(10));
        assert_eq!(o.backoff(4), Duration::from_secs(40));
        assert_eq!(o.backoff(40), Duration::from_secs(600));
    }
}
